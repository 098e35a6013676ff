package sdimage

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// Importer reads SD-card images. The zero value is ready to use.
type Importer struct {
	// TempDir is where an .img.xz is decompressed (it needs the image's
	// size in free space, less its runs of zeros); "" means os.TempDir().
	TempDir string
	// Log gets progress and warnings; nil means slog.Default().
	Log *slog.Logger
}

// WriteTar is Importer{}.WriteTar.
func WriteTar(ctx context.Context, src string, w io.Writer) error {
	return (&Importer{}).WriteTar(ctx, src, w)
}

// WriteTar reads the SD-card image at src, an .img, an xz-compressed .img
// (told apart by content, not name) or an SD card's block device, and writes one complete tar
// stream (see the package comment) to w. Errors for bad input wrap one of
// the Err* values and start with src.
func (im *Importer) WriteTar(ctx context.Context, src string, w io.Writer) error {
	f, err := os.Open(src)
	if err != nil {
		return err
	}
	defer f.Close()
	var magic [6]byte
	n, _ := io.ReadFull(f, magic[:])
	switch m := magic[:n]; {
	case bytes.HasPrefix(m, []byte("\xFD7zXZ\x00")):
		tmp, err := im.unxz(ctx, src)
		if err != nil {
			return fmt.Errorf("%s: %w", pq(src), err)
		}
		defer os.Remove(tmp.Name())
		defer tmp.Close()
		f = tmp
	case bytes.HasPrefix(m, []byte{0x1F, 0x8B}):
		return fmt.Errorf("%s: %w: it is gzip-compressed; gunzip it, or recompress with xz", pq(src), ErrNotDiskImage)
	case bytes.HasPrefix(m, []byte("PK\x03\x04")):
		return fmt.Errorf("%s: %w: it is a zip archive; unzip it and import the .img inside", pq(src), ErrNotDiskImage)
	}
	// Seek rather than Stat: an SD card read straight from its block
	// device has no size in stat.
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return fmt.Errorf("%s: %v", pq(src), err)
	}
	if err := im.WriteTarFrom(ctx, f, size, w); err != nil {
		return fmt.Errorf("%s: %w", pq(src), err)
	}
	return nil
}

// unxz decompresses src with xz(1) into a sparse temporary file.
func (im *Importer) unxz(ctx context.Context, src string) (*os.File, error) {
	xz, err := exec.LookPath("xz")
	if err != nil {
		return nil, fmt.Errorf("the image is xz-compressed and xz(1) is not installed (Debian package xz-utils)")
	}
	tmp, err := os.CreateTemp(im.TempDir, "sdimage-*.img")
	if err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	start := time.Now()
	cmd := exec.CommandContext(ctx, xz, "--decompress", "--stdout", "--threads=0", "--", src)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("%v: %v", cmd.Args, err)
	}
	n, cerr := copySparse(tmp, out)
	werr := cmd.Wait()
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	if werr != nil {
		msg := strings.TrimSpace(stderr.String())
		if i := strings.LastIndexByte(msg, '\n'); i >= 0 {
			msg = msg[i+1:]
		}
		// "xz: <file>: <what>": the file is named already.
		if i := strings.LastIndex(msg, ": "); i >= 0 {
			msg = msg[i+2:]
		}
		if strings.Contains(msg, "Unexpected end of input") {
			return nil, fmt.Errorf("%w (xz: %s): download it again", ErrTruncatedXZ, msg)
		}
		return nil, fmt.Errorf("%w (xz: %s)", ErrCorruptXZ, msg)
	}
	if cerr != nil {
		return nil, fmt.Errorf("decompressing into %s: %v", tmp.Name(), cerr)
	}
	im.log().Info("decompressed image", "src", src, "bytes", n, "took", time.Since(start).Round(time.Millisecond))
	ok = true
	return tmp, nil
}

// copySparse copies r to f, seeking over blocks of zeros so an image's
// empty space takes no disk.
func copySparse(f *os.File, r io.Reader) (int64, error) {
	buf := make([]byte, 1<<20)
	var n int64
	for {
		k, err := io.ReadFull(r, buf)
		if k > 0 {
			for off := 0; off < k; off += 64 << 10 {
				b := buf[off:min(off+64<<10, k)]
				if isZero(b) {
					continue
				}
				if _, werr := f.WriteAt(b, n+int64(off)); werr != nil {
					return n, werr
				}
			}
			n += int64(k)
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return n, f.Truncate(n)
		}
		if err != nil {
			return n, err
		}
	}
}

func isZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

func (im *Importer) log() *slog.Logger {
	if im.Log != nil {
		return im.Log
	}
	return slog.Default()
}

// WriteTarFrom is WriteTar on an uncompressed image of size bytes.
func (im *Importer) WriteTarFrom(ctx context.Context, img io.ReaderAt, size int64, w io.Writer) error {
	parts, err := readMBR(img, size)
	if err != nil {
		return err
	}
	var boot *fatFS
	var root *ext4FS
	var bootPart, rootPart partition
	noFAT := fmt.Sprintf("none of the %d partitions holds a FAT filesystem (a Raspberry Pi image has a FAT32 boot partition first)", len(parts))
	for _, p := range parts {
		r := io.NewSectionReader(img, p.offset, p.size)
		switch {
		case boot == nil && (isFATType(p.typ) || p.typ == 0x83) && !isExt(r):
			fs, err := openFAT(r, p.size)
			if errors.Is(err, ErrNoFAT) {
				if isFATType(p.typ) {
					noFAT = fmt.Sprintf("partition %d has FAT type %#02x but %s", p.index, p.typ, strings.TrimPrefix(err.Error(), ErrNoFAT.Error()+": "))
				}
				continue
			}
			if err != nil {
				return fmt.Errorf("partition %d: %w", p.index, err)
			}
			boot, bootPart = fs, p
		case root == nil && isExt(r):
			fs, err := openExt4(r, p.size)
			if err != nil {
				return fmt.Errorf("partition %d: %w", p.index, err)
			}
			root, rootPart = fs, p
		}
	}
	if boot == nil {
		return fmt.Errorf("%w: %s", ErrNoFAT, noFAT)
	}
	if root == nil {
		return fmt.Errorf("%w: none of the %d partitions holds an ext4 filesystem (a Raspberry Pi image has its root in partition 2)", ErrNoExt4, len(parts))
	}
	log := im.log()
	log.Info("reading SD-card image",
		"boot", fmt.Sprintf("partition %d %q", bootPart.index, boot.label),
		"root", fmt.Sprintf("partition %d %q", rootPart.index, root.label))
	if root.needsRecovery {
		log.Warn("the root filesystem's journal needs recovery; reading it without replaying the journal (the last writes before the image was taken may be missing)")
	}
	t := &tarWalk{ctx: ctx, tw: tar.NewWriter(w), root: root, boot: boot, links: map[uint32]string{}, dirs: map[uint32]bool{}, fatDirs: map[uint32]bool{}, log: log}
	start := time.Now()
	if err := t.walkRoot(); err != nil {
		return err
	}
	if err := t.tw.Close(); err != nil {
		return err
	}
	log.Info("wrote root tree", "entries", t.entries, "bytes", t.bytes, "took", time.Since(start).Round(time.Millisecond))
	return nil
}

// bootDir is where the boot partition goes in the tree.
var bootDir = []string{"boot", "firmware"}

type tarWalk struct {
	ctx     context.Context
	tw      *tar.Writer
	root    *ext4FS
	boot    *fatFS
	links   map[uint32]string // inode → first path, for hard links
	dirs    map[uint32]bool   // directory inodes seen, against loops
	fatDirs map[uint32]bool   // FAT directory clusters seen, against loops
	rootMT  time.Time
	log     *slog.Logger
	entries int
	bytes   int64
}

// maxDepth bounds directory nesting: deeper than PATH_MAX allows.
const maxDepth = 2048

func (t *tarWalk) walkRoot() error {
	in, err := t.root.inode(rootIno)
	if err != nil {
		return err
	}
	if in.typ() != sIFDIR {
		return corrupt("root inode is not a directory (mode %#o)", in.mode)
	}
	t.rootMT = in.mtime
	return t.dir("./", "", in, 0)
}

