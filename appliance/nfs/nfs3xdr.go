package nfs

import (
	"encoding/binary"

	"golang.org/x/sys/unix"
)

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

// time_how (RFC 1813 §2.5, set_atime and set_mtime).
const (
	dontChange   = 0
	toServerTime = 1
	toClientTime = 2
)

// sattr3 is a decoded set of attributes to change.
type sattr struct {
	mode, uid, gid   *uint32
	size             *uint64
	atime, mtime     uint32 // time_how: dontChange, toServerTime or toClientTime
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
	if s.atime == toClientTime {
		s.atimeTS = unix.Timespec{Sec: int64(r.uint32()), Nsec: int64(r.uint32())}
	}
	s.mtime = r.uint32()
	if s.mtime == toClientTime {
		s.mtimeTS = unix.Timespec{Sec: int64(r.uint32()), Nsec: int64(r.uint32())}
	}
	if s.atime > toClientTime || s.mtime > toClientTime {
		r.fail()
	}
	return s
}

func (s sattr) changesMetadata() bool {
	return s.mode != nil || s.uid != nil || s.gid != nil || s.size != nil || s.atime != 0 || s.mtime != 0
}

const (
	maxIO      = 1 << 20 // rtmax and wtmax
	maxName    = 255
	maxPathLen = 4096
	fhSize     = 64 // NFS3_FHSIZE
)

// Write stability (stable_how).
const (
	unstable = 0
	dataSync = 1
	fileSync = 2
)

// Create modes.
const (
	createUnchecked = 0
	createGuarded   = 1
	createExclusive = 2
)

// NFSv3 arguments and results (RFC 1813 §3.3), one type each, decoded
// and encoded here; nfs3proc.go works on them. A result's encoder writes
// the resok arm for NFS3_OK and the resfail arm for any other status, so
// a failure path only sets the status and what attributes it has.

// Argument decoders read into a; the caller checks r.err afterwards.

type fhArgs struct{ fh []byte } // GETATTR, READLINK, FSSTAT, FSINFO, PATHCONF

func (a *fhArgs) decode(r *reader) { a.fh = r.opaque(fhSize) }

type diropArgs struct {
	dir  []byte
	name string
}

func (a *diropArgs) decode(r *reader) {
	a.dir = r.opaque(fhSize)
	a.name = r.string(1024)
}

type setattrArgs struct {
	fh         []byte
	sa         sattr
	guard      bool
	guardCtime unix.Timespec
}

func (a *setattrArgs) decode(r *reader) {
	a.fh = r.opaque(fhSize)
	a.sa = readSattr(r)
	if a.guard = r.bool(); a.guard {
		a.guardCtime = unix.Timespec{Sec: int64(r.uint32()), Nsec: int64(r.uint32())}
	}
}

type accessArgs struct {
	fh     []byte
	access uint32
}

func (a *accessArgs) decode(r *reader) {
	a.fh = r.opaque(fhSize)
	a.access = r.uint32()
}

type readArgs struct {
	fh    []byte
	off   uint64
	count uint32
}

func (a *readArgs) decode(r *reader) {
	a.fh = r.opaque(fhSize)
	a.off = r.uint64()
	a.count = r.uint32()
}

type writeArgs struct {
	fh     []byte
	off    uint64
	count  uint32
	stable uint32
	data   []byte
}

func (a *writeArgs) decode(r *reader) {
	a.fh = r.opaque(fhSize)
	a.off = r.uint64()
	a.count = r.uint32()
	a.stable = r.uint32()
	a.data = r.opaque(maxIO)
	if a.stable > fileSync {
		r.fail()
	}
}

type createArgs struct {
	where diropArgs
	how   uint32
	sa    sattr  // UNCHECKED, GUARDED
	verf  []byte // EXCLUSIVE
}

func (a *createArgs) decode(r *reader) {
	a.where.decode(r)
	a.how = r.uint32()
	switch a.how {
	case createUnchecked, createGuarded:
		a.sa = readSattr(r)
	case createExclusive:
		a.verf = r.fixed(8)
	default:
		r.fail()
	}
}

