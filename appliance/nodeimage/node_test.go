package nodeimage

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/ociboot/ociboot/appliance/testenv"
)

// The node image's own programs (node/) run here, on this machine's
// util-linux, e2fsprogs, dosfstools and rsync against loop devices, in a
// mount namespace of their own: the same scripts the image's units run,
// with the kernel command line, the source root and the mount base moved
// by their OCIBOOT_* variables. The e2e tests run them on the node OS.

// nodeScript writes node/<name> to a temporary file and returns its path.
func nodeScript(t *testing.T, name string) string {
	t.Helper()
	b, err := hookFiles.ReadFile("node/" + name)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, b, 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func needScriptTools(t *testing.T) {
	t.Helper()
	testenv.NeedRoot(t, "loop devices, mkfs and mounts")
	for tool, pkg := range map[string]string{
		"losetup": "util-linux", "unshare": "util-linux", "sfdisk": "fdisk", "mkfs.ext4": "e2fsprogs",
		"debugfs": "e2fsprogs", "mkfs.vfat": "dosfstools", "mcopy": "mtools", "rsync": "rsync", "curl": "curl",
	} {
		testenv.NeedTool(t, tool, pkg)
	}
}

// loopDisk makes a sparse file of size bytes attached to a loop device
// (with partition scanning), detached at the end of the test.
func loopDisk(t *testing.T, size int64) (file, dev string) {
	t.Helper()
	file = filepath.Join(t.TempDir(), "disk.img")
	f, err := os.Create(file)
	if err != nil {
		t.Fatal(err)
	}
	f.Truncate(size)
	f.Close()
	out, err := exec.Command("losetup", "-f", "-P", "--show", file).CombinedOutput()
	if err != nil {
		t.Fatalf("losetup: %v %s", err, out)
	}
	dev = strings.TrimSpace(string(out))
	t.Cleanup(func() { exec.Command("losetup", "-d", dev).Run() })
	return file, dev
}

// runScript runs a node script in a mount namespace of its own, with
// cmdline as /proc/cmdline, then the shell command after (in the same
// namespace, so it sees the mounts).
func runScript(t *testing.T, script, cmdline string, env []string, after string) (string, error) {
	t.Helper()
	cl := filepath.Join(t.TempDir(), "cmdline")
	os.WriteFile(cl, []byte(cmdline+"\n"), 0o644)
	sh := `"$0" "$@" && ` + after
	if after == "" {
		sh = `"$0" "$@"`
	}
	cmd := exec.Command("unshare", "-m", "--propagation", "private", "bash", "-c", sh, script)
	cmd.Env = append(append(os.Environ(), "OCIBOOT_CMDLINE="+cl), env...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// reports is an install report endpoint as nbdd's, recording what came.
type reports struct {
	mu  sync.Mutex
	got []map[string]any
}

func (r *reports) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	var m map[string]any
	if req.Method != http.MethodPost || req.URL.Path != "/install" || json.NewDecoder(req.Body).Decode(&m) != nil {
		http.Error(w, "bad report", http.StatusBadRequest)
		return
	}
	r.mu.Lock()
	r.got = append(r.got, m)
	r.mu.Unlock()
	w.Write([]byte("recorded\n"))
}

func (r *reports) all() []map[string]any {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]map[string]any(nil), r.got...)
}

