// Package sdtest makes SD-card images in the Raspberry Pi OS layout from a
// directory tree, with Debian's tools and without mounting anything, for
// tests of the importer and of booting an imported image.
//
// The image has an MBR (sfdisk) with two primary partitions: 1, FAT32
// labelled "bootfs" (mkfs.vfat, files copied with mcopy) holding the
// tree's boot/firmware, and 2, ext4 labelled "rootfs" (mkfs.ext4 -d, which
// keeps owners, modes, xattrs, hard links, device nodes and sparse files,
// but mtimes in whole seconds only, as of e2fsprogs 1.47) holding the rest,
// with an empty boot/firmware as the mount point. As on
// Raspberry Pi OS, cmdline.txt says root=PARTUUID=<disk id>-02 and
// etc/fstab mounts both partitions by PARTUUID. The source tree is not
// changed.
//
// Tools: sfdisk (fdisk), mkfs.vfat (dosfstools), mcopy (mtools), mkfs.ext4,
// debugfs and e2fsck (e2fsprogs), dd (coreutils).
package sdtest

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
)

// Tools lists the programs Build runs, for tests that check for them.
var Tools = []string{"sfdisk", "mkfs.vfat", "mcopy", "mkfs.ext4", "debugfs", "e2fsck", "dd"}

// Options tune Build; the zero value gives Raspberry Pi OS's layout.
type Options struct {
	// DiskID is the MBR disk identifier; 0 picks a random one.
	DiskID uint32
	// Ext4Features is passed to mkfs.ext4 -O (e.g. "inline_data" or
	// "^metadata_csum") on top of Debian's ext4 defaults.
	Ext4Features string
	// Ext4BlockSize is the root filesystem's block size; 0 means 4096.
	Ext4BlockSize int
	// Ext4ClusterSize, when set, is passed as mkfs.ext4 -C (bigalloc).
	Ext4ClusterSize int
	// MinRootSize is the least size of the root partition in bytes.
	MinRootSize int64
}

// Build is Options{}.Build.
func Build(rootDir, out string) error { return Options{}.Build(rootDir, out) }

const mib = 1 << 20

// Build writes the image of rootDir to out.
func (o Options) Build(rootDir, out string) error {
	for _, t := range Tools {
		if _, err := exec.LookPath(t); err != nil {
			return fmt.Errorf("sdtest: %s not found: install dosfstools, mtools, fdisk, e2fsprogs", t)
		}
	}
	if st, err := os.Stat(rootDir); err != nil {
		return fmt.Errorf("sdtest: %v", err)
	} else if !st.IsDir() {
		return fmt.Errorf("sdtest: %s is not a directory", rootDir)
	}
	id := o.DiskID
	if id == 0 {
		var b [4]byte
		rand.Read(b[:])
		id = binary.LittleEndian.Uint32(b[:]) | 1
	}
	work, err := os.MkdirTemp(filepath.Dir(out), ".sdtest-*")
	if err != nil {
		return fmt.Errorf("sdtest: %v", err)
	}
	defer os.RemoveAll(work)

	bootSrc := filepath.Join(rootDir, "boot", "firmware")
	rootUse, rootInodes, err := usage(rootDir, bootSrc)
	if err != nil {
		return fmt.Errorf("sdtest: %v", err)
	}
	bootUse, bootInodes, err := usage(bootSrc, "")
	if err != nil && !os.IsNotExist(err) {
		return fmt.Errorf("sdtest: %v", err)
	}
	// FAT32 needs 65525 clusters; 64 MiB of 512-byte clusters has room.
	bootSize := roundMiB(max(64*mib, bootUse+bootUse/4+8*mib))
	// mkfs.ext4 -d copies boot/firmware in too before it is emptied.
	rootSize := roundMiB(max(32*mib, o.MinRootSize, rootUse+bootUse+(rootUse+bootUse)/4+rootInodes*512+16*mib))
	bootStart := int64(4 * mib)
	rootStart := bootStart + bootSize

	partUUID := func(n int) string { return fmt.Sprintf("%08x-%02d", id, n) }

	fatImg := filepath.Join(work, "boot.img")
	if err := run(nil, "mkfs.vfat", "-F", "32", "-S", "512", "-s", "1", "-n", "bootfs",
		"-i", fmt.Sprintf("%08X", id), "-C", fatImg, fmt.Sprint(bootSize/1024)); err != nil {
		return err
	}
	mtoolsEnv := append(os.Environ(), "MTOOLS_SKIP_CHECK=1", "TZ=UTC")
	if ents, err := os.ReadDir(bootSrc); err == nil && len(ents) > 0 {
		args := []string{"-i", fatImg, "-s", "-p", "-m", "-Q"}
		for _, e := range ents {
			args = append(args, filepath.Join(bootSrc, e.Name()))
		}
		if err := run(mtoolsEnv, "mcopy", append(args, "::/")...); err != nil {
			return err
		}
	}
	cmdline, err := cmdlineFor(filepath.Join(bootSrc, "cmdline.txt"), partUUID(2))
	if err != nil {
		return fmt.Errorf("sdtest: %v", err)
	}
	cmdFile := filepath.Join(work, "cmdline.txt")
	if err := os.WriteFile(cmdFile, []byte(cmdline), 0o644); err != nil {
		return fmt.Errorf("sdtest: %v", err)
	}
	if err := run(mtoolsEnv, "mcopy", "-i", fatImg, "-o", "-m", cmdFile, "::/cmdline.txt"); err != nil {
		return err
	}

	extImg := filepath.Join(work, "root.img")
	bs := o.Ext4BlockSize
	if bs == 0 {
		bs = 4096
	}
	mkfs := []string{"-q", "-F", "-t", "ext4", "-L", "rootfs", "-b", fmt.Sprint(bs), "-d", rootDir,
		"-N", fmt.Sprint(rootInodes + bootInodes + rootInodes/4 + 1024)}
	if o.Ext4Features != "" {
		mkfs = append(mkfs, "-O", o.Ext4Features)
	}
	if o.Ext4ClusterSize != 0 {
		mkfs = append(mkfs, "-C", fmt.Sprint(o.Ext4ClusterSize))
	}
	if err := run(nil, "mkfs.ext4", append(mkfs, extImg, fmt.Sprint(rootSize/1024)+"k")...); err != nil {
		return err
	}
	// mkfs.ext4 -d copied boot/firmware too: empty the mount point, and
	// put the PARTUUID fstab in.
	var cmds []string
	if err := rmCommands(bootSrc, "/boot/firmware", &cmds); err != nil {
		return fmt.Errorf("sdtest: %v", err)
	}
	if _, err := os.Lstat(bootSrc); os.IsNotExist(err) {
		if _, err := os.Lstat(filepath.Join(rootDir, "boot")); os.IsNotExist(err) {
			cmds = append(cmds, "mkdir /boot", "sif /boot mode 040755")
		}
		cmds = append(cmds, "mkdir /boot/firmware", "sif /boot/firmware mode 040755")
	}
	if _, err := os.Lstat(filepath.Join(rootDir, "etc")); os.IsNotExist(err) {
		cmds = append(cmds, "mkdir /etc", "sif /etc mode 040755")
	}
	if _, err := os.Lstat(filepath.Join(rootDir, "etc", "fstab")); err == nil {
		cmds = append(cmds, "rm /etc/fstab")
	}
	fstab := filepath.Join(work, "fstab")
	if err := os.WriteFile(fstab, []byte(fmt.Sprintf(
		"proc            /proc           proc    defaults          0       0\n"+
			"PARTUUID=%s  /boot/firmware  vfat    defaults          0       2\n"+
			"PARTUUID=%s  /               ext4    defaults,noatime  0       1\n",
		partUUID(1), partUUID(2))), 0o644); err != nil {
		return fmt.Errorf("sdtest: %v", err)
	}
	cmds = append(cmds, "write "+fstab+" /etc/fstab",
		"sif /etc/fstab mode 0100644", "sif /etc/fstab uid 0", "sif /etc/fstab gid 0")
	if err := debugfs(work, extImg, cmds); err != nil {
		return err
	}
	// Index directories of more than one block (htree), as the kernel
	// does, and check the result.
	if err := runExit(nil, 1, "e2fsck", "-fyD", extImg); err != nil {
		return err
	}

	if err := os.WriteFile(out, nil, 0o644); err != nil {
		return fmt.Errorf("sdtest: %v", err)
	}
	if err := os.Truncate(out, rootStart+rootSize); err != nil {
		return fmt.Errorf("sdtest: %v", err)
	}
	table := fmt.Sprintf("label: dos\nlabel-id: 0x%08x\nunit: sectors\n\nstart=%d, size=%d, type=c\nstart=%d, size=%d, type=83\n",
		id, bootStart/512, bootSize/512, rootStart/512, rootSize/512)
	cmd := exec.Command("sfdisk", "--no-reread", "--no-tell-kernel", "-q", out)
	cmd.Stdin = strings.NewReader(table)
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("sdtest: %v: %v: %s", cmd.Args, err, bytes.TrimSpace(b))
	}
	for _, p := range []struct {
		img   string
		start int64
	}{{fatImg, bootStart}, {extImg, rootStart}} {
		if err := run(nil, "dd", "if="+p.img, "of="+out, "bs=1M", fmt.Sprintf("seek=%d", p.start/mib),
			"conv=notrunc,sparse", "status=none"); err != nil {
			return err
		}
	}
	return nil
}