type mkdirArgs struct {
	where diropArgs
	sa    sattr
}

func (a *mkdirArgs) decode(r *reader) {
	a.where.decode(r)
	a.sa = readSattr(r)
}

type symlinkArgs struct {
	where  diropArgs
	sa     sattr
	target string
}

func (a *symlinkArgs) decode(r *reader) {
	a.where.decode(r)
	a.sa = readSattr(r)
	a.target = r.string(maxPathLen)
}

type mknodArgs struct {
	where diropArgs
	ntype uint32
	sa    sattr
	rdev  uint64
}

func (a *mknodArgs) decode(r *reader) {
	a.where.decode(r)
	a.ntype = r.uint32()
	switch a.ntype {
	case typeChr, typeBlk:
		a.sa = readSattr(r)
		major, minor := r.uint32(), r.uint32()
		a.rdev = unix.Mkdev(major, minor)
	case typeSock, typeFifo:
		a.sa = readSattr(r)
	}
}

type renameArgs struct{ from, to diropArgs }

func (a *renameArgs) decode(r *reader) {
	a.from.decode(r)
	a.to.decode(r)
}

type linkArgs struct {
	file []byte
	link diropArgs
}

func (a *linkArgs) decode(r *reader) {
	a.file = r.opaque(fhSize)
	a.link.decode(r)
}

type readdirArgs struct {
	dir      []byte
	cookie   uint64
	verf     []byte
	dircount uint32 // READDIRPLUS only
	maxcount uint32 // READDIR: count
}

func (a *readdirArgs) decode(r *reader) {
	a.dir = r.opaque(fhSize)
	a.cookie = r.uint64()
	a.verf = r.fixed(8)
	a.maxcount = r.uint32()
}

type readdirplusArgs struct{ readdirArgs }

func (a *readdirplusArgs) decode(r *reader) {
	a.readdirArgs.decode(r)
	a.dircount, a.maxcount = a.maxcount, r.uint32()
}

type commitArgs struct {
	fh    []byte
	off   uint64
	count uint32
}

func (a *commitArgs) decode(r *reader) {
	a.fh = r.opaque(fhSize)
	a.off = r.uint64()
	a.count = r.uint32()
}

// Pieces of results.

// postOpAttr is post_op_attr: a file's attributes as known (ok), or none.
type postOpAttr struct {
	ok bool
	e  *export
	st unix.Stat_t
	id uint64
}

// attrsOf is o's attributes as its handle resolved; none for nil.
func attrsOf(o *obj) postOpAttr {
	if o == nil {
		return postOpAttr{}
	}
	return postOpAttr{ok: true, e: o.e, st: o.st, id: o.id}
}

func statAttrs(e *export, st *unix.Stat_t, id uint64) postOpAttr {
	return postOpAttr{ok: true, e: e, st: *st, id: id}
}

func (a *postOpAttr) encode(w *writer) {
	if !a.ok {
		w.bool(false)
		return
	}
	a.e.postOpStat(w, &a.st, a.id)
}

// currentAttrs is post_op_attr of a path looked up when the reply is
// written (after the change); none if it is gone or unset.
type currentAttrs struct {
	e   *export
	rel string
}

func (a *currentAttrs) encode(w *writer) {
	if a.e == nil {
		w.bool(false)
		return
	}
	a.e.postOp(w, a.rel)
}

// wccData is wcc_data. With e set: the attributes before the change and
// those of pre.rel after it, looked up when the reply is written. With e
// nil (the call failed before changing anything): no pre-op attributes
// and unchanged as the post-op ones.
type wccData struct {
	e         *export
	pre       preOp
	unchanged postOpAttr
}

// wccOf is the wcc_data of a change to the file pre describes.
func wccOf(e *export, pre preOp) wccData { return wccData{e: e, pre: pre} }

// wccNone is the wcc_data of a call that changed nothing in o.
func wccNone(o *obj) wccData { return wccData{unchanged: attrsOf(o)} }

