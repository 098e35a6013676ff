package sdimage

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
)

// Fuzz inputs are images in a compact form, so a seed of a 40 MiB SD
// image is a few KiB and the mutator works on metadata, not zeros: a run
// of records, each a 4-byte little-endian offset in 512-byte units, a
// 2-byte length and that many bytes; everything else reads as zeros.
// Records past maxFuzzImage are ignored.

const maxFuzzImage = 64 << 20

type chunk struct {
	off  int64
	data []byte
}

// sparseImage is an io.ReaderAt over chunks, sorted and not overlapping.
type sparseImage struct {
	chunks []chunk
	size   int64
}

func decodeSparse(b []byte) *sparseImage {
	var chunks []chunk
	for len(b) >= 6 {
		off := int64(binary.LittleEndian.Uint32(b)) * 512
		n := int(binary.LittleEndian.Uint16(b[4:]))
		b = b[6:]
		n = min(n, len(b))
		if off+int64(n) <= maxFuzzImage {
			chunks = append(chunks, chunk{off, b[:n]})
		}
		b = b[n:]
	}
	sort.SliceStable(chunks, func(i, j int) bool { return chunks[i].off < chunks[j].off })
	im := &sparseImage{}
	for _, c := range chunks {
		if k := len(im.chunks); k > 0 {
			p := im.chunks[k-1]
			if end := p.off + int64(len(p.data)); c.off < end {
				skip := end - c.off
				if skip >= int64(len(c.data)) {
					continue
				}
				c.off, c.data = end, c.data[skip:]
			}
		}
		im.chunks = append(im.chunks, c)
		im.size = max(im.size, c.off+int64(len(c.data)))
	}
	return im
}

func (s *sparseImage) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, errors.New("negative offset")
	}
	if off >= s.size {
		return 0, io.EOF
	}
	n := len(p)
	if rest := s.size - off; int64(n) > rest {
		n = int(rest)
	}
	clear(p[:n])
	i := sort.Search(len(s.chunks), func(i int) bool { return s.chunks[i].off+int64(len(s.chunks[i].data)) > off })
	for ; i < len(s.chunks) && s.chunks[i].off < off+int64(n); i++ {
		c := s.chunks[i]
		lo, hi := max(c.off, off), min(c.off+int64(len(c.data)), off+int64(n))
		copy(p[lo-off:hi-off], c.data[lo-c.off:hi-c.off])
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// encodeSparse is decodeSparse's inverse for an image (or a partition):
// the non-zero 512-byte sectors, consecutive ones joined.
func encodeSparse(img []byte) []byte {
	var out []byte
	for s := 0; s*512 < len(img); {
		sec := img[s*512 : min(len(img), s*512+512)]
		if isZero(sec) {
			s++
			continue
		}
		e := s + 1
		for e*512 < len(img) && (e-s+1)*512 <= 65535 && !isZero(img[e*512:min(len(img), e*512+512)]) {
			e++
		}
		data := img[s*512 : min(len(img), e*512)]
		out = binary.LittleEndian.AppendUint32(out, uint32(s))
		out = binary.LittleEndian.AppendUint16(out, uint16(len(data)))
		out = append(out, data...)
		s = e
	}
	// The last sector, even if zero, so the size survives.
	if last := (len(img) - 1) / 512; len(img) > 0 && isZero(img[last*512:]) {
		out = binary.LittleEndian.AppendUint32(out, uint32(last))
		out = binary.LittleEndian.AppendUint16(out, uint16(len(img)-last*512))
		out = append(out, img[last*512:]...)
	}
	return out
}

// capWriter stops a walk that writes more than a fuzz run should: holes
// in a hostile sparse file can claim terabytes.
type capWriter struct{ left int64 }

var errCap = errors.New("output cap")

func (c *capWriter) Write(p []byte) (int, error) {
	if int64(len(p)) > c.left {
		return 0, errCap
	}
	c.left -= int64(len(p))
	return len(p), nil
}

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func checkErr(t *testing.T, err error) {
	if err == nil || errors.Is(err, errCap) {
		return
	}
	for _, k := range []error{ErrNotDiskImage, ErrNoMBR, ErrNoFAT, ErrNoExt4, ErrTruncated, ErrCorrupt} {
		if errors.Is(err, k) {
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("error of more than one line: %q", err)
			}
			return
		}
	}
	t.Errorf("error of no known kind: %v", err)
}

// The seeds are in Go's corpus format under testdata/fuzz/<target>/,
// named seed-*, made by writeSeeds; go test runs them as regression
// inputs of each fuzz target.
var seedDirs = map[string]string{"image": "FuzzImage", "ext4": "FuzzExt4", "fat": "FuzzFAT"}

