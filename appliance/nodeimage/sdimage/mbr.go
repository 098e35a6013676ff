package sdimage

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

const sectorSize = 512

// partition is one primary MBR partition, in bytes from the image start.
type partition struct {
	index  int // 1-based, as in PARTUUID=<id>-0<index>
	typ    byte
	offset int64
	size   int64
}

// readMBR returns the used primary partitions of the image. Extended
// partitions are not followed: SD-card images have two primaries.
func readMBR(r io.ReaderAt, size int64) ([]partition, error) {
	if size < sectorSize {
		return nil, fmt.Errorf("%w: %d bytes is shorter than one 512-byte sector", ErrNotDiskImage, size)
	}
	var s [sectorSize]byte
	if _, err := r.ReadAt(s[:], 0); err != nil {
		return nil, fmt.Errorf("%w: reading the first sector: %v", ErrNotDiskImage, err)
	}
	if isExt(r) {
		return nil, fmt.Errorf("%w: it is a bare ext4 filesystem (one partition's image); import the whole SD-card image", ErrNotDiskImage)
	}
	if s[510] != 0x55 || s[511] != 0xAA {
		return nil, fmt.Errorf("%w: the first sector has no 55 AA boot signature (want a raw SD-card .img or .img.xz)", ErrNotDiskImage)
	}
	if _, err := openFAT(bytesReaderAt(s[:]), sectorSize); err == nil || errors.Is(err, ErrTruncated) {
		return nil, fmt.Errorf("%w: the first sector is a FAT boot sector: this is a bare FAT filesystem (one partition's image); import the whole SD-card image", ErrNoMBR)
	}
	var parts []partition
	for i := 0; i < 4; i++ {
		e := s[446+16*i : 446+16*(i+1)]
		status, typ := e[0], e[4]
		start := int64(binary.LittleEndian.Uint32(e[8:]))
		n := int64(binary.LittleEndian.Uint32(e[12:]))
		if status != 0 && status != 0x80 {
			return nil, fmt.Errorf("%w: partition entry %d has status byte %#02x (a filesystem boot sector rather than a partitioned disk?)", ErrNoMBR, i+1, status)
		}
		if typ == 0xEE {
			return nil, fmt.Errorf("%w: the disk uses GPT (protective MBR entry); only MBR SD-card images are read", ErrNoMBR)
		}
		if typ == 0 || n == 0 {
			continue
		}
		if start == 0 {
			return nil, fmt.Errorf("%w: partition %d starts at sector 0, over the partition table", ErrNoMBR, i+1)
		}
		p := partition{index: i + 1, typ: typ, offset: start * sectorSize, size: n * sectorSize}
		if end := p.offset + p.size; end > size {
			return nil, fmt.Errorf("%w: partition %d ends at byte %d but the image has only %d bytes (incomplete download or copy?)", ErrTruncated, p.index, end, size)
		}
		parts = append(parts, p)
	}
	if len(parts) == 0 {
		return nil, fmt.Errorf("%w: all four partition entries are empty", ErrNoMBR)
	}
	return parts, nil
}

// isFATType and isLinuxType name the MBR types a Pi image uses; the
// contents are checked as well, so a mislabelled partition is still found.
func isFATType(t byte) bool {
	switch t {
	case 0x01, 0x04, 0x06, 0x0B, 0x0C, 0x0E:
		return true
	}
	return false
}

// bytesReaderAt reads the first sector again for openFAT's check, which
// only needs the boot sector to tell a FAT filesystem.
func bytesReaderAt(b []byte) io.ReaderAt { return bytes.NewReader(b) }
