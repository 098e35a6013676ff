package sdimage

import "errors"

// The kinds of bad input. Every error WriteTar returns for bad input wraps
// one of these (test with errors.Is) and reads as one line naming the file,
// what is wrong and what to do.
var (
	ErrNotDiskImage = errors.New("not a disk image")
	ErrNoMBR        = errors.New("no MBR partition table")
	ErrNoFAT        = errors.New("no FAT boot partition")
	ErrNoExt4       = errors.New("no ext4 root partition")
	ErrTruncatedXZ  = errors.New("truncated xz file")
	ErrCorruptXZ    = errors.New("corrupt xz file")
	ErrTruncated    = errors.New("truncated image")
	ErrCorrupt      = errors.New("corrupt filesystem")
)
