package nfs

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/ociboot/ociboot/appliance/config"
	"github.com/ociboot/ociboot/appliance/nodes"
)

// statusNames are the RFC 1813 names of the statuses nfsd answers with,
// for metric labels a dashboard can show as they are.
var statusNames = map[uint32]string{
	errPerm: "NFS3ERR_PERM", errNoEnt: "NFS3ERR_NOENT", errIO: "NFS3ERR_IO", errNXIO: "NFS3ERR_NXIO",
	errAcces: "NFS3ERR_ACCES", errExist: "NFS3ERR_EXIST", errXDev: "NFS3ERR_XDEV", errNotDir: "NFS3ERR_NOTDIR",
	errIsDir: "NFS3ERR_ISDIR", errInval: "NFS3ERR_INVAL", errFBig: "NFS3ERR_FBIG", errNoSpc: "NFS3ERR_NOSPC",
	errROFS: "NFS3ERR_ROFS", errMLink: "NFS3ERR_MLINK", errNameTooLong: "NFS3ERR_NAMETOOLONG",
	errNotEmpty: "NFS3ERR_NOTEMPTY", errDQuot: "NFS3ERR_DQUOT", errStaleFH: "NFS3ERR_STALE",
	errBadHandle: "NFS3ERR_BADHANDLE", errNotSync: "NFS3ERR_NOT_SYNC", errBadCookie: "NFS3ERR_BAD_COOKIE",
	errNotSupp: "NFS3ERR_NOTSUPP", errTooSmall: "NFS3ERR_TOOSMALL", errServerFault: "NFS3ERR_SERVERFAULT",
	errBadType: "NFS3ERR_BADTYPE",
}

// StatusName is the RFC 1813 name of an NFS status; a status outside the
// RFC (none is sent) keeps its number, so the label set stays bounded.
func StatusName(st uint32) string {
	if n, ok := statusNames[st]; ok {
		return n
	}
	return strconv.FormatUint(uint64(st), 10)
}

// activity is when each client address last made a call: the status page's
// liveness of a node whose root is mounted (DHCP and TFTP go quiet once a
// node runs). Only addresses that got an answer are kept, and at most
// maxActivity of them, so the map cannot grow with invented sources.
type activity struct {
	mu   sync.Mutex
	last map[netip.Addr]time.Time
}

const maxActivity = 4096

func (a *activity) touch(client netip.Addr, now time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.last == nil {
		a.last = map[netip.Addr]time.Time{}
	}
	if _, ok := a.last[client]; !ok && len(a.last) >= maxActivity {
		// Forget the quietest client.
		var oldest netip.Addr
		var t time.Time
		for c, ct := range a.last {
			if t.IsZero() || ct.Before(t) {
				oldest, t = c, ct
			}
		}
		delete(a.last, oldest)
	}
	a.last[client] = now
}

func (a *activity) get(client netip.Addr) time.Time {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.last[client]
}

func (s *Server) activity() *activity { return &s.act }

// Activity is one client's last call.
type Activity struct {
	Client string
	Time   time.Time
}

// Activities lists the clients' last calls, newest first.
func (s *Server) Activities() []Activity {
	a := s.activity()
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make([]Activity, 0, len(a.last))
	for c, t := range a.last {
		out = append(out, Activity{Client: c.String(), Time: t})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Time.After(out[j].Time) })
	return out
}

// MountedWindow is how recently a client that mounted a node's root must
// have called for the root to count as in use: a node that was switched
// off keeps its MNT entry (it never sends UMNT) but goes quiet.
const MountedWindow = 2 * time.Minute

// ErrUnknownNode, ErrMounted are what ResetNode and Forget refuse with.
var (
	ErrUnknownNode = errors.New("unknown node")
	ErrMounted     = errors.New("node's root is mounted and in use")
)

// InUse names the clients that mounted key's root and called in the last
// MountedWindow, with their last call.
func (s *Server) InUse(key string, now time.Time) []Activity {
	s.mu.Lock()
	var clients []netip.Addr
	for m := range s.mounts {
		if m.key == key {
			clients = append(clients, m.client)
		}
	}
	s.mu.Unlock()
	var out []Activity
	for _, c := range clients {
		if t := s.activity().get(c); !t.IsZero() && now.Sub(t) < MountedWindow {
			out = append(out, Activity{Client: c.String(), Time: t})
		}
	}
	return out
}

// known reports whether key names a node: in the config, or with a record
// or a directory in the store.
func (s *Server) known(cfg *config.Config, key string) bool {
	if _, ok := cfg.NodeBySerial(key); ok {
		return true
	}
	if _, err := nodes.Load(s.opts.Store, key); err == nil {
		return true
	}
	dir, err := s.opts.Store.NodeDir(key)
	if err != nil {
		return false
	}
	_, err = os.Stat(dir)
	return err == nil
}

func (s *Server) checkAdmin(cfg *config.Config, key string, force bool, now time.Time) error {
	if _, err := s.opts.Store.NodeDir(key); err != nil || !s.known(cfg, key) {
		return fmt.Errorf("%w %q: not in config.json and never seen; check the serial on the status page", ErrUnknownNode, key)
	}
	if use := s.InUse(key, now); len(use) > 0 && !force {
		return fmt.Errorf("%w by %s (last call %s ago): its running system would lose its files; shut the node down first, or pass force=1", ErrMounted, use[0].Client, now.Sub(use[0].Time).Round(time.Second))
	}
	return nil
}

// ResetNode is Reset as the HTTP API offers it: it refuses a node nobody
// knows (a typo must not answer "done") and a root in use unless force.
// The node's NBD disk goes too, unless the config keeps it on reset; a
// disk nbdd serves is refused unless force, before the root is touched.
func (s *Server) ResetNode(cfg *config.Config, key string, force bool) error {
	key = nodes.Canonical(cfg, s.opts.Store, key)
	if err := s.checkAdmin(cfg, key, force, time.Now()); err != nil {
		return err
	}
	if s.opts.Disks != nil {
		dropped, err := s.opts.Disks.Reset(key, force)
		if err != nil {
			return fmt.Errorf("node %s: %w", key, err)
		}
		if dropped {
			s.log.Info("node's NBD disk dropped with its root", "node", key)
		}
	}
	return s.Reset(key)
}

// Forget drops everything the head node keeps of a node: its root, its
// NBD disk and its directory (record, stages, boot log). A node still in config.json is
// refused (it would be listed again at once); one that boots again is
// enrolled afresh.
func (s *Server) Forget(cfg *config.Config, key string, force bool) error {
	key = nodes.Canonical(cfg, s.opts.Store, key)
	if err := s.checkAdmin(cfg, key, force, time.Now()); err != nil {
		return err
	}
	if _, ok := cfg.NodeBySerial(key); ok {
		return fmt.Errorf("node %s is listed in config.json: remove it there first, then forget it", key)
	}
	if s.opts.Disks != nil {
		if _, err := s.opts.Disks.Drop(key, force); err != nil {
			return fmt.Errorf("node %s: %w", key, err)
		}
	}
	if err := s.Reset(key); err != nil {
		return err
	}
	dir, _ := s.opts.Store.NodeDir(key)
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("nfsd: forgetting %s: %v", key, err)
	}
	s.log.Info("node forgotten", "node", key)
	return nil
}
