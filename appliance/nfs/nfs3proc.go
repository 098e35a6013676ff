// NFSv3 procedures (RFC 1813 §3.3): what each does, on the arguments
// and results of nfs3xdr.go.

package nfs

import (
	"encoding/binary"
	"path"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// obj is a file a handle resolved to.
type obj struct {
	e   *export
	rel string
	st  unix.Stat_t
	id  uint64
	tag uint32 // 0: not checked (a version 1 handle, a file system without handles)
}

func (o *obj) isDir() bool { return o.st.Mode&unix.S_IFMT == unix.S_IFDIR }

// resolve finds the file handle h names, for caller c.
func (s *Server) resolve(c *call, h []byte) (*obj, uint32) {
	exp, gen, id, tag, ok := s.key.parse(h)
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
	if tag != 0 && e.tag(rel, &st) != tag {
		// The inode number is another file's now.
		return nil, errStaleFH
	}
	o := &obj{e: e, rel: rel, st: st, id: id, tag: tag}
	if testHookResolved != nil {
		testHookResolved(o)
	}
	return o, nfsOK
}

// testHookResolved, set by tests only, runs after a handle resolved: to
// change the tree between resolving and using a handle.
var testHookResolved func(*obj)

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

// applySattr changes attributes as the caller (asCaller: the kernel
// applies its ownership and mode rules). created is a file the caller
// just made, whose size and times it sets whatever their mode. Callers
// hold e.mu.
func (s *Server) applySattr(o *obj, c cred, sa sattr, created bool) error {
	if !sa.changesMetadata() {
		return nil
	}
	e := o.e
	owner := c.uid == 0 || c.uid == o.st.Uid || created
	if sa.mode != nil && !owner {
		// The kernel would refuse it too; refused before the copy-up, a
		// stranger's chmod of an image file costs no copy.
		return unix.EPERM
	}
	st, err := e.breakLink(o.rel)
	if err != nil {
		return err
	}
	isLink := st.Mode&unix.S_IFMT == unix.S_IFLNK
	if sa.size != nil {
		if st.Mode&unix.S_IFMT == unix.S_IFDIR {
			return unix.EISDIR
		}
		if st.Mode&unix.S_IFMT != unix.S_IFREG {
			return unix.EINVAL
		}
		// Like knfsd: the owner may truncate whatever the mode (the
		// client checked the open); the descriptor is opened by the
		// server, the truncate runs as the caller, so it drops setuid
		// and setgid as a local one does.
		if !owner && !permitted(&st, c, mayWrite) {
			return unix.EACCES
		}
		if int64(*sa.size) > st.Size {
			// A larger size allocates nothing (the file gets a hole),
			// so it is refused only at the limit: sparse files stay
			// possible, as under real quotas.
			if err := e.mayGrow(1); err != nil {
				return err
			}
		}
		fd, err := e.openFile(o, unix.O_WRONLY)
		if err != nil {
			return err
		}
		err = e.measure(fd, func() error {
			return asCaller(c, func() error { return unix.Ftruncate(fd, int64(*sa.size)) })
		})
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
	if err := e.sameFile(dfd, base, o); err != nil {
		return err
	}
	return asCaller(c, func() error {
		if sa.uid != nil || sa.gid != nil {
			uid, gid := -1, -1
			if sa.uid != nil {
				uid = int(*sa.uid)
			}
			if sa.gid != nil {
				gid = int(*sa.gid)
			}
			if err := unix.Fchownat(dfd, base, uid, gid, unix.AT_SYMLINK_NOFOLLOW); err != nil {
				return err
			}
		}
		if sa.mode != nil && !isLink {
			if err := unix.Fchmodat(dfd, base, *sa.mode&0o7777, 0); err != nil {
				return err
			}
		}
		if sa.atime != dontChange || sa.mtime != dontChange {
			ts := []unix.Timespec{{Nsec: unix.UTIME_OMIT}, {Nsec: unix.UTIME_OMIT}}
			for i, how := range []uint32{sa.atime, sa.mtime} {
				switch how {
				case toServerTime:
					ts[i] = unix.Timespec{Nsec: unix.UTIME_NOW}
				case toClientTime:
					ts[i] = []unix.Timespec{sa.atimeTS, sa.mtimeTS}[i]
				}
			}
			if err := unix.UtimesNanoAt(dfd, base, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
				return err
			}
		}
		return nil
	})
}

func (s *Server) getattr(c *call, a *fhArgs) getattrRes {
	o, st := s.resolve(c, a.fh)
	return getattrRes{status: st, obj: attrsOf(o)}
}

func (s *Server) setattr(c *call, a *setattrArgs) wccRes {
	o, st := s.resolve(c, a.fh)
	if st != nfsOK {
		return wccRes{status: st}
	}
	o.e.mu.Lock()
	defer o.e.mu.Unlock()
	pre := o.e.pre(o.rel, o.id)
	if a.guard && (uint32(pre.st.Ctim.Sec) != uint32(a.guardCtime.Sec) || uint32(pre.st.Ctim.Nsec) != uint32(a.guardCtime.Nsec)) {
		return wccRes{status: errNotSync, wcc: wccOf(o.e, pre)}
	}
	err := s.applySattr(o, c.cred, a.sa, false)
	if err == nil {
		err = o.e.commitMeta(o.rel, &o.st)
	}
	return wccRes{status: status(err), wcc: wccOf(o.e, pre)}
}

func (s *Server) lookup(c *call, a *diropArgs) lookupRes {
	d, st := s.resolve(c, a.dir)
	name := a.name
	if st == nfsOK {
		var nameSt uint32
		if name != "." && name != ".." {
			nameSt = checkName(name)
		}
		st = inDir(d, c.cred, mayExec, nameSt)
	}
	if st != nfsOK {
		return lookupRes{status: st, dir: attrsOf(d)}
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
		return lookupRes{status: status(err), dir: attrsOf(d)}
	}
	id := d.e.fileID(rel, &cst)
	d.e.remember(id, rel)
	return lookupRes{status: nfsOK, fh: s.key.handle(d.e, id, d.e.tag(rel, &cst)), obj: statAttrs(d.e, &cst, id), dir: attrsOf(d)}
}

func (s *Server) access(c *call, a *accessArgs) accessRes {
	o, st := s.resolve(c, a.fh)
	if st != nfsOK {
		return accessRes{status: st}
	}
	return accessRes{status: nfsOK, obj: attrsOf(o), access: accessBits(&o.st, c.cred, a.access)}
}

func (s *Server) readlink(c *call, a *fhArgs) readlinkRes {
	o, st := s.resolve(c, a.fh)
	if st == nfsOK && o.st.Mode&unix.S_IFMT != unix.S_IFLNK {
		st = errInval
	}
	var target string
	if st == nfsOK {
		var err error
		var fd int
		if fd, err = o.e.openFile(o, unix.O_PATH); err == nil {
			target, err = readlinkFd(fd)
			unix.Close(fd)
		}
		st = status(err)
	}
	return readlinkRes{status: st, obj: attrsOf(o), target: target}
}

func (s *Server) read(c *call, a *readArgs) readRes {
	o, st := s.resolve(c, a.fh)
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
		return readRes{status: st, file: attrsOf(o)}
	}
	off, count := a.off, a.count
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
	fd, err := o.e.openFile(o, unix.O_RDONLY|unix.O_NOATIME)
	if err != nil {
		return readRes{status: status(err), file: attrsOf(o)}
	}
	return readRes{status: nfsOK, file: attrsOf(o), fd: fd, off: off, count: count, size: o.st.Size, bytes: s.metrics.readBytes}
}

func (s *Server) write(c *call, a *writeArgs) writeRes {
	o, st := s.resolve(c, a.fh)
	data := a.data
	if int(a.count) < len(data) {
		data = data[:a.count]
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
		return writeRes{status: st}
	}
	pre := preOp{ok: true, st: o.st, rel: o.rel, id: o.id}
	failed := func(err error) writeRes { return writeRes{status: status(err), wcc: wccOf(o.e, pre)} }
	if o.e.shared(&o.st) {
		o.e.mu.Lock()
		_, err := o.e.breakLink(o.rel)
		o.e.mu.Unlock()
		if err != nil {
			return failed(err)
		}
	}
	fd, err := o.e.openFile(o, unix.O_WRONLY)
	if err != nil {
		return failed(err)
	}
	defer unix.Close(fd)
	if err := o.e.mayGrow(writeNeed(&o.st, a.off, len(data))); err != nil {
		return failed(err)
	}
	n := 0
	pwrite := func() error {
		var err error
		for n < len(data) && err == nil {
			var m int
			m, err = unix.Pwrite(fd, data[n:], int64(a.off)+int64(n))
			if err == unix.EINTR {
				err = nil
			}
			n += m
		}
		return err
	}
	err = o.e.measure(fd, func() error {
		if o.st.Mode&(unix.S_ISUID|unix.S_ISGID) != 0 {
			// Written as the caller, the kernel drops setuid and setgid
			// as on a local write by anyone without CAP_FSETID. Other
			// files are written as the server, without the thread switch.
			return asCaller(c.cred, pwrite)
		}
		return pwrite()
	})
	committed := uint32(unstable)
	if err == nil && a.stable != unstable {
		if a.stable == dataSync {
			err = unix.Fdatasync(fd)
		} else {
			err = unix.Fsync(fd)
		}
		committed = fileSync
	}
	if err != nil {
		return failed(err)
	}
	s.metrics.writeBytes.Add(float64(n))
	return writeRes{status: nfsOK, wcc: wccOf(o.e, pre), count: uint32(n), committed: committed, verf: s.verf}
}

// newFile is what CREATE, MKDIR, SYMLINK and MKNOD share: the checks on
// the directory and name, and the steps around making the file (make).
type newFile struct {
	where diropArgs
	sa    sattr
	mode  uint32 // without sa.mode
	// make creates name in dfd with mode; it runs as the caller, so the
	// kernel gives the file its owner and group (a setgid directory's)
	// and strips S_ISGID the caller may not set. existed reports an
	// existing file that counts as made (CREATE).
	make func(dfd int, name string, mode uint32) (existed bool, err error)
	// setTimes applies sa's size and times to a new file (not EXCLUSIVE).
	setTimes bool
	// truncate applies sa's size to an existing file (UNCHECKED: the
	// truncate of open(O_CREAT|O_TRUNC)); like knfsd, nothing else of sa.
	truncate bool
	// check is a further check on the arguments (MKNOD's type).
	check func() uint32
}

func (s *Server) makeFile(c *call, f newFile) createRes {
	d, st := s.resolve(c, f.where.dir)
	name := f.where.name
	if st == nfsOK {
		st = inDir(d, c.cred, mayWrite|mayExec, createName(name))
		if st == nfsOK && f.check != nil {
			st = f.check()
		}
	}
	if st != nfsOK {
		return createRes{status: st, dir: wccNone(d)}
	}
	e := d.e
	e.mu.Lock()
	defer e.mu.Unlock()
	pre := e.pre(d.rel, d.id)
	failed := func(err error) createRes { return createRes{status: status(err), dir: wccOf(e, pre)} }
	rel := join(d.rel, name)
	dfd, err := e.openDir(d)
	if err != nil {
		return failed(err)
	}
	defer unix.Close(dfd)
	mode := f.mode
	sa := f.sa
	if sa.mode != nil {
		mode = *sa.mode & 0o7777
	}
	// A name that exists takes no new space (CREATE UNCHECKED of an
	// existing file truncates it, which frees space).
	var probe unix.Stat_t
	if unix.Fstatat(dfd, name, &probe, unix.AT_SYMLINK_NOFOLLOW) != nil {
		if err := e.mayGrow(entryCost); err != nil {
			return failed(err)
		}
	}
	var existed bool
	err = e.measure(dfd, func() error {
		return asCaller(c.cred, func() error {
			var err error
			existed, err = f.make(dfd, name, mode)
			return err
		})
	})
	if err != nil {
		return failed(err)
	}
	cst, err := e.lstat(rel)
	if err != nil {
		return failed(err)
	}
	if !existed {
		e.chargeNew(&cst)
	}
	id := cst.Ino // a new file has no fileid of its own yet
	if existed {
		id = e.fileID(rel, &cst)
	}
	if f.truncate && existed && sa.size != nil {
		if err := s.applySattr(&obj{e: e, rel: rel, st: cst, id: id}, c.cred, sattr{size: sa.size}, false); err != nil {
			return failed(err)
		}
		cst, _ = e.lstat(rel)
	} else if !existed {
		// Size and times, set as the caller; the mode is the one the
		// file was made with (as knfsd's nfsd_create_setattr: mkdir
		// keeps a setgid parent's S_ISGID, which a chmod would drop).
		var after sattr
		if f.setTimes {
			after.size, after.atime, after.mtime, after.atimeTS, after.mtimeTS = sa.size, sa.atime, sa.mtime, sa.atimeTS, sa.mtimeTS
		}
		if after.changesMetadata() {
			if err := s.applySattr(&obj{e: e, rel: rel, st: cst, id: id}, c.cred, after, true); err != nil {
				return failed(err)
			}
			cst, _ = e.lstat(rel)
		}
	}
	e.remember(id, rel)
	if err := e.commitMeta(d.rel, &d.st); err != nil {
		return failed(err)
	}
	return createRes{status: nfsOK, fh: s.key.handle(e, id, e.tag(rel, &cst)), obj: statAttrs(e, &cst, id), dir: wccOf(e, pre)}
}

func (s *Server) create(c *call, a *createArgs) createRes {
	return s.makeFile(c, newFile{where: a.where, sa: a.sa, mode: 0o644,
		setTimes: a.how != createExclusive, truncate: a.how == createUnchecked,
		make: func(dfd int, name string, mode uint32) (bool, error) {
			if a.how == createExclusive {
				mode = 0
			}
			fd, err := unix.Openat(dfd, name, unix.O_RDONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, mode)
			if err == unix.EEXIST {
				var cst unix.Stat_t
				e2 := unix.Fstatat(dfd, name, &cst, unix.AT_SYMLINK_NOFOLLOW)
				regular := e2 == nil && cst.Mode&unix.S_IFMT == unix.S_IFREG
				switch {
				case a.how == createUnchecked && regular:
					return true, nil
				case a.how == createExclusive && regular &&
					uint32(cst.Atim.Sec) == binary.BigEndian.Uint32(a.verf[:4]) && uint32(cst.Mtim.Sec) == binary.BigEndian.Uint32(a.verf[4:]):
					// A retransmitted exclusive create finds its own file:
					// the verifier is kept in the times, as knfsd does.
					return true, nil
				}
				return false, err
			}
			if err != nil {
				return false, err
			}
			unix.Close(fd)
			if a.how != createExclusive {
				return false, nil
			}
			return false, unix.UtimesNanoAt(dfd, name, []unix.Timespec{
				{Sec: int64(binary.BigEndian.Uint32(a.verf[:4]))},
				{Sec: int64(binary.BigEndian.Uint32(a.verf[4:]))}}, unix.AT_SYMLINK_NOFOLLOW)
		}})
}

func (s *Server) mkdir(c *call, a *mkdirArgs) createRes {
	return s.makeFile(c, newFile{where: a.where, sa: a.sa, mode: 0o755, setTimes: true,
		make: func(dfd int, name string, mode uint32) (bool, error) {
			return false, unix.Mkdirat(dfd, name, mode)
		}})
}

func (s *Server) symlink(c *call, a *symlinkArgs) createRes {
	return s.makeFile(c, newFile{where: a.where, sa: a.sa, mode: 0o777, setTimes: true,
		make: func(dfd int, name string, mode uint32) (bool, error) {
			return false, unix.Symlinkat(a.target, dfd, name)
		}})
}

// mknodTypes are the file types MKNOD makes, with their mode bits.
var mknodTypes = map[uint32]uint32{typeChr: unix.S_IFCHR, typeBlk: unix.S_IFBLK, typeSock: unix.S_IFSOCK, typeFifo: unix.S_IFIFO}

func (s *Server) mknod(c *call, a *mknodArgs) createRes {
	fmtBits, ok := mknodTypes[a.ntype]
	return s.makeFile(c, newFile{where: a.where, sa: a.sa, mode: 0o644, setTimes: true,
		check: func() uint32 {
			if !ok {
				return errBadType
			}
			return nfsOK
		},
		make: func(dfd int, name string, mode uint32) (bool, error) {
			return false, unix.Mknodat(dfd, name, fmtBits|mode, int(a.rdev))
		}})
}

func (s *Server) remove(c *call, a *diropArgs) wccRes { return s.unlink(c, a, false) }
func (s *Server) rmdir(c *call, a *diropArgs) wccRes  { return s.unlink(c, a, true) }

// unlink removes a name: a directory's for RMDIR (dir), any other's for
// REMOVE.
func (s *Server) unlink(c *call, a *diropArgs, dir bool) wccRes {
	d, st := s.resolve(c, a.dir)
	name := a.name
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
		return wccRes{status: st, wcc: wccNone(d)}
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
		isDir := cst.Mode&unix.S_IFMT == unix.S_IFDIR
		if !dir && isDir {
			return unix.EISDIR
		}
		if dir && !isDir {
			return unix.ENOTDIR
		}
		id := e.fileID(rel, &cst)
		dfd, err := e.openDir(d)
		if err != nil {
			return err
		}
		defer unix.Close(dfd)
		flags := 0
		if isDir {
			flags = unix.AT_REMOVEDIR
		}
		// As the caller: the kernel applies the sticky-directory rule.
		if err := asCaller(c.cred, func() error { return unix.Unlinkat(dfd, name, flags) }); err != nil {
			return err
		}
		e.credit(&cst)
		e.dropCopy(&cst)
		if isDir || cst.Nlink <= 1 || e.shared(&cst) {
			e.forget(id)
		}
		return e.commitMeta(d.rel, &d.st)
	}()
	return wccRes{status: status(err), wcc: wccOf(e, pre)}
}

