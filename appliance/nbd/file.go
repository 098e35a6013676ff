package nbd

import (
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// File is an Export on a regular file or a block device: pread and pwrite,
// fdatasync for Flush, a punched hole for Trim. It keeps no cache of its
// own, so several connections may share the file (NBD_FLAG_CAN_MULTI_CONN):
// the kernel's page cache is the only one, and fdatasync writes back every
// opener's data.
type File struct {
	f    *os.File
	size int64
}

// NewFile makes an Export of f, of f's size now; Close closes f.
func NewFile(f *os.File) (*File, error) {
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	size := fi.Size()
	switch {
	case fi.Mode().IsRegular():
	case fi.Mode()&os.ModeDevice != 0 && fi.Mode()&os.ModeCharDevice == 0:
		// A block device's Stat size is 0; its end is its size.
		if size, err = f.Seek(0, io.SeekEnd); err != nil {
			return nil, fmt.Errorf("size of %s: %w", f.Name(), err)
		}
	default:
		return nil, fmt.Errorf("%s is neither a regular file nor a block device (%v)", f.Name(), fi.Mode().Type())
	}
	return &File{f: f, size: size}, nil
}

func (x *File) ReadAt(p []byte, off int64) (int, error)  { return x.f.ReadAt(p, off) }
func (x *File) WriteAt(p []byte, off int64) (int, error) { return x.f.WriteAt(p, off) }
func (x *File) Size() int64                              { return x.size }
func (x *File) Close() error                             { return x.f.Close() }
func (x *File) MultiConn() bool                          { return true }

// Flush is fdatasync: the data and what is needed to read it back (the
// allocation of a sparse file's blocks), not the timestamps.
func (x *File) Flush() error {
	return x.control("fdatasync", func(fd int) error { return unix.Fdatasync(fd) })
}

// Trim punches a hole; the range then reads as zeroes. A file system that
// cannot punch holes returns EOPNOTSUPP, on which the server writes zeroes
// for NBD_CMD_WRITE_ZEROES and ignores NBD_CMD_TRIM.
func (x *File) Trim(off, length int64) error {
	return x.control("fallocate(PUNCH_HOLE)", func(fd int) error {
		return unix.Fallocate(fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, length)
	})
}

func (x *File) control(what string, f func(fd int) error) error {
	rc, err := x.f.SyscallConn()
	if err != nil {
		return err
	}
	var ferr error
	if err := rc.Control(func(fd uintptr) {
		for {
			if ferr = f(int(fd)); ferr != unix.EINTR {
				return
			}
		}
	}); err != nil {
		return err
	}
	if ferr != nil {
		return &os.PathError{Op: what, Path: x.f.Name(), Err: ferr}
	}
	return nil
}
