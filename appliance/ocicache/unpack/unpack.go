// Package unpack applies OCI image layers (tar streams) onto a directory the
// way a container runtime's overlay would see them, without ever writing
// outside that directory.
//
// Every path is resolved with openat2(RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS)
// from a descriptor of the root, so an entry whose parent is a symlink, whose
// name contains "..", or which is absolute is refused with an error rather
// than followed: a layer that writes through a symlink it planted itself is
// an attack on the head node, not an image a node can boot. Hard links must
// name a file already inside the root. Symlinks themselves are created as
// they are (their targets only mean something to the booted node).
//
// Decisions:
//   - Owners are applied with lchown and modes with chmod afterwards, because
//     chown clears setuid/setgid.
//   - Xattrs: a failure to set a security.* attribute other than
//     security.capability (for instance security.selinux on a kernel without
//     SELinux) is logged and skipped; ENOTSUP from the file system is logged
//     once and skipped; any other failure is an error (a lost capability
//     would silently break ping and friends).
//   - When not running as root, owners and device nodes cannot be created:
//     they are skipped with one log line each kind (unit tests, dev runs).
//   - Directory mtimes are applied after all layers, deepest first, because
//     creating entries inside a directory changes its mtime.
//   - Free disk space is checked before each regular file and every 16 MiB
//     written; unpacking stops with an error before free space drops below
//     Options.MinFree, so a decompression bomb fills at most what was free.
package unpack

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Options tune an Unpacker.
type Options struct {
	// MinFree is the free space (bytes) that must remain on the file
	// system of the root; default 256 MiB.
	MinFree int64
	// Log receives notes about skipped attributes; default slog.Default().
	Log *slog.Logger
	// statfs is replaced in tests to simulate a small disk.
	statfs func(fd int, st *unix.Statfs_t) error
}

// Unpacker applies layers in order onto one root directory.
type Unpacker struct {
	root    string
	rootFD  int
	opts    Options
	isRoot  bool
	noted   map[string]bool
	dirTime map[string]time.Time // directory → mtime from its topmost entry
	// layer holds the paths written by the current layer, so that an
	// opaque marker removes only what lower layers left.
	layer   map[string]bool
	written int64
	buf     []byte
}

// New opens root (an existing, empty directory) for unpacking.
func New(root string, opts Options) (*Unpacker, error) {
	fd, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("unpack: open %s: %v", root, err)
	}
	if opts.MinFree == 0 {
		opts.MinFree = 256 << 20
	}
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	if opts.statfs == nil {
		opts.statfs = unix.Fstatfs
	}
	return &Unpacker{root: root, rootFD: fd, opts: opts, isRoot: os.Geteuid() == 0,
		noted: map[string]bool{}, dirTime: map[string]time.Time{}}, nil
}

// Close applies directory mtimes and releases the root. Call it after the
// last layer; the tree is complete only if Close returns nil.
func (u *Unpacker) Close() error {
	defer unix.Close(u.rootFD)
	dirs := make([]string, 0, len(u.dirTime))
	for d := range u.dirTime {
		dirs = append(dirs, d)
	}
	// Deepest first, so that setting a child's time does not disturb an
	// already set parent (utimes on a child does not change the parent, but
	// sorting also keeps the order deterministic).
	sort.Slice(dirs, func(i, j int) bool { return strings.Count(dirs[i], "/") > strings.Count(dirs[j], "/") })
	for _, d := range dirs {
		ts := []unix.Timespec{unix.NsecToTimespec(u.dirTime[d].UnixNano()), unix.NsecToTimespec(u.dirTime[d].UnixNano())}
		if d == "." {
			continue
		}
		pfd, base, err := u.parent(d, false)
		if err != nil {
			continue // removed by a later whiteout
		}
		err = unix.UtimesNanoAt(pfd, base, ts, unix.AT_SYMLINK_NOFOLLOW)
		unix.Close(pfd)
		if err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("unpack: mtime of %s: %v", d, err)
		}
	}
	return nil
}

// EntryError is returned for an entry refused as hostile or malformed.
type EntryError struct {
	Name   string
	Reason string
}

func (e *EntryError) Error() string {
	return fmt.Sprintf("unpack: refusing tar entry %q: %s", e.Name, e.Reason)
}

// clean validates a tar path and returns it relative to the root without
// "./" prefixes, or "." for the root itself.
func clean(name string) (string, error) {
	if name == "" {
		return "", &EntryError{name, "empty name"}
	}
	if strings.HasPrefix(name, "/") {
		return "", &EntryError{name, "absolute path"}
	}
	if strings.ContainsRune(name, 0) {
		return "", &EntryError{name, "NUL in name"}
	}
	for _, el := range strings.Split(name, "/") {
		if el == ".." {
			return "", &EntryError{name, "\"..\" escapes the image root"}
		}
	}
	return path.Clean(name), nil
}

