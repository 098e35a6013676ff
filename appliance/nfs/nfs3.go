package nfs

import (
	"encoding/binary"
	"path"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

const (
	maxIO      = 1 << 20 // rtmax and wtmax
	maxName    = 255
	maxPathLen = 4096
	fhSize     = 64 // NFS3_FHSIZE
)

// obj is a file a handle resolved to.
type obj struct {
	e   *export
	rel string
	st  unix.Stat_t
	id  uint64
}

func (o *obj) isDir() bool { return o.st.Mode&unix.S_IFMT == unix.S_IFDIR }

// attrs writes post_op_attr for o, or "none" if its handle did not resolve.
func (o *obj) attrs(w *writer) {
	if o == nil {
		w.bool(false)
		return
	}
	o.e.postOpStat(w, &o.st, o.id)
}

// handle reads a file handle argument and resolves it.
func (s *Server) handle(c *call) (*obj, uint32) {
	h := c.args.opaque(fhSize)
	if c.args.err != nil {
		return nil, errBadHandle
	}
	exp, gen, id, ok := s.key.parse(h)
	if !ok {
		return nil, errBadHandle
	}
	e := s.exportByID(exp)
	if e == nil || e.gen != gen || !s.allowed(e, c.remote.Addr()) {
		return nil, errStaleFH
	}
	rel, st, err := e.path(id)
	if err != nil {
		return nil, errStaleFH
	}
	return &obj{e: e, rel: rel, st: st, id: id}, nfsOK
}

// checkName validates a name a client wants to create or look up.
func checkName(name string) uint32 {
	switch {
	case name == "" || strings.ContainsAny(name, "/\x00"):
		return errInval
	case len(name) > maxName:
		return errNameTooLong
	case strings.HasPrefix(name, copyPrefix):
		return errAcces
	}
	return nfsOK
}

// inDir checks a call that uses a name in directory d: d is a directory,
// the name is acceptable (nameSt) and the caller has want on d.
func inDir(d *obj, c cred, want uint32, nameSt uint32) uint32 {
	switch {
	case !d.isDir():
		return errNotDir
	case nameSt != nfsOK:
		return nameSt
	case !permitted(&d.st, c, want):
		return errAcces
	}
	return nfsOK
}

func createName(name string) uint32 {
	if name == "." || name == ".." {
		return errExist
	}
	return checkName(name)
}

func join(dir, name string) string {
	if dir == "" {
		return name
	}
	return dir + "/" + name
}

func (s *Server) getattr(c *call, w *writer) bool {
	o, st := s.handle(c)
	if c.args.err != nil {
		return false
	}
	w.uint32(st)
	if st == nfsOK {
		o.e.fattr3(w, &o.st, o.id)
	}
	return true
}

func (s *Server) setattr(c *call, w *writer) bool {
	o, st := s.handle(c)
	sa := readSattr(&c.args)
	var guardCtime unix.Timespec
	guard := c.args.bool()
	if guard {
		guardCtime = unix.Timespec{Sec: int64(c.args.uint32()), Nsec: int64(c.args.uint32())}
	}
	if c.args.err != nil {
		return false
	}
	if st != nfsOK {
		w.uint32(st)
		w.bool(false)
		w.bool(false)
		return true
	}
	o.e.mu.Lock()
	defer o.e.mu.Unlock()
	pre := o.e.pre(o.rel, o.id)
	if guard && (uint32(pre.st.Ctim.Sec) != uint32(guardCtime.Sec) || uint32(pre.st.Ctim.Nsec) != uint32(guardCtime.Nsec)) {
		w.uint32(errNotSync)
		o.e.wcc(w, pre)
		return true
	}
	err := s.applySattr(o, c.cred, sa, false)
	if err == nil {
		err = o.e.commitMeta(o.rel, &o.st)
	}
	w.uint32(status(err))
	o.e.wcc(w, pre)
	return true
}

// applySattr changes attributes as the caller. created skips the owner
// checks for a file the caller just made. Callers hold e.mu.
func (s *Server) applySattr(o *obj, c cred, sa sattr, created bool) error {
	if !sa.changesMetadata() {
		return nil
	}
	e := o.e
	st, err := e.breakLink(o.rel)
	if err != nil {
		return err
	}
	owner := c.uid == 0 || c.uid == st.Uid || created
	isLink := st.Mode&unix.S_IFMT == unix.S_IFLNK
	if sa.size != nil {
		if st.Mode&unix.S_IFMT == unix.S_IFDIR {
			return unix.EISDIR
		}
		if st.Mode&unix.S_IFMT != unix.S_IFREG {
			return unix.EINVAL
		}
		if !owner && !permitted(&st, c, mayWrite) {
			return unix.EACCES
		}
		fd, err := e.open(o.rel, unix.O_WRONLY)
		if err != nil {
			return err
		}
		err = unix.Ftruncate(fd, int64(*sa.size))
		unix.Close(fd)
		if err != nil {
			return err
		}
	}
	dir, base := path.Split(o.rel)
	var dfd int
	if o.rel == "" {
		dfd, base = e.rootFd, "."
	} else {
		dfd, err = e.open(strings.TrimSuffix(dir, "/"), unix.O_PATH|unix.O_DIRECTORY)
		if err != nil {
			return err
		}
		defer unix.Close(dfd)
	}
	if sa.uid != nil || sa.gid != nil {
		uid, gid := -1, -1
		if sa.uid != nil && *sa.uid != st.Uid {
			if c.uid != 0 {
				return unix.EPERM
			}
			uid = int(*sa.uid)
		}
		if sa.gid != nil && *sa.gid != st.Gid {
			if c.uid != 0 && !(c.uid == st.Uid && c.inGroup(*sa.gid)) {
				return unix.EPERM
			}
			gid = int(*sa.gid)
		}
		if uid != -1 || gid != -1 {
			if err := unix.Fchownat(dfd, base, uid, gid, unix.AT_SYMLINK_NOFOLLOW); err != nil {
				return err
			}
		}
	}
	if sa.mode != nil && !isLink {
		if !owner {
			return unix.EPERM
		}
		mode := *sa.mode & 0o7777
		gid := st.Gid
		if sa.gid != nil {
			gid = *sa.gid
		}
		if c.uid != 0 && !c.inGroup(gid) && st.Mode&unix.S_IFMT != unix.S_IFDIR {
			mode &^= unix.S_ISGID
		}
		if err := unix.Fchmodat(dfd, base, mode, 0); err != nil {
			return err
		}
	}
	if sa.atime != 0 || sa.mtime != 0 {
		if !owner && !(sa.atime != 2 && sa.mtime != 2 && permitted(&st, c, mayWrite)) {
			return unix.EPERM
		}
		ts := []unix.Timespec{{Nsec: unix.UTIME_OMIT}, {Nsec: unix.UTIME_OMIT}}
		for i, how := range []uint32{sa.atime, sa.mtime} {
			switch how {
			case 1:
				ts[i] = unix.Timespec{Nsec: unix.UTIME_NOW}
			case 2:
				ts[i] = []unix.Timespec{sa.atimeTS, sa.mtimeTS}[i]
			}
		}
		if err := unix.UtimesNanoAt(dfd, base, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return err
		}
	}
	return nil
}

func (s *Server) lookup(c *call, w *writer) bool {
	d, st := s.handle(c)
	name := c.args.string(1024)
	if c.args.err != nil {
		return false
	}
	if st == nfsOK {
		var nameSt uint32
		if name != "." && name != ".." {
			nameSt = checkName(name)
		}
		st = inDir(d, c.cred, mayExec, nameSt)
	}
	if st != nfsOK {
		w.uint32(st)
		d.attrs(w)
		return true
	}
	var rel string
	switch name {
	case ".":
		rel = d.rel
	case "..":
		rel = path.Dir(d.rel)
		if rel == "." {
			rel = ""
		}
	default:
		rel = join(d.rel, name)
	}
	cst, err := d.e.lstat(rel)
	if err != nil {
		w.uint32(status(err))
		d.attrs(w)
		return true
	}
	id := d.e.fileID(rel, &cst)
	d.e.remember(id, rel)
	w.uint32(nfsOK)
	w.opaque(s.key.handle(d.e, id))
	d.e.postOpStat(w, &cst, id)
	d.attrs(w)
	return true
}

func (s *Server) access(c *call, w *writer) bool {
	o, st := s.handle(c)
	asked := c.args.uint32()
	if c.args.err != nil {
		return false
	}
	w.uint32(st)
	if st != nfsOK {
		w.bool(false)
		return true
	}
	o.attrs(w)
	w.uint32(accessBits(&o.st, c.cred, asked))
	return true
}

func (s *Server) readlinkProc(c *call, w *writer) bool {
	o, st := s.handle(c)
	if c.args.err != nil {
		return false
	}
	if st == nfsOK && o.st.Mode&unix.S_IFMT != unix.S_IFLNK {
		st = errInval
	}
	var target string
	if st == nfsOK {
		var err error
		target, err = o.e.readlink(o.rel)
		st = status(err)
	}
	w.uint32(st)
	o.attrs(w)
	if st == nfsOK {
		w.string(target)
	}
	return true
}

func (s *Server) read(c *call, w *writer) bool {
	o, st := s.handle(c)
	off := c.args.uint64()
	count := c.args.uint32()
	if c.args.err != nil {
		return false
	}
	if st == nfsOK {
		switch {
		case o.isDir():
			st = errIsDir
		case o.st.Mode&unix.S_IFMT != unix.S_IFREG:
			st = errInval
		case c.cred.uid != o.st.Uid && !permitted(&o.st, c.cred, mayRead) && !permitted(&o.st, c.cred, mayExec):
			// Like knfsd: the owner may read, and execute permission
			// allows reading (the client needs it to exec).
			st = errAcces
		}
	}
	if st != nfsOK {
		w.uint32(st)
		o.attrs(w)
		return true
	}
	if count > maxIO {
		count = maxIO
	}
	// Most reads ask for rsize bytes of a small file: size the reply by
	// what the file holds (plus a page, should it be growing).
	if avail := o.st.Size - int64(off); int64(off) < o.st.Size && avail+4096 < int64(count) {
		count = uint32(avail + 4096)
	} else if int64(off) >= o.st.Size && count > 4096 {
		count = 4096
	}
	fd, err := o.e.open(o.rel, unix.O_RDONLY|unix.O_NOATIME)
	if err != nil {
		w.uint32(status(err))
		o.attrs(w)
		return true
	}
	defer unix.Close(fd)
	// Read straight into the reply: status, attributes, count, eof and
	// the opaque length go first, so the data lands where it is sent from.
	head := len(w.b)
	w.uint32(nfsOK)
	o.attrs(w)
	countAt := len(w.b)
	w.uint32(0)
	w.bool(false)
	w.uint32(0)
	dataAt := len(w.b)
	w.b = grow(w.b, int(count)+3)
	n := 0
	for n < int(count) {
		m, err := unix.Pread(fd, w.b[dataAt+n:dataAt+int(count)], int64(off)+int64(n))
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			w.b = w.b[:head]
			w.uint32(status(err))
			o.attrs(w)
			return true
		}
		if m == 0 {
			break
		}
		n += m
	}
	eof := uint64(off)+uint64(n) >= uint64(o.st.Size)
	binary.BigEndian.PutUint32(w.b[countAt:], uint32(n))
	if eof {
		binary.BigEndian.PutUint32(w.b[countAt+4:], 1)
	}
	binary.BigEndian.PutUint32(w.b[countAt+8:], uint32(n))
	w.b = w.b[:dataAt+(n+3)&^3]
	for i := dataAt + n; i < len(w.b); i++ {
		w.b[i] = 0
	}
	s.metrics.readBytes.Add(float64(n))
	return true
}

