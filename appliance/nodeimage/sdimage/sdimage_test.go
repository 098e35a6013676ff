package sdimage_test

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/ociboot/ociboot/appliance/nodeimage/sdimage"
	"github.com/ociboot/ociboot/appliance/nodeimage/sdimage/sdtest"
	"golang.org/x/sys/unix"
)

// capNetRaw is a VFS_CAP_REVISION_2 security.capability granting
// cap_net_raw (bit 13) effective and permitted, as setcap writes it.
var capNetRaw = string([]byte{0x01, 0x00, 0x00, 0x02, 0x00, 0x20, 0x00, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0})

// aclXattr is a system.posix_acl_access value in the getxattr(2) format:
// user::rw- user:1000:r-- group::r-- mask::r-- other::---.
func aclXattr() string {
	b := binary.LittleEndian.AppendUint32(nil, 2)
	for _, e := range []struct {
		tag, perm uint16
		id        uint32
	}{{1, 6, 0xFFFFFFFF}, {2, 4, 1000}, {4, 4, 0xFFFFFFFF}, {0x10, 4, 0xFFFFFFFF}, {0x20, 0, 0xFFFFFFFF}} {
		b = binary.LittleEndian.AppendUint16(b, e.tag)
		b = binary.LittleEndian.AppendUint16(b, e.perm)
		b = binary.LittleEndian.AppendUint32(b, e.id)
	}
	return string(b)
}

