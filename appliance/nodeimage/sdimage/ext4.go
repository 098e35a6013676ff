package sdimage

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"time"
)

// Read-only ext2/3/4. Layout reference: the kernel's
// Documentation/filesystems/ext4/ (ondisk format). Everything read from the
// image is checked before it is used as a size, offset or count.

const (
	extMagic = 0xEF53

	incompatCompression = 0x1
	incompatRecover     = 0x4
	incompatJournalDev  = 0x8
	incompatMetaBG      = 0x10
	incompat64bit       = 0x80
	incompatEAInode     = 0x400
	incompatDirData     = 0x1000
	incompatInlineData  = 0x8000

	roCompatSparseSuper = 0x1
	roCompatHugeFile    = 0x8
	roCompatBigalloc    = 0x200
	roCompatMetaCsum    = 0x400
	incompatCsumSeed    = 0x2000
	compatSparseSuper2  = 0x200

	flagHugeFile   = 0x40000
	flagExtents    = 0x80000
	flagEAInode    = 0x200000
	flagInlineData = 0x10000000
	flagEncrypt    = 0x800

	rootIno = 2
)

// Unix file types in i_mode.
const (
	sIFMT   = 0xF000
	sIFSOCK = 0xC000
	sIFLNK  = 0xA000
	sIFREG  = 0x8000
	sIFBLK  = 0x6000
	sIFDIR  = 0x4000
	sIFCHR  = 0x2000
	sIFIFO  = 0x1000
)

type ext4FS struct {
	r              io.ReaderAt // the partition
	blockSize      int64
	blocksCount    uint64
	inodesCount    uint32
	inodesPerGroup uint32
	inodeSize      int64
	clusterSize    int64
	incompat       uint32
	roCompat       uint32
	inodeTables    []uint64 // first block of each group's inode table
	label          string
	needsRecovery  bool
	csumSeed       uint32 // crc32c of the uuid (or s_checksum_seed); used with metadata_csum
	metadataCsum   bool
	// dirBudget is the directory bytes left to read: each block belongs
	// to one directory, so a valid tree has no more than the filesystem;
	// directories sharing blocks would otherwise make reading unbounded.
	dirBudget uint64
}

func corrupt(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrCorrupt, fmt.Sprintf(format, args...))
}

// isExt reports whether the partition has an ext2/3/4 superblock magic.
func isExt(r io.ReaderAt) bool {
	var m [2]byte
	_, err := r.ReadAt(m[:], 1024+0x38)
	return err == nil && binary.LittleEndian.Uint16(m[:]) == extMagic
}