func (s *Server) rename(c *call, a *renameArgs) renameRes {
	from, st := s.resolve(c, a.from.dir)
	to, st2 := s.resolve(c, a.to.dir)
	fromName, toName := a.from.name, a.to.name
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
		return renameRes{status: st, from: wccNone(from), to: wccNone(to)}
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
		var overwritten uint64
		dstSt, err := e.lstat(dst)
		if err == nil {
			overwritten = e.fileID(dst, &dstSt)
			if overwritten == e.fileID(src, &sst) {
				return nil // two names of one file: rename does nothing
			}
		}
		ffd, err := e.openDir(from)
		if err != nil {
			return err
		}
		defer unix.Close(ffd)
		tfd, err := e.openDir(to)
		if err != nil {
			return err
		}
		defer unix.Close(tfd)
		// As the caller: the kernel applies the sticky rule to both
		// names and asks for write permission on a directory that
		// changes parent (its ".." is rewritten).
		if err := asCaller(c.cred, func() error { return unix.Renameat(ffd, fromName, tfd, toName) }); err != nil {
			return err
		}
		if overwritten != 0 {
			e.credit(&dstSt)
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
	return renameRes{status: status(err), from: wccOf(e, preFrom), to: wccOf(e, preTo)}
}

func (s *Server) link(c *call, a *linkArgs) linkRes {
	f, st := s.resolve(c, a.file)
	d, st2 := s.resolve(c, a.link.dir)
	name := a.link.name
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
		return linkRes{status: st, dir: wccNone(d)}
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
		if err := e.sameFile(sfd, sbase, f); err != nil {
			return err
		}
		dfd, err := e.openDir(d)
		if err != nil {
			return err
		}
		defer unix.Close(dfd)
		if err := e.mayGrow(entryCost); err != nil {
			return err
		}
		// As the server, after inDir's check of the directory: knfsd
		// calls vfs_link, which (unlike linkat(2)) leaves out
		// fs.protected_hardlinks; the node's setting is not the head
		// node's to apply, and nfs-ganesha does not apply it either.
		if err := e.measure(dfd, func() error { return unix.Linkat(sfd, sbase, dfd, name, 0) }); err != nil {
			return err
		}
		return e.commitMeta(d.rel, &d.st)
	}()
	return linkRes{status: status(err), file: currentAttrs{e: e, rel: f.rel}, dir: wccOf(e, pre)}
}

