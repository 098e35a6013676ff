package nfsd_bench

import (
	"archive/tar"
	"fmt"
	"hash/fnv"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"
)

// treeStats is what nfsbench prints, and what the local tree must give.
type treeStats struct {
	Files, Dirs, Symlinks int
	Bytes                 int64
	Hash                  uint64
}

func (s treeStats) String() string {
	return fmt.Sprintf("%d files, %d dirs, %d symlinks, %.1f MiB", s.Files, s.Dirs, s.Symlinks, float64(s.Bytes)/(1<<20))
}

// genTree writes a root file system look-alike below root (which must
// exist): about 5000 files and 150 MB, mostly small files in a few hundred
// nested directories, some multi-MB ones (libraries, a kernel), symlinks
// (merged /usr, .so chains, absolute and dangling ones) and the modes a root
// file system has (setuid, setgid, sticky, read-only directories).
func genTree(t testing.TB, root string) {
	t.Helper()
	rng := rand.New(rand.NewPCG(1, 2))
	var seed [32]byte
	blob := make([]byte, 16<<20)
	rand.NewChaCha8(seed).Read(blob)
	content := func(n int) []byte {
		off := rng.IntN(len(blob) - n + 1)
		return blob[off : off+n]
	}
	must := func(err error) {
		if err != nil {
			t.Helper()
			t.Fatal(err)
		}
	}
	mkdir := func(rel string, mode os.FileMode) {
		p := filepath.Join(root, rel)
		must(os.Mkdir(p, 0o755))
		must(os.Chmod(p, mode))
	}
	write := func(rel string, n int, mode os.FileMode) {
		p := filepath.Join(root, rel)
		must(os.WriteFile(p, content(n), 0o600))
		must(os.Chmod(p, mode))
	}

	type dir struct {
		rel   string
		depth int
	}
	var dirs []dir // where generated files and subdirectories may go
	for _, d := range []struct {
		rel  string
		mode os.FileMode
		gen  bool
	}{
		{"boot", 0o755, false}, {"boot/firmware", 0o755, true}, {"dev", 0o755, false},
		{"etc", 0o755, true}, {"home", 0o755, false}, {"home/pi", 0o750, true},
		{"mnt", 0o755, false}, {"opt", 0o755, true}, {"proc", 0o555, false},
		{"root", 0o700, false}, {"run", 0o755, false}, {"srv", 0o755, false},
		{"sys", 0o555, false}, {"tmp", 0o777 | os.ModeSticky, false}, {"usr", 0o755, false},
		{"usr/bin", 0o755, false}, {"usr/include", 0o755, true}, {"usr/lib", 0o755, true},
		{"usr/libexec", 0o755, true}, {"usr/sbin", 0o755, false}, {"usr/share", 0o755, true},
		{"var", 0o755, false}, {"var/cache", 0o755, true}, {"var/lib", 0o755, true},
		{"var/log", 0o755, true}, {"var/tmp", 0o777 | os.ModeSticky, false},
	} {
		mkdir(d.rel, d.mode)
		if d.gen {
			dirs = append(dirs, dir{d.rel, strings.Count(d.rel, "/")})
		}
	}
	for _, l := range [][2]string{{"bin", "usr/bin"}, {"sbin", "usr/sbin"}, {"lib", "usr/lib"}} {
		must(os.Symlink(l[1], filepath.Join(root, l[0])))
	}
	const letters = "abcdefghijklmnopqrstuvwxyz"
	word := func() string {
		b := make([]byte, 3+rng.IntN(7))
		for i := range b {
			b[i] = letters[rng.IntN(len(letters))]
		}
		return string(b)
	}
	// Nested directories, at most 7 deep.
	for i := 0; i < 420; i++ {
		var parent dir
		for parent = dirs[rng.IntN(len(dirs))]; parent.depth >= 6; parent = dirs[rng.IntN(len(dirs))] {
		}
		rel := fmt.Sprintf("%s/%s%d", parent.rel, word(), i)
		mode := os.FileMode(0o755)
		if rng.IntN(40) == 0 {
			mode = 0o700
		}
		mkdir(rel, mode)
		dirs = append(dirs, dir{rel, parent.depth + 1})
	}

	var files []string
	n := 0
	// Executables, some setuid/setgid.
	for i := 0; i < 400; i++ {
		d := []string{"usr/bin", "usr/sbin"}[rng.IntN(2)]
		mode := os.FileMode(0o755)
		switch i {
		case 1, 2, 3:
			mode |= os.ModeSetuid
		case 4, 5:
			mode |= os.ModeSetgid
		}
		rel := fmt.Sprintf("%s/%s%d", d, word(), i)
		write(rel, 4<<10+rng.IntN(96<<10), mode)
		files = append(files, rel)
		n++
	}
	// Big files: a kernel, an initramfs, libraries.
	for i, size := range []int{9 << 20, 7 << 20, 5 << 20, 4 << 20, 3 << 20} {
		rel := []string{"boot/firmware/kernel8.img", "boot/firmware/initramfs8", "usr/lib/libLLVM.so.15", "usr/lib/libicudata.so.72", "usr/lib/locale-archive"}[i]
		write(rel, size, 0o644)
		files = append(files, rel)
		n++
	}
	for i := 0; i < 25; i++ {
		rel := fmt.Sprintf("usr/lib/lib%s.so.%d", word(), i)
		write(rel, 512<<10+rng.IntN(2<<20), 0o644)
		files = append(files, rel)
		n++
	}
	// Many small files: configuration, headers, documentation, scripts.
	for ; n < 5000; n++ {
		d := dirs[rng.IntN(len(dirs))].rel
		var size int
		switch r := rng.IntN(100); {
		case r < 50:
			size = rng.IntN(2 << 10)
		case r < 85:
			size = 2<<10 + rng.IntN(14<<10)
		case r < 98:
			size = 16<<10 + rng.IntN(48<<10)
		default:
			size = 64<<10 + rng.IntN(448<<10)
		}
		mode := os.FileMode(0o644)
		switch rng.IntN(50) {
		case 0:
			mode = 0o600
		case 1:
			mode = 0o755
		case 2:
			mode = 0o444
		}
		rel := fmt.Sprintf("%s/%s%d.%s", d, word(), n, []string{"conf", "h", "txt", "py", "gz", "so"}[rng.IntN(6)])
		write(rel, size, mode)
		files = append(files, rel)
	}
	// Symlinks: .so chains and alternatives next to their target, relative
	// ones across directories, absolute ones, dangling ones.
	for i := 0; i < 300; i++ {
		target := files[rng.IntN(len(files))]
		var link, dest string
		switch r := rng.IntN(20); {
		case r < 10:
			link = filepath.Join(filepath.Dir(target), fmt.Sprintf("%s-link%d", word(), i))
			dest = filepath.Base(target)
		case r < 16:
			link = filepath.Join(dirs[rng.IntN(len(dirs))].rel, fmt.Sprintf("%s-rel%d", word(), i))
			var err error
			dest, err = filepath.Rel(filepath.Dir(link), target)
			must(err)
		case r < 19:
			link = filepath.Join(dirs[rng.IntN(len(dirs))].rel, fmt.Sprintf("%s-abs%d", word(), i))
			dest = "/" + target
		default:
			link = filepath.Join(dirs[rng.IntN(len(dirs))].rel, fmt.Sprintf("%s-dangling%d", word(), i))
			dest = "/nonexistent/" + word()
		}
		must(os.Symlink(dest, filepath.Join(root, link)))
	}
}

