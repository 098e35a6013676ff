package nfs

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ociboot/ociboot/appliance/nodes"
)

// A view is a node's writable root: a tree of directories of its own whose
// non-directory entries are hard links into the immutable image tree. A
// link is broken (the file copied) before the node changes its content or
// attributes, so the image and other nodes never see the change. Files
// that share an inode with the image are "shared"; all others are the
// node's own.

const (
	viewFile = nodes.ViewFile
	viewRoot = "root"
	// idXattr keeps a copied-up file's fileid, so a client's handle and
	// cached inode stay valid when the file behind them is replaced.
	idXattr = "trusted.ociboot.fileid"
	// copyPrefix names temporary files of copy-ups; they never reach a
	// client because rename replaces them or CleanTemps removes them.
	copyPrefix = ".ociboot-copy-"
)

// export is one node's view as nfsd serves it.
type export struct {
	key    string
	id     [8]byte // in every handle of the export
	gen    uint32
	digest string
	dir    string // nodes/<key>
	root   string // nodes/<key>/root
	rootFd int    // O_PATH directory
	rootID uint64
	dev    uint64
	image  *imageSet
	onCopy func() // counts copy-ups
	budget *nodeBudget
	used   atomic.Int64 // bytes the view's own inodes use (budget.go)

	// mu serialises changes to the namespace and copy-ups, so a copy-up
	// never races a rename of the same name.
	mu sync.Mutex

	pmu    sync.RWMutex
	paths  map[uint64]string // fileid → path relative to root ("" = root)
	copied map[uint64]copyID // inode of a copy → the fileid and tag it keeps
	walkT  time.Time         // last full walk
}

// imageSet is what nfsd knows about an image tree: its inode numbers and
// link counts, to tell shared files from the node's own.
type imageSet struct {
	root  string
	dev   uint64
	nlink map[uint64]uint32
}

func loadImageSet(root string) (*imageSet, error) {
	var st unix.Stat_t
	if err := unix.Lstat(root, &st); err != nil {
		return nil, fmt.Errorf("image tree %s: %v", root, err)
	}
	s := &imageSet{root: root, dev: st.Dev, nlink: map[uint64]uint32{}}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			return nil
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		s.nlink[st.Ino]++ // links inside the image; st.Nlink counts views too
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("image tree %s: %v", root, err)
	}
	return s, nil
}

func (e *export) shared(st *unix.Stat_t) bool {
	if e.image == nil || st.Dev != e.image.dev || st.Mode&unix.S_IFMT == unix.S_IFDIR {
		return false
	}
	_, ok := e.image.nlink[st.Ino]
	return ok
}

func (e *export) close() { unix.Close(e.rootFd) }

// commitMeta makes a change to rel's metadata (a directory's entries, a
// file's attributes) durable before the reply, as RFC 1813 asks of CREATE,
// REMOVE, RENAME, SETATTR and the like: a client told "done" must not lose
// the change when the head node loses power. A symlink's own attributes
// are committed through its directory.
func (e *export) commitMeta(rel string, st *unix.Stat_t) error {
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFDIR, unix.S_IFREG:
	default:
		dir, _ := path.Split(rel)
		rel = strings.TrimSuffix(dir, "/")
	}
	fd, err := e.open(rel, unix.O_RDONLY|unix.O_NOATIME)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return unix.Fsync(fd)
}

func randName() string {
	var b [6]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// resolveFlags forbid every symlink and leaving the view, so no lookup the
// server does on a client's behalf follows a link.
const resolveFlags = unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS | unix.RESOLVE_NO_XDEV

// open opens rel (relative to the view root) with flags; a symlink in the
// last component is opened itself with O_PATH.
//
// A path longer than one system call takes (PATH_MAX, 4096 bytes with
// its NUL) is walked in pieces from directory to directory: a node may
// make trees deeper than that (its own paths are relative to its working
// directory), and its local file system serves them.
func (e *export) open(rel string, flags int) (int, error) {
	if rel == "" {
		rel = "."
	}
	dirfd := e.rootFd
	for len(rel) > maxPiece {
		cut := strings.LastIndexByte(rel[:maxPiece], '/')
		if cut <= 0 {
			return -1, unix.ENAMETOOLONG
		}
		fd, err := openat2(dirfd, rel[:cut], unix.O_PATH|unix.O_DIRECTORY)
		if dirfd != e.rootFd {
			unix.Close(dirfd)
		}
		if err != nil {
			return -1, err
		}
		dirfd, rel = fd, rel[cut+1:]
	}
	fd, err := openat2(dirfd, rel, flags)
	if dirfd != e.rootFd {
		unix.Close(dirfd)
	}
	return fd, err
}

// maxPiece is the longest path open hands to one openat2.
const maxPiece = unix.PathMax - 1

// openat2 opens rel below dirfd, never following a symlink or leaving
// dirfd (rel has no ".." components: names are checked on the way in).
func openat2(dirfd int, rel string, flags int) (int, error) {
	for {
		fd, err := unix.Openat2(dirfd, rel, &unix.OpenHow{
			Flags:   uint64(flags | unix.O_NOFOLLOW | unix.O_CLOEXEC),
			Resolve: resolveFlags,
		})
		if err == unix.EINTR || err == unix.EAGAIN {
			continue
		}
		return fd, err
	}
}

// openFile opens the file o names and checks that it is still that file
// (fileid and tag): between resolving a handle and opening its path a
// rename may have put another file there. The file is then looked for
// again by its fileid, once.
func (e *export) openFile(o *obj, flags int) (int, error) {
	for try := 0; ; try++ {
		fd, err := e.open(o.rel, flags)
		if err != nil && !errors.Is(err, unix.ENOENT) {
			return -1, err
		}
		if err == nil {
			var st unix.Stat_t
			if err := unix.Fstat(fd, &st); err != nil {
				unix.Close(fd)
				return -1, err
			}
			if e.fileID(o.rel, &st) == o.id && (o.tag == 0 || e.tagOfFd(fd, &st) == o.tag) {
				return fd, nil
			}
			unix.Close(fd)
		}
		if try > 0 {
			return -1, errStale
		}
		rel, st, err := e.path(o.id)
		if err != nil {
			return -1, errStale
		}
		o.rel, o.st = rel, st
	}
}

// openDir opens directory d (O_PATH), checked as openFile does.
func (e *export) openDir(d *obj) (int, error) {
	return e.openFile(d, unix.O_PATH|unix.O_DIRECTORY)
}

// tagOfFd is tag for an open file.
func (e *export) tagOfFd(fd int, st *unix.Stat_t) uint32 {
	if c, ok := e.copyOf(st); ok {
		return c.tag
	}
	return inodeTag(fd, "", unix.AT_EMPTY_PATH)
}

// sameFile checks that name in dirfd is the file o names, before a call
// changes it by name. Callers hold e.mu, which every change of the
// view's namespace takes, so it stays so until they are done.
func (e *export) sameFile(dirfd int, name string, o *obj) error {
	var st unix.Stat_t
	if err := unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return err
	}
	if e.fileID(o.rel, &st) != o.id {
		return errStale
	}
	return nil
}

func (e *export) lstat(rel string) (unix.Stat_t, error) {
	var st unix.Stat_t
	fd, err := e.open(rel, unix.O_PATH)
	if err != nil {
		return st, err
	}
	defer unix.Close(fd)
	err = unix.Fstat(fd, &st)
	return st, err
}
