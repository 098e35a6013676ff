package sdimage

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"strings"
	"time"
	"unicode/utf16"
)

// Read-only FAT16/FAT32, as written by mkfs.vfat and the Raspberry Pi
// Imager (Microsoft's "FAT: General Overview of On-Disk Format" layout).

type fatFS struct {
	r           io.ReaderAt
	fat32       bool
	clusterSize int64
	dataStart   int64  // byte offset of cluster 2
	rootStart   int64  // FAT16: byte offset of the fixed root directory
	rootSize    int64  // FAT16: its size
	rootCluster uint32 // FAT32
	clusters    uint32 // data clusters; valid numbers are 2..clusters+1
	fat         []byte
	label       string
	// dirBudget is the directory bytes left to read; as in ext4FS, a
	// valid tree's directories fit in the partition.
	dirBudget int64
}

func fatCorrupt(format string, args ...any) error {
	return fmt.Errorf("%w: boot partition: %s", ErrCorrupt, fmt.Sprintf(format, args...))
}

// openFAT reads the boot sector and the first FAT. A partition without a
// FAT boot sector gets ErrNoFAT.
func openFAT(r io.ReaderAt, size int64) (*fatFS, error) {
	var bs [512]byte
	if _, err := r.ReadAt(bs[:], 0); err != nil {
		return nil, fmt.Errorf("%w: reading the boot sector: %v", ErrNoFAT, err)
	}
	le := binary.LittleEndian
	bps := int64(le.Uint16(bs[11:]))
	spc := int64(bs[13])
	reserved := int64(le.Uint16(bs[14:]))
	nfats := int64(bs[16])
	rootEnts := int64(le.Uint16(bs[17:]))
	total := int64(le.Uint16(bs[19:]))
	if total == 0 {
		total = int64(le.Uint32(bs[32:]))
	}
	fatSz := int64(le.Uint16(bs[22:]))
	if fatSz == 0 {
		fatSz = int64(le.Uint32(bs[36:]))
	}
	if bs[510] != 0x55 || bs[511] != 0xAA || bps < 512 || bps > 4096 || bps&(bps-1) != 0 ||
		spc == 0 || spc&(spc-1) != 0 || reserved == 0 || nfats == 0 || fatSz == 0 || total == 0 {
		return nil, fmt.Errorf("%w: no FAT boot sector at its start", ErrNoFAT)
	}
	if total*bps > size {
		return nil, fmt.Errorf("%w: the FAT filesystem has %d bytes but its partition only %d", ErrTruncated, total*bps, size)
	}
	rootSectors := (rootEnts*32 + bps - 1) / bps
	dataSector := reserved + nfats*fatSz + rootSectors
	if dataSector >= total {
		return nil, fatCorrupt("FAT boot sector: data area starts at sector %d of %d", dataSector, total)
	}
	fs := &fatFS{r: r, clusterSize: spc * bps, dataStart: dataSector * bps, dirBudget: size}
	n := (total - dataSector) / spc
	if n < 4085 {
		return nil, fmt.Errorf("%w: the boot partition is FAT12 (%d clusters); only FAT16 and FAT32 are read", ErrNoFAT, n)
	}
	fs.fat32 = n >= 65525
	if n > 0x0FFFFFF5 {
		return nil, fatCorrupt("%d clusters", n)
	}
	fs.clusters = uint32(n)
	entry := int64(2)
	if fs.fat32 {
		entry = 4
		fs.rootCluster = le.Uint32(bs[44:]) & 0x0FFFFFFF
		fs.label = strings.TrimRight(string(bs[71:82]), " ")
	} else {
		fs.rootStart = (reserved + nfats*fatSz) * bps
		fs.rootSize = rootSectors * bps
		fs.label = strings.TrimRight(string(bs[43:54]), " ")
	}
	need := (n + 2) * entry
	if fatSz*bps < need {
		return nil, fatCorrupt("the FAT holds %d bytes, %d clusters need %d", fatSz*bps, n, need)
	}
	fs.fat = make([]byte, need)
	if _, err := r.ReadAt(fs.fat, reserved*bps); err != nil {
		return nil, fmt.Errorf("%w: reading the FAT: %v", ErrTruncated, err)
	}
	return fs, nil
}

