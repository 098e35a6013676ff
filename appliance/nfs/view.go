// The node view: a node's root made from its image (buildView), opened
// and served (openExport, Server.export), found again after a restart
// (Server.scan) and dropped (Server.Reset). view.json and the root's
// layout are the on-disk format: roots made by earlier versions open as
// they are.

package nfs

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ociboot/ociboot/appliance/images"
	"github.com/ociboot/ociboot/appliance/store"
)

// viewInfo is nodes/<key>/view.json.
type viewInfo struct {
	Key     string
	Digest  string    // image the view was made from
	Gen     uint32    // random per view: handles of a dropped view go stale
	Created time.Time `json:",omitempty"`
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
		rootFd: fd, rootID: st.Ino, dev: st.Dev, paths: map[uint64]string{}, copied: map[uint64]copyID{}}
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

// cleanCopies removes temp files a crash left inside the view (fd-relative,
// so trees deeper than PATH_MAX are cleaned too).
func (e *export) cleanCopies() {
	e.eachEntry(func(dirfd int, name, rel string, st *unix.Stat_t) {
		if strings.HasPrefix(name, copyPrefix) && st.Mode&unix.S_IFMT != unix.S_IFDIR {
			unix.Unlinkat(dirfd, name, 0)
		}
	})
}

// scan loads every view in the store, so handles from before a restart
// resolve without a new MNT.
func (s *Server) scan() {
	dirs, _ := os.ReadDir(s.opts.Store.Path(store.NodesDir))
	for _, d := range dirs {
		key := d.Name()
		if !d.IsDir() || !store.ValidName(key) {
			continue
		}
		id := exportID(key)
		s.mu.Lock()
		_, ok := s.exports[id]
		s.mu.Unlock()
		if ok {
			continue
		}
		if _, err := os.Stat(filepath.Join(s.opts.Store.Path(store.NodesDir, key), viewFile)); err != nil {
			continue
		}
		e, err := openExport(s.opts.Store.Path(store.NodesDir, key), key, "", "", false, s.imageSet, nil)
		if err != nil {
			s.log.Warn("view not served", "node", key, "err", err)
			continue
		}
		s.attach(e)
		s.mu.Lock()
		s.exports[id] = e
		s.mu.Unlock()
	}
}

// export returns the view of key, making it from the node's image when
// it does not exist.
func (s *Server) export(key string) (*export, error) {
	id := exportID(key)
	s.mu.Lock()
	e := s.exports[id]
	s.mu.Unlock()
	if e != nil {
		return e, nil
	}
	dir, err := s.opts.Store.NodeDir(key)
	if err != nil {
		return nil, err
	}
	// One view is made at a time: two MNTs of a new node must not race
	// to build it.
	s.buildMu.Lock()
	defer s.buildMu.Unlock()
	s.mu.Lock()
	e = s.exports[id]
	s.mu.Unlock()
	if e != nil {
		return e, nil
	}
	var root, digest string
	_, viewErr := os.Stat(filepath.Join(dir, viewFile))
	_, rootErr := os.Stat(filepath.Join(dir, viewRoot))
	if viewErr != nil || rootErr != nil {
		// No root yet, or a crash between recording and renaming it into
		// place: make it (again) from the node's current image.
		digest, err = s.opts.Resolver.Image(key)
		if err != nil {
			return nil, err
		}
		if root, err = images.Root(s.opts.Store, digest); err != nil {
			return nil, err
		}
	}
	start := time.Now()
	var personalize func(string) error
	if s.opts.Personalize != nil {
		personalize = func(root string) error { return s.opts.Personalize(key, root) }
	}
	e, err = openExport(dir, key, root, digest, true, s.imageSet, personalize)
	if err != nil {
		return nil, err
	}
	s.attach(e)
	if root != "" {
		s.log.Info("made node root", "node", key, "image", digest, "took", time.Since(start).Round(time.Millisecond))
	}
	s.mu.Lock()
	s.exports[id] = e
	s.mu.Unlock()
	return e, nil
}

// Reset drops a node's view; the next MNT makes a new one from its current
// image and handles into the old one go stale. Under the server's lock it
// only takes the view out of service and renames its tree aside; the
// tree is deleted in the background (discard), which for a whole root
// takes seconds that no other node's calls wait for.
func (s *Server) Reset(key string) error {
	dir, err := s.opts.Store.NodeDir(key)
	if err != nil {
		return err
	}
	s.buildMu.Lock() // no MNT makes the view again meanwhile
	defer s.buildMu.Unlock()
	s.mu.Lock()
	e := s.takeExportLocked(key)
	err = func() error {
		if err := os.Remove(filepath.Join(dir, viewFile)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("nfsd: reset of %s: %v", key, err)
		}
		store.SyncDir(dir)
		// The generation is gone with view.json: from here on a crash
		// leaves only garbage that the next openExport replaces.
		return s.discard(filepath.Join(dir, viewRoot))
	}()
	s.mu.Unlock()
	if e != nil {
		// Calls of the node that are under way finish first.
		e.mu.Lock()
		e.close()
		e.mu.Unlock()
	}
	if err != nil {
		return err
	}
	s.log.Info("node root reset", "node", key)
	return nil
}

// discardPrefix names trees renamed aside in nodes/ to be deleted (not a
// valid node name, so no scan takes one for a node).
const discardPrefix = ".discard-"

// discard renames the tree p to a name of its own in nodes/ and deletes
// it in the background; Close waits for the deletions. A tree left by a
// crash is deleted at the next start (discardLeftovers).
func (s *Server) discard(p string) error {
	if _, err := os.Lstat(p); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	aside := s.opts.Store.Path(store.NodesDir, discardPrefix+randName())
	if err := os.Rename(p, aside); err != nil {
		return fmt.Errorf("nfsd: moving %s aside to delete it: %v", p, err)
	}
	store.SyncDir(filepath.Dir(p))
	s.removeInBackground(aside)
	return nil
}

func (s *Server) removeInBackground(p string) {
	s.bg.Add(1)
	go func() {
		defer s.bg.Done()
		start := time.Now()
		if err := os.RemoveAll(p); err != nil {
			s.log.Warn("deleting a dropped node root", "path", p, "err", err)
			return
		}
		s.log.Debug("dropped node root deleted", "path", p, "took", time.Since(start).Round(time.Millisecond))
	}()
}

// discardLeftovers deletes what discard renamed aside before a crash.
func (s *Server) discardLeftovers() {
	ents, _ := os.ReadDir(s.opts.Store.Path(store.NodesDir))
	for _, d := range ents {
		if strings.HasPrefix(d.Name(), discardPrefix) {
			s.removeInBackground(s.opts.Store.Path(store.NodesDir, d.Name()))
		}
	}
}
