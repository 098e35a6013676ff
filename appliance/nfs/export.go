package nfs

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ociboot/ociboot/appliance/nodes"
	"github.com/ociboot/ociboot/appliance/store"
)

// A view is a node's writable root: a tree of directories of its own whose
// non-directory entries are hard links into the immutable image tree. A
// link is broken (the file copied) before the node changes its content or
// attributes, so the image and other nodes never see the change. Files
// that share an inode with the image are "shared"; all others are the
// node's own.

// viewInfo is nodes/<key>/view.json.
type viewInfo struct {
	Key     string
	Digest  string    // image the view was made from
	Gen     uint32    // random per view: handles of a dropped view go stale
	Created time.Time `json:",omitempty"`
}

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

	// mu serialises changes to the namespace and copy-ups, so a copy-up
	// never races a rename of the same name.
	mu sync.Mutex

	pmu    sync.RWMutex
	paths  map[uint64]string // fileid → path relative to root ("" = root)
	copied map[uint64]uint64 // inode of a copy → the fileid it keeps
	walkT  time.Time         // last full walk
}

// exportID is the stable identity of key in handles.
func exportID(key string) [8]byte {
	sum := sha256.Sum256([]byte("ociboot-export\x00" + key))
	var id [8]byte
	copy(id[:], sum[:8])
	return id
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

// buildView makes dst (which must not exist) a view of the image tree src:
// directories copied with owner, mode, xattrs and times, everything else
// hard-linked.
func buildView(src, dst string) error {
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		target := filepath.Join(dst, rel)
		if !d.IsDir() {
			return os.Link(p, target)
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		if err := os.Mkdir(target, 0o700); err != nil {
			return err
		}
		if err := copyXattrs(p, target, false); err != nil {
			return err
		}
		if err := os.Lchown(target, int(st.Uid), int(st.Gid)); err != nil {
			return err
		}
		return unix.Chmod(target, st.Mode&0o7777)
	})
}

// fixDirTimes copies directory times after all links exist (creating
// entries changes a directory's mtime).
func fixDirTimes(src, dst string) error {
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return err
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		return unix.UtimesNano(filepath.Join(dst, rel), []unix.Timespec{st.Atim, st.Mtim})
	})
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

// openExport loads (or, with create, makes) the view of key in dir.
// imageRoot and digest name the image the view is made from when it does
// not exist yet; an existing view keeps its image until it is reset.
func openExport(dir, key, imageRoot, digest string, create bool, images func(digest string) (*imageSet, error), personalize func(root string) error) (*export, error) {
	var vi viewInfo
	err := store.ReadJSON(filepath.Join(dir, viewFile), &vi)
	root := filepath.Join(dir, viewRoot)
	_, rootErr := os.Lstat(root)
	switch {
	case err == nil && rootErr == nil:
	case err != nil && !errors.Is(err, fs.ErrNotExist) && rootErr == nil:
		// An unreadable record in front of a node's root: the root holds
		// the node's changes, so it is not replaced behind anyone's back.
		return nil, fmt.Errorf("nfsd: node %s: %v; repair it, or reset the node to drop its root", key, err)
	case !create:
		return nil, fmt.Errorf("nfsd: node %s has no view yet", key)
	default:
		if imageRoot == "" {
			return nil, fmt.Errorf("nfsd: node %s: no image to make its root from", key)
		}
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, fmt.Errorf("nfsd: %v", err)
		}
		store.CleanTemps(dir)
		os.RemoveAll(root)
		var g [4]byte
		rand.Read(g[:])
		vi = viewInfo{Key: key, Digest: digest, Gen: binary.BigEndian.Uint32(g[:]), Created: time.Now().UTC()}
		tmp, err := store.TempDir(root)
		if err != nil {
			return nil, fmt.Errorf("nfsd: view of %s: %v", key, err)
		}
		os.Remove(tmp) // buildView creates it with the image root's attributes
		if err := buildView(imageRoot, tmp); err != nil {
			os.RemoveAll(tmp)
			return nil, fmt.Errorf("nfsd: making the root of node %s from %s: %v", key, imageRoot, err)
		}
		if err := fixDirTimes(imageRoot, tmp); err != nil {
			os.RemoveAll(tmp)
			return nil, fmt.Errorf("nfsd: making the root of node %s: %v", key, err)
		}
		if personalize != nil {
			if err := personalize(tmp); err != nil {
				os.RemoveAll(tmp)
				return nil, fmt.Errorf("nfsd: writing the identity of node %s: %v", key, err)
			}
		}
		// The tree's links are durable once the file system commits its
		// journal; syncfs makes that happen before the view is announced.
		if fd, err := unix.Open(tmp, unix.O_RDONLY|unix.O_DIRECTORY, 0); err == nil {
			unix.Syncfs(fd)
			unix.Close(fd)
		}
		if err := store.WriteJSON(filepath.Join(dir, viewFile), vi); err != nil {
			os.RemoveAll(tmp)
			return nil, fmt.Errorf("nfsd: %v", err)
		}
		if err := os.Rename(tmp, root); err != nil {
			os.RemoveAll(tmp)
			return nil, fmt.Errorf("nfsd: %v", err)
		}
		store.SyncDir(dir)
	}
	fd, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("nfsd: opening the root of node %s: %v", key, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("nfsd: %v", err)
	}
	e := &export{key: key, id: exportID(key), gen: vi.Gen, digest: vi.Digest, dir: dir, root: root,
		rootFd: fd, rootID: st.Ino, dev: st.Dev, paths: map[uint64]string{}, copied: map[uint64]uint64{}}
	e.paths[e.rootID] = ""
	if vi.Digest != "" && images != nil {
		// Without the image set every file counts as the node's own; that
		// is only right once no other view shares the image's inodes, so
		// a missing image is an error, not a fallback.
		set, err := images(vi.Digest)
		if err != nil {
			unix.Close(fd)
			return nil, fmt.Errorf("nfsd: node %s: the image its root was made from (%s) is gone: %v; reset the node", key, vi.Digest, err)
		}
		e.image = set
	}
	e.cleanCopies()
	// Learn the copies (and every path, so that clients' handles from
	// before a restart resolve at once).
	e.walk()
	return e, nil
}