// next returns the cluster after c, or 0 at the chain's end.
func (fs *fatFS) next(c uint32) (uint32, error) {
	var v uint32
	if fs.fat32 {
		v = binary.LittleEndian.Uint32(fs.fat[4*c:]) & 0x0FFFFFFF
		if v >= 0x0FFFFFF8 {
			return 0, nil
		}
	} else {
		v = uint32(binary.LittleEndian.Uint16(fs.fat[2*c:]))
		if v >= 0xFFF8 {
			return 0, nil
		}
	}
	if v < 2 || v > fs.clusters+1 {
		return 0, fatCorrupt("cluster %d is followed by %#x in the FAT", c, v)
	}
	return v, nil
}

// chain returns the clusters of a file or directory starting at c.
func (fs *fatFS) chain(c uint32) ([]uint32, error) {
	var out []uint32
	for c != 0 {
		if c < 2 || c > fs.clusters+1 {
			return nil, fatCorrupt("cluster number %d is outside 2..%d", c, fs.clusters+1)
		}
		if uint32(len(out)) > fs.clusters {
			return nil, fatCorrupt("cluster chain loops")
		}
		out = append(out, c)
		var err error
		if c, err = fs.next(c); err != nil {
			return nil, err
		}
	}
	return out, nil
}

func (fs *fatFS) clusterOffset(c uint32) int64 {
	return fs.dataStart + int64(c-2)*fs.clusterSize
}

type fatEntry struct {
	name    string
	dir     bool
	cluster uint32
	size    uint32
	mtime   time.Time
}

// maxFATDir bounds a directory: FAT allows 65536 entries of 32 bytes.
const maxFATDir = 65536 * 32

func (fs *fatFS) readDir(cluster uint32, root bool) ([]fatEntry, error) {
	var data []byte
	if root && !fs.fat32 {
		data = make([]byte, fs.rootSize)
		if _, err := fs.r.ReadAt(data, fs.rootStart); err != nil {
			return nil, fmt.Errorf("%w: reading the FAT root directory: %v", ErrTruncated, err)
		}
	} else {
		cs, err := fs.chain(cluster)
		if err != nil {
			return nil, err
		}
		if int64(len(cs))*fs.clusterSize > maxFATDir {
			return nil, fatCorrupt("directory of %d clusters", len(cs))
		}
		if int64(len(cs))*fs.clusterSize > fs.dirBudget {
			return nil, fatCorrupt("the directories hold more bytes than the partition (clusters shared between directories)")
		}
		fs.dirBudget -= int64(len(cs)) * fs.clusterSize
		data = make([]byte, int64(len(cs))*fs.clusterSize)
		for i, c := range cs {
			if _, err := fs.r.ReadAt(data[int64(i)*fs.clusterSize:int64(i+1)*fs.clusterSize], fs.clusterOffset(c)); err != nil {
				return nil, fmt.Errorf("%w: reading FAT cluster %d: %v", ErrTruncated, c, err)
			}
		}
	}
	le := binary.LittleEndian
	var out []fatEntry
	var lfn []uint16
	var lfnSum byte
	lfnNext := 0 // sequence number the next long-name entry must have
	for off := 0; off+32 <= len(data); off += 32 {
		e := data[off : off+32]
		if e[0] == 0 {
			break
		}
		if e[0] == 0xE5 {
			lfn, lfnNext = nil, 0
			continue
		}
		attr := e[11]
		if attr&0x3F == 0x0F {
			seq := int(e[0] & 0x1F)
			if e[0]&0x40 != 0 {
				lfn = make([]uint16, 13*seq)
				lfnSum = e[13]
				lfnNext = seq
			}
			if seq == 0 || seq != lfnNext || e[13] != lfnSum || len(lfn) < 13*seq {
				lfn, lfnNext = nil, 0
				continue
			}
			part := lfn[13*(seq-1):]
			for i := 0; i < 5; i++ {
				part[i] = le.Uint16(e[1+2*i:])
			}
			for i := 0; i < 6; i++ {
				part[5+i] = le.Uint16(e[14+2*i:])
			}
			for i := 0; i < 2; i++ {
				part[11+i] = le.Uint16(e[28+2*i:])
			}
			lfnNext--
			continue
		}
		long := lfn
		complete := lfnNext == 0 && long != nil
		lfn, lfnNext = nil, 0
		if attr&0x08 != 0 { // volume label
			continue
		}
		short := e[:11]
		if short[0] == '.' {
			continue
		}
		var name string
		if complete && shortSum(short) == lfnSum {
			name = lfnString(long)
		} else {
			name = shortName(short, e[12])
		}
		if !validName(name) {
			return nil, fatCorrupt("directory entry name %q", name)
		}
		c := uint32(le.Uint16(e[20:]))<<16 | uint32(le.Uint16(e[26:]))
		if !fs.fat32 {
			c &= 0xFFFF
		}
		out = append(out, fatEntry{
			name:    name,
			dir:     attr&0x10 != 0,
			cluster: c,
			size:    le.Uint32(e[28:]),
			mtime:   fatTime(le.Uint16(e[24:]), le.Uint16(e[22:])),
		})
	}
	return out, nil
}

