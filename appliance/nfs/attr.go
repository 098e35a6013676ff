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

// File types (ftype3).
const (
	typeReg  = 1
	typeDir  = 2
	typeBlk  = 3
	typeChr  = 4
	typeLnk  = 5
	typeSock = 6
	typeFifo = 7
)

func ftype(mode uint32) uint32 {
	switch mode & unix.S_IFMT {
	case unix.S_IFDIR:
		return typeDir
	case unix.S_IFBLK:
		return typeBlk
	case unix.S_IFCHR:
		return typeChr
	case unix.S_IFLNK:
		return typeLnk
	case unix.S_IFSOCK:
		return typeSock
	case unix.S_IFIFO:
		return typeFifo
	}
	return typeReg
}

// fattr3 writes the attributes of a file with fileid id.
func (e *export) fattr3(w *writer, st *unix.Stat_t, id uint64) {
	w.uint32(ftype(st.Mode))
	w.uint32(st.Mode & 0o7777)
	nlink := uint32(st.Nlink)
	if e.shared(st) {
		// The inode's count includes every view's links; the node sees
		// the image's own count.
		nlink = e.image.nlink[st.Ino]
	}
	w.uint32(nlink)
	w.uint32(st.Uid)
	w.uint32(st.Gid)
	w.uint64(uint64(st.Size))
	w.uint64(uint64(st.Blocks) * 512)
	w.uint32(unix.Major(st.Rdev))
	w.uint32(unix.Minor(st.Rdev))
	w.fixed(e.id[:]) // fsid
	w.uint64(id)
	w.uint32(uint32(st.Atim.Sec))
	w.uint32(uint32(st.Atim.Nsec))
	w.uint32(uint32(st.Mtim.Sec))
	w.uint32(uint32(st.Mtim.Nsec))
	w.uint32(uint32(st.Ctim.Sec))
	w.uint32(uint32(st.Ctim.Nsec))
}

// postOp writes post_op_attr for rel, or "no attributes" if it is gone.
func (e *export) postOp(w *writer, rel string) {
	st, err := e.lstat(rel)
	if err != nil {
		w.bool(false)
		return
	}
	w.bool(true)
	e.fattr3(w, &st, e.fileID(rel, &st))
}

func (e *export) postOpStat(w *writer, st *unix.Stat_t, id uint64) {
	w.bool(true)
	e.fattr3(w, st, id)
}

// preOp is wcc_attr, taken before a change, of the file with fileid id
// (known from its handle, so the post-op attributes need not work it out
// again).
type preOp struct {
	ok  bool
	st  unix.Stat_t
	rel string
	id  uint64
}

func (e *export) pre(rel string, id uint64) preOp {
	st, err := e.lstat(rel)
	return preOp{ok: err == nil, st: st, rel: rel, id: id}
}

// wcc writes wcc_data: the attributes before and after the change.
func (e *export) wcc(w *writer, p preOp) {
	w.bool(p.ok)
	if p.ok {
		w.uint64(uint64(p.st.Size))
		w.uint32(uint32(p.st.Mtim.Sec))
		w.uint32(uint32(p.st.Mtim.Nsec))
		w.uint32(uint32(p.st.Ctim.Sec))
		w.uint32(uint32(p.st.Ctim.Nsec))
	}
	st, err := e.lstat(p.rel)
	if err != nil {
		w.bool(false)
		return
	}
	id := p.id
	if id == 0 {
		id = e.fileID(p.rel, &st)
	}
	e.postOpStat(w, &st, id)
}

// sattr3 is a decoded set of attributes to change.
type sattr struct {
	mode, uid, gid   *uint32
	size             *uint64
	atime, mtime     uint32 // 0 don't change, 1 server time, 2 client time
	atimeTS, mtimeTS unix.Timespec
}

func readSattr(r *reader) sattr {
	var s sattr
	if r.bool() {
		v := r.uint32()
		s.mode = &v
	}
	if r.bool() {
		v := r.uint32()
		s.uid = &v
	}
	if r.bool() {
		v := r.uint32()
		s.gid = &v
	}
	if r.bool() {
		v := r.uint64()
		s.size = &v
	}
	s.atime = r.uint32()
	if s.atime == 2 {
		s.atimeTS = unix.Timespec{Sec: int64(r.uint32()), Nsec: int64(r.uint32())}
	}
	s.mtime = r.uint32()
	if s.mtime == 2 {
		s.mtimeTS = unix.Timespec{Sec: int64(r.uint32()), Nsec: int64(r.uint32())}
	}
	if s.atime > 2 || s.mtime > 2 {
		r.fail()
	}
	return s
}

func (s sattr) changesMetadata() bool {
	return s.mode != nil || s.uid != nil || s.gid != nil || s.size != nil || s.atime != 0 || s.mtime != 0
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