// direntBufs hold getdents results; a listing asks for one per call.
var direntBufs = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// cookieVerf ties READDIR cookies to a directory of a view generation.
func (e *export) cookieVerf(dirID uint64) [8]byte {
	var v [8]byte
	binary.BigEndian.PutUint64(v[:], dirID^uint64(e.gen)<<32)
	return v
}

func (s *Server) readdir(c *call, a *readdirArgs) readdirRes { return s.listDir(c, a, false) }

func (s *Server) readdirplus(c *call, a *readdirplusArgs) readdirRes {
	return s.listDir(c, &a.readdirArgs, true)
}

// listDir answers READDIR and, with plus, READDIRPLUS. Cookies are the
// file system's own directory offsets (d_off), which stay valid across
// restarts.
func (s *Server) listDir(c *call, a *readdirArgs, plus bool) readdirRes {
	d, st := s.resolve(c, a.dir)
	cookie, verf, count := a.cookie, a.verf, a.maxcount
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
		return readdirRes{status: st, dir: attrsOf(d)}
	}
	e := d.e
	fd, err := e.openFile(d, unix.O_RDONLY|unix.O_DIRECTORY)
	if err != nil {
		return readdirRes{status: status(err), dir: attrsOf(d)}
	}
	if cookie != 0 {
		if _, err := unix.Seek(fd, int64(cookie), 0); err != nil {
			unix.Close(fd)
			return readdirRes{status: errBadCookie, dir: attrsOf(d)}
		}
	}
	if count > maxIO {
		count = maxIO
	}
	list := func(w *writer, start int) uint32 {
		defer unix.Close(fd)
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
				return status(err)
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
						w.opaque(s.key.handle(e, id, e.tagAt(fd, name, rel, &cst)))
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
			return errTooSmall
		}
		w.bool(false)
		w.bool(eof && !full)
		return nfsOK
	}
	return readdirRes{status: nfsOK, dir: attrsOf(d), list: list}
}

