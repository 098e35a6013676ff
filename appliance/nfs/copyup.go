package nfs

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strings"

	"golang.org/x/sys/unix"
)

// breakLink gives rel its own inode if it still shares one with the image,
// before the caller changes content or attributes. Other names of the
// same file inside the view are moved to the copy too, so hard links the
// image made keep behaving as one file. The copy keeps the fileid, so the
// client's handles stay valid. Callers hold e.mu.
func (e *export) breakLink(rel string) (unix.Stat_t, error) {
	st, err := e.lstat(rel)
	if err != nil || !e.shared(&st) {
		return st, err
	}
	if err := e.mayGrow(int64(st.Blocks) * 512); err != nil {
		return st, err
	}
	id := st.Ino
	names := []string{rel}
	if e.image.nlink[st.Ino] > 1 {
		names = e.namesOf(st.Ino)
		if len(names) == 0 {
			names = []string{rel}
		}
	}
	dir, base := path.Split(rel)
	dir = strings.TrimSuffix(dir, "/")
	dfd, err := e.open(dir, unix.O_PATH|unix.O_DIRECTORY)
	if err != nil {
		return st, err
	}
	defer unix.Close(dfd)
	tmp := copyPrefix + randName()
	cid := copyID{id: id, tag: e.tag(rel, &st)}
	if err := e.copyInode(dfd, rel, tmp, &st, cid); err != nil {
		unix.Unlinkat(dfd, tmp, 0)
		return st, fmt.Errorf("copy of %s before a change: %w", rel, err)
	}
	var cst unix.Stat_t
	if err := unix.Fstatat(dfd, tmp, &cst, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		unix.Unlinkat(dfd, tmp, 0)
		return st, fmt.Errorf("copy of %s before a change: %w", rel, err)
	}
	if cst.Mode&unix.S_IFMT == unix.S_IFREG {
		// Known before the copy takes the name, so no call sees it
		// without its fileid.
		e.pmu.Lock()
		e.copied[cst.Ino] = cid
		e.pmu.Unlock()
	}
	// Move the other names first, the requested one last: until then the
	// temp name keeps the copy reachable.
	for _, n := range names {
		if n == rel {
			continue
		}
		nd, nb := path.Split(n)
		nfd, err := e.open(strings.TrimSuffix(nd, "/"), unix.O_PATH|unix.O_DIRECTORY)
		if err != nil {
			continue
		}
		t2 := copyPrefix + randName()
		if unix.Linkat(dfd, tmp, nfd, t2, 0) == nil {
			if unix.Renameat(nfd, t2, nfd, nb) != nil {
				unix.Unlinkat(nfd, t2, 0)
			}
		}
		unix.Fsync(nfd)
		unix.Close(nfd)
	}
	if err := unix.Renameat(dfd, tmp, dfd, base); err != nil {
		unix.Unlinkat(dfd, tmp, 0)
		return st, fmt.Errorf("copy of %s before a change: %w", rel, err)
	}
	e.chargeNew(&cst)
	if e.onCopy != nil {
		e.onCopy()
	}
	if dirfd, err := e.open(dir, unix.O_RDONLY|unix.O_DIRECTORY); err == nil {
		unix.Fsync(dirfd)
		unix.Close(dirfd)
	}
	return e.lstat(rel)
}

// namesOf finds every name in the view of inode ino.
func (e *export) namesOf(ino uint64) []string {
	var out []string
	e.eachEntry(func(dirfd int, name, rel string, st *unix.Stat_t) {
		if st.Mode&unix.S_IFMT != unix.S_IFDIR && st.Ino == ino && st.Dev == e.dev {
			out = append(out, rel)
		}
	})
	return out
}