// Write stability (stable_how).
const (
	unstable = 0
	dataSync = 1
	fileSync = 2
)

func (s *Server) write(c *call, w *writer) bool {
	o, st := s.handle(c)
	off := c.args.uint64()
	count := c.args.uint32()
	stable := c.args.uint32()
	data := c.args.opaque(maxIO)
	if c.args.err != nil || stable > fileSync {
		return false
	}
	if int(count) < len(data) {
		data = data[:count]
	}
	if st == nfsOK {
		switch {
		case o.isDir():
			st = errIsDir
		case o.st.Mode&unix.S_IFMT != unix.S_IFREG:
			st = errInval
		case c.cred.uid != o.st.Uid && !permitted(&o.st, c.cred, mayWrite):
			st = errAcces
		}
	}
	if st != nfsOK {
		w.uint32(st)
		w.bool(false)
		w.bool(false)
		return true
	}
	pre := preOp{ok: true, st: o.st, rel: o.rel, id: o.id}
	if o.e.shared(&o.st) {
		o.e.mu.Lock()
		_, err := o.e.breakLink(o.rel)
		o.e.mu.Unlock()
		if err != nil {
			w.uint32(status(err))
			o.e.wcc(w, pre)
			return true
		}
	}
	fd, err := o.e.open(o.rel, unix.O_WRONLY)
	if err != nil {
		w.uint32(status(err))
		o.e.wcc(w, pre)
		return true
	}
	defer unix.Close(fd)
	n := 0
	for n < len(data) && err == nil {
		var m int
		m, err = unix.Pwrite(fd, data[n:], int64(off)+int64(n))
		if err == unix.EINTR {
			err = nil
		}
		n += m
	}
	committed := uint32(unstable)
	if err == nil && stable != unstable {
		if stable == dataSync {
			err = unix.Fdatasync(fd)
		} else {
			err = unix.Fsync(fd)
		}
		committed = fileSync
	}
	if err == nil && c.cred.uid != 0 && o.st.Mode&(unix.S_ISUID|unix.S_ISGID) != 0 {
		// A write by anyone but root drops setuid (and setgid on group
		// executables), as a local write would.
		mode := o.st.Mode &^ unix.S_ISUID
		if o.st.Mode&0o010 != 0 {
			mode &^= unix.S_ISGID
		}
		unix.Fchmod(fd, mode&0o7777)
	}
	if err != nil {
		w.uint32(status(err))
		o.e.wcc(w, pre)
		return true
	}
	s.metrics.writeBytes.Add(float64(n))
	w.uint32(nfsOK)
	o.e.wcc(w, pre)
	w.uint32(uint32(n))
	w.uint32(committed)
	w.fixed(s.verf[:])
	return true
}

