package unpack

import (
	"archive/tar"
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// tarOf builds a layer from headers; a header's Linkname doubles as content
// for regular files when body is given in the map.
type ent struct {
	hdr  tar.Header
	body string
}

func tarOf(t testing.TB, ents ...ent) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range ents {
		h := e.hdr
		if h.Typeflag == 0 {
			h.Typeflag = tar.TypeReg
		}
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(e.body))
		}
		if h.Mode == 0 {
			h.Mode = 0o644
			if h.Typeflag == tar.TypeDir {
				h.Mode = 0o755
			}
		}
		if h.ModTime.IsZero() {
			h.ModTime = time.Unix(1700000000, 0)
		}
		h.Format = tar.FormatPAX
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg {
			tw.Write([]byte(e.body))
		}
	}
	tw.Close()
	return buf.Bytes()
}

func dir(n string) ent        { return ent{hdr: tar.Header{Name: n, Typeflag: tar.TypeDir}} }
func file(n, body string) ent { return ent{hdr: tar.Header{Name: n}, body: body} }
func symlink(n, target string) ent {
	return ent{hdr: tar.Header{Name: n, Typeflag: tar.TypeSymlink, Linkname: target}}
}
func hardlink(n, target string) ent {
	return ent{hdr: tar.Header{Name: n, Typeflag: tar.TypeLink, Linkname: target}}
}

func unpackAll(t *testing.T, root string, layers ...[]byte) error {
	t.Helper()
	u, err := New(root, Options{MinFree: 1})
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range layers {
		if err := u.Apply(bytes.NewReader(l)); err != nil {
			u.Close()
			return err
		}
	}
	return u.Close()
}

func read(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestLayersWhiteoutsOpaque(t *testing.T) {
	root := t.TempDir()
	base := tarOf(t,
		dir("etc/"), file("etc/passwd", "root:x:0:0"), file("etc/gone", "x"),
		dir("var/"), dir("var/cache/"), file("var/cache/a", "a"), dir("var/cache/sub/"), file("var/cache/sub/b", "b"),
		file("bin/tool", "v1"), hardlink("bin/tool2", "bin/tool"), symlink("lib", "usr/lib"),
		dir("replace/"), file("replace/x", "x"),
	)
	top := tarOf(t,
		file("etc/.wh.gone", ""),
		dir("var/cache/"), file("var/cache/new", "n"), file("var/cache/.wh..wh..opq", ""),
		file("bin/tool", "v2"),
		file("replace", "now a file"),
		file("etc/.wh.never-existed", ""),
	)
	if err := unpackAll(t, root, base, top); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		path string
		want string // "" means must not exist
	}{
		{"etc/passwd", "root:x:0:0"},
		{"etc/gone", ""},
		{"var/cache/a", ""},
		{"var/cache/sub", ""},
		{"var/cache/new", "n"},
		{"bin/tool", "v2"},
		{"bin/tool2", "v1"}, // the link was to the old inode; replacing unlinks
		{"replace", "now a file"},
		{"etc/.wh.gone", ""},
		{"var/cache/.wh..wh..opq", ""},
	} {
		b, err := os.ReadFile(filepath.Join(root, tt.path))
		if tt.want == "" {
			if !errors.Is(err, os.ErrNotExist) {
				t.Errorf("%s: got %q, %v; want it gone", tt.path, b, err)
			}
			continue
		}
		if got := string(b); got != tt.want || err != nil {
			t.Errorf("%s: got %q, %v; want %q", tt.path, got, err, tt.want)
		}
	}
	if got, err := os.Readlink(filepath.Join(root, "lib")); got != "usr/lib" || err != nil {
		t.Errorf("symlink lib: got %q, %v", got, err)
	}
}

func TestHardlinkSharesInode(t *testing.T) {
	root := t.TempDir()
	if err := unpackAll(t, root, tarOf(t, file("a", "x"), hardlink("b", "a"), hardlink("./c", "./a"))); err != nil {
		t.Fatal(err)
	}
	var sa, sb, sc unix.Stat_t
	unix.Stat(filepath.Join(root, "a"), &sa)
	unix.Stat(filepath.Join(root, "b"), &sb)
	unix.Stat(filepath.Join(root, "c"), &sc)
	if sa.Ino != sb.Ino || sa.Ino != sc.Ino || sa.Nlink != 3 {
		t.Errorf("inodes a=%d b=%d c=%d nlink=%d; want one inode, 3 links", sa.Ino, sb.Ino, sc.Ino, sa.Nlink)
	}
}

