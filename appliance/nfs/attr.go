package nfs

import (
	"errors"
	"os"

	"golang.org/x/sys/unix"
)

// NFSv3 status codes (RFC 1813 §2.6).
const (
	nfsOK          = 0
	errPerm        = 1
	errNoEnt       = 2
	errIO          = 5
	errNXIO        = 6
	errAcces       = 13
	errExist       = 17
	errXDev        = 18
	errNotDir      = 20
	errIsDir       = 21
	errInval       = 22
	errFBig        = 27
	errNoSpc       = 28
	errROFS        = 30
	errMLink       = 31
	errNameTooLong = 63
	errNotEmpty    = 66
	errDQuot       = 69
	errStaleFH     = 70
	errBadHandle   = 10001
	errNotSync     = 10002
	errBadCookie   = 10003
	errNotSupp     = 10004
	errTooSmall    = 10005
	errServerFault = 10006
	errBadType     = 10007
)

// status maps an error from the file system to an NFS status.
func status(err error) uint32 {
	if err == nil {
		return nfsOK
	}
	if errors.Is(err, errStale) {
		return errStaleFH
	}
	var en unix.Errno
	if !errors.As(err, &en) {
		if errors.Is(err, os.ErrNotExist) {
			return errNoEnt
		}
		return errIO
	}
	switch en {
	case unix.EPERM:
		return errPerm
	case unix.ENOENT:
		return errNoEnt
	case unix.ENXIO:
		return errNXIO
	case unix.EACCES:
		return errAcces
	case unix.EEXIST:
		return errExist
	case unix.EXDEV:
		return errXDev
	case unix.ENOTDIR:
		return errNotDir
	case unix.EISDIR:
		return errIsDir
	case unix.EINVAL:
		return errInval
	case unix.EFBIG:
		return errFBig
	case unix.ENOSPC:
		return errNoSpc
	case unix.EROFS:
		return errROFS
	case unix.EMLINK:
		return errMLink
	case unix.ENAMETOOLONG:
		return errNameTooLong
	case unix.ENOTEMPTY:
		return errNotEmpty
	case unix.EDQUOT:
		return errDQuot
	case unix.ESTALE:
		return errStaleFH
	case unix.ELOOP:
		// A symlink where the path needs a directory: RESOLVE_NO_SYMLINKS
		// refused to follow it.
		return errNotDir
	case unix.ENOTSUP:
		return errNotSupp
	}
	return errIO
}

// Permission bits as in access(2).
const (
	mayRead  = 4
	mayWrite = 2
	mayExec  = 1
)

// permitted applies the mode bits of st to the caller. Root may do
// anything but execute a file with no execute bit at all.
func permitted(st *unix.Stat_t, c cred, want uint32) bool {
	mode := st.Mode
	if c.uid == 0 {
		if want&mayExec != 0 && mode&unix.S_IFMT != unix.S_IFDIR && mode&0o111 == 0 {
			return false
		}
		return true
	}
	var bits uint32
	switch {
	case c.uid == st.Uid:
		bits = mode >> 6 & 7
	case c.inGroup(st.Gid):
		bits = mode >> 3 & 7
	default:
		bits = mode & 7
	}
	return bits&want == want
}

// ACCESS3 bits.
const (
	accessRead    = 0x01
	accessLookup  = 0x02
	accessModify  = 0x04
	accessExtend  = 0x08
	accessDelete  = 0x10
	accessExecute = 0x20
)

func accessBits(st *unix.Stat_t, c cred, asked uint32) uint32 {
	var got uint32
	isDir := st.Mode&unix.S_IFMT == unix.S_IFDIR
	if permitted(st, c, mayRead) {
		got |= accessRead
	}
	if isDir {
		if permitted(st, c, mayExec) {
			got |= accessLookup
		}
		if permitted(st, c, mayWrite|mayExec) {
			got |= accessModify | accessExtend | accessDelete
		}
	} else {
		if permitted(st, c, mayWrite) {
			got |= accessModify | accessExtend
		}
		if permitted(st, c, mayExec) {
			got |= accessExecute
		}
	}
	return got & asked
}