// Create modes.
const (
	createUnchecked = 0
	createGuarded   = 1
	createExclusive = 2
)

// create handles CREATE, MKDIR, SYMLINK and MKNOD.
func (s *Server) create(c *call, w *writer) bool {
	d, st := s.handle(c)
	name := c.args.string(1024)
	var (
		sa     sattr
		how    uint32
		verf   []byte
		target string
		ntype  uint32
		rdev   uint64
	)
	switch c.proc {
	case nfsCreate:
		how = c.args.uint32()
		switch how {
		case createUnchecked, createGuarded:
			sa = readSattr(&c.args)
		case createExclusive:
			verf = c.args.fixed(8)
		default:
			return false
		}
	case nfsMkdir:
		sa = readSattr(&c.args)
	case nfsSymlink:
		sa = readSattr(&c.args)
		target = c.args.string(maxPathLen)
	case nfsMknod:
		ntype = c.args.uint32()
		switch ntype {
		case typeChr, typeBlk:
			sa = readSattr(&c.args)
			major, minor := c.args.uint32(), c.args.uint32()
			rdev = unix.Mkdev(major, minor)
		case typeSock, typeFifo:
			sa = readSattr(&c.args)
		}
	}
	if c.args.err != nil {
		return false
	}
	if st == nfsOK {
		st = inDir(d, c.cred, mayWrite|mayExec, createName(name))
		if st == nfsOK && c.proc == nfsMknod && (ntype < typeBlk || ntype > typeFifo || ntype == typeLnk) {
			st = errBadType
		}
	}
	if st != nfsOK {
		w.uint32(st)
		w.bool(false)
		d.attrs(w)
		return true
	}
	e := d.e
	e.mu.Lock()
	defer e.mu.Unlock()
	pre := e.pre(d.rel, d.id)
	rel := join(d.rel, name)
	dfd, err := e.open(d.rel, unix.O_PATH|unix.O_DIRECTORY)
	if err != nil {
		w.uint32(status(err))
		e.wcc(w, pre)
		return true
	}
	defer unix.Close(dfd)
	uid, gid := c.cred.uid, c.cred.gid
	if d.st.Mode&unix.S_ISGID != 0 {
		gid = d.st.Gid
	}
	mode := uint32(0o644)
	if c.proc == nfsMkdir {
		mode = 0o755
	}
	if sa.mode != nil {
		mode = *sa.mode & 0o7777
	}
	if c.proc == nfsMkdir && d.st.Mode&unix.S_ISGID != 0 {
		mode |= unix.S_ISGID
	}
	existed := false
	switch c.proc {
	case nfsCreate:
		var fd int
		fd, err = unix.Openat(dfd, name, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err == unix.EEXIST {
			cst, e2 := e.lstat(rel)
			regular := e2 == nil && cst.Mode&unix.S_IFMT == unix.S_IFREG
			switch {
			case how == createUnchecked && regular:
				err, existed = nil, true
			case how == createExclusive && regular &&
				uint32(cst.Atim.Sec) == binary.BigEndian.Uint32(verf[:4]) && uint32(cst.Mtim.Sec) == binary.BigEndian.Uint32(verf[4:]):
				// A retransmitted exclusive create finds its own file:
				// the verifier is kept in the times, as knfsd does.
				err, existed = nil, true
			}
			break
		}
		if err != nil {
			break
		}
		unix.Close(fd)
		if err = unix.Fchownat(dfd, name, int(uid), int(gid), unix.AT_SYMLINK_NOFOLLOW); err != nil {
			break
		}
		if how != createExclusive {
			err = unix.Fchmodat(dfd, name, mode, 0)
			break
		}
		err = unix.Fchmodat(dfd, name, 0, 0)
		if err == nil {
			err = unix.UtimesNanoAt(dfd, name, []unix.Timespec{
				{Sec: int64(binary.BigEndian.Uint32(verf[:4]))},
				{Sec: int64(binary.BigEndian.Uint32(verf[4:]))}}, unix.AT_SYMLINK_NOFOLLOW)
		}
	case nfsMkdir:
		if err = unix.Mkdirat(dfd, name, mode&0o777); err == nil {
			if err = unix.Fchownat(dfd, name, int(uid), int(gid), unix.AT_SYMLINK_NOFOLLOW); err == nil {
				err = unix.Fchmodat(dfd, name, mode, 0)
			}
		}
	case nfsSymlink:
		if err = unix.Symlinkat(target, dfd, name); err == nil {
			err = unix.Fchownat(dfd, name, int(uid), int(gid), unix.AT_SYMLINK_NOFOLLOW)
		}
	case nfsMknod:
		fmtBits := map[uint32]uint32{typeChr: unix.S_IFCHR, typeBlk: unix.S_IFBLK, typeSock: unix.S_IFSOCK, typeFifo: unix.S_IFIFO}[ntype]
		if err = unix.Mknodat(dfd, name, fmtBits|mode&0o777, int(rdev)); err == nil {
			if err = unix.Fchownat(dfd, name, int(uid), int(gid), unix.AT_SYMLINK_NOFOLLOW); err == nil {
				err = unix.Fchmodat(dfd, name, mode, 0)
			}
		}
	}
	if err != nil {
		w.uint32(status(err))
		e.wcc(w, pre)
		return true
	}
	cst, err := e.lstat(rel)
	if err != nil {
		w.uint32(status(err))
		e.wcc(w, pre)
		return true
	}
	id := cst.Ino // a new file has no fileid of its own yet
	if existed {
		id = e.fileID(rel, &cst)
	}
	if c.proc == nfsCreate && how != createExclusive && existed && sa.changesMetadata() {
		// UNCHECKED on an existing file applies the attributes (usually
		// size 0: the truncate of open(O_CREAT|O_TRUNC)).
		sa.uid, sa.gid = nil, nil
		if err := s.applySattr(&obj{e: e, rel: rel, st: cst, id: id}, c.cred, sa, false); err != nil {
			w.uint32(status(err))
			e.wcc(w, pre)
			return true
		}
		cst, _ = e.lstat(rel)
	} else if !existed && (sa.atime != 0 || sa.mtime != 0 || sa.size != nil) && how != createExclusive {
		sa.mode, sa.uid, sa.gid = nil, nil, nil
		s.applySattr(&obj{e: e, rel: rel, st: cst, id: id}, c.cred, sa, true)
		cst, _ = e.lstat(rel)
	}
	e.remember(id, rel)
	if err := e.commitMeta(d.rel, &d.st); err != nil {
		w.uint32(status(err))
		e.wcc(w, pre)
		return true
	}
	w.uint32(nfsOK)
	w.bool(true)
	w.opaque(s.key.handle(e, id))
	e.postOpStat(w, &cst, id)
	e.wcc(w, pre)
	return true
}

// stickyDenied applies the sticky-directory rule to removing or renaming
// the entry with attributes cst from directory d.
func stickyDenied(d *unix.Stat_t, cst *unix.Stat_t, c cred) bool {
	return d.Mode&unix.S_ISVTX != 0 && c.uid != 0 && c.uid != d.Uid && c.uid != cst.Uid
}

// remove handles REMOVE and RMDIR.
func (s *Server) remove(c *call, w *writer) bool {
	d, st := s.handle(c)
	name := c.args.string(1024)
	if c.args.err != nil {
		return false
	}
	if st == nfsOK {
		nameSt := checkName(name)
		switch name {
		case ".":
			nameSt = errInval
		case "..":
			nameSt = errNotEmpty
		}
		st = inDir(d, c.cred, mayWrite|mayExec, nameSt)
	}
	if st != nfsOK {
		w.uint32(st)
		w.bool(false) // wcc_data without pre-op attributes
		d.attrs(w)
		return true
	}
	e := d.e
	e.mu.Lock()
	defer e.mu.Unlock()
	pre := e.pre(d.rel, d.id)
	rel := join(d.rel, name)
	err := func() error {
		cst, err := e.lstat(rel)
		if err != nil {
			return err
		}
		if stickyDenied(&d.st, &cst, c.cred) {
			return unix.EACCES
		}
		isDir := cst.Mode&unix.S_IFMT == unix.S_IFDIR
		if c.proc == nfsRemove && isDir {
			return unix.EISDIR
		}
		if c.proc == nfsRmdir && !isDir {
			return unix.ENOTDIR
		}
		id := e.fileID(rel, &cst)
		dfd, err := e.open(d.rel, unix.O_PATH|unix.O_DIRECTORY)
		if err != nil {
			return err
		}
		defer unix.Close(dfd)
		flags := 0
		if isDir {
			flags = unix.AT_REMOVEDIR
		}
		if err := unix.Unlinkat(dfd, name, flags); err != nil {
			return err
		}
		e.dropCopy(&cst)
		if isDir || cst.Nlink <= 1 || e.shared(&cst) {
			e.forget(id)
		}
		return e.commitMeta(d.rel, &d.st)
	}()
	w.uint32(status(err))
	e.wcc(w, pre)
	return true
}

func (s *Server) rename(c *call, w *writer) bool {
	from, st1 := s.handle(c)
	fromName := c.args.string(1024)
	to, st2 := s.handle(c)
	toName := c.args.string(1024)
	if c.args.err != nil {
		return false
	}
	st := st1
	if st == nfsOK {
		st = st2
	}
	if st == nfsOK && from.e != to.e {
		st = errXDev
	}
	renameName := func(n string) uint32 {
		if n == "." || n == ".." {
			return errInval
		}
		return checkName(n)
	}
	if st == nfsOK {
		st = inDir(from, c.cred, mayWrite|mayExec, renameName(fromName))
	}
	if st == nfsOK {
		st = inDir(to, c.cred, mayWrite|mayExec, renameName(toName))
	}
	if st != nfsOK {
		w.uint32(st)
		for _, o := range []*obj{from, to} {
			w.bool(false)
			o.attrs(w)
		}
		return true
	}
	e := from.e
	e.mu.Lock()
	defer e.mu.Unlock()
	preFrom, preTo := e.pre(from.rel, from.id), e.pre(to.rel, to.id)
	src, dst := join(from.rel, fromName), join(to.rel, toName)
	err := func() error {
		sst, err := e.lstat(src)
		if err != nil {
			return err
		}
		if stickyDenied(&from.st, &sst, c.cred) {
			return unix.EACCES
		}
		// A directory that changes parent has its ".." rewritten: like
		// vfs_rename, ask for write permission on the directory itself.
		if sst.Mode&unix.S_IFMT == unix.S_IFDIR && from.rel != to.rel && !permitted(&sst, c.cred, mayWrite) {
			return unix.EACCES
		}
		var overwritten uint64
		dstSt, err := e.lstat(dst)
		if err == nil {
			if stickyDenied(&to.st, &dstSt, c.cred) {
				return unix.EACCES
			}
			overwritten = e.fileID(dst, &dstSt)
			if overwritten == e.fileID(src, &sst) {
				return nil // two names of one file: rename does nothing
			}
		}
		ffd, err := e.open(from.rel, unix.O_PATH|unix.O_DIRECTORY)
		if err != nil {
			return err
		}
		defer unix.Close(ffd)
		tfd, err := e.open(to.rel, unix.O_PATH|unix.O_DIRECTORY)
		if err != nil {
			return err
		}
		defer unix.Close(tfd)
		if err := unix.Renameat(ffd, fromName, tfd, toName); err != nil {
			return err
		}
		if overwritten != 0 {
			e.forget(overwritten)
			e.dropCopy(&dstSt)
		}
		e.renamed(src, dst)
		if err := e.commitMeta(from.rel, &from.st); err != nil {
			return err
		}
		if to.rel != from.rel {
			return e.commitMeta(to.rel, &to.st)
		}
		return nil
	}()
	w.uint32(status(err))
	e.wcc(w, preFrom)
	e.wcc(w, preTo)
	return true
}

func (s *Server) link(c *call, w *writer) bool {
	f, st1 := s.handle(c)
	d, st2 := s.handle(c)
	name := c.args.string(1024)
	if c.args.err != nil {
		return false
	}
	st := st1
	if st == nfsOK {
		st = st2
	}
	if st == nfsOK && f.e != d.e {
		st = errXDev
	}
	if st == nfsOK && f.isDir() {
		st = errIsDir
	}
	if st == nfsOK {
		st = inDir(d, c.cred, mayWrite|mayExec, createName(name))
	}
	if st != nfsOK {
		w.uint32(st)
		w.bool(false)
		w.bool(false)
		d.attrs(w)
		return true
	}
	e := f.e
	e.mu.Lock()
	defer e.mu.Unlock()
	pre := e.pre(d.rel, d.id)
	err := func() error {
		// A new name makes the file the node's own first: a link to an
		// image inode would tie the node's later copy-up to more names.
		if _, err := e.breakLink(f.rel); err != nil {
			return err
		}
		sdir, sbase := path.Split(f.rel)
		sfd, err := e.open(strings.TrimSuffix(sdir, "/"), unix.O_PATH|unix.O_DIRECTORY)
		if err != nil {
			return err
		}
		defer unix.Close(sfd)
		dfd, err := e.open(d.rel, unix.O_PATH|unix.O_DIRECTORY)
		if err != nil {
			return err
		}
		defer unix.Close(dfd)
		if err := unix.Linkat(sfd, sbase, dfd, name, 0); err != nil {
			return err
		}
		return e.commitMeta(d.rel, &d.st)
	}()
	w.uint32(status(err))
	e.postOp(w, f.rel)
	e.wcc(w, pre)
	return true
}

// direntBufs hold getdents results; a listing asks for one per call.
var direntBufs = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// cookieVerf ties READDIR cookies to a directory of a view generation.
func (e *export) cookieVerf(dirID uint64) [8]byte {
	var v [8]byte
	binary.BigEndian.PutUint64(v[:], dirID^uint64(e.gen)<<32)
	return v
}

// readdir handles READDIR and READDIRPLUS. Cookies are the file system's
// own directory offsets (d_off), which stay valid across restarts.
func (s *Server) readdir(c *call, w *writer, plus bool) bool {
	d, st := s.handle(c)
	cookie := c.args.uint64()
	verf := c.args.fixed(8)
	count := c.args.uint32() // READDIR: count; READDIRPLUS: dircount
	if plus {
		count = c.args.uint32() // maxcount bounds the reply
	}
	if c.args.err != nil {
		return false
	}
	if st == nfsOK {
		switch {
		case !d.isDir():
			st = errNotDir
		case !permitted(&d.st, c.cred, mayRead):
			st = errAcces
		}
	}
	var want [8]byte
	if d != nil {
		want = d.e.cookieVerf(d.id)
	}
	if st == nfsOK && cookie != 0 && string(verf) != "\x00\x00\x00\x00\x00\x00\x00\x00" && string(verf) != string(want[:]) {
		st = errBadCookie
	}
	if st != nfsOK {
		w.uint32(st)
		d.attrs(w)
		return true
	}
	e := d.e
	fd, err := e.open(d.rel, unix.O_RDONLY|unix.O_DIRECTORY)
	if err != nil {
		w.uint32(status(err))
		e.postOpStat(w, &d.st, d.id)
		return true
	}
	defer unix.Close(fd)
	if cookie != 0 {
		if _, err := unix.Seek(fd, int64(cookie), 0); err != nil {
			w.uint32(errBadCookie)
			e.postOpStat(w, &d.st, d.id)
			return true
		}
	}
	if count > maxIO {
		count = maxIO
	}
	start := len(w.b)
	w.uint32(nfsOK)
	e.postOpStat(w, &d.st, d.id)
	w.fixed(want[:])
	limit := start + int(count) - 8 // room for the list end and eof
	bp := direntBufs.Get().(*[]byte)
	defer direntBufs.Put(bp)
	buf := *bp
	entries := 0
	eof := false
	full := false
	for !full {
		n, err := unix.Getdents(fd, buf)
		if err != nil {
			w.b = w.b[:start]
			w.uint32(status(err))
			e.postOpStat(w, &d.st, d.id)
			return true
		}
		if n == 0 {
			eof = true
			break
		}
		for b := buf[:n]; len(b) >= 19; {
			ino := binary.NativeEndian.Uint64(b[0:8])
			off := binary.NativeEndian.Uint64(b[8:16])
			reclen := int(binary.NativeEndian.Uint16(b[16:18]))
			if reclen < 19 || reclen > len(b) {
				break
			}
			name := string(b[19:reclen])
			if i := strings.IndexByte(name, 0); i >= 0 {
				name = name[:i]
			}
			b = b[reclen:]
			if strings.HasPrefix(name, copyPrefix) {
				continue
			}
			mark := len(w.b)
			rel := join(d.rel, name)
			switch name {
			case ".":
				rel = d.rel
			case "..":
				rel = path.Dir(d.rel)
				if rel == "." {
					rel = ""
				}
			}
			id := ino
			var cst unix.Stat_t
			haveAttr := false
			if ferr := unix.Fstatat(fd, name, &cst, unix.AT_SYMLINK_NOFOLLOW); ferr == nil {
				if name == ".." {
					cst, ferr = e.lstat(rel)
				}
				if ferr == nil {
					id = e.fileID(rel, &cst)
					haveAttr = true
				}
			}
			w.bool(true)
			w.uint64(id)
			w.string(name)
			w.uint64(off)
			if plus {
				if haveAttr {
					e.postOpStat(w, &cst, id)
					w.bool(true)
					w.opaque(s.key.handle(e, id))
				} else {
					w.bool(false)
					w.bool(false)
				}
			}
			if len(w.b) > limit {
				w.b = w.b[:mark]
				full = true
				break
			}
			if haveAttr && name != "." && name != ".." {
				e.remember(id, rel)
			}
			entries++
		}
	}
	if entries == 0 && !eof {
		w.b = w.b[:start]
		w.uint32(errTooSmall)
		e.postOpStat(w, &d.st, d.id)
		return true
	}
	w.bool(false)
	w.bool(eof && !full)
	return true
}

// fsinfo handles FSSTAT, FSINFO and PATHCONF.
func (s *Server) fsinfo(c *call, w *writer) bool {
	o, st := s.handle(c)
	if c.args.err != nil {
		return false
	}
	var sf unix.Statfs_t
	if st == nfsOK && c.proc == nfsFsstat {
		st = status(unix.Fstatfs(o.e.rootFd, &sf))
	}
	w.uint32(st)
	o.attrs(w)
	if st != nfsOK {
		return true
	}
	switch c.proc {
	case nfsFsstat:
		bs := uint64(sf.Bsize)
		w.uint64(sf.Blocks * bs)
		w.uint64(sf.Bfree * bs)
		w.uint64(sf.Bavail * bs)
		w.uint64(sf.Files)
		w.uint64(sf.Ffree)
		w.uint64(sf.Ffree)
		w.uint32(0) // invarsec: the file system changes any time
	case nfsFsinfo:
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
	case nfsPathconf:
		w.uint32(65000) // linkmax (ext4)
		w.uint32(maxName)
		w.bool(true)  // no_trunc
		w.bool(true)  // chown_restricted
		w.bool(false) // case_insensitive
		w.bool(true)  // case_preserving
	}
	return true
}

func (s *Server) commit(c *call, w *writer) bool {
	o, st := s.handle(c)
	_ = c.args.uint64()
	_ = c.args.uint32()
	if c.args.err != nil {
		return false
	}
	if st == nfsOK && o.st.Mode&unix.S_IFMT != unix.S_IFREG {
		st = errInval
	}
	if st != nfsOK {
		w.uint32(st)
		w.bool(false)
		w.bool(false)
		return true
	}
	pre := preOp{ok: true, st: o.st, rel: o.rel, id: o.id}
	// fsync flushes the inode however it was written, so a fresh
	// descriptor commits what earlier WRITEs left unstable.
	fd, err := o.e.open(o.rel, unix.O_RDONLY)
	if err == nil {
		err = unix.Fsync(fd)
		unix.Close(fd)
	}
	w.uint32(status(err))
	o.e.wcc(w, pre)
	if err == nil {
		w.fixed(s.verf[:])
	}
	return true
}