// buildTree makes a root tree with the entries an importer gets wrong.
func buildTree(t *testing.T, dir string) {
	t.Helper()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	file := func(rel string, data []byte, mode os.FileMode, uid, gid int) {
		t.Helper()
		p := filepath.Join(dir, rel)
		must(os.MkdirAll(filepath.Dir(p), 0o755))
		must(os.WriteFile(p, data, 0o600))
		must(os.Lchown(p, uid, gid))
		must(os.Chmod(p, mode)) // after chown, which clears setuid
	}
	mkdir := func(rel string, mode os.FileMode) {
		t.Helper()
		p := filepath.Join(dir, rel)
		must(os.MkdirAll(p, 0o755))
		must(os.Chmod(p, mode))
	}
	rnd := make([]byte, 3<<20+123)
	for i := range rnd {
		rnd[i] = byte(i*7 + i>>9)
	}
	file("etc/passwd", []byte("root:x:0:0:root:/root:/bin/sh\n"), 0o644, 0, 0)
	file("etc/shadow", []byte("root:*:1::::::\n"), 0o640, 0, 42)
	file("etc/fstab", []byte("/dev/mmcblk0p2 / ext4 defaults 0 1\n"), 0o644, 0, 0)
	file("usr/bin/su", []byte("#!su\n"), 0o4755|os.ModeSetuid, 0, 0)
	file("usr/bin/wall", []byte("#!wall\n"), 0o2755|os.ModeSetgid, 0, 5)
	file("usr/bin/ping", []byte("#!ping\n"), 0o755, 0, 0)
	must(unix.Lsetxattr(filepath.Join(dir, "usr/bin/ping"), "security.capability", []byte(capNetRaw), 0))
	file("home/pi/notes", []byte("mine\n"), 0o600, 1000, 1000)
	must(unix.Lsetxattr(filepath.Join(dir, "home/pi/notes"), "user.comment", []byte("kept"), 0))
	must(unix.Lsetxattr(filepath.Join(dir, "home/pi/notes"), "trusted.overlay.opaque", []byte("y"), 0))
	must(unix.Lsetxattr(filepath.Join(dir, "home/pi/notes"), "system.posix_acl_access", []byte(aclXattr()), 0))
	must(os.Lchown(filepath.Join(dir, "home/pi"), 1000, 1000))
	file("usr/share/blob", rnd, 0o644, 0, 0)
	file("usr/lib/a", []byte("linked\n"), 0o644, 0, 0)
	must(os.MkdirAll(filepath.Join(dir, "usr/lib/x"), 0o755))
	must(os.Link(filepath.Join(dir, "usr/lib/a"), filepath.Join(dir, "usr/lib/x/b")))
	must(os.Link(filepath.Join(dir, "usr/lib/a"), filepath.Join(dir, "etc/c")))
	must(os.Symlink("../usr/bin/su", filepath.Join(dir, "etc/short-link")))
	long := strings.Repeat("long-target-component/", 8) + "end"
	must(os.Symlink(long, filepath.Join(dir, "etc/long-link")))
	must(os.Lchown(filepath.Join(dir, "etc/long-link"), 1000, 1000))
	must(os.MkdirAll(filepath.Join(dir, "dev"), 0o755))
	must(unix.Mknod(filepath.Join(dir, "dev/null"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))))
	must(unix.Mknod(filepath.Join(dir, "dev/sda1"), unix.S_IFBLK|0o660, int(unix.Mkdev(8, 1))))
	must(unix.Mknod(filepath.Join(dir, "dev/big"), unix.S_IFCHR|0o600, int(unix.Mkdev(259, 300000))))
	must(unix.Mkfifo(filepath.Join(dir, "dev/initctl"), 0o600))
	mkdir("tmp", 0o1777)
	mkdir("srv/shared", 0o2775)
	mkdir("empty", 0o700)
	file("etc/empty-file", nil, 0o644, 0, 0)
	file(strings.Repeat("n", 255), []byte("long name\n"), 0o644, 0, 0)
	deep := "deep"
	for i := 0; i < 40; i++ {
		deep += fmt.Sprintf("/d%02d", i)
	}
	file(deep+"/leaf", []byte("deep\n"), 0o644, 0, 0)
	// A 64 MiB file with three written regions: the rest is holes.
	sp, err := os.Create(filepath.Join(dir, "var/lib/sparse"))
	if os.IsNotExist(err) {
		must(os.MkdirAll(filepath.Join(dir, "var/lib"), 0o755))
		sp, err = os.Create(filepath.Join(dir, "var/lib/sparse"))
	}
	must(err)
	for _, off := range []int64{0, 10<<20 + 5, 64<<20 - 4096} {
		_, err := sp.WriteAt([]byte("data at "+fmt.Sprint(off)), off)
		must(err)
	}
	must(sp.Truncate(64 << 20))
	must(sp.Close())
	// More entries than fit a 4 KiB block: an htree directory.
	mkdir("usr/share/many", 0o755)
	for i := 0; i < 1500; i++ {
		must(os.WriteFile(filepath.Join(dir, "usr/share/many", fmt.Sprintf("entry-with-a-longish-name-%04d", i)), []byte{byte(i)}, 0o644))
	}
	// The boot partition.
	file("boot/firmware/config.txt", []byte("arm_64bit=1\n"), 0o644, 0, 0)
	file("boot/firmware/cmdline.txt", []byte("console=tty1 root=/dev/mmcblk0p2 rootwait\n"), 0o644, 0, 0)
	file("boot/firmware/START4.ELF", rnd[:1<<20+1], 0o644, 0, 0)
	file("boot/firmware/overlays/Some-Long_Mixed.Case-Name.dtbo", []byte("dtbo"), 0o644, 0, 0)
	file("boot/firmware/overlays/README", []byte("readme"), 0o644, 0, 0)
	mkdir("boot/firmware/empty", 0o755)

	// Times last, with nanoseconds, children before parents.
	base := time.Date(2024, 3, 15, 10, 20, 30, 123456789, time.UTC)
	var paths []string
	must(filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		paths = append(paths, p)
		return err
	}))
	for i := len(paths) - 1; i >= 0; i-- {
		ts := []unix.Timespec{unix.NsecToTimespec(base.UnixNano()), unix.NsecToTimespec(base.Add(time.Duration(i) * time.Second).UnixNano())}
		must(unix.UtimesNanoAt(unix.AT_FDCWD, paths[i], ts, unix.AT_SYMLINK_NOFOLLOW))
	}
}