// cleanCopies removes temp files a crash left inside the view.
func (e *export) cleanCopies() {
	filepath.WalkDir(e.root, func(p string, d fs.DirEntry, err error) error {
		if err == nil && strings.HasPrefix(d.Name(), copyPrefix) {
			os.RemoveAll(p)
		}
		return nil
	})
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
func (e *export) open(rel string, flags int) (int, error) {
	if rel == "" {
		rel = "."
	}
	for {
		fd, err := unix.Openat2(e.rootFd, rel, &unix.OpenHow{
			Flags:   uint64(flags | unix.O_NOFOLLOW | unix.O_CLOEXEC),
			Resolve: resolveFlags,
		})
		if err == unix.EINTR || err == unix.EAGAIN {
			continue
		}
		return fd, err
	}
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

// fileID is what clients see as the fileid and what handles carry: the
// inode number, except for copies, which keep their original's. Copies are
// known from the walk at start and from breakLink, so no call reads xattrs.
func (e *export) fileID(rel string, st *unix.Stat_t) uint64 {
	if st.Mode&unix.S_IFMT != unix.S_IFREG || e.shared(st) {
		return st.Ino
	}
	e.pmu.RLock()
	id, ok := e.copied[st.Ino]
	e.pmu.RUnlock()
	if ok {
		return id
	}
	return st.Ino
}

// xattrID reads the fileid a copy keeps in its xattr.
func (e *export) xattrID(dirfd int, name string) (uint64, bool) {
	fd, err := unix.Openat(dirfd, name, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, false
	}
	defer unix.Close(fd)
	var b [8]byte
	if n, err := unix.Getxattr(fdPath(fd), idXattr, b[:]); err == nil && n == 8 {
		return binary.BigEndian.Uint64(b[:]), true
	}
	return 0, false
}

// dropCopy forgets a copy whose last name is gone (its inode number may be
// reused by a new file).
func (e *export) dropCopy(st *unix.Stat_t) {
	if st.Mode&unix.S_IFMT == unix.S_IFREG && st.Nlink <= 1 {
		e.pmu.Lock()
		delete(e.copied, st.Ino)
		e.pmu.Unlock()
	}
}

// remember records that id is at rel.
func (e *export) remember(id uint64, rel string) {
	e.pmu.Lock()
	e.paths[id] = rel
	e.pmu.Unlock()
}

func (e *export) forget(id uint64) {
	e.pmu.Lock()
	delete(e.paths, id)
	e.pmu.Unlock()
}

// renamed moves every remembered path at or below from to below to.
func (e *export) renamed(from, to string) {
	e.pmu.Lock()
	defer e.pmu.Unlock()
	for id, p := range e.paths {
		if p == from {
			e.paths[id] = to
		} else if strings.HasPrefix(p, from+"/") {
			e.paths[id] = to + p[len(from):]
		}
	}
}

var errStale = errors.New("stale file handle")

// eachEntry calls fn for every entry below the view's root, with the
// directory it is in (an fd), its name, its path and its attributes. It
// never follows a symlink.
func (e *export) eachEntry(fn func(dirfd int, name, rel string, st *unix.Stat_t)) {
	var visit func(dirRel string)
	visit = func(dirRel string) {
		fd, err := e.open(dirRel, unix.O_RDONLY|unix.O_DIRECTORY)
		if err != nil {
			return
		}
		f := os.NewFile(uintptr(fd), dirRel)
		defer f.Close()
		ents, _ := f.ReadDir(-1)
		for _, d := range ents {
			rel := path.Join(dirRel, d.Name())
			var st unix.Stat_t
			if unix.Fstatat(fd, d.Name(), &st, unix.AT_SYMLINK_NOFOLLOW) != nil {
				continue
			}
			fn(fd, d.Name(), rel, &st)
			if st.Mode&unix.S_IFMT == unix.S_IFDIR {
				visit(rel)
			}
		}
	}
	visit("")
}

// path finds the file with id: the remembered path if it still holds it,
// else a walk of the whole view (after a restart, or a change made behind
// nfsd's back).
func (e *export) path(id uint64) (string, unix.Stat_t, error) {
	e.pmu.RLock()
	rel, ok := e.paths[id]
	e.pmu.RUnlock()
	if ok {
		if st, err := e.lstat(rel); err == nil && e.fileID(rel, &st) == id {
			return rel, st, nil
		}
	}
	if !e.walk() {
		return "", unix.Stat_t{}, errStale
	}
	e.pmu.RLock()
	rel, ok = e.paths[id]
	e.pmu.RUnlock()
	if ok {
		if st, err := e.lstat(rel); err == nil && e.fileID(rel, &st) == id {
			return rel, st, nil
		}
	}
	return "", unix.Stat_t{}, errStale
}

// walk rebuilds the id → path map from the tree. A burst of unknown
// handles (a forged handle, a file deleted by another client) would
// otherwise walk the tree once each, so walks are at most one per second.
func (e *export) walk() bool {
	e.pmu.Lock()
	if time.Since(e.walkT) < time.Second {
		e.pmu.Unlock()
		return false
	}
	e.walkT = time.Now()
	e.pmu.Unlock()
	found := map[uint64]string{e.rootID: ""}
	copies := map[uint64]uint64{}
	e.eachEntry(func(dirfd int, name, rel string, st *unix.Stat_t) {
		id := st.Ino
		if st.Mode&unix.S_IFMT == unix.S_IFREG && !e.shared(st) {
			if x, ok := e.xattrID(dirfd, name); ok {
				id = x
				copies[st.Ino] = x
			}
		}
		found[id] = rel
	})
	e.pmu.Lock()
	for id, p := range found {
		e.paths[id] = p
	}
	e.copied = copies
	e.pmu.Unlock()
	return true
}

// Handles are 32 bytes: version, export id, view generation, fileid and a
// MAC over them with the server's persistent key, so a handle cannot be
// forged or moved to another export.
const handleLen = 32

type handleKey []byte

// loadHandleKey reads or creates the key that signs handles.
func loadHandleKey(st *store.Store) (handleKey, error) {
	p := st.Path(store.NodesDir, ".nfs-handle-key")
	b, err := os.ReadFile(p)
	if err == nil && len(b) == 64 {
		k, err := hex.DecodeString(string(b))
		if err == nil {
			return k, nil
		}
	}
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("nfsd: reading the handle key %s: %v", p, err)
	}
	k := make([]byte, 32)
	rand.Read(k)
	if err := store.WriteFile(p, []byte(hex.EncodeToString(k)), 0o600); err != nil {
		return nil, fmt.Errorf("nfsd: writing the handle key: %v", err)
	}
	return k, nil
}

func (k handleKey) sign(b []byte) []byte {
	m := hmac.New(sha256.New, k)
	m.Write(b)
	return m.Sum(nil)[:8]
}

func (k handleKey) handle(e *export, id uint64) []byte {
	b := make([]byte, 24, handleLen)
	b[0] = 1
	copy(b[4:12], e.id[:])
	binary.BigEndian.PutUint32(b[12:16], e.gen)
	binary.BigEndian.PutUint64(b[16:24], id)
	return append(b, k.sign(b)...)
}

// parseHandle checks a handle's form and signature.
func (k handleKey) parse(h []byte) (exp [8]byte, gen uint32, id uint64, ok bool) {
	if len(h) != handleLen || h[0] != 1 || !hmac.Equal(k.sign(h[:24]), h[24:]) {
		return exp, 0, 0, false
	}
	copy(exp[:], h[4:12])
	return exp, binary.BigEndian.Uint32(h[12:16]), binary.BigEndian.Uint64(h[16:24]), true
}