const beneath = unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS | unix.RESOLVE_NO_XDEV

// openDir opens dir (relative, cleaned) below the root without following any
// symlink; with create, missing directories are made (0755, root-owned, as
// a runtime would).
func (u *Unpacker) openDir(dir string, create bool) (int, error) {
	how := &unix.OpenHow{Flags: unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC, Resolve: beneath}
	fd, err := unix.Openat2(u.rootFD, dir, how)
	if err == nil || !create || !errors.Is(err, unix.ENOENT) {
		if errors.Is(err, unix.ELOOP) || errors.Is(err, unix.EXDEV) || errors.Is(err, unix.ENOTDIR) {
			return -1, &EntryError{dir, "a parent is a symlink or not a directory; writing through it could leave the image root"}
		}
		return fd, err
	}
	// Create the missing components one by one, each resolved safely.
	cur := "."
	for _, el := range strings.Split(dir, "/") {
		next := path.Join(cur, el)
		pfd, err := unix.Openat2(u.rootFD, cur, how)
		if err != nil {
			return -1, err
		}
		err = unix.Mkdirat(pfd, el, 0o755)
		unix.Close(pfd)
		if err != nil && !errors.Is(err, unix.EEXIST) {
			return -1, err
		}
		cur = next
	}
	return u.openDir(dir, false)
}

// parent opens the parent directory of p and returns it with p's base name.
func (u *Unpacker) parent(p string, create bool) (int, string, error) {
	fd, err := u.openDir(path.Dir(p), create)
	if err != nil {
		return -1, "", err
	}
	return fd, path.Base(p), nil
}

// Apply unpacks one uncompressed layer tar stream.
func (u *Unpacker) Apply(r io.Reader) error {
	u.layer = map[string]bool{}
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("unpack: reading layer: %v", err)
		}
		if err := u.entry(hdr, tr); err != nil {
			var ee *EntryError
			if errors.As(err, &ee) {
				return err
			}
			return fmt.Errorf("unpack: %s: %w", hdr.Name, err)
		}
	}
}

func (u *Unpacker) entry(hdr *tar.Header, r io.Reader) error {
	p, err := clean(hdr.Name)
	if err != nil {
		return err
	}
	base := path.Base(p)
	if strings.HasPrefix(base, ".wh.") {
		return u.whiteout(p, base)
	}
	if p == "." {
		if hdr.Typeflag == tar.TypeDir {
			u.dirTime["."] = hdr.ModTime
			return u.attrs(u.rootFD, "", hdr)
		}
		return &EntryError{hdr.Name, "the image root must be a directory"}
	}
	pfd, name, err := u.parent(p, true)
	if err != nil {
		return err
	}
	defer unix.Close(pfd)
	u.layer[p] = true

	// An existing entry is replaced, except a directory by a directory
	// (whose contents from lower layers stay).
	var st unix.Stat_t
	exists := unix.Fstatat(pfd, name, &st, unix.AT_SYMLINK_NOFOLLOW) == nil
	if exists && !(hdr.Typeflag == tar.TypeDir && st.Mode&unix.S_IFMT == unix.S_IFDIR) {
		if err := removeAt(pfd, name); err != nil {
			return fmt.Errorf("replacing existing entry: %v", err)
		}
	}

	switch hdr.Typeflag {
	case tar.TypeDir:
		if err := unix.Mkdirat(pfd, name, 0o700); err != nil && !errors.Is(err, unix.EEXIST) {
			return err
		}
		u.dirTime[p] = hdr.ModTime
		return u.attrs(pfd, name, hdr)
	case tar.TypeReg, tar.TypeRegA, tar.TypeGNUSparse:
		return u.file(pfd, name, hdr, r)
	case tar.TypeSymlink:
		if err := unix.Symlinkat(hdr.Linkname, pfd, name); err != nil {
			return err
		}
		return u.attrs(pfd, name, hdr)
	case tar.TypeLink:
		tp, err := clean(hdr.Linkname)
		if err != nil || tp == "." {
			return &EntryError{hdr.Name, fmt.Sprintf("hard link target %q is outside the image root", hdr.Linkname)}
		}
		tfd, tname, err := u.parent(tp, false)
		if err != nil {
			return &EntryError{hdr.Name, fmt.Sprintf("hard link target %q: %v", hdr.Linkname, err)}
		}
		defer unix.Close(tfd)
		var ts unix.Stat_t
		if err := unix.Fstatat(tfd, tname, &ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return &EntryError{hdr.Name, fmt.Sprintf("hard link target %q does not exist in the image", hdr.Linkname)}
		}
		if ts.Mode&unix.S_IFMT == unix.S_IFDIR {
			return &EntryError{hdr.Name, "hard link to a directory"}
		}
		// Flags 0: link the entry itself, never what a symlink points to.
		return unix.Linkat(tfd, tname, pfd, name, 0)
	case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
		mode := uint32(hdr.Mode & 0o7777)
		switch hdr.Typeflag {
		case tar.TypeChar:
			mode |= unix.S_IFCHR
		case tar.TypeBlock:
			mode |= unix.S_IFBLK
		default:
			mode |= unix.S_IFIFO
		}
		if !u.isRoot && hdr.Typeflag != tar.TypeFifo {
			u.note("devices", "not root: device nodes are skipped", "first", p)
			return nil
		}
		if err := unix.Mknodat(pfd, name, mode, int(unix.Mkdev(uint32(hdr.Devmajor), uint32(hdr.Devminor)))); err != nil {
			return err
		}
		return u.attrs(pfd, name, hdr)
	case tar.TypeXGlobalHeader:
		return nil
	default:
		return &EntryError{hdr.Name, fmt.Sprintf("unsupported tar entry type %q", hdr.Typeflag)}
	}
}

