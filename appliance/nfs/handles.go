// File handles and fileids: what a handle carries and how it is signed,
// and the fileid → path map that resolves it inside a view.

package nfs

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/fnv"
	"io/fs"
	"os"
	"path"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ociboot/ociboot/appliance/store"
)

// exportID is the stable identity of key in handles.
func exportID(key string) [8]byte {
	sum := sha256.Sum256([]byte("ociboot-export\x00" + key))
	var id [8]byte
	copy(id[:], sum[:8])
	return id
}

// fileID is what clients see as the fileid and what handles carry: the
// inode number, except for copies, which keep their original's. Copies are
// known from the walk at start and from breakLink, so no call reads xattrs.
func (e *export) fileID(rel string, st *unix.Stat_t) uint64 {
	if st.Mode&unix.S_IFMT != unix.S_IFREG || e.shared(st) {
		return st.Ino
	}
	e.pmu.RLock()
	c, ok := e.copied[st.Ino]
	e.pmu.RUnlock()
	if ok {
		return c.id
	}
	return st.Ino
}

// copyID is what a copy keeps of its original: fileid and tag.
type copyID struct {
	id  uint64
	tag uint32
}

// encode is idXattr's value: fileid, then tag (copies made before tags
// existed have the fileid only, and tag 0).
func (c copyID) encode() []byte {
	b := make([]byte, 12)
	binary.BigEndian.PutUint64(b, c.id)
	binary.BigEndian.PutUint32(b[8:], c.tag)
	return b
}

// xattrID reads the fileid and tag a copy keeps in its xattr.
func (e *export) xattrID(dirfd int, name string) (copyID, bool) {
	fd, err := unix.Openat(dirfd, name, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return copyID{}, false
	}
	defer unix.Close(fd)
	var b [12]byte
	n, err := unix.Getxattr(fdPath(fd), idXattr, b[:])
	switch {
	case err == nil && n == 12:
		return copyID{binary.BigEndian.Uint64(b[:]), binary.BigEndian.Uint32(b[8:])}, true
	case err == nil && n == 8:
		return copyID{id: binary.BigEndian.Uint64(b[:])}, true
	}
	return copyID{}, false
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
	copies := map[uint64]copyID{}
	e.eachEntry(func(dirfd int, name, rel string, st *unix.Stat_t) {
		id := st.Ino
		if st.Mode&unix.S_IFMT == unix.S_IFREG && !e.shared(st) {
			if x, ok := e.xattrID(dirfd, name); ok {
				id = x.id
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

// Handles are 36 bytes: version (2), export id, view generation, fileid,
// the file's tag and a MAC over them with the server's persistent key, so
// a handle cannot be forged or moved to another export. The tag tells
// one incarnation of an inode number from the next: a removed file's
// handle must not name the file that reuses its inode. Version 1 handles
// (32 bytes, no tag) from before still resolve, by fileid alone.
const (
	handleLen   = 36
	handleV1Len = 32
)

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

func (k handleKey) handle(e *export, id uint64, tag uint32) []byte {
	b := make([]byte, 28, handleLen)
	b[0] = 2
	copy(b[4:12], e.id[:])
	binary.BigEndian.PutUint32(b[12:16], e.gen)
	binary.BigEndian.PutUint64(b[16:24], id)
	binary.BigEndian.PutUint32(b[24:28], tag)
	return append(b, k.sign(b)...)
}

// parse checks a handle's form and signature; tag 0 is not checked.
func (k handleKey) parse(h []byte) (exp [8]byte, gen uint32, id uint64, tag uint32, ok bool) {
	switch {
	case len(h) == handleLen && h[0] == 2 && hmac.Equal(k.sign(h[:28]), h[28:]):
		tag = binary.BigEndian.Uint32(h[24:28])
	case len(h) == handleV1Len && h[0] == 1 && hmac.Equal(k.sign(h[:24]), h[24:]):
	default:
		return exp, 0, 0, 0, false
	}
	copy(exp[:], h[4:12])
	return exp, binary.BigEndian.Uint32(h[12:16]), binary.BigEndian.Uint64(h[16:24]), tag, true
}

// inodeTag is a 32-bit digest of the file system's own handle of the
// inode (name_to_handle_at, which never follows a symlink without
// AT_SYMLINK_FOLLOW: inode number and generation on ext4, btrfs, xfs,
// tmpfs), or 0 where the file system has none.
func inodeTag(dirfd int, name string, flags int) uint32 {
	fh, _, err := unix.NameToHandleAt(dirfd, name, flags)
	if err != nil {
		return 0
	}
	h := fnv.New32a()
	var t [4]byte
	binary.BigEndian.PutUint32(t[:], uint32(fh.Type()))
	h.Write(t[:])
	h.Write(fh.Bytes())
	if v := h.Sum32(); v != 0 {
		return v
	}
	return 1
}

// tag is the tag handles of rel carry: a copy keeps its original's (kept
// with the fileid in idXattr), so handles stay valid across a copy-up.
// st, if not nil, is rel's attributes.
func (e *export) tag(rel string, st *unix.Stat_t) uint32 {
	if c, ok := e.copyOf(st); ok {
		return c.tag
	}
	fd, err := e.open(rel, unix.O_PATH)
	if err != nil {
		return 0
	}
	defer unix.Close(fd)
	if st == nil {
		var fst unix.Stat_t
		if unix.Fstat(fd, &fst) != nil {
			return 0
		}
		if c, ok := e.copyOf(&fst); ok {
			return c.tag
		}
	}
	return inodeTag(fd, "", unix.AT_EMPTY_PATH)
}

// tagAt is tag for the entry name of directory dirfd (at rel).
func (e *export) tagAt(dirfd int, name, rel string, st *unix.Stat_t) uint32 {
	if c, ok := e.copyOf(st); ok {
		return c.tag
	}
	switch name {
	case ".", "..":
		return e.tag(rel, st)
	}
	return inodeTag(dirfd, name, 0)
}

// copyOf finds what a copy keeps of its original.
func (e *export) copyOf(st *unix.Stat_t) (copyID, bool) {
	if st == nil || st.Mode&unix.S_IFMT != unix.S_IFREG || e.shared(st) {
		return copyID{}, false
	}
	e.pmu.RLock()
	c, ok := e.copied[st.Ino]
	e.pmu.RUnlock()
	return c, ok
}