func (d *wccData) encode(w *writer) {
	if d.e != nil {
		d.e.wcc(w, d.pre)
		return
	}
	w.bool(false)
	d.unchanged.encode(w)
}

// Results. encode writes the status and its arm and returns the status.

type getattrRes struct {
	status uint32
	obj    postOpAttr
}

func (r *getattrRes) encode(w *writer) uint32 {
	w.uint32(r.status)
	if r.status == nfsOK {
		r.obj.e.fattr3(w, &r.obj.st, r.obj.id)
	}
	return r.status
}

// wccRes is the result of SETATTR, REMOVE and RMDIR.
type wccRes struct {
	status uint32
	wcc    wccData
}

func (r *wccRes) encode(w *writer) uint32 {
	w.uint32(r.status)
	r.wcc.encode(w)
	return r.status
}

type lookupRes struct {
	status   uint32
	fh       []byte
	obj, dir postOpAttr
}

func (r *lookupRes) encode(w *writer) uint32 {
	w.uint32(r.status)
	if r.status == nfsOK {
		w.opaque(r.fh)
		r.obj.encode(w)
	}
	r.dir.encode(w)
	return r.status
}

type accessRes struct {
	status uint32
	obj    postOpAttr
	access uint32
}

func (r *accessRes) encode(w *writer) uint32 {
	w.uint32(r.status)
	r.obj.encode(w)
	if r.status == nfsOK {
		w.uint32(r.access)
	}
	return r.status
}

type readlinkRes struct {
	status uint32
	obj    postOpAttr
	target string
}

func (r *readlinkRes) encode(w *writer) uint32 {
	w.uint32(r.status)
	r.obj.encode(w)
	if r.status == nfsOK {
		w.string(r.target)
	}
	return r.status
}

// readRes reads the data straight into the reply when it is encoded, so
// it lands where it is sent from: fd is open on the file, and closed by
// encode. bytes counts what was read.
type readRes struct {
	status uint32
	file   postOpAttr
	fd     int
	off    uint64
	count  uint32
	size   int64 // the file's, for eof
	bytes  interface{ Add(float64) }
}

func (r *readRes) encode(w *writer) uint32 {
	head := len(w.b)
	w.uint32(r.status)
	r.file.encode(w)
	if r.status != nfsOK {
		return r.status
	}
	defer unix.Close(r.fd)
	countAt := len(w.b)
	w.uint32(0)
	w.bool(false)
	w.uint32(0)
	dataAt := len(w.b)
	w.b = grow(w.b, int(r.count)+3)
	n := 0
	for n < int(r.count) {
		m, err := unix.Pread(r.fd, w.b[dataAt+n:dataAt+int(r.count)], int64(r.off)+int64(n))
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			w.b = w.b[:head]
			r.status = status(err)
			w.uint32(r.status)
			r.file.encode(w)
			return r.status
		}
		if m == 0 {
			break
		}
		n += m
	}
	eof := r.off+uint64(n) >= uint64(r.size)
	binary.BigEndian.PutUint32(w.b[countAt:], uint32(n))
	if eof {
		binary.BigEndian.PutUint32(w.b[countAt+4:], 1)
	}
	binary.BigEndian.PutUint32(w.b[countAt+8:], uint32(n))
	w.b = w.b[:dataAt+(n+3)&^3]
	for i := dataAt + n; i < len(w.b); i++ {
		w.b[i] = 0
	}
	r.bytes.Add(float64(n))
	return r.status
}

type writeRes struct {
	status    uint32
	wcc       wccData
	count     uint32
	committed uint32
	verf      [8]byte
}

func (r *writeRes) encode(w *writer) uint32 {
	w.uint32(r.status)
	r.wcc.encode(w)
	if r.status == nfsOK {
		w.uint32(r.count)
		w.uint32(r.committed)
		w.fixed(r.verf[:])
	}
	return r.status
}