func (u *Unpacker) note(kind, msg string, args ...any) {
	if u.noted[kind] {
		return
	}
	u.noted[kind] = true
	u.opts.Log.Warn(msg, args...)
}

// whiteout removes what lower layers put at a path (".wh.name") or
// everything lower layers put inside a directory (".wh..wh..opq").
func (u *Unpacker) whiteout(p, base string) error {
	dir := path.Dir(p)
	pfd, err := u.openDir(dir, false)
	if errors.Is(err, unix.ENOENT) {
		return nil // nothing below to hide
	}
	if err != nil {
		return err
	}
	defer unix.Close(pfd)
	if base == ".wh..wh..opq" {
		entries, err := readDirNames(pfd)
		if err != nil {
			return err
		}
		for _, e := range entries {
			if u.layer[path.Join(dir, e)] {
				continue
			}
			if err := removeAt(pfd, e); err != nil {
				return err
			}
		}
		return nil
	}
	target := strings.TrimPrefix(base, ".wh.")
	if target == "" || target == "." || target == ".." {
		return &EntryError{p, "whiteout of an invalid name"}
	}
	if u.layer[path.Join(dir, target)] {
		return nil // a whiteout hides lower layers only
	}
	if err := removeAt(pfd, target); err != nil && !errors.Is(err, unix.ENOENT) {
		return err
	}
	return nil
}

func readDirNames(dfd int) ([]string, error) {
	fd, err := unix.Openat(dfd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(fd), "dir")
	defer f.Close()
	return f.Readdirnames(-1)
}