func shortSum(n []byte) byte {
	var s byte
	for _, c := range n {
		s = (s&1)<<7 + s>>1 + c
	}
	return s
}

func lfnString(u []uint16) string {
	for i, c := range u {
		if c == 0 {
			u = u[:i]
			break
		}
	}
	return string(utf16.Decode(u))
}

// shortName renders an 8.3 name as Linux's vfat does by default: NT
// reserved bits 3 and 4 ask for a lower-case base and extension.
func shortName(n []byte, nt byte) string {
	b := append([]byte{}, n...)
	if b[0] == 0x05 {
		b[0] = 0xE5
	}
	base := strings.TrimRight(string(b[:8]), " ")
	ext := strings.TrimRight(string(b[8:11]), " ")
	if nt&0x08 != 0 {
		base = strings.ToLower(base)
	}
	if nt&0x10 != 0 {
		ext = strings.ToLower(ext)
	}
	if ext == "" {
		return base
	}
	return base + "." + ext
}

// fatTime reads a FAT date and time; FAT has no zone, the Pi writes UTC.
func fatTime(d, t uint16) time.Time {
	year, month, day := 1980+int(d>>9), time.Month(d>>5&0xF), int(d&0x1F)
	if month < 1 || month > 12 || day < 1 {
		return time.Date(1980, 1, 1, 0, 0, 0, 0, time.UTC)
	}
	return time.Date(year, month, day, int(t>>11), int(t>>5&0x3F), 2*int(t&0x1F), 0, time.UTC)
}

// copyFile writes a file's content: its chain must hold its size.
func (fs *fatFS) copyFile(ctx context.Context, e fatEntry, w io.Writer) error {
	if e.size == 0 {
		return nil
	}
	cs, err := fs.chain(e.cluster)
	if err != nil {
		return fmt.Errorf("%s: %w", pq(e.name), err)
	}
	if int64(len(cs))*fs.clusterSize < int64(e.size) {
		return fatCorrupt("file %q has %d bytes but its cluster chain only %d", e.name, e.size, int64(len(cs))*fs.clusterSize)
	}
	buf := make([]byte, 1<<20)
	left := int64(e.size)
	for i := 0; i < len(cs) && left > 0; {
		if err := ctx.Err(); err != nil {
			return err
		}
		// Read runs of consecutive clusters at once.
		j := i + 1
		for j < len(cs) && cs[j] == cs[j-1]+1 && int64(j-i+1)*fs.clusterSize <= int64(len(buf)) {
			j++
		}
		n := min(int64(j-i)*fs.clusterSize, left, int64(len(buf)))
		if _, err := fs.r.ReadAt(buf[:n], fs.clusterOffset(cs[i])); err != nil {
			return fmt.Errorf("%w: reading FAT cluster %d: %v", ErrTruncated, cs[i], err)
		}
		if _, err := w.Write(buf[:n]); err != nil {
			return err
		}
		left -= n
		i = j
	}
	return nil
}