// dir writes the directory entry at name (with its trailing slash; rel is
// the path without it, "" for the root) and everything below.
func (t *tarWalk) dir(name, rel string, in *inode, depth int) error {
	if depth > maxDepth {
		return corrupt("%s: directories nested deeper than %d", pq(rel), maxDepth)
	}
	if t.dirs[in.num] {
		return corrupt("%s: directory inode %d appears twice in the tree", pq(rel), in.num)
	}
	t.dirs[in.num] = true
	if err := t.header(name, in, tar.TypeDir, ""); err != nil {
		return err
	}
	ents, err := t.root.readDir(in)
	if err != nil {
		return fmt.Errorf("%s: %w", pq(name), err)
	}
	sort.Slice(ents, func(i, j int) bool { return ents[i].name < ents[j].name })
	for i := 1; i < len(ents); i++ {
		if ents[i].name == ents[i-1].name {
			return corrupt("%s: name %q twice", pq(name), ents[i].name)
		}
	}
	// On the way to boot/firmware, make the directories the root
	// partition lacks.
	want := ""
	if depth < len(bootDir) && rel == strings.Join(bootDir[:depth], "/") {
		want = bootDir[depth]
		found := false
		for _, e := range ents {
			found = found || e.name == want
		}
		if !found {
			ents = append(ents, dirent{name: want})
			sort.Slice(ents, func(i, j int) bool { return ents[i].name < ents[j].name })
		}
	}
	for _, e := range ents {
		if err := t.ctx.Err(); err != nil {
			return err
		}
		crel := e.name
		if rel != "" {
			crel = rel + "/" + e.name
		}
		if e.ino == 0 { // made up above
			if err := t.synthDir(crel, depth+1); err != nil {
				return err
			}
			continue
		}
		cin, err := t.root.inode(e.ino)
		if err != nil {
			return fmt.Errorf("%s: %w", pq(crel), err)
		}
		if e.name == want && cin.typ() != sIFDIR {
			return fmt.Errorf("%w: /%s in the root partition is not a directory (mode %#o); cannot put the boot partition there", ErrCorrupt, pq(crel), cin.mode)
		}
		if err := t.entry(crel, cin, depth+1); err != nil {
			return err
		}
	}
	return nil
}

// synthDir writes a directory on the way to boot/firmware that the root
// partition lacks, and continues the way.
func (t *tarWalk) synthDir(rel string, depth int) error {
	if err := t.tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: rel + "/", Mode: 0o755, ModTime: t.rootMT, Format: tar.FormatPAX}); err != nil {
		return fmt.Errorf("writing tar header for %s: %v", pq(rel), err)
	}
	t.entries++
	if depth == len(bootDir) {
		return t.bootFiles(rel)
	}
	return t.synthDir(rel+"/"+bootDir[depth], depth+1)
}

func (t *tarWalk) entry(rel string, in *inode, depth int) error {
	switch in.typ() {
	case sIFDIR:
		if depth == len(bootDir) && rel == strings.Join(bootDir, "/") {
			return t.mountPoint(rel, in)
		}
		return t.dir(rel+"/", rel, in, depth)
	case sIFREG, sIFLNK, sIFCHR, sIFBLK, sIFIFO, sIFSOCK:
	default:
		return corrupt("%s: inode %d has file type %#o", pq(rel), in.num, in.typ())
	}
	if in.links > 1 {
		if first, ok := t.links[in.num]; ok {
			return t.header(rel, in, tar.TypeLink, first)
		}
		t.links[in.num] = rel
	}
	switch in.typ() {
	case sIFREG:
		if err := t.header(rel, in, tar.TypeReg, ""); err != nil {
			return err
		}
		cw := &countWriter{w: t.tw}
		if err := t.root.copyData(t.ctx, in, cw); err != nil {
			return fmt.Errorf("%s: %w", pq(rel), err)
		}
		t.bytes += cw.n
		return nil
	case sIFLNK:
		target, err := t.root.readSmall(in, 4096, "symlink target")
		if err != nil {
			return fmt.Errorf("%s: %w", pq(rel), err)
		}
		if len(target) == 0 || bytes.IndexByte(target, 0) >= 0 {
			return corrupt("%s: symlink target %q", pq(rel), target)
		}
		return t.header(rel, in, tar.TypeSymlink, string(target))
	case sIFCHR:
		return t.header(rel, in, tar.TypeChar, "")
	case sIFBLK:
		return t.header(rel, in, tar.TypeBlock, "")
	case sIFIFO:
		return t.header(rel, in, tar.TypeFifo, "")
	}
	// Sockets have no tar type; a running system makes its own.
	t.log.Warn("leaving out a socket", "path", rel)
	return nil
}