// removeAt removes name below dfd recursively without following symlinks.
func removeAt(dfd int, name string) error {
	err := unix.Unlinkat(dfd, name, 0)
	if err == nil || errors.Is(err, unix.ENOENT) {
		return nil
	}
	if !errors.Is(err, unix.EISDIR) && !errors.Is(err, unix.EPERM) {
		return err
	}
	sub, err := unix.Openat(dfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	names, err := readDirNames(sub)
	if err == nil {
		for _, n := range names {
			if err = removeAt(sub, n); err != nil {
				break
			}
		}
	}
	unix.Close(sub)
	if err != nil {
		return err
	}
	return unix.Unlinkat(dfd, name, unix.AT_REMOVEDIR)
}

const chunk = 16 << 20

func (u *Unpacker) checkFree(need int64) error {
	var st unix.Statfs_t
	if err := u.opts.statfs(u.rootFD, &st); err != nil {
		return fmt.Errorf("statfs %s: %v", u.root, err)
	}
	free := int64(st.Bavail) * int64(st.Bsize)
	if free-need < u.opts.MinFree {
		return fmt.Errorf("disk full: %d MiB free on %s, %d MiB more needed and -min_free_mib keeps %d MiB free; free space on the store, drop unused images from the config, or use a smaller image (a layer this large may be a decompression bomb)",
			free>>20, u.root, need>>20, u.opts.MinFree>>20)
	}
	return nil
}

func (u *Unpacker) file(pfd int, name string, hdr *tar.Header, r io.Reader) error {
	if err := u.checkFree(hdr.Size); err != nil {
		return err
	}
	fd, err := unix.Openat(pfd, name, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return err
	}
	f := os.NewFile(uintptr(fd), name)
	defer f.Close()
	if err := u.copyHoles(f, r, hdr.Size); err != nil {
		return err
	}
	u.written += hdr.Size
	if err := u.attrsFD(fd, hdr); err != nil {
		return err
	}
	ts := []unix.Timespec{unix.NsecToTimespec(hdr.AccessTime.UnixNano()), unix.NsecToTimespec(hdr.ModTime.UnixNano())}
	if hdr.AccessTime.IsZero() {
		ts[0] = ts[1]
	}
	if err := unix.UtimesNanoAt(pfd, name, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return err
	}
	return f.Close()
}

// copyHoles writes size bytes from r to f, leaving blocks of zeros as holes:
// sparse files (disk images, databases) stay sparse, as they were in the
// image builder's file system.
func (u *Unpacker) copyHoles(f *os.File, r io.Reader, size int64) error {
	buf := u.buf
	if buf == nil {
		buf = make([]byte, 256<<10)
		u.buf = buf
	}
	var sinceCheck, off int64
	for off < size {
		n := int(min(int64(len(buf)), size-off))
		if _, err := io.ReadFull(r, buf[:n]); err != nil {
			return fmt.Errorf("reading: %v", err)
		}
		if allZero(buf[:n]) {
			off += int64(n)
			continue
		}
		if sinceCheck += int64(n); sinceCheck >= chunk {
			if err := u.checkFree(chunk); err != nil {
				return err
			}
			sinceCheck = 0
		}
		if _, err := f.WriteAt(buf[:n], off); err != nil {
			return fmt.Errorf("writing: %v", err)
		}
		off += int64(n)
	}
	return f.Truncate(size)
}

func allZero(b []byte) bool {
	for len(b) >= 8 {
		if b[0]|b[1]|b[2]|b[3]|b[4]|b[5]|b[6]|b[7] != 0 {
			return false
		}
		b = b[8:]
	}
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// attrsFD sets owner, xattrs and mode on an open regular file.
func (u *Unpacker) attrsFD(fd int, hdr *tar.Header) error {
	if u.isRoot {
		if err := unix.Fchown(fd, hdr.Uid, hdr.Gid); err != nil {
			return fmt.Errorf("chown: %v", err)
		}
	} else {
		u.note("owners", "not root: file owners are not applied", "first", hdr.Name)
	}
	if err := u.xattrs(hdr, func(k string, v []byte) error { return unix.Fsetxattr(fd, k, v, 0) }); err != nil {
		return err
	}
	return unix.Fchmod(fd, uint32(hdr.Mode&0o7777))
}

// attrs sets owner, xattrs, mode and mtime on a non-regular entry.
func (u *Unpacker) attrs(pfd int, name string, hdr *tar.Header) error {
	if name == "" {
		pfd, name = u.rootFD, "."
	}
	isLink := hdr.Typeflag == tar.TypeSymlink
	if u.isRoot {
		if err := unix.Fchownat(pfd, name, hdr.Uid, hdr.Gid, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return fmt.Errorf("chown: %v", err)
		}
	}
	// Xattrs and mode go through an O_PATH descriptor of the entry itself
	// (never a symlink's target): /proc/self/fd/N names exactly that inode.
	efd, err := unix.Openat(pfd, name, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(efd)
	proc := fmt.Sprintf("/proc/self/fd/%d", efd)
	// Following the magic link of an O_PATH|O_NOFOLLOW descriptor lands on
	// the symlink inode itself, not on what it points to.
	if err := u.xattrs(hdr, func(k string, v []byte) error { return unix.Setxattr(proc, k, v, 0) }); err != nil {
		return err
	}
	if !isLink {
		if err := unix.Fchmodat(pfd, name, uint32(hdr.Mode&0o7777), 0); err != nil {
			return fmt.Errorf("chmod: %v", err)
		}
	}
	if hdr.Typeflag != tar.TypeDir {
		ts := []unix.Timespec{unix.NsecToTimespec(hdr.ModTime.UnixNano()), unix.NsecToTimespec(hdr.ModTime.UnixNano())}
		if err := unix.UtimesNanoAt(pfd, name, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return fmt.Errorf("mtime: %v", err)
		}
	}
	return nil
}

func (u *Unpacker) xattrs(hdr *tar.Header, set func(string, []byte) error) error {
	keys := make([]string, 0)
	for k := range hdr.PAXRecords {
		if strings.HasPrefix(k, "SCHILY.xattr.") {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	for _, k := range keys {
		attr := strings.TrimPrefix(k, "SCHILY.xattr.")
		err := set(attr, []byte(hdr.PAXRecords[k]))
		switch {
		case err == nil:
		case errors.Is(err, unix.ENOTSUP):
			u.note("xattr-notsup", "file system does not support xattrs; skipping them", "first", hdr.Name, "attr", attr)
		case strings.HasPrefix(attr, "security.") && attr != "security.capability":
			u.note("xattr-"+attr, "cannot set xattr; skipping it", "entry", hdr.Name, "attr", attr, "err", err)
		case !u.isRoot && strings.HasPrefix(attr, "trusted."):
			u.note("xattr-trusted", "not root: trusted.* xattrs are skipped", "first", hdr.Name)
		default:
			return fmt.Errorf("xattr %s: %v", attr, err)
		}
	}
	return nil
}

// Written returns the bytes of regular file content written so far.
func (u *Unpacker) Written() int64 { return u.written }
