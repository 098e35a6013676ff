package unpack

import (
	"archive/tar"
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// FuzzApply feeds layer tar streams as a registry could serve them: the
// unpacker may refuse them but must never write outside its root or panic.
func FuzzApply(f *testing.F) {
	f.Add(tarOf(f, dir("a/"), file("a/b", "x"), symlink("l", "../../x"), hardlink("h", "a/b")))
	f.Add(tarOf(f, symlink("evil", "/tmp"), file("evil/x", "x")))
	f.Add(tarOf(f, file("a/.wh..wh..opq", ""), file(".wh.a", "")))
	f.Add(tarOf(f, ent{hdr: tar.Header{Name: "p", Typeflag: tar.TypeFifo}}))
	f.Fuzz(func(t *testing.T, data []byte) {
		top := t.TempDir()
		root := filepath.Join(top, "root")
		os.Mkdir(root, 0o755)
		// A small pretend disk: sparse entries can claim terabytes from a
		// few bytes of input, and the free-space bound must stop them.
		u, err := New(root, Options{MinFree: 1, statfs: func(fd int, st *unix.Statfs_t) error {
			st.Bsize, st.Bavail = 4096, 16384
			return nil
		}})
		if err != nil {
			t.Fatal(err)
		}
		u.Apply(bytes.NewReader(data))
		u.Close()
		entries, _ := os.ReadDir(top)
		if len(entries) != 1 {
			t.Errorf("unpack wrote beside its root: %v", entries)
		}
	})
}