func readSeed(t *testing.T, p string) []byte {
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	s, ok := strings.CutPrefix(string(b), "go test fuzz v1\n[]byte(")
	if !ok {
		t.Fatalf("%s: not a corpus file", p)
	}
	q, err := strconv.Unquote(strings.TrimSuffix(strings.TrimSpace(s), ")"))
	if err != nil {
		t.Fatalf("%s: %v", p, err)
	}
	return []byte(q)
}

// FuzzImage feeds whole images through WriteTarFrom.
func FuzzImage(f *testing.F) {
	f.Fuzz(func(t *testing.T, b []byte) {
		im := decodeSparse(b)
		err := (&Importer{Log: quiet}).WriteTarFrom(context.Background(), im, im.size, &capWriter{left: 256 << 20})
		checkErr(t, err)
	})
}

// FuzzExt4 feeds root partitions to the ext4 reader and walks them.
func FuzzExt4(f *testing.F) {
	f.Fuzz(func(t *testing.T, b []byte) {
		im := decodeSparse(b)
		fs, err := openExt4(im, im.size)
		if err != nil {
			checkErr(t, err)
			return
		}
		w := &tarWalk{ctx: context.Background(), tw: tar.NewWriter(&capWriter{left: 256 << 20}), root: fs,
			links: map[uint32]string{}, dirs: map[uint32]bool{}, fatDirs: map[uint32]bool{}, log: quiet}
		checkErr(t, w.walkRoot())
	})
}

// FuzzFAT feeds boot partitions to the FAT reader and walks them.
func FuzzFAT(f *testing.F) {
	f.Fuzz(func(t *testing.T, b []byte) {
		im := decodeSparse(b)
		fs, err := openFAT(im, im.size)
		if err != nil {
			checkErr(t, err)
			return
		}
		w := &tarWalk{ctx: context.Background(), tw: tar.NewWriter(&capWriter{left: 256 << 20}), boot: fs,
			links: map[uint32]string{}, dirs: map[uint32]bool{}, fatDirs: map[uint32]bool{}, log: quiet}
		checkErr(t, w.fatDir("boot/firmware", fs.rootCluster, true, 0))
	})
}

var updateSeeds = flag.Bool("update-seeds", false, "rebuild testdata/seeds with mkfs.ext4, mkfs.vfat and sfdisk")

// TestSeeds checks that every seed is a good image (or partition) the
// readers accept, so the fuzzers start from valid input; with
// -update-seeds it first rebuilds them.
func TestSeeds(t *testing.T) {
	if *updateSeeds {
		writeSeeds(t)
	}
	for _, kind := range []string{"image", "ext4", "fat"} {
		seeds, _ := filepath.Glob(filepath.Join("testdata", "fuzz", seedDirs[kind], "seed-*"))
		if len(seeds) == 0 {
			t.Fatalf("no %s seeds: run go test -run TestSeeds -update-seeds", kind)
		}
		for _, p := range seeds {
			e := filepath.Base(p)
			im := decodeSparse(readSeed(t, p))
			var n int
			var err error
			switch kind {
			case "image":
				var buf bytes.Buffer
				err = (&Importer{Log: quiet}).WriteTarFrom(context.Background(), im, im.size, &buf)
				n = countEntries(t, &buf)
			case "ext4":
				var fs *ext4FS
				if fs, err = openExt4(im, im.size); err == nil {
					var buf bytes.Buffer
					w := &tarWalk{ctx: context.Background(), tw: tar.NewWriter(&buf), root: fs,
						links: map[uint32]string{}, dirs: map[uint32]bool{}, fatDirs: map[uint32]bool{}, log: quiet}
					err = w.walkRoot()
					w.tw.Close()
					n = countEntries(t, &buf)
				}
			case "fat":
				var fs *fatFS
				if fs, err = openFAT(im, im.size); err == nil {
					var buf bytes.Buffer
					w := &tarWalk{ctx: context.Background(), tw: tar.NewWriter(&buf), boot: fs, fatDirs: map[uint32]bool{}, log: quiet}
					err = w.fatDir("boot/firmware", fs.rootCluster, true, 0)
					w.tw.Close()
					n = countEntries(t, &buf)
				}
			}
			if err != nil {
				t.Errorf("%s seed %s: %v", kind, e, err)
			}
			if n < 3 {
				t.Errorf("%s seed %s: %d entries, want a tree", kind, e, n)
			}
		}
	}
}

func countEntries(t *testing.T, r io.Reader) int {
	tr := tar.NewReader(r)
	n := 0
	for {
		if _, err := tr.Next(); err != nil {
			if err != io.EOF {
				t.Errorf("reading back: %v", err)
			}
			return n
		}
		n++
	}
}

