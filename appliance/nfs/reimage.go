package nfs

import (
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/ociboot/ociboot/appliance/nodes"
	"github.com/ociboot/ociboot/appliance/store"
)

// Reimager is implemented by resolvers whose config can move a node to a
// new image at its next boot (Netboot.Reimage "on-boot"). nodes.BootOf
// makes the decision, so tftpd has already served that boot the new
// image's kernel when the MNT arrives.
type Reimager interface {
	// Reimage reports whether key's root is to be replaced by a fresh
	// one from its configured image at this mount by client. Only the
	// node itself booting does it: a mount from an ExportTo address (an
	// admin looking into the root) must not pull the root from under the
	// running node.
	Reimage(key string, client netip.Addr) bool
}

// previousDir is nodes/<key>/previous: the root a reimage replaced
// (root/ and its view.json), kept until the new root has mounted.
const previousDir = nodes.PreviousDir

// exportForMount is export for a MNT: first, when the resolver says so, the
// node's root moves aside to previous/ and a fresh one is made from its
// image. If making it fails, the previous root is put back, so a bad
// image costs the node nothing; once the new root is open the previous
// one is dropped.
func (s *Server) exportForMount(key string, client netip.Addr) (*export, error) {
	dir, err := s.opts.Store.NodeDir(key)
	if err != nil {
		return nil, err
	}
	r, ok := s.opts.Resolver.(Reimager)
	if !ok || !r.Reimage(key, client) {
		e, err := s.export(key)
		if err == nil {
			// Left by a crash in the middle of a reimage whose new root
			// has now mounted.
			if _, perr := os.Lstat(filepath.Join(dir, previousDir)); perr == nil {
				os.RemoveAll(filepath.Join(dir, previousDir))
			}
		}
		return e, err
	}
	old, err := s.setAside(key, dir)
	if err != nil {
		return nil, err
	}
	e, err := s.export(key)
	if err != nil {
		if rerr := s.putBack(dir); rerr != nil {
			return nil, fmt.Errorf("%v; putting the previous root back failed too: %v; it is in %s", err, rerr, filepath.Join(dir, previousDir))
		}
		s.log.Warn("reimage failed; the node keeps its previous root", "node", key, "err", err)
		return nil, err
	}
	if err := s.discard(filepath.Join(dir, previousDir)); err != nil {
		s.log.Warn("removing the previous root", "node", key, "err", err)
	}
	// The disk goes with the root it was used by (unless kept on reset).
	// Forced: the node is booting its new root, so a connection to the
	// disk is left from its previous boot.
	if s.opts.Disks != nil {
		if dropped, err := s.opts.Disks.Reset(key, true); err != nil {
			s.log.Warn("dropping the NBD disk of the previous root", "node", key, "err", err)
		} else if dropped {
			s.log.Info("node's NBD disk dropped with its previous root", "node", key)
		}
	}
	s.log.Info("node reimaged", "node", key, "from", old, "to", e.digest)
	return e, nil
}

// setAside moves the node's root and its record to previous/, the record
// first, so that a crash at any point leaves either the root in place or
// both in previous/, and the image tree the previous root links into is
// still named (nodes.ViewImages) for GC to keep.
func (s *Server) setAside(key, dir string) (digest string, err error) {
	s.buildMu.Lock()
	defer s.buildMu.Unlock()
	var vi viewInfo
	if err := store.ReadJSON(filepath.Join(dir, viewFile), &vi); err != nil {
		return "", fmt.Errorf("nfsd: reimage of %s: %v", key, err)
	}
	prev := filepath.Join(dir, previousDir)
	if err := os.RemoveAll(prev); err != nil {
		return "", fmt.Errorf("nfsd: reimage of %s: %v", key, err)
	}
	if err := os.Mkdir(prev, 0o755); err != nil {
		return "", fmt.Errorf("nfsd: reimage of %s: %v", key, err)
	}
	if err := store.WriteJSON(filepath.Join(prev, viewFile), vi); err != nil {
		return "", fmt.Errorf("nfsd: reimage of %s: %v", key, err)
	}
	s.mu.Lock()
	s.dropExportLocked(key)
	s.mu.Unlock()
	if err := os.Rename(filepath.Join(dir, viewRoot), filepath.Join(prev, viewRoot)); err != nil {
		return "", fmt.Errorf("nfsd: reimage of %s: moving its root aside: %v", key, err)
	}
	os.Remove(filepath.Join(dir, viewFile))
	store.SyncDir(prev)
	store.SyncDir(dir)
	return vi.Digest, nil
}

// putBack restores previous/ as the node's root after a failed reimage.
func (s *Server) putBack(dir string) error {
	s.buildMu.Lock()
	defer s.buildMu.Unlock()
	prev := filepath.Join(dir, previousDir)
	if _, err := os.Lstat(filepath.Join(prev, viewRoot)); err != nil {
		return err
	}
	if err := os.RemoveAll(filepath.Join(dir, viewRoot)); err != nil {
		return err
	}
	if err := os.Rename(filepath.Join(prev, viewRoot), filepath.Join(dir, viewRoot)); err != nil {
		return err
	}
	if err := os.Rename(filepath.Join(prev, viewFile), filepath.Join(dir, viewFile)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	store.SyncDir(dir)
	return os.RemoveAll(prev)
}

// Reimage is nodes.BootOf's answer for key, when client is the node's
// own address (reserved or recorded).
func (r NodeResolver) Reimage(key string, client netip.Addr) bool {
	b, err := nodes.BootOf(r.Config, r.Store, key)
	if err != nil || !b.Reimage {
		return false
	}
	return r.ownAddress(key, client)
}