// entry is what the tar should say about one path.
type entry struct {
	typ     byte
	mode    int64
	uid     int
	gid     int
	mtime   time.Time
	size    int64
	sum     [32]byte
	link    string // symlink target
	major   int64
	minor   int64
	xattrs  map[string]string
	hardkey string // host dev:ino, or the tar group's first name
}

func (e entry) String() string {
	return fmt.Sprintf("type %c mode %#o %d:%d mtime %v size %d sum %x link %q dev %d:%d xattrs %q",
		e.typ, e.mode, e.uid, e.gid, e.mtime.Format(time.RFC3339Nano), e.size, e.sum[:4], e.link, e.major, e.minor, e.xattrs)
}

// hostTree reads what the tar should hold for the tree at dir; boot is
// read as the FAT partition shows it (root-owned, no xattrs, 2-second
// times) and fstab and cmdline.txt are left for the caller.
func hostTree(t *testing.T, dir string) map[string]entry {
	t.Helper()
	out := map[string]entry{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		e := entry{mode: int64(st.Mode & 0o7777), uid: int(st.Uid), gid: int(st.Gid),
			mtime: time.Unix(st.Mtim.Unix()).UTC(), xattrs: map[string]string{}}
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFDIR:
			e.typ = tar.TypeDir
		case unix.S_IFREG:
			e.typ = tar.TypeReg
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			e.size, e.sum = int64(len(b)), sha256.Sum256(b)
			if st.Nlink > 1 {
				e.hardkey = fmt.Sprintf("%d:%d", st.Dev, st.Ino)
			}
		case unix.S_IFLNK:
			e.typ = tar.TypeSymlink
			e.link, _ = os.Readlink(p)
		case unix.S_IFCHR, unix.S_IFBLK:
			e.typ = tar.TypeChar
			if st.Mode&unix.S_IFMT == unix.S_IFBLK {
				e.typ = tar.TypeBlock
			}
			e.major, e.minor = int64(unix.Major(uint64(st.Rdev))), int64(unix.Minor(uint64(st.Rdev)))
		case unix.S_IFIFO:
			e.typ = tar.TypeFifo
		}
		sz, _ := unix.Llistxattr(p, nil)
		if sz > 0 {
			names := make([]byte, sz)
			sz, _ = unix.Llistxattr(p, names)
			for _, n := range strings.Split(strings.TrimRight(string(names[:sz]), "\x00"), "\x00") {
				v := make([]byte, 65536)
				k, err := unix.Lgetxattr(p, n, v)
				if err != nil {
					return err
				}
				e.xattrs[n] = string(v[:k])
			}
		}
		name := rel
		if rel == "." {
			name = "./"
		} else if e.typ == tar.TypeDir {
			name += "/"
		}
		// mkfs.ext4 -d (e2fsprogs 1.47) keeps whole seconds only.
		e.mtime = e.mtime.Truncate(time.Second)
		if strings.HasPrefix(rel, "boot/firmware/") {
			e.uid, e.gid, e.xattrs, e.hardkey = 0, 0, map[string]string{}, ""
			e.mode = 0o644
			if e.typ == tar.TypeDir {
				e.mode = 0o755
			}
			e.mtime = e.mtime.Truncate(2 * time.Second)
		}
		out[name] = e
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// readTar reads the stream, checks the order is depth first by name, and
// returns the entries with hard links resolved to their group.
func readTar(t *testing.T, r io.Reader) (map[string]entry, []string) {
	t.Helper()
	tr := tar.NewReader(r)
	out := map[string]entry{}
	var order []string
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Format != tar.FormatPAX && len(h.PAXRecords) > 0 {
			t.Errorf("%s: format %v, want PAX", h.Name, h.Format)
		}
		e := entry{typ: h.Typeflag, mode: h.Mode, uid: h.Uid, gid: h.Gid, mtime: h.ModTime.UTC(), link: h.Linkname,
			major: h.Devmajor, minor: h.Devminor, xattrs: map[string]string{}}
		for k, v := range h.PAXRecords {
			if n, ok := strings.CutPrefix(k, "SCHILY.xattr."); ok {
				e.xattrs[n] = v
			}
		}
		switch h.Typeflag {
		case tar.TypeReg:
			b, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}
			e.size, e.sum = int64(len(b)), sha256.Sum256(b)
		case tar.TypeLink:
			first, ok := out[h.Linkname]
			if !ok {
				t.Fatalf("%s: hard link to %q, which is not earlier in the stream", h.Name, h.Linkname)
			}
			out[h.Linkname] = withKey(first, h.Linkname)
			e = withKey(first, h.Linkname)
		}
		if _, dup := out[h.Name]; dup {
			t.Errorf("%s twice in the stream", h.Name)
		}
		out[h.Name] = e
		order = append(order, h.Name)
	}
	return out, order
}