// usage returns the bytes (allocated, so sparse files count little) and
// inodes under dir, leaving out the tree at skip.
func usage(dir, skip string) (bytes, inodes int64, err error) {
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p == skip && d.IsDir() {
			return filepath.SkipDir
		}
		inodes++
		info, err := d.Info()
		if err != nil {
			return err
		}
		if st, ok := info.Sys().(*syscall.Stat_t); ok {
			bytes += st.Blocks * 512
		} else {
			bytes += info.Size()
		}
		return nil
	})
	return bytes, inodes, err
}

func roundMiB(n int64) int64 { return (n + mib - 1) / mib * mib }

// cmdlineFor returns the tree's cmdline.txt with root= pointing at
// partition 2, or Raspberry Pi OS's default one.
func cmdlineFor(path, rootPartUUID string) (string, error) {
	root := "root=PARTUUID=" + rootPartUUID
	b, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return "console=serial0,115200 console=tty1 " + root + " rootfstype=ext4 fsck.repair=yes rootwait\n", nil
	}
	if err != nil {
		return "", err
	}
	fields := strings.Fields(string(b))
	found := false
	for i, f := range fields {
		if strings.HasPrefix(f, "root=") {
			fields[i], found = root, true
		}
	}
	if !found {
		fields = append(fields, root)
	}
	return strings.Join(fields, " ") + "\n", nil
}

// rmCommands appends debugfs commands removing everything below dir (a
// host path), whose place in the image is at, deepest first.
func rmCommands(dir, at string, cmds *[]string) error {
	ents, err := os.ReadDir(dir)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, e := range ents {
		p := at + "/" + e.Name()
		if e.IsDir() {
			if err := rmCommands(filepath.Join(dir, e.Name()), p, cmds); err != nil {
				return err
			}
			*cmds = append(*cmds, "rmdir "+quote(p))
			continue
		}
		*cmds = append(*cmds, "rm "+quote(p))
	}
	return nil
}

// quote makes a path one debugfs argument.
func quote(p string) string { return `"` + strings.ReplaceAll(p, `"`, `\"`) + `"` }

// debugfs runs the commands on img; debugfs exits 0 even when a command
// fails, so its output is checked for the errors it prints.
func debugfs(work, img string, cmds []string) error {
	script := filepath.Join(work, "debugfs.cmds")
	if err := os.WriteFile(script, []byte(strings.Join(cmds, "\n")+"\n"), 0o644); err != nil {
		return fmt.Errorf("sdtest: %v", err)
	}
	cmd := exec.Command("debugfs", "-w", "-f", script, img)
	b, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("sdtest: %v: %v: %s", cmd.Args, err, bytes.TrimSpace(b))
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "debugfs ") || strings.HasPrefix(l, "debugfs:") || strings.HasPrefix(l, "Allocated inode:") || strings.TrimSpace(l) == "" {
			continue
		}
		return fmt.Errorf("sdtest: %v: %s", cmd.Args, strings.TrimSpace(l))
	}
	return nil
}

func run(env []string, name string, args ...string) error { return runExit(env, 0, name, args...) }

// runExit runs a tool, accepting exit codes up to ok (e2fsck exits 1 when
// it changed the filesystem, as -D always does).
func runExit(env []string, ok int, name string, args ...string) error {
	cmd := exec.Command(name, args...)
	cmd.Env = env
	b, err := cmd.CombinedOutput()
	if ee, isExit := err.(*exec.ExitError); isExit && ee.ExitCode() <= ok {
		return nil
	}
	if err != nil {
		return fmt.Errorf("sdtest: %v: %v: %s", cmd.Args, err, bytes.TrimSpace(b))
	}
	return nil
}