func TestModesOwnersTimesDevices(t *testing.T) {
	root := t.TempDir()
	mt := time.Unix(1600000000, 123456789)
	ents := []ent{
		{hdr: tar.Header{Name: "tmp/", Typeflag: tar.TypeDir, Mode: 0o1777, ModTime: mt}},
		{hdr: tar.Header{Name: "usr/bin/su", Mode: 0o4755, Uid: 0, Gid: 0, ModTime: mt}, body: "su"},
		{hdr: tar.Header{Name: "usr/bin/wall", Mode: 0o2755, Uid: 0, Gid: 5, ModTime: mt}, body: "wall"},
		{hdr: tar.Header{Name: "home/u/f", Mode: 0o640, Uid: 1000, Gid: 1000, ModTime: mt,
			PAXRecords: map[string]string{"SCHILY.xattr.user.note": "hello"}}, body: "f"},
		{hdr: tar.Header{Name: "run/fifo", Typeflag: tar.TypeFifo, Mode: 0o600, ModTime: mt}},
		{hdr: tar.Header{Name: "dev/null", Typeflag: tar.TypeChar, Mode: 0o666, Devmajor: 1, Devminor: 3, ModTime: mt}},
		{hdr: tar.Header{Name: "link", Typeflag: tar.TypeSymlink, Linkname: "/nowhere", Uid: 1000, Gid: 1000, ModTime: mt}},
	}
	if err := unpackAll(t, root, tarOf(t, ents...)); err != nil {
		t.Fatal(err)
	}
	isRoot := os.Geteuid() == 0
	for _, tt := range []struct {
		path     string
		mode     uint32
		uid, gid uint32
	}{
		{"tmp", unix.S_IFDIR | 0o1777, 0, 0},
		{"usr/bin/su", unix.S_IFREG | 0o4755, 0, 0},
		{"usr/bin/wall", unix.S_IFREG | 0o2755, 0, 5},
		{"home/u/f", unix.S_IFREG | 0o640, 1000, 1000},
		{"run/fifo", unix.S_IFIFO | 0o600, 0, 0},
		{"dev/null", unix.S_IFCHR | 0o666, 0, 0},
		{"link", unix.S_IFLNK | 0o777, 1000, 1000},
	} {
		var st unix.Stat_t
		if err := unix.Lstat(filepath.Join(root, tt.path), &st); err != nil {
			if tt.path == "dev/null" && !isRoot {
				continue
			}
			t.Errorf("%s: %v", tt.path, err)
			continue
		}
		if got, want := st.Mode, tt.mode; got != want {
			t.Errorf("%s: mode got %o, want %o", tt.path, got, want)
		}
		if isRoot && (st.Uid != tt.uid || st.Gid != tt.gid) {
			t.Errorf("%s: owner got %d:%d, want %d:%d", tt.path, st.Uid, st.Gid, tt.uid, tt.gid)
		}
		if got, want := time.Unix(st.Mtim.Unix()), mt; !got.Equal(want) {
			t.Errorf("%s: mtime got %v, want %v", tt.path, got, want)
		}
	}
	var st unix.Stat_t
	unix.Stat(filepath.Join(root, "dev/null"), &st)
	if isRoot && (unix.Major(st.Rdev) != 1 || unix.Minor(st.Rdev) != 3) {
		t.Errorf("dev/null: rdev %d:%d, want 1:3", unix.Major(st.Rdev), unix.Minor(st.Rdev))
	}
	buf := make([]byte, 64)
	n, err := unix.Getxattr(filepath.Join(root, "home/u/f"), "user.note", buf)
	if err != nil && !errors.Is(err, unix.ENOTSUP) {
		t.Errorf("xattr: %v", err)
	} else if err == nil && string(buf[:n]) != "hello" {
		t.Errorf("xattr user.note: got %q, want %q", buf[:n], "hello")
	}
}