func withKey(e entry, k string) entry { e.hardkey = k; return e }

func TestRoundTrip(t *testing.T) {
	sdtest.Need(t, true)
	dir := t.TempDir()
	tree := filepath.Join(dir, "tree")
	buildTree(t, tree)
	img := filepath.Join(dir, "sd.img")
	start := time.Now()
	if err := (sdtest.Options{DiskID: 0x1234abcd}).Build(tree, img); err != nil {
		t.Fatal(err)
	}
	t.Logf("built image in %v", time.Since(start))
	var buf bytes.Buffer
	start = time.Now()
	if err := sdimage.WriteTar(context.Background(), img, &buf); err != nil {
		t.Fatal(err)
	}
	t.Logf("read image in %v: %d bytes of tar", time.Since(start), buf.Len())
	if f := inodeFlags(t, img, "/usr/share/many"); f&0x1000 == 0 {
		t.Errorf("usr/share/many: inode flags %#x lack EXT4_INDEX_FL: the fixture has no htree directory", f)
	}
	if f := inodeFlags(t, img, "/usr/share/blob"); f&0x80000 == 0 {
		t.Errorf("usr/share/blob: inode flags %#x lack EXT4_EXTENTS_FL", f)
	}
	raw := buf.Bytes()
	got, order := readTar(t, bytes.NewReader(raw))
	want := hostTree(t, tree)
	// mkfs.ext4 adds lost+found; it and the fixture's edits to etc and
	// boot/firmware touch these directories' mtimes.
	if g, ok := got["lost+found/"]; !ok || g.typ != tar.TypeDir || g.mode != 0o700 {
		t.Errorf("lost+found/: got %v", g)
	}
	delete(got, "lost+found/")
	for _, n := range []string{"./", "etc/", "boot/firmware/"} {
		w := want[n]
		w.mtime = got[n].mtime
		want[n] = w
	}
	compareTrees(t, got, want)

	// The fixture's own files.
	fstab := "proc            /proc           proc    defaults          0       0\n" +
		"PARTUUID=1234abcd-01  /boot/firmware  vfat    defaults          0       2\n" +
		"PARTUUID=1234abcd-02  /               ext4    defaults,noatime  0       1\n"
	if g, w := got["etc/fstab"].sum, sha256.Sum256([]byte(fstab)); g != w {
		t.Errorf("etc/fstab: not the PARTUUID fstab")
	}
	if g, w := got["boot/firmware/cmdline.txt"].sum, sha256.Sum256([]byte("console=tty1 root=PARTUUID=1234abcd-02 rootwait\n")); g != w {
		t.Errorf("boot/firmware/cmdline.txt: root= not rewritten")
	}

	// Depth-first, sorted by name, "./" first.
	if len(order) == 0 || order[0] != "./" {
		t.Fatalf("first entry %q, want ./", order[:1])
	}
	for i := 2; i < len(order); i++ {
		a, b := strings.TrimSuffix(order[i-1], "/"), strings.TrimSuffix(order[i], "/")
		if !pathLess(a, b) {
			t.Errorf("order: %q before %q", order[i-1], order[i])
		}
	}

	// Deterministic.
	var again bytes.Buffer
	if err := sdimage.WriteTar(context.Background(), img, &again); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(raw, again.Bytes()) {
		t.Errorf("two reads of the same image gave different streams")
	}
}