func openExt4(r io.ReaderAt, size int64) (*ext4FS, error) {
	sb := make([]byte, 1024)
	if _, err := r.ReadAt(sb, 1024); err != nil {
		return nil, fmt.Errorf("%w: reading the ext4 superblock: %v", ErrNoExt4, err)
	}
	le := binary.LittleEndian
	if le.Uint16(sb[0x38:]) != extMagic {
		return nil, fmt.Errorf("%w: no ext2/3/4 superblock magic", ErrNoExt4)
	}
	fs := &ext4FS{r: r}
	logBlock := le.Uint32(sb[0x18:])
	if logBlock > 6 {
		return nil, corrupt("ext4 superblock: block size 2^(10+%d)", logBlock)
	}
	fs.blockSize = 1024 << logBlock
	fs.inodesCount = le.Uint32(sb[0x0:])
	fs.blocksCount = uint64(le.Uint32(sb[0x4:]))
	firstDataBlock := uint64(le.Uint32(sb[0x14:]))
	logCluster := le.Uint32(sb[0x1C:])
	blocksPerGroup := uint64(le.Uint32(sb[0x20:]))
	fs.inodesPerGroup = le.Uint32(sb[0x28:])
	rev := le.Uint32(sb[0x4C:])
	fs.inodeSize = 128
	if rev >= 1 {
		fs.inodeSize = int64(le.Uint16(sb[0x58:]))
	}
	compat := le.Uint32(sb[0x5C:])
	fs.incompat = le.Uint32(sb[0x60:])
	fs.roCompat = le.Uint32(sb[0x64:])
	fs.label = cstring(sb[0x78 : 0x78+16])
	descSize := int64(32)
	if fs.incompat&incompat64bit != 0 {
		fs.blocksCount |= uint64(le.Uint32(sb[0x150:])) << 32
		descSize = int64(le.Uint16(sb[0xFE:]))
		if descSize < 32 || descSize > 1024 || descSize&(descSize-1) != 0 {
			return nil, corrupt("ext4 superblock: group descriptor size %d", descSize)
		}
	}
	firstMetaBG := uint64(le.Uint32(sb[0x104:]))
	backupBGs := [2]uint64{uint64(le.Uint32(sb[0x24C:])), uint64(le.Uint32(sb[0x250:]))}

	switch {
	case fs.incompat&incompatCompression != 0:
		return nil, fmt.Errorf("%w: ext4 compression feature is not supported", ErrNoExt4)
	case fs.incompat&incompatJournalDev != 0:
		return nil, fmt.Errorf("%w: partition is an external ext4 journal, not a filesystem", ErrNoExt4)
	case fs.incompat&incompatDirData != 0:
		return nil, fmt.Errorf("%w: ext4 dirdata feature (Lustre) is not supported", ErrNoExt4)
	}
	// Like the kernel, refuse features we do not know: they may change
	// what the bytes mean.
	const known = 0x1 | 0x2 | 0x4 | 0x8 | 0x10 | 0x40 | 0x80 | 0x100 | 0x200 | 0x400 | 0x1000 | 0x2000 | 0x4000 | 0x8000 | 0x10000 | 0x20000
	if unknown := fs.incompat &^ known; unknown != 0 {
		return nil, fmt.Errorf("%w: the ext4 filesystem uses incompatible features %#x this importer does not know", ErrNoExt4, unknown)
	}
	fs.needsRecovery = fs.incompat&incompatRecover != 0
	if fs.roCompat&roCompatMetaCsum != 0 {
		fs.metadataCsum = true
		if fs.incompat&incompatCsumSeed != 0 {
			fs.csumSeed = le.Uint32(sb[0x270:])
		} else {
			fs.csumSeed = crc32c(^uint32(0), sb[0x68:0x78])
		}
	}
	fs.clusterSize = fs.blockSize
	if fs.roCompat&roCompatBigalloc != 0 {
		if logCluster < logBlock || logCluster > 16+logBlock {
			return nil, corrupt("ext4 superblock: cluster size 2^(10+%d)", logCluster)
		}
		fs.clusterSize = 1024 << logCluster
	}
	if fs.inodeSize < 128 || fs.inodeSize > fs.blockSize || fs.inodeSize&(fs.inodeSize-1) != 0 {
		return nil, corrupt("ext4 superblock: inode size %d", fs.inodeSize)
	}
	if blocksPerGroup < 8 || blocksPerGroup > uint64(fs.blockSize)*8*uint64(fs.clusterSize/fs.blockSize) {
		return nil, corrupt("ext4 superblock: %d blocks per group", blocksPerGroup)
	}
	if fs.inodesPerGroup == 0 || int64(fs.inodesPerGroup) > fs.blockSize*8 {
		return nil, corrupt("ext4 superblock: %d inodes per group", fs.inodesPerGroup)
	}
	if firstDataBlock >= fs.blocksCount {
		return nil, corrupt("ext4 superblock: first data block %d of %d", firstDataBlock, fs.blocksCount)
	}
	if fs.blocksCount > uint64(size/fs.blockSize) {
		return nil, fmt.Errorf("%w: the ext4 filesystem has %d bytes but its partition only %d", ErrTruncated, fs.blocksCount*uint64(fs.blockSize), size)
	}
	fs.dirBudget = fs.blocksCount * uint64(fs.blockSize)
	groups := (fs.blocksCount - firstDataBlock + blocksPerGroup - 1) / blocksPerGroup
	if uint64(fs.inodesCount) > groups*uint64(fs.inodesPerGroup) || fs.inodesCount < rootIno {
		return nil, corrupt("ext4 superblock: %d inodes in %d groups of %d", fs.inodesCount, groups, fs.inodesPerGroup)
	}

	hasSuper := func(g uint64) bool {
		if compat&compatSparseSuper2 != 0 {
			return g == 0 || g == backupBGs[0] || g == backupBGs[1]
		}
		if g <= 1 || fs.roCompat&roCompatSparseSuper == 0 {
			return true
		}
		for _, b := range []uint64{3, 5, 7} {
			p := b
			for p < g {
				p *= b
			}
			if p == g {
				return true
			}
		}
		return false
	}
	descPerBlock := uint64(fs.blockSize / descSize)
	gdtBlock := func(i uint64) uint64 {
		if fs.incompat&incompatMetaBG == 0 || i < firstMetaBG {
			return firstDataBlock + 1 + i
		}
		g := i * descPerBlock
		b := firstDataBlock + g*blocksPerGroup
		if hasSuper(g) {
			b++
		}
		return b
	}
	fs.inodeTables = make([]uint64, groups)
	blk := make([]byte, fs.blockSize)
	for i := uint64(0); i*descPerBlock < groups; i++ {
		if err := fs.readBlock(gdtBlock(i), blk); err != nil {
			return nil, fmt.Errorf("ext4 group descriptors: %w", err)
		}
		for j := uint64(0); j < descPerBlock && i*descPerBlock+j < groups; j++ {
			d := blk[int64(j)*descSize:]
			t := uint64(le.Uint32(d[0x8:]))
			if descSize >= 64 {
				t |= uint64(le.Uint32(d[0x28:])) << 32
			}
			tableBlocks := (uint64(fs.inodesPerGroup)*uint64(fs.inodeSize) + uint64(fs.blockSize) - 1) / uint64(fs.blockSize)
			if t == 0 || t >= fs.blocksCount || fs.blocksCount-t < tableBlocks {
				return nil, corrupt("ext4 group %d: inode table at block %d is outside the filesystem", i*descPerBlock+j, t)
			}
			fs.inodeTables[i*descPerBlock+j] = t
		}
	}
	return fs, nil
}