// copyInode creates tmp in dfd as a copy of rel with the same type,
// content, owner, mode, xattrs and times, and the fileid and tag of cid.
func (e *export) copyInode(dfd int, rel, tmp string, st *unix.Stat_t, cid copyID) error {
	mode := st.Mode & unix.S_IFMT
	switch mode {
	case unix.S_IFREG:
		sfd, err := e.open(rel, unix.O_RDONLY|unix.O_NOATIME)
		if err != nil {
			return err
		}
		src := os.NewFile(uintptr(sfd), rel)
		defer src.Close()
		dfdFile, err := unix.Openat(dfd, tmp, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
		if err != nil {
			return err
		}
		dst := os.NewFile(uintptr(dfdFile), tmp)
		defer dst.Close()
		if _, err := io.Copy(dst, src); err != nil {
			return err
		}
		if err := copyXattrs(fdPath(sfd), fdPath(dfdFile), true); err != nil {
			return err
		}
		if err := unix.Fsetxattr(dfdFile, idXattr, cid.encode(), 0); err != nil {
			return fmt.Errorf("keeping the fileid: %v", err)
		}
		if err := unix.Fchown(dfdFile, int(st.Uid), int(st.Gid)); err != nil {
			return err
		}
		if err := unix.Fchmod(dfdFile, st.Mode&0o7777); err != nil {
			return err
		}
		if err := unix.UtimesNanoAt(dfd, tmp, []unix.Timespec{st.Atim, st.Mtim}, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return err
		}
		return dst.Sync()
	case unix.S_IFLNK:
		target, err := e.readlink(rel)
		if err != nil {
			return err
		}
		if err := unix.Symlinkat(target, dfd, tmp); err != nil {
			return err
		}
	default: // devices, fifos, sockets
		if err := unix.Mknodat(dfd, tmp, st.Mode, int(st.Rdev)); err != nil {
			return err
		}
		if err := unix.Fchownat(dfd, tmp, int(st.Uid), int(st.Gid), unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return err
		}
		if err := unix.Fchmodat(dfd, tmp, st.Mode&0o7777, 0); err != nil {
			return err
		}
		return unix.UtimesNanoAt(dfd, tmp, []unix.Timespec{st.Atim, st.Mtim}, unix.AT_SYMLINK_NOFOLLOW)
	}
	if err := unix.Fchownat(dfd, tmp, int(st.Uid), int(st.Gid), unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return err
	}
	return unix.UtimesNanoAt(dfd, tmp, []unix.Timespec{st.Atim, st.Mtim}, unix.AT_SYMLINK_NOFOLLOW)
}

func fdPath(fd int) string { return fmt.Sprintf("/proc/self/fd/%d", fd) }

func (e *export) readlink(rel string) (string, error) {
	fd, err := e.open(rel, unix.O_PATH)
	if err != nil {
		return "", err
	}
	defer unix.Close(fd)
	return readlinkFd(fd)
}

// readlinkFd reads the target of the symlink fd (O_PATH) names.
func readlinkFd(fd int) (string, error) {
	buf := make([]byte, 4096)
	n, err := unix.Readlinkat(fd, "", buf)
	if err != nil {
		return "", err
	}
	return string(buf[:n]), nil
}

// copyXattrs copies extended attributes; with follow the paths are
// /proc/self/fd magic links, which the l* calls would not pass through.
func copyXattrs(src, dst string, follow bool) error {
	names, err := listXattrs(src, follow)
	if err != nil {
		return err
	}
	for _, n := range names {
		if n == idXattr {
			continue
		}
		v, err := getXattr(src, n, follow)
		if err != nil {
			continue
		}
		set := unix.Lsetxattr
		if follow {
			set = unix.Setxattr
		}
		if err := set(dst, n, v, 0); err != nil && !errors.Is(err, unix.EPERM) && !errors.Is(err, unix.ENOTSUP) {
			return fmt.Errorf("xattr %s on %s: %v", n, dst, err)
		}
	}
	return nil
}

func listXattrs(p string, follow bool) ([]string, error) {
	list := unix.Llistxattr
	if follow {
		list = unix.Listxattr
	}
	sz, err := list(p, nil)
	if err != nil || sz == 0 {
		if errors.Is(err, unix.ENOTSUP) {
			err = nil
		}
		return nil, err
	}
	buf := make([]byte, sz)
	sz, err = list(p, buf)
	if err != nil {
		return nil, err
	}
	var names []string
	for _, n := range strings.Split(string(buf[:sz]), "\x00") {
		if n != "" {
			names = append(names, n)
		}
	}
	return names, nil
}

func getXattr(p, name string, follow bool) ([]byte, error) {
	get := unix.Lgetxattr
	if follow {
		get = unix.Getxattr
	}
	sz, err := get(p, name, nil)
	if err != nil {
		return nil, err
	}
	buf := make([]byte, sz)
	sz, err = get(p, name, buf)
	return buf[:sz], err
}