// pathLess orders paths as a depth-first walk with sorted names does.
func pathLess(a, b string) bool {
	as, bs := strings.Split(a, "/"), strings.Split(b, "/")
	for i := 0; i < len(as) && i < len(bs); i++ {
		if as[i] != bs[i] {
			return as[i] < bs[i]
		}
	}
	return len(as) < len(bs)
}

func compareTrees(t *testing.T, got, want map[string]entry) {
	t.Helper()
	// Hard-link groups: host dev:ino ↔ tar first name, one to one.
	groups := map[string]string{}
	var names []string
	for n := range want {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		w := want[n]
		if n == "etc/fstab" || n == "boot/firmware/cmdline.txt" {
			continue
		}
		g, ok := got[n]
		if !ok {
			t.Errorf("%s: missing from the tar", n)
			continue
		}
		if w.hardkey != "" || g.hardkey != "" {
			if w.hardkey == "" || g.hardkey == "" {
				t.Errorf("%s: hard link key got %q, want %q", n, g.hardkey, w.hardkey)
			} else if prev, seen := groups[w.hardkey]; seen && prev != g.hardkey {
				t.Errorf("%s: in hard-link group %q, want %q", n, g.hardkey, prev)
			} else {
				groups[w.hardkey] = g.hardkey
			}
		}
		g.hardkey, w.hardkey = "", ""
		if g.String() != w.String() {
			t.Errorf("%s:\n got %v\nwant %v", n, g, w)
		}
	}
	for n := range got {
		if _, ok := want[n]; !ok {
			t.Errorf("%s: in the tar, not in the tree", n)
		}
	}
}