// mountPoint writes /boot/firmware from the root partition's directory
// (owner, mode, mtime) with the boot partition's files in it.
func (t *tarWalk) mountPoint(rel string, in *inode) error {
	if err := t.header(rel+"/", in, tar.TypeDir, ""); err != nil {
		return err
	}
	t.dirs[in.num] = true
	if ents, err := t.root.readDir(in); err != nil {
		return fmt.Errorf("%s: %w", pq(rel), err)
	} else if len(ents) > 0 {
		t.log.Warn("leaving out files of the root partition hidden below the boot partition's mount point", "path", rel, "entries", len(ents))
	}
	return t.bootFiles(rel)
}

// bootFiles writes the boot partition's files below rel; a walk without
// a boot partition (the fuzz target's) writes none.
func (t *tarWalk) bootFiles(rel string) error {
	if t.boot == nil {
		return nil
	}
	return t.fatDir(rel, t.boot.rootCluster, true, 0)
}

func (t *tarWalk) fatDir(rel string, cluster uint32, root bool, depth int) error {
	if depth > maxDepth {
		return fatCorrupt("%s: directories nested deeper than %d", pq(rel), maxDepth)
	}
	ents, err := t.boot.readDir(cluster, root)
	if err != nil {
		return fmt.Errorf("%s: %w", pq(rel), err)
	}
	sort.Slice(ents, func(i, j int) bool { return ents[i].name < ents[j].name })
	for i := 1; i < len(ents); i++ {
		if ents[i].name == ents[i-1].name {
			return fatCorrupt("%s: name %q twice", pq(rel), ents[i].name)
		}
	}
	for _, e := range ents {
		if err := t.ctx.Err(); err != nil {
			return err
		}
		name := rel + "/" + e.name
		h := &tar.Header{Name: name, ModTime: e.mtime, Format: tar.FormatPAX}
		if e.dir {
			if e.cluster == 0 || e.cluster == t.boot.rootCluster {
				return fatCorrupt("%s: directory points at the root directory", pq(name))
			}
			h.Typeflag, h.Name, h.Mode = tar.TypeDir, name+"/", 0o755
			if err := t.write(h); err != nil {
				return err
			}
			// A FAT directory's chain can only be reached once from the
			// root; seeing a cluster again means a loop.
			if t.fatDirs[e.cluster] {
				return fatCorrupt("%s: directory cluster %d appears twice in the tree", pq(name), e.cluster)
			}
			t.fatDirs[e.cluster] = true
			if err := t.fatDir(name, e.cluster, false, depth+1); err != nil {
				return err
			}
			continue
		}
		h.Typeflag, h.Mode, h.Size = tar.TypeReg, 0o644, int64(e.size)
		if err := t.write(h); err != nil {
			return err
		}
		cw := &countWriter{w: t.tw}
		if err := t.boot.copyFile(t.ctx, e, cw); err != nil {
			return fmt.Errorf("%s: %w", pq(name), err)
		}
		t.bytes += cw.n
	}
	return nil
}

func (t *tarWalk) header(name string, in *inode, typ byte, link string) error {
	h := &tar.Header{
		Typeflag: typ,
		Name:     name,
		Linkname: link,
		Mode:     int64(in.mode & 0o7777),
		Uid:      int(in.uid),
		Gid:      int(in.gid),
		ModTime:  in.mtime,
		Format:   tar.FormatPAX,
	}
	if typ == tar.TypeReg {
		h.Size = int64(in.size)
	}
	if typ == tar.TypeChar || typ == tar.TypeBlock {
		h.Devmajor, h.Devminor = device(in)
	}
	xs, err := t.root.xattrs(in)
	if err != nil {
		return fmt.Errorf("%s: %w", pq(name), err)
	}
	for _, n := range xs.names {
		if h.PAXRecords == nil {
			h.PAXRecords = map[string]string{}
		}
		h.PAXRecords["SCHILY.xattr."+n] = xs.values[n]
	}
	return t.write(h)
}

func (t *tarWalk) write(h *tar.Header) error {
	if err := t.tw.WriteHeader(h); err != nil {
		return fmt.Errorf("writing tar header for %s: %v", pq(h.Name), err)
	}
	t.entries++
	return nil
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// pq returns a path for an error message: as it is when it prints as one
// plain line, else quoted, since names in a hostile image can hold
// newlines and terminal escapes.
func pq(p string) string {
	for _, r := range p {
		if r < 0x20 || r == 0x7F || r == utf8.RuneError || !unicode.IsPrint(r) {
			return strconv.Quote(p)
		}
	}
	return p
}