// createRes is the result of CREATE, MKDIR, SYMLINK and MKNOD.
type createRes struct {
	status uint32
	fh     []byte
	obj    postOpAttr
	dir    wccData
}

func (r *createRes) encode(w *writer) uint32 {
	w.uint32(r.status)
	if r.status == nfsOK {
		w.bool(true)
		w.opaque(r.fh)
		r.obj.encode(w)
	}
	r.dir.encode(w)
	return r.status
}

type renameRes struct {
	status   uint32
	from, to wccData
}

func (r *renameRes) encode(w *writer) uint32 {
	w.uint32(r.status)
	r.from.encode(w)
	r.to.encode(w)
	return r.status
}

type linkRes struct {
	status uint32
	file   currentAttrs
	dir    wccData
}

func (r *linkRes) encode(w *writer) uint32 {
	w.uint32(r.status)
	r.file.encode(w)
	r.dir.encode(w)
	return r.status
}

// readdirRes lists the directory into the reply when it is encoded (the
// listing stops where the reply is full): list writes the resok arm
// after the status, which starts at start, and returns the status, which
// may turn out another.
type readdirRes struct {
	status uint32
	dir    postOpAttr
	list   func(w *writer, start int) uint32
}

func (r *readdirRes) encode(w *writer) uint32 {
	if r.status == nfsOK {
		start := len(w.b)
		w.uint32(nfsOK)
		if st := r.list(w, start); st != nfsOK {
			w.b = w.b[:start]
			r.status = st
		} else {
			return nfsOK
		}
	}
	w.uint32(r.status)
	r.dir.encode(w)
	return r.status
}

type fsstatRes struct {
	status uint32
	obj    postOpAttr
	sf     unix.Statfs_t
}

func (r *fsstatRes) encode(w *writer) uint32 {
	w.uint32(r.status)
	r.obj.encode(w)
	if r.status != nfsOK {
		return r.status
	}
	bs := uint64(r.sf.Bsize)
	w.uint64(r.sf.Blocks * bs)
	w.uint64(r.sf.Bfree * bs)
	w.uint64(r.sf.Bavail * bs)
	w.uint64(r.sf.Files)
	w.uint64(r.sf.Ffree)
	w.uint64(r.sf.Ffree)
	w.uint32(0) // invarsec: the file system changes any time
	return r.status
}

type fsinfoRes struct {
	status uint32
	obj    postOpAttr
}

func (r *fsinfoRes) encode(w *writer) uint32 {
	w.uint32(r.status)
	r.obj.encode(w)
	if r.status != nfsOK {
		return r.status
	}
	w.uint32(maxIO) // rtmax
	w.uint32(maxIO) // rtpref
	w.uint32(4096)  // rtmult
	w.uint32(maxIO) // wtmax
	w.uint32(maxIO) // wtpref
	w.uint32(4096)  // wtmult
	w.uint32(64 << 10)
	w.uint64(1<<63 - 1)
	w.uint32(0)
	w.uint32(1)                         // time_delta: 1 ns
	w.uint32(0x01 | 0x02 | 0x08 | 0x10) // LINK, SYMLINK, HOMOGENEOUS, CANSETTIME
	return r.status
}

type pathconfRes struct {
	status uint32
	obj    postOpAttr
}

func (r *pathconfRes) encode(w *writer) uint32 {
	w.uint32(r.status)
	r.obj.encode(w)
	if r.status != nfsOK {
		return r.status
	}
	w.uint32(65000) // linkmax (ext4)
	w.uint32(maxName)
	w.bool(true)  // no_trunc
	w.bool(true)  // chown_restricted
	w.bool(false) // case_insensitive
	w.bool(true)  // case_preserving
	return r.status
}

type commitRes struct {
	status uint32
	wcc    wccData
	verf   [8]byte
}

func (r *commitRes) encode(w *writer) uint32 {
	w.uint32(r.status)
	r.wcc.encode(w)
	if r.status == nfsOK {
		w.fixed(r.verf[:])
	}
	return r.status
}