func writeSeeds(t *testing.T) {
	for _, tool := range []string{"mkfs.ext4", "mkfs.vfat", "mcopy", "sfdisk"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s not found: install e2fsprogs dosfstools mtools fdisk", tool)
		}
	}
	dir := t.TempDir()
	run := func(name string, args ...string) {
		t.Helper()
		cmd := exec.Command(name, args...)
		cmd.Env = append(os.Environ(), "MTOOLS_SKIP_CHECK=1", "TZ=UTC", "E2FSPROGS_FAKE_TIME=1700000000")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%v: %v\n%s", cmd.Args, err, out)
		}
	}
	tree := filepath.Join(dir, "tree")
	write := func(rel, data string) {
		p := filepath.Join(tree, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("etc/passwd", "root:x:0:0::/root:/bin/sh\n")
	write("usr/bin/tool", strings.Repeat("tool binary ", 700))
	for i := 0; i < 40; i++ {
		write(fmt.Sprintf("usr/share/many/a-fairly-long-file-name-%02d", i), "x")
	}
	os.Symlink("../usr/bin/tool", filepath.Join(tree, "etc/short"))
	os.Symlink(strings.Repeat("long/", 20), filepath.Join(tree, "etc/long"))
	os.Link(filepath.Join(tree, "etc/passwd"), filepath.Join(tree, "etc/passwd-"))
	exec.Command("setfattr", "-n", "user.x", "-v", "1", filepath.Join(tree, "etc/passwd")).Run()
	os.Setenv("E2FSPROGS_FAKE_TIME", "1700000000")

	boot := filepath.Join(dir, "boot")
	for _, f := range []string{"config.txt", "cmdline.txt", "overlays/Mixed-Case_Long.dtbo", "START.ELF"} {
		p := filepath.Join(boot, f)
		os.MkdirAll(filepath.Dir(p), 0o755)
		os.WriteFile(p, []byte(f+"\n"), 0o644)
	}
	save := func(kind, name string, img []byte) {
		p := filepath.Join("testdata", "fuzz", seedDirs[kind], "seed-"+name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", encodeSparse(img))), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	var ext4s [][]byte
	for _, v := range []struct{ name, opts string }{
		// Without checksums first (the image seed uses it): a mutated
		// inode then reaches the parsers instead of failing its checksum.
		{"extents-nocsum", "^has_journal,^resize_inode,^metadata_csum"},
		{"extents", "^has_journal,^resize_inode"},
		{"inline", "^has_journal,^resize_inode,^metadata_csum,inline_data"},
		{"blockmap", "^has_journal,^resize_inode,^metadata_csum,^extent,^64bit,^flex_bg"},
	} {
		p := filepath.Join(dir, v.name+".ext4")
		run("mkfs.ext4", "-q", "-F", "-b", "1024", "-N", "96", "-I", "256", "-O", v.opts, "-U", "clear", "-E", "hash_seed=00000000-0000-0000-0000-000000000001", "-d", tree, p, "768k")
		b, _ := os.ReadFile(p)
		save("ext4", v.name, b)
		ext4s = append(ext4s, b)
	}
	for _, v := range []struct {
		name string
		args []string
	}{{"fat16", []string{"-F", "16", "-s", "1"}}, {"fat32", []string{"-F", "32", "-s", "1"}}} {
		p := filepath.Join(dir, v.name+".fat")
		sizeK := "2200"
		if v.name == "fat32" {
			sizeK = "34000"
		}
		run("mkfs.vfat", append(v.args, "-n", "bootfs", "-i", "12345678", "--invariant", "-C", p, sizeK)...)
		run("mcopy", "-i", p, "-s", "-m", filepath.Join(boot, "config.txt"), filepath.Join(boot, "cmdline.txt"), filepath.Join(boot, "overlays"), filepath.Join(boot, "START.ELF"), "::/")
		b, _ := os.ReadFile(p)
		save("fat", v.name, b)
		if v.name == "fat16" {
			// An image: MBR, this FAT16 at 1 MiB, the first ext4 after.
			img := make([]byte, 1<<20+len(b)+len(ext4s[0]))
			copy(img[1<<20:], b)
			copy(img[1<<20+len(b):], ext4s[0])
			p := filepath.Join(dir, "sd.img")
			os.WriteFile(p, img, 0o644)
			cmd := exec.Command("sfdisk", "--no-reread", "--no-tell-kernel", "-q", p)
			cmd.Stdin = strings.NewReader(fmt.Sprintf("label: dos\nlabel-id: 0x12345678\nstart=2048, size=%d, type=e\nstart=%d, size=%d, type=83\n",
				len(b)/512, 2048+len(b)/512, len(ext4s[0])/512))
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("sfdisk: %v: %s", err, out)
			}
			img, _ = os.ReadFile(p)
			save("image", "fat16-ext4", img)
		}
	}
}