// sourceRoot is a small node root: boot files, raspi-firmware's default
// file, an fstab of the NFS root, a hard link and a symlink.
func sourceRoot(t *testing.T) string {
	t.Helper()
	src := t.TempDir()
	files := map[string]string{
		"boot/firmware/config.txt":     "kernel=vmlinuz-6.12.0\ninitramfs initrd.img-6.12.0 followkernel\n",
		"boot/firmware/cmdline.txt":    "console=serial0,115200 root=/dev/nfs\n",
		"boot/firmware/vmlinuz-6.12.0": "kernel",
		"etc/default/raspi-firmware":   "CONSOLES=\"serial0,115200 tty1\"\nROOTPART=/dev/nfs\n",
		"etc/fstab":                    "# NFS root\n",
		"etc/hostname":                 "n1\n",
		"usr/bin/tool":                 "#!/bin/sh\n",
	}
	for name, body := range files {
		p := filepath.Join(src, name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	os.Link(filepath.Join(src, "usr/bin/tool"), filepath.Join(src, "usr/bin/tool2"))
	os.Symlink("tool", filepath.Join(src, "usr/bin/tool3"))
	return src
}

func TestInstallScript(t *testing.T) {
	needScriptTools(t)
	script := nodeScript(t, "ociboot-install")
	rep := &reports{}
	srv := httptest.NewServer(rep)
	defer srv.Close()
	src := sourceRoot(t)
	file, dev := loopDisk(t, 1536<<20)
	cmdline := "console=ttyAMA0 panic=-1 root=/dev/nfs nfsroot=10.0.0.1:/nodes/abcd1234,vers=3 ip=dhcp rw ociboot.disk=nbd://10.0.0.1:10809/abcd1234 ociboot.install=" + dev + " ociboot.report=" + srv.URL + "/install"
	env := []string{"OCIBOOT_INSTALL_SOURCE=" + src + "/", "OCIBOOT_INSTALL_WORK=" + t.TempDir(), "OCIBOOT_INSTALL_ANY=1"}
	out, err := runScript(t, script, cmdline, env, "")
	if err != nil {
		t.Fatalf("ociboot-install: %v\n%s", err, out)
	}
	got := rep.all()
	if len(got) != 1 || got[0]["OK"] != true || got[0]["Device"] != dev {
		t.Fatalf("reports %v, want one OK report for %s\n%s", got, dev, out)
	}

	// An SD card's layout: a bootable FAT partition, then Linux.
	var pt struct {
		PartitionTable struct {
			Label, ID  string
			Partitions []struct {
				Start, Size int64
				Type        string
				Bootable    bool
			}
		}
	}
	b, err := exec.Command("sfdisk", "-J", file).Output()
	if err != nil || json.Unmarshal(b, &pt) != nil {
		t.Fatalf("sfdisk -J: %v %s", err, b)
	}
	parts := pt.PartitionTable.Partitions
	if pt.PartitionTable.Label != "dos" || len(parts) != 2 || parts[0].Type != "c" || !parts[0].Bootable || parts[1].Type != "83" {
		t.Fatalf("partition table %+v, want dos with a bootable FAT32 (c) and a Linux (83) partition", pt.PartitionTable)
	}
	// As on a Raspberry Pi OS card: 512 MiB of boot at 4 MiB, the root
	// after it to the end of the disk.
	if got, want := parts[0].Start, int64(8192); got != want {
		t.Errorf("boot partition starts at sector %d, want %d", got, want)
	}
	if got, want := parts[1].Start, parts[0].Start+parts[0].Size; got != want {
		t.Errorf("root partition starts at sector %d, want %d (after the boot partition)", got, want)
	}
	if got, want := (parts[1].Start+parts[1].Size)*512, int64(1536<<20); got != want {
		t.Errorf("root partition ends at byte %d, want the disk's end %d", got, want)
	}
	id := strings.TrimPrefix(pt.PartitionTable.ID, "0x")

	// The boot partition: the firmware's files and a cmdline.txt for the
	// local root, keeping this boot's console and dropping the netboot.
	fat := file + "@@" + itoa(parts[0].Start*512)
	if got := mtoolsCat(t, fat, "config.txt"); !strings.Contains(got, "initramfs initrd.img-6.12.0 followkernel") {
		t.Errorf("config.txt on the boot partition: %q", got)
	}
	cl := mtoolsCat(t, fat, "cmdline.txt")
	for _, want := range []string{"console=ttyAMA0", "panic=-1", "root=PARTUUID=" + id + "-02", "rootfstype=ext4", "rootwait"} {
		if !strings.Contains(cl, want) {
			t.Errorf("cmdline.txt %q lacks %q", cl, want)
		}
	}
	for _, bad := range []string{"nfsroot=", "ip=", "ociboot.", "root=/dev/nfs", " rw"} {
		if strings.Contains(cl, bad) {
			t.Errorf("cmdline.txt %q still has %q", cl, bad)
		}
	}

	// The root partition: the source's files, its hard link, an fstab of
	// the local partitions, raspi-firmware told the new root.
	root := filepath.Join(t.TempDir(), "root.img")
	run(t, "dd", "if="+file, "of="+root, "bs=512", "skip="+itoa(parts[1].Start), "count="+itoa(parts[1].Size), "status=none")
	if got := debugfsCat(t, root, "/etc/hostname"); got != "n1\n" {
		t.Errorf("/etc/hostname on the root: %q", got)
	}
	fstab := debugfsCat(t, root, "/etc/fstab")
	for _, want := range []string{"PARTUUID=" + id + "-02  /  ", "PARTUUID=" + id + "-01  /boot/firmware  vfat"} {
		if !strings.Contains(fstab, want) {
			t.Errorf("fstab %q lacks %q", fstab, want)
		}
	}
	if got := debugfsCat(t, root, "/etc/default/raspi-firmware"); !strings.Contains(got, "ROOTPART=PARTUUID="+id+"-02") {
		t.Errorf("raspi-firmware default: %q", got)
	}
	if stat := run(t, "debugfs", "-R", "stat /usr/bin/tool2", root); !strings.Contains(stat, "Links: 2") {
		t.Errorf("/usr/bin/tool2 lost its hard link:\n%s", stat)
	}
	if ls := run(t, "debugfs", "-R", "ls -l /boot/firmware", root); strings.Contains(ls, "config.txt") {
		t.Errorf("the boot files are in the root's /boot/firmware, not only on the boot partition:\n%s", ls)
	}
}

// TestInstallScriptFails: a disk too small for the root is reported as a
// failure with the reason, and nothing is written to it.
func TestInstallScriptFails(t *testing.T) {
	needScriptTools(t)
	script := nodeScript(t, "ociboot-install")
	rep := &reports{}
	srv := httptest.NewServer(rep)
	defer srv.Close()
	file, dev := loopDisk(t, 256<<20)
	cmdline := "root=/dev/nfs ociboot.install=" + dev + " ociboot.report=" + srv.URL + "/install"
	env := []string{"OCIBOOT_INSTALL_SOURCE=" + sourceRoot(t) + "/", "OCIBOOT_INSTALL_WORK=" + t.TempDir(), "OCIBOOT_INSTALL_ANY=1"}
	out, err := runScript(t, script, cmdline, env, "")
	if err == nil {
		t.Fatalf("ociboot-install on a 256 MiB disk succeeded:\n%s", out)
	}
	got := rep.all()
	if len(got) != 1 || got[0]["OK"] != false || !strings.Contains(got[0]["Error"].(string), "use a larger disk") {
		t.Fatalf("reports %v, want one failed report saying to use a larger disk\n%s", got, out)
	}
	if b, _ := exec.Command("blkid", "-p", file).CombinedOutput(); len(strings.TrimSpace(string(b))) != 0 {
		t.Errorf("the disk was written although the install was refused: blkid %s", b)
	}

}

func TestDiskScript(t *testing.T) {
	needScriptTools(t)
	script := nodeScript(t, "ociboot-disk")
	_, dev := loopDisk(t, 256<<20)
	dir := t.TempDir()
	paths := filepath.Join(dir, "var/lib/containerd") + "," + filepath.Join(dir, "var/lib/rancher")
	env := []string{"OCIBOOT_DISK_BASE=" + filepath.Join(dir, "base")}

	// A blank disk of the node's own is formatted only when told.
	out, err := runScript(t, script, "ociboot.disk="+dev+" ociboot.mount="+paths, env, "")
	if err == nil || !strings.Contains(out, "holds no file system") || !strings.Contains(out, `"Format": true`) {
		t.Fatalf("a blank device without ociboot.format=1: %v\n%s\nwant a failure saying to set Format", err, out)
	}
	if b, _ := exec.Command("blkid", "-p", dev).CombinedOutput(); len(strings.TrimSpace(string(b))) != 0 {
		t.Fatalf("the blank device was written: %s", b)
	}

	// With ociboot.format=1: one ext4, each path a directory on it.
	ctrd := filepath.Join(dir, "var/lib/containerd")
	check := fmt.Sprintf("findmnt -n -o FSTYPE,SOURCE --target %[1]q && echo kept >%[1]q/state && %[2]q stop && ! mountpoint -q %[1]q", ctrd, script)
	out, err = runScript(t, script, "ociboot.disk="+dev+" ociboot.format=1 ociboot.mount="+paths, env, check)
	if err != nil || !strings.Contains(out, "ext4") || !strings.Contains(out, dev) {
		t.Fatalf("ociboot-disk with format: %v\n%s", err, out)
	}
	if got := run(t, "blkid", "-p", "-o", "value", "-s", "LABEL", dev); strings.TrimSpace(got) != "ociboot-disk" {
		t.Errorf("label %q, want ociboot-disk", got)
	}

	// The next boot finds the file system and what was written on it.
	out, err = runScript(t, script, "ociboot.disk=LABEL=ociboot-disk ociboot.format=1 ociboot.mount="+paths, env,
		"cat "+filepath.Join(ctrd, "state"))
	if err != nil || !strings.HasSuffix(strings.TrimSpace(out), "kept") {
		t.Fatalf("second attach by label: %v\n%s\nwant the file written before", err, out)
	}

	// Without ociboot.disk= the unit does nothing and succeeds.
	if out, err := runScript(t, script, "root=/dev/nfs", env, ""); err != nil || !strings.Contains(out, "no disk for containers") {
		t.Errorf("no ociboot.disk=: %v %s", err, out)
	}
	// A relative mount path is refused before anything is touched.
	if out, err := runScript(t, script, "ociboot.disk="+dev+" ociboot.mount=var/lib/x", env, ""); err == nil || !strings.Contains(out, "not an absolute path") {
		t.Errorf("relative ociboot.mount: %v %s", err, out)
	}
}

func mtoolsCat(t *testing.T, img, name string) string {
	t.Helper()
	return run(t, "mtype", "-i", img, "::"+name)
}

func debugfsCat(t *testing.T, img, name string) string {
	t.Helper()
	return run(t, "debugfs", "-R", "cat "+name, img)
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).Output()
	if err != nil {
		t.Fatalf("%s %v: %v", name, args, err)
	}
	return string(out)
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }
