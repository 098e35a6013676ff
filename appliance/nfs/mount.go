package nfs

import (
	"errors"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ociboot/ociboot/appliance/nodes"
)

// MOUNT v3 status codes (RFC 1813 §5.1.5).
const (
	mntOK     = 0
	mntNoEnt  = 2
	mntIO     = 5
	mntAcces  = 13
	mntNotDir = 20
	mntInval  = 22
	mntNameTL = 63
)

const exportPrefix = "/nodes/"

// exportKey turns a MOUNT path into a node key and a directory inside the
// node's root ("" for the root itself; clients such as libnfs mount the
// directory of the file they want).
func exportKey(p string) (key, sub string, st uint32) {
	if len(p) > 1024 {
		return "", "", mntNameTL
	}
	rest, ok := strings.CutPrefix(strings.TrimRight(p, "/"), exportPrefix)
	key, sub, _ = strings.Cut(rest, "/")
	if !ok || key == "" || strings.ContainsAny(key, "\\\x00") || strings.HasPrefix(key, ".") || len(key) > 64 {
		return "", "", mntNoEnt
	}
	for _, el := range strings.Split(sub, "/") {
		if sub != "" && (el == "" || el == "." || el == "..") {
			return "", "", mntNoEnt
		}
	}
	return key, sub, mntOK
}

// mnt answers MNT: the handle of a node's root (or of a directory in it).
func (s *Server) mnt(c *call, w *writer) bool {
	p := c.args.string(1024)
	if c.args.err != nil {
		return false
	}
	key, sub, st := exportKey(p)
	client := c.remote.Addr().Unmap()
	if st == mntOK && !s.opts.Resolver.Allowed(key, client) {
		s.log.Warn("mount refused: client is not this node's address and not in Netboot.ExportTo", "client", client, "path", p)
		st = mntAcces
	}
	var e *export
	if st == mntOK {
		var err error
		if e, err = s.exportForMount(key, client); err != nil {
			s.log.Error("mount failed", "client", client, "path", p, "err", err)
			st = mntIO
			if errors.Is(err, nodes.ErrNoImage) {
				st = mntNoEnt
			}
		}
	}
	var id uint64
	if st == mntOK {
		id = e.rootID
	}
	if st == mntOK && sub != "" {
		dst, err := e.lstat(sub)
		switch {
		case err != nil:
			st = mntNoEnt
		case dst.Mode&unix.S_IFMT != unix.S_IFDIR:
			st = mntNotDir
		default:
			id = e.fileID(sub, &dst)
			e.remember(id, sub)
		}
	}
	w.uint32(st)
	if st != mntOK {
		return true
	}
	w.opaque(s.key.handle(e, id, e.tag(sub, nil)))
	w.uint32(1) // one flavor
	w.uint32(authSys)
	s.mu.Lock()
	s.mounts[mountKey{client, key}] = time.Now().UTC()
	s.mu.Unlock()
	s.log.Info("mounted", "client", client, "path", p)
	if s.opts.OnMount != nil {
		s.opts.OnMount(key, client)
	}
	return true
}

// mountDump answers DUMP: who mounted what.
func (s *Server) mountDump(c *call, w *writer) bool {
	s.mu.Lock()
	for m := range s.mounts {
		w.bool(true)
		w.string(m.client.String())
		w.string(exportPrefix + m.key)
	}
	s.mu.Unlock()
	w.bool(false)
	return true
}

func (s *Server) umnt(c *call, w *writer) bool {
	p := c.args.string(1024)
	if c.args.err != nil {
		return false
	}
	if key, _, st := exportKey(p); st == mntOK {
		s.mu.Lock()
		delete(s.mounts, mountKey{c.remote.Addr().Unmap(), key})
		s.mu.Unlock()
	}
	return true
}

func (s *Server) umntall(c *call, w *writer) bool {
	client := c.remote.Addr().Unmap()
	s.mu.Lock()
	for m := range s.mounts {
		if m.client == client {
			delete(s.mounts, m)
		}
	}
	s.mu.Unlock()
	return true
}

// mountExport answers EXPORT: every node's export and who may mount it.
func (s *Server) mountExport(c *call, w *writer) bool {
	for _, key := range s.opts.Resolver.Keys() {
		w.bool(true)
		w.string(exportPrefix + key)
		for _, g := range s.opts.Resolver.Clients(key) {
			w.bool(true)
			w.string(g)
		}
		w.bool(false)
	}
	w.bool(false)
	return true
}