// TestHostile checks that each escape attempt is refused with an error and
// that nothing appears outside the root.
func TestHostile(t *testing.T) {
	for _, tt := range []struct {
		name   string
		layers [][]ent
		reason string
	}{
		{"dotdot", [][]ent{{file("../outside", "pwned")}}, `".."`},
		{"dotdot-inner", [][]ent{{dir("a/"), file("a/../../outside", "pwned")}}, `".."`},
		{"absolute", [][]ent{{file("/outside", "pwned")}}, "absolute"},
		{"symlink-then-write", [][]ent{{symlink("evil", "../.."), file("evil/outside", "pwned")}}, "symlink"},
		{"symlink-abs-then-write", [][]ent{{symlink("evil", "OUTSIDE_DIR"), file("evil/outside", "pwned")}}, "symlink"},
		{"symlink-lower-layer", [][]ent{{symlink("evil", "OUTSIDE_DIR")}, {file("evil/outside", "pwned")}}, "symlink"},
		{"hardlink-outside", [][]ent{{hardlink("h", "../outside-victim")}}, "outside"},
		{"hardlink-absolute", [][]ent{{hardlink("h", "OUTSIDE_VICTIM")}}, "outside"},
		{"hardlink-through-symlink", [][]ent{{symlink("evil", "OUTSIDE_DIR"), hardlink("h", "evil/outside-victim")}}, "symlink"},
		{"whiteout-escape", [][]ent{{file("../.wh.outside-victim", "")}}, `".."`},
		{"whiteout-through-symlink", [][]ent{{symlink("evil", "OUTSIDE_DIR"), file("evil/.wh.outside-victim", "")}}, "symlink"},
		{"opaque-through-symlink", [][]ent{{symlink("evil", "OUTSIDE_DIR"), file("evil/.wh..wh..opq", "")}}, "symlink"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			top := t.TempDir()
			outside := filepath.Join(top, "out")
			os.Mkdir(outside, 0o755)
			victim := filepath.Join(outside, "outside-victim")
			os.WriteFile(victim, []byte("keep"), 0o644)
			os.WriteFile(filepath.Join(top, "outside-victim"), []byte("keep"), 0o644)
			root := filepath.Join(top, "root")
			os.Mkdir(root, 0o755)
			var layers [][]byte
			for _, l := range tt.layers {
				for i := range l {
					l[i].hdr.Linkname = strings.ReplaceAll(l[i].hdr.Linkname, "OUTSIDE_DIR", outside)
					l[i].hdr.Linkname = strings.ReplaceAll(l[i].hdr.Linkname, "OUTSIDE_VICTIM", victim)
				}
				layers = append(layers, tarOf(t, l...))
			}
			err := unpackAll(t, root, layers...)
			if err == nil || !strings.Contains(err.Error(), tt.reason) {
				t.Errorf("got %v, want an error mentioning %q", err, tt.reason)
			}
			for _, p := range []string{filepath.Join(top, "outside"), filepath.Join(outside, "outside")} {
				if _, err := os.Lstat(p); err == nil {
					t.Errorf("%s was written outside the root", p)
				}
			}
			for _, p := range []string{victim, filepath.Join(top, "outside-victim")} {
				if got := read(t, p); got != "keep" {
					t.Errorf("%s: got %q, want it untouched", p, got)
				}
			}
			if entries, _ := os.ReadDir(outside); len(entries) != 1 {
				t.Errorf("outside dir now holds %d entries, want 1", len(entries))
			}
		})
	}
}

func TestDiskFullStops(t *testing.T) {
	root := t.TempDir()
	u, err := New(root, Options{MinFree: 100 << 20, statfs: func(fd int, st *unix.Statfs_t) error {
		st.Bsize = 4096
		st.Bavail = (120 << 20) / 4096 // 120 MiB free
		return nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	big := strings.Repeat("x", 1<<20)
	if err := u.Apply(bytes.NewReader(tarOf(t, file("small", big)))); err != nil {
		t.Fatalf("1 MiB with 20 MiB to spare: %v", err)
	}
	// A header that claims 64 MiB must be refused before it is written.
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	tw.WriteHeader(&tar.Header{Name: "bomb", Typeflag: tar.TypeReg, Size: 64 << 20, Mode: 0o644})
	err = u.Apply(bytes.NewReader(buf.Bytes()))
	if err == nil || !strings.Contains(err.Error(), "disk full") {
		t.Errorf("bomb: got %v, want disk full", err)
	}
}

func TestRejectsNonDirRoot(t *testing.T) {
	err := unpackAll(t, t.TempDir(), tarOf(t, file(".", "x")))
	if err == nil {
		t.Errorf("a regular file as the root entry: got nil error")
	}
}