func (s *Server) fsstat(c *call, a *fhArgs) fsstatRes {
	o, st := s.resolve(c, a.fh)
	var sf unix.Statfs_t
	if st == nfsOK {
		st = status(unix.Fstatfs(o.e.rootFd, &sf))
	}
	return fsstatRes{status: st, obj: attrsOf(o), sf: sf}
}

func (s *Server) fsinfo(c *call, a *fhArgs) fsinfoRes {
	o, st := s.resolve(c, a.fh)
	return fsinfoRes{status: st, obj: attrsOf(o)}
}

func (s *Server) pathconf(c *call, a *fhArgs) pathconfRes {
	o, st := s.resolve(c, a.fh)
	return pathconfRes{status: st, obj: attrsOf(o)}
}

func (s *Server) commit(c *call, a *commitArgs) commitRes {
	o, st := s.resolve(c, a.fh)
	if st == nfsOK && o.st.Mode&unix.S_IFMT != unix.S_IFREG {
		st = errInval
	}
	if st != nfsOK {
		return commitRes{status: st}
	}
	pre := preOp{ok: true, st: o.st, rel: o.rel, id: o.id}
	// fsync flushes the inode however it was written, so a fresh
	// descriptor commits what earlier WRITEs left unstable.
	fd, err := o.e.openFile(o, unix.O_RDONLY)
	if err == nil {
		err = unix.Fsync(fd)
		unix.Close(fd)
	}
	return commitRes{status: status(err), wcc: wccOf(o.e, pre), verf: s.verf}
}