// digest walks a local tree the way nfsbench read does and returns the same
// statistics and hash.
func digest(t testing.TB, root string) treeStats {
	t.Helper()
	var s treeStats
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == root {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		var st syscall.Stat_t
		if err := syscall.Lstat(p, &st); err != nil {
			return err
		}
		mode := st.Mode & 0o7777
		h := fnv.New64a()
		switch st.Mode & syscall.S_IFMT {
		case syscall.S_IFDIR:
			fmt.Fprintf(h, "d %s %o", rel, mode)
			s.Dirs++
		case syscall.S_IFLNK:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			fmt.Fprintf(h, "l %s %s", rel, target)
			s.Symlinks++
		case syscall.S_IFREG:
			fmt.Fprintf(h, "f %s %o\n", rel, mode)
			f, err := os.Open(p)
			if err != nil {
				return err
			}
			n, err := io.Copy(h, f)
			f.Close()
			if err != nil {
				return err
			}
			s.Files++
			s.Bytes += n
		default:
			return fmt.Errorf("%s: unexpected file type %o", p, st.Mode)
		}
		s.Hash += h.Sum64()
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// writeTar archives root as ustar (what nfsbench untar reads), parents
// before children, owned by root.
func writeTar(t testing.TB, root, file string) {
	t.Helper()
	f, err := os.Create(file)
	if err != nil {
		t.Fatal(err)
	}
	tw := tar.NewWriter(f)
	var paths []string
	filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err == nil && p != root {
			paths = append(paths, p)
		}
		return err
	})
	sort.Strings(paths) // WalkDir's order already is; keep it explicit
	for _, p := range paths {
		fi, err := os.Lstat(p)
		if err != nil {
			t.Fatal(err)
		}
		link := ""
		if fi.Mode()&fs.ModeSymlink != 0 {
			link, _ = os.Readlink(p)
		}
		hdr, err := tar.FileInfoHeader(fi, link)
		if err != nil {
			t.Fatal(err)
		}
		rel, _ := filepath.Rel(root, p)
		hdr.Name = filepath.ToSlash(rel)
		if fi.IsDir() {
			hdr.Name += "/"
		}
		hdr.Format = tar.FormatUSTAR
		hdr.Uid, hdr.Gid, hdr.Uname, hdr.Gname = 0, 0, "root", "root"
		hdr.ModTime = time.Unix(1700000000, 0)
		hdr.AccessTime, hdr.ChangeTime = time.Time{}, time.Time{}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		if fi.Mode().IsRegular() {
			src, err := os.Open(p)
			if err != nil {
				t.Fatal(err)
			}
			_, err = io.Copy(tw, src)
			src.Close()
			if err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}