func TestMountPointMadeWhenMissing(t *testing.T) {
	sdtest.Need(t, false)
	dir := t.TempDir()
	tree := filepath.Join(dir, "tree")
	if err := os.MkdirAll(filepath.Join(tree, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(dir, "sd.img")
	if err := sdtest.Build(tree, img); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := sdimage.WriteTar(context.Background(), img, &buf); err != nil {
		t.Fatal(err)
	}
	got, _ := readTar(t, &buf)
	for _, n := range []string{"./", "boot/", "boot/firmware/", "boot/firmware/cmdline.txt", "etc/fstab"} {
		if _, ok := got[n]; !ok {
			t.Errorf("%s missing", n)
		}
	}
}

// TestExt4Variants reads root filesystems made with other ext4 feature
// sets: inline data, ext3-style block maps (with double indirect blocks),
// 32-bit group descriptors, no checksums, no htree.
func TestExt4Variants(t *testing.T) {
	sdtest.Need(t, false)
	for _, tc := range []struct {
		name  string
		opts  sdtest.Options
		flags map[string]uint32 // inode flags the fixture must have
	}{
		{"inline_data", sdtest.Options{Ext4Features: "inline_data"}, map[string]uint32{"/small/f05": 0x10000000, "/small/f12": 0x10000000, "/tiny": 0x10000000}},
		{"block maps", sdtest.Options{Ext4Features: "^extent,^64bit,^flex_bg"}, map[string]uint32{}},
		{"no checksums or htree", sdtest.Options{Ext4Features: "^metadata_csum,^dir_index,^huge_file"}, map[string]uint32{"/big": 0x80000}},
		// 1 KiB blocks: 16 descriptors a block, so 40 groups span three
		// meta block groups.
		{"meta_bg", sdtest.Options{Ext4Features: "meta_bg,^resize_inode", Ext4BlockSize: 1024, MinRootSize: 320 << 20}, map[string]uint32{}},
		{"bigalloc", sdtest.Options{Ext4Features: "bigalloc", Ext4ClusterSize: 65536, MinRootSize: 128 << 20}, map[string]uint32{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			tree := filepath.Join(dir, "tree")
			write := func(rel string, data []byte) {
				p := filepath.Join(tree, rel)
				if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(p, data, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			for i := 0; i < 20; i++ {
				n := fmt.Sprintf("small/f%02d", i)
				write(n, []byte(strings.Repeat("x", i*7)))
				if err := unix.Lsetxattr(filepath.Join(tree, n), "user.i", []byte{byte(i)}, 0); err != nil {
					t.Fatal(err)
				}
			}
			write("tiny/a", []byte("a"))
			write("tiny/bb", []byte("bb"))
			big := make([]byte, 6<<20+17)
			for i := range big {
				big[i] = byte(i>>12 + i)
			}
			write("big", big)
			for i := 0; i < 300; i++ {
				write(fmt.Sprintf("wide/%s-%03d", strings.Repeat("w", 40), i), nil)
			}
			if err := os.Symlink(strings.Repeat("t", 200), filepath.Join(tree, "slow-link")); err != nil {
				t.Fatal(err)
			}
			img := filepath.Join(dir, "sd.img")
			if err := tc.opts.Build(tree, img); err != nil {
				t.Fatal(err)
			}
			for n, want := range tc.flags {
				if f := inodeFlags(t, img, n); f&want != want {
					t.Errorf("%s: inode flags %#x lack %#x", n, f, want)
				}
			}
			if f := inodeFlags(t, img, "/big"); f&0x80000 != 0 && strings.Contains(tc.opts.Ext4Features, "^extent") {
				t.Errorf("/big: inode flags %#x: extents despite ^extent", f)
			}
			var buf bytes.Buffer
			if err := sdimage.WriteTar(context.Background(), img, &buf); err != nil {
				t.Fatal(err)
			}
			got, _ := readTar(t, &buf)
			want := hostTree(t, tree)
			delete(got, "lost+found/")
			for _, n := range []string{"./", "etc/", "etc/fstab", "boot/", "boot/firmware/", "boot/firmware/cmdline.txt"} {
				delete(got, n)
				delete(want, n)
			}
			compareTrees(t, got, want)
		})
	}
}

// inodeFlags returns the ext4 inode flags of path in the image's root
// partition, as debugfs reads them: the test's proof that the fixture has
// the on-disk shape it is meant to exercise.
func inodeFlags(t *testing.T, img, path string) uint32 {
	t.Helper()
	f, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	mbr := make([]byte, 512)
	if _, err := f.ReadAt(mbr, 0); err != nil {
		t.Fatal(err)
	}
	e := mbr[446+16:]
	start, n := int64(binary.LittleEndian.Uint32(e[8:]))*512, int64(binary.LittleEndian.Uint32(e[12:]))*512
	part := filepath.Join(t.TempDir(), "root.img")
	out, err := os.Create(part)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, io.NewSectionReader(f, start, n)); err != nil {
		t.Fatal(err)
	}
	out.Close()
	b, err := exec.Command("debugfs", "-R", "stat "+path, part).Output()
	if err != nil {
		t.Fatalf("debugfs stat %s: %v", path, err)
	}
	var flags uint32
	for _, l := range strings.Split(string(b), "\n") {
		if i := strings.Index(l, "Flags: 0x"); i >= 0 {
			fmt.Sscanf(l[i+len("Flags: 0x"):], "%x", &flags)
			return flags
		}
	}
	t.Fatalf("debugfs stat %s: no Flags line in %s", path, b)
	return 0
}