func (fs *ext4FS) readBlock(b uint64, buf []byte) error {
	if b >= fs.blocksCount {
		return corrupt("ext4 block %d is outside the filesystem (%d blocks)", b, fs.blocksCount)
	}
	if _, err := fs.r.ReadAt(buf[:fs.blockSize], int64(b)*fs.blockSize); err != nil {
		return fmt.Errorf("%w: reading ext4 block %d: %v", ErrTruncated, b, err)
	}
	return nil
}

type inode struct {
	num     uint32
	mode    uint16
	uid     uint32
	gid     uint32
	size    uint64
	links   uint16
	flags   uint32
	block   []byte // i_block, 60 bytes
	fileACL uint64
	blocks  uint64 // in 512-byte units
	mtime   time.Time
	raw     []byte
}

func (in *inode) typ() uint16 { return in.mode & sIFMT }

func (fs *ext4FS) inode(num uint32) (*inode, error) {
	if num == 0 || num > fs.inodesCount {
		return nil, corrupt("inode number %d is outside 1..%d", num, fs.inodesCount)
	}
	g, idx := (num-1)/fs.inodesPerGroup, (num-1)%fs.inodesPerGroup
	raw := make([]byte, fs.inodeSize)
	off := int64(fs.inodeTables[g])*fs.blockSize + int64(idx)*fs.inodeSize
	if _, err := fs.r.ReadAt(raw, off); err != nil {
		return nil, fmt.Errorf("%w: reading inode %d: %v", ErrTruncated, num, err)
	}
	le := binary.LittleEndian
	in := &inode{
		num:     num,
		raw:     raw,
		mode:    le.Uint16(raw[0x0:]),
		uid:     uint32(le.Uint16(raw[0x2:])) | uint32(le.Uint16(raw[0x78:]))<<16,
		gid:     uint32(le.Uint16(raw[0x18:])) | uint32(le.Uint16(raw[0x7A:]))<<16,
		size:    uint64(le.Uint32(raw[0x4:])) | uint64(le.Uint32(raw[0x6C:]))<<32,
		links:   le.Uint16(raw[0x1A:]),
		flags:   le.Uint32(raw[0x20:]),
		block:   raw[0x28 : 0x28+60],
		fileACL: uint64(le.Uint32(raw[0x68:])) | uint64(le.Uint16(raw[0x76:]))<<32,
		blocks:  uint64(le.Uint32(raw[0x1C:])) | uint64(le.Uint16(raw[0x74:]))<<32,
	}
	if in.size > maxLogicalBlocks*uint64(fs.blockSize) {
		return nil, corrupt("inode %d: size %d is beyond the ext4 maximum", num, in.size)
	}
	if fs.metadataCsum {
		if err := fs.verifyInode(in); err != nil {
			return nil, err
		}
	}
	if fs.roCompat&roCompatHugeFile != 0 && in.flags&flagHugeFile != 0 {
		in.blocks *= uint64(fs.blockSize / 512)
	}
	sec := int64(int32(le.Uint32(raw[0x10:])))
	var nsec int64
	if extra := fs.extraISize(in); extra >= 0x8C-0x80 {
		x := le.Uint32(raw[0x88:])
		sec += int64(x&3) << 32
		nsec = int64(x >> 2)
		if nsec > 999999999 {
			nsec = 0
		}
	}
	in.mtime = time.Unix(sec, nsec).UTC()
	if in.flags&flagEncrypt != 0 {
		return nil, fmt.Errorf("%w: inode %d is encrypted (fscrypt); encrypted files cannot be imported", ErrCorrupt, num)
	}
	return in, nil
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// crc32c is the kernel's crc32c_le: no inversion before or after.
func crc32c(crc uint32, p []byte) uint32 { return ^crc32.Update(^crc, castagnoli, p) }

// verifyInode checks the metadata_csum inode checksum: crc32c over the
// inode number, generation and the inode with its checksum fields zeroed.
// A mismatch is bit rot or tampering; without it a damaged inode would be
// imported as wrong owners, modes or content.
func (fs *ext4FS) verifyInode(in *inode) error {
	le := binary.LittleEndian
	var n [4]byte
	le.PutUint32(n[:], in.num)
	c := crc32c(fs.csumSeed, n[:])
	c = crc32c(c, in.raw[0x64:0x68]) // i_generation
	raw := append([]byte{}, in.raw...)
	raw[0x7C], raw[0x7D] = 0, 0
	want := uint32(le.Uint16(in.raw[0x7C:]))
	hi := fs.extraISize(in) >= 4
	if hi {
		raw[0x82], raw[0x83] = 0, 0
		want |= uint32(le.Uint16(in.raw[0x82:])) << 16
	}
	got := crc32c(c, raw)
	if !hi {
		got &= 0xFFFF
	}
	if got != want {
		return corrupt("inode %d: checksum %#x, stored %#x (damaged image?)", in.num, got, want)
	}
	return nil
}

// extraISize returns i_extra_isize, or -1 if the inode has no extra space.
func (fs *ext4FS) extraISize(in *inode) int64 {
	if fs.inodeSize <= 128 {
		return -1
	}
	x := int64(binary.LittleEndian.Uint16(in.raw[0x80:]))
	if x < 4 || 128+x > fs.inodeSize || x%4 != 0 {
		return -1
	}
	return x
}

// extent is a run of logical blocks mapped to physical ones; a zero
// extent (uninitialized) reads as zeros.
type extent struct {
	logical, phys, n uint64
	zero             bool
}

// maxLogicalBlocks bounds a file's logical size: ext4 block numbers in a
// file are 32 bits.
const maxLogicalBlocks = 1 << 32

// extents returns the file's block mapping, sorted and non-overlapping.
func (fs *ext4FS) extents(in *inode) ([]extent, error) {
	nblocks := (in.size + uint64(fs.blockSize) - 1) / uint64(fs.blockSize)
	if nblocks > maxLogicalBlocks {
		return nil, corrupt("inode %d: size %d is beyond the ext4 maximum", in.num, in.size)
	}
	m := &mapper{fs: fs, in: in, budget: fs.blocksCount + 16}
	if in.flags&flagExtents != 0 {
		if err := m.extentNode(in.block, -1); err != nil {
			return nil, err
		}
	} else if err := m.blockMap(nblocks); err != nil {
		return nil, err
	}
	return m.out, nil
}

type mapper struct {
	fs     *ext4FS
	in     *inode
	out    []extent
	budget uint64 // tree nodes and extents left before the tree is called corrupt
	next   uint64 // lowest logical block the next extent may start at
}

func (m *mapper) add(e extent) error {
	if m.budget == 0 {
		return corrupt("inode %d: block map has more entries than the filesystem has blocks", m.in.num)
	}
	m.budget--
	if e.logical < m.next || e.logical+e.n > maxLogicalBlocks {
		return corrupt("inode %d: extent at logical block %d overlaps or is out of order", m.in.num, e.logical)
	}
	if !e.zero && (e.phys >= m.fs.blocksCount || m.fs.blocksCount-e.phys < e.n) {
		return corrupt("inode %d: extent maps blocks %d+%d outside the filesystem", m.in.num, e.phys, e.n)
	}
	m.next = e.logical + e.n
	if k := len(m.out); k > 0 {
		p := &m.out[k-1]
		if p.zero == e.zero && p.logical+p.n == e.logical && (e.zero || p.phys+p.n == e.phys) {
			p.n += e.n
			return nil
		}
	}
	m.out = append(m.out, e)
	return nil
}

// extentNode reads one extent tree node; wantDepth is -1 for the root.
func (m *mapper) extentNode(b []byte, wantDepth int) error {
	le := binary.LittleEndian
	if len(b) < 12 || le.Uint16(b) != 0xF30A {
		return corrupt("inode %d: bad extent header", m.in.num)
	}
	entries, max, depth := int(le.Uint16(b[2:])), int(le.Uint16(b[4:])), int(le.Uint16(b[6:]))
	if entries > max || 12+12*entries > len(b) || depth > 5 || (wantDepth >= 0 && depth != wantDepth) {
		return corrupt("inode %d: extent node with %d/%d entries at depth %d", m.in.num, entries, max, depth)
	}
	if m.budget == 0 {
		return corrupt("inode %d: extent tree has more nodes than the filesystem has blocks", m.in.num)
	}
	m.budget--
	for i := 0; i < entries; i++ {
		e := b[12+12*i:]
		logical := uint64(le.Uint32(e))
		if depth == 0 {
			n := uint64(le.Uint16(e[4:]))
			zero := false
			if n > 32768 {
				n -= 32768
				zero = true
			}
			phys := uint64(le.Uint16(e[6:]))<<32 | uint64(le.Uint32(e[8:]))
			if n == 0 {
				continue
			}
			if err := m.add(extent{logical: logical, phys: phys, n: n, zero: zero}); err != nil {
				return err
			}
			continue
		}
		child := uint64(le.Uint32(e[4:])) | uint64(le.Uint16(e[8:]))<<32
		blk := make([]byte, m.fs.blockSize)
		if err := m.fs.readBlock(child, blk); err != nil {
			return fmt.Errorf("inode %d extent tree: %w", m.in.num, err)
		}
		if err := m.extentNode(blk, depth-1); err != nil {
			return err
		}
	}
	return nil
}

// blockMap reads the ext2/ext3 direct and indirect block pointers.
func (m *mapper) blockMap(nblocks uint64) error {
	le := binary.LittleEndian
	per := uint64(m.fs.blockSize / 4)
	var logical uint64
	var walk func(ptr uint64, level int) error
	walk = func(ptr uint64, level int) error {
		span := uint64(1)
		for i := 0; i < level; i++ {
			span *= per
		}
		if logical >= nblocks {
			return nil
		}
		if ptr == 0 {
			logical += span
			return nil
		}
		if level == 0 {
			err := m.add(extent{logical: logical, phys: ptr, n: 1})
			logical++
			return err
		}
		if m.budget == 0 {
			return corrupt("inode %d: block map has more entries than the filesystem has blocks", m.in.num)
		}
		m.budget--
		blk := make([]byte, m.fs.blockSize)
		if err := m.fs.readBlock(ptr, blk); err != nil {
			return fmt.Errorf("inode %d block map: %w", m.in.num, err)
		}
		for i := uint64(0); i < per && logical < nblocks; i++ {
			if err := walk(uint64(le.Uint32(blk[4*i:])), level-1); err != nil {
				return err
			}
		}
		return nil
	}
	for i := 0; i < 15; i++ {
		level := 0
		if i >= 12 {
			level = i - 11
		}
		if err := walk(uint64(le.Uint32(m.in.block[4*i:])), level); err != nil {
			return err
		}
	}
	return nil
}

// inline reports whether the inode's data lives in i_block (inline data
// or a fast symlink) and returns it.
func (fs *ext4FS) inline(in *inode) ([]byte, bool, error) {
	if in.flags&flagInlineData != 0 {
		xs, err := fs.xattrs(in)
		if err != nil {
			return nil, true, err
		}
		data := append(append([]byte{}, in.block...), xs.systemData...)
		if in.size > uint64(len(data)) {
			return nil, true, corrupt("inode %d: inline data is %d bytes, size says %d", in.num, len(data), in.size)
		}
		return data[:in.size], true, nil
	}
	if in.typ() == sIFLNK && in.size < 60 {
		ea := uint64(0)
		if in.fileACL != 0 {
			ea = uint64(fs.clusterSize / 512)
		}
		if in.blocks <= ea || in.flags&flagExtents == 0 && in.blocks == 0 {
			return in.block[:in.size], true, nil
		}
	}
	return nil, false, nil
}

// copyData writes the file's content, size bytes, holes as zeros.
func (fs *ext4FS) copyData(ctx context.Context, in *inode, w io.Writer) error {
	if data, ok, err := fs.inline(in); ok || err != nil {
		if err != nil {
			return err
		}
		_, err = w.Write(data)
		return err
	}
	exts, err := fs.extents(in)
	if err != nil {
		return err
	}
	return fs.copyExtents(ctx, in, exts, w)
}

func (fs *ext4FS) copyExtents(ctx context.Context, in *inode, exts []extent, w io.Writer) error {
	const chunk = 1 << 20
	buf := make([]byte, min(chunk, max(in.size, 1)))
	bs := uint64(fs.blockSize)
	var pos uint64 // bytes written
	zeros := func(n uint64) error {
		clear(buf)
		for n > 0 {
			k := min(n, uint64(len(buf)))
			if _, err := w.Write(buf[:k]); err != nil {
				return err
			}
			n -= k
			pos += k
		}
		return nil
	}
	for _, e := range exts {
		start := e.logical * bs
		if start >= in.size {
			break
		}
		if err := zeros(start - pos); err != nil {
			return err
		}
		n := min(e.n*bs, in.size-start)
		if e.zero {
			if err := zeros(n); err != nil {
				return err
			}
			continue
		}
		off := int64(e.phys * bs)
		for n > 0 {
			if err := ctx.Err(); err != nil {
				return err
			}
			k := min(n, uint64(len(buf)))
			if _, err := fs.r.ReadAt(buf[:k], off); err != nil {
				return fmt.Errorf("%w: inode %d: reading at byte %d of the root partition: %v", ErrTruncated, in.num, off, err)
			}
			if _, err := w.Write(buf[:k]); err != nil {
				return err
			}
			n -= k
			pos += k
			off += int64(k)
		}
	}
	return zeros(in.size - pos)
}

// limitedBuffer collects up to max bytes, failing beyond.
type limitedBuffer struct {
	b   []byte
	max uint64
}

var errTooLong = errors.New("too long")

func (l *limitedBuffer) Write(p []byte) (int, error) {
	if uint64(len(l.b)+len(p)) > l.max {
		return 0, errTooLong
	}
	l.b = append(l.b, p...)
	return len(p), nil
}

// readSmall reads a whole directory, symlink target or xattr value inode,
// refusing sizes a real one does not have.
func (fs *ext4FS) readSmall(in *inode, max uint64, what string) ([]byte, error) {
	if in.size > max {
		return nil, corrupt("inode %d: %s of %d bytes", in.num, what, in.size)
	}
	lb := &limitedBuffer{max: max}
	if err := fs.copyData(context.Background(), in, lb); err != nil {
		return nil, err
	}
	return lb.b, nil
}

type dirent struct {
	name string
	ino  uint32
}

// maxDirEntries bounds one directory's entries; a million-entry
// directory is already far beyond any root filesystem's.
const maxDirEntries = 1 << 24

// readDir returns the directory's entries except "." and "..". Linear
// reading covers htree directories too: their index blocks look like one
// empty entry spanning the block. Blocks are parsed as they are read.
func (fs *ext4FS) readDir(in *inode) ([]dirent, error) {
	p := &dirParser{fs: fs, in: in}
	if data, ok, err := fs.inline(in); err != nil {
		return nil, err
	} else if ok {
		if in.flags&flagInlineData == 0 {
			return nil, corrupt("directory inode %d has no data blocks", in.num)
		}
		// 4 bytes of parent inode number, then entries to the end of
		// i_block, then more in system.data.
		if len(data) < 4 {
			return nil, corrupt("directory inode %d: inline directory of %d bytes", in.num, len(data))
		}
		first := min(len(data), 60)
		if err := p.parse(data[4:first]); err != nil {
			return nil, err
		}
		return p.out, p.parse(data[first:])
	}
	exts, err := fs.extents(in)
	if err != nil {
		return nil, err
	}
	// A directory is whole blocks with neither holes nor blocks shared
	// with itself: which also bounds what a hostile one makes us read.
	bs := uint64(fs.blockSize)
	if in.size%bs != 0 {
		return nil, corrupt("directory inode %d: size %d is not whole blocks", in.num, in.size)
	}
	var mapped uint64
	for i, e := range exts {
		if e.zero || e.logical != mapped/bs && e.logical*bs < in.size {
			return nil, corrupt("directory inode %d has a hole at block %d", in.num, mapped/bs)
		}
		mapped += e.n * bs
		for _, o := range exts[:i] {
			if e.phys < o.phys+o.n && o.phys < e.phys+e.n {
				return nil, corrupt("directory inode %d maps block %d twice", in.num, max(e.phys, o.phys))
			}
		}
	}
	if mapped < in.size {
		return nil, corrupt("directory inode %d: %d bytes but %d mapped", in.num, in.size, mapped)
	}
	if in.size > fs.dirBudget {
		return nil, corrupt("directory inode %d: the directories hold more bytes than the filesystem (blocks shared between directories)", in.num)
	}
	fs.dirBudget -= in.size
	if err := fs.copyExtents(context.Background(), in, exts, p); err != nil {
		return nil, err
	}
	return p.out, nil
}

// dirParser takes a directory's blocks as an io.Writer.
type dirParser struct {
	fs  *ext4FS
	in  *inode
	blk []byte
	out []dirent
}

func (p *dirParser) Write(b []byte) (int, error) {
	n := len(b)
	for len(b) > 0 {
		k := min(len(b), int(p.fs.blockSize)-len(p.blk))
		p.blk = append(p.blk, b[:k]...)
		b = b[k:]
		if len(p.blk) == int(p.fs.blockSize) {
			if err := p.parse(p.blk); err != nil {
				return 0, err
			}
			p.blk = p.blk[:0]
		}
	}
	return n, nil
}

func (p *dirParser) parse(b []byte) error {
	le := binary.LittleEndian
	for len(b) > 0 {
		if len(b) < 8 {
			return corrupt("directory inode %d: %d stray bytes at a block end", p.in.num, len(b))
		}
		ino := le.Uint32(b)
		rec := int(le.Uint16(b[4:]))
		if p.fs.blockSize == 65536 && (rec == 0 || rec == 65535) {
			rec = 65536
		}
		nameLen := int(b[6])
		if p.fs.incompat&0x2 == 0 { // no filetype feature: 16-bit name length
			nameLen |= int(b[7]) << 8
		}
		if rec < 8 || rec%4 != 0 || rec > len(b) || 8+nameLen > rec {
			return corrupt("directory inode %d: entry length %d (name %d) in %d bytes left", p.in.num, rec, nameLen, len(b))
		}
		name := string(b[8 : 8+nameLen])
		if ino != 0 && name != "." && name != ".." {
			if !validName(name) {
				return corrupt("directory inode %d: entry name %q", p.in.num, name)
			}
			if len(p.out) >= maxDirEntries {
				return corrupt("directory inode %d has more than %d entries", p.in.num, maxDirEntries)
			}
			p.out = append(p.out, dirent{name: name, ino: ino})
		}
		b = b[rec:]
	}
	return nil
}

func validName(n string) bool {
	if n == "" || n == "." || n == ".." {
		return false
	}
	for i := 0; i < len(n); i++ {
		if n[i] == '/' || n[i] == 0 {
			return false
		}
	}
	return true
}

// device returns the major and minor numbers of a device inode.
func device(in *inode) (major, minor int64) {
	le := binary.LittleEndian
	if old := le.Uint32(in.block); old != 0 {
		return int64(old >> 8 & 0xff), int64(old & 0xff)
	}
	d := le.Uint32(in.block[4:])
	return int64(d >> 8 & 0xfff), int64(d&0xff | d>>12&0xfff00)
}

func cstring(b []byte) string {
	for i, c := range b {
		if c == 0 {
			return string(b[:i])
		}
	}
	return string(b)
}
