// Package nfs is ociboot's NFSv3 server (RFC 1813) with MOUNT v3 and a
// portmapper (RFC 1833). It exports /nodes/<key>: each node's own writable
// view of its image, made of hard links that are broken before any change
// (see export.go). File handles carry the export, the view's generation
// and a fileid, signed with a key kept in the store, so they survive
// restarts of nfsd and of the head node.
package nfs

import (
	"bufio"
	"crypto/rand"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ociboot/ociboot/appliance/metrics"
	"golang.org/x/sys/unix"

	"github.com/ociboot/ociboot/appliance/images"
	"github.com/ociboot/ociboot/appliance/store"
)

// Resolver tells the server which nodes exist, what their roots are made
// of and who may use them.
type Resolver interface {
	// Image returns the digest of the image a node's root is made from.
	Image(key string) (digest string, err error)
	// Allowed reports whether client may mount and use the export of key.
	Allowed(key string, client netip.Addr) bool
	// Keys lists the nodes announced by MOUNT's EXPORT procedure.
	Keys() []string
	// Clients lists, for EXPORT, who may mount key: addresses and CIDRs.
	Clients(key string) []string
}

// Options configure a Server.
type Options struct {
	Store    *store.Store
	Resolver Resolver
	Log      *slog.Logger
	// Metrics, if set, receives the server's counters.
	Metrics metrics.Registerer
	// Personalize, if set, is called with a node's new root tree before
	// the root is served (and before it is recorded, so a crash makes it
	// again): it writes what makes the node its own machine (identity.Write).
	Personalize func(key, root string) error
	// OnMount is called after a successful MNT (to record the boot stage).
	OnMount func(key string, client netip.Addr)
	// MaxInFlight bounds concurrent requests per connection (default 64).
	MaxInFlight int
	// InsecurePorts serves NFS and MOUNT calls from source ports of 1024
	// and above (knfsd's "insecure"). By default they are refused with
	// AUTH_TOOWEAK: only root on a node can bind a lower port, so an
	// unprivileged process there cannot claim uid 0 in AUTH_SYS.
	InsecurePorts bool
	// MaxConns and MaxConnsPerClient bound the TCP connections served at
	// once (defaults DefaultMaxConns, DefaultMaxConnsPerClient); more are
	// closed as soon as they are accepted.
	MaxConns, MaxConnsPerClient int
	// IdleTimeout closes a connection that has no call in flight and sent
	// nothing for so long; RecordTimeout bounds the time one record takes
	// to arrive once it started, and a reply to be sent (defaults
	// DefaultIdleTimeout, DefaultRecordTimeout).
	IdleTimeout, RecordTimeout time.Duration
	// OnReply, if set, sees every call and its reply (one RPC message,
	// without record mark) before the reply is sent; both are only valid
	// during the call. nfsd's -reply_log writes them for nfscheck.
	OnReply func(call, reply []byte)
	// Reserve is the free space on the store that node writes never take
	// (they fail with NFS3ERR_NOSPC below it); 0: none. See budget.go.
	Reserve int64
	// Quota, if set, returns the bytes node key's root and NBD disk may
	// use together (0: no quota); writes past it fail with NFS3ERR_DQUOT.
	Quota func(key string) int64
	// Disks are the nodes' NBD disks (nodedisk.Disks): what they take
	// counts against the node's quota, and they go with the node's root
	// on reset, reimage and forget. Nil: nodes have none.
	Disks Disks
}

// Disks is what nfsd does with the nodes' NBD disks; package nodedisk
// owns them and nbdd serves them.
type Disks interface {
	// Usage is the bytes node key's disk takes on the store.
	Usage(key string) int64
	// Reset drops the disk unless the config keeps it on reset; Drop
	// drops it in any case. Both refuse a disk nbdd serves, with an
	// error wrapping nodedisk.ErrInUse, unless force. dropped says
	// whether there was a disk to drop.
	Reset(key string, force bool) (dropped bool, err error)
	Drop(key string, force bool) (dropped bool, err error)
}

// Server serves NFSv3, MOUNT v3 and portmap on any number of listeners.
type Server struct {
	opts Options
	log  *slog.Logger
	key  handleKey
	verf [8]byte // write verifier: new on every start, so clients resend unstable writes

	buildMu sync.Mutex     // held while a view is made
	bg      sync.WaitGroup // deletions of dropped roots (discard)
	mu      sync.Mutex
	exports map[[8]byte]*export
	images  map[string]*imageSet
	mounts  map[mountKey]time.Time
	scanT   time.Time
	acl     map[aclKey]aclEntry
	ports   map[portKey]uint32
	drc     *drc

	metrics instruments
	budget  *nodeBudget
	conns   *connLimits
	act     activity // last call per client (admin.go)
}

type mountKey struct {
	client netip.Addr
	key    string
}

type aclKey struct {
	e      *export
	client netip.Addr
}

type aclEntry struct {
	ok  bool
	exp time.Time
}

type portKey struct {
	prog, vers, proto uint32
}

type instruments struct {
	requests    *metrics.CounterVec
	errors      *metrics.CounterVec
	readBytes   metrics.Counter
	writeBytes  metrics.Counter
	copyUps     metrics.Counter
	retransmits metrics.Counter
}

// New makes a server over the store's nodes/ and images/ areas.
func New(opts Options) (*Server, error) {
	if opts.Log == nil {
		opts.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if opts.MaxInFlight <= 0 {
		opts.MaxInFlight = 64
	}
	if opts.IdleTimeout <= 0 {
		opts.IdleTimeout = DefaultIdleTimeout
	}
	if opts.RecordTimeout <= 0 {
		opts.RecordTimeout = DefaultRecordTimeout
	}
	// Modes from clients are applied exactly; the process umask must not
	// take bits away.
	unix.Umask(0)
	key, err := loadHandleKey(opts.Store)
	if err != nil {
		return nil, err
	}
	s := &Server{opts: opts, log: opts.Log, key: key,
		exports: map[[8]byte]*export{}, images: map[string]*imageSet{},
		mounts: map[mountKey]time.Time{}, acl: map[aclKey]aclEntry{}, ports: map[portKey]uint32{}, drc: newDRC()}
	rand.Read(s.verf[:])
	s.metrics = instruments{
		requests:    metrics.NewCounterVec(metrics.CounterOpts{Name: "requests_total", Help: "RPC calls by program and procedure."}, []string{"prog", "proc"}),
		errors:      metrics.NewCounterVec(metrics.CounterOpts{Name: "errors_total", Help: "NFS replies with a status other than OK, by procedure and status."}, []string{"proc", "status"}),
		readBytes:   metrics.NewCounter(metrics.CounterOpts{Name: "read_bytes_total", Help: "Bytes returned by READ."}),
		writeBytes:  metrics.NewCounter(metrics.CounterOpts{Name: "write_bytes_total", Help: "Bytes written by WRITE."}),
		copyUps:     metrics.NewCounter(metrics.CounterOpts{Name: "copy_ups_total", Help: "Files copied out of the image before a node changed them."}),
		retransmits: metrics.NewCounter(metrics.CounterOpts{Name: "retransmits_answered_total", Help: "Retransmitted calls answered with the first call's reply (duplicate request cache)."}),
	}
	s.budget = newBudget(opts, opts.Log)
	s.conns = newConnLimits(opts.MaxConns, opts.MaxConnsPerClient)
	if opts.Metrics != nil {
		opts.Metrics.MustRegister(s.metrics.requests, s.metrics.errors, s.metrics.readBytes, s.metrics.writeBytes, s.metrics.copyUps, s.metrics.retransmits, newUsageCollector(s))
		opts.Metrics.MustRegister(s.conns.collectors()...)
	}
	s.discardLeftovers()
	s.scan()
	return s, nil
}

// Close releases the exports' directory descriptors and waits for the
// deletion of dropped roots.
func (s *Server) Close() {
	defer s.bg.Wait()
	s.mu.Lock()
	defer s.mu.Unlock()
	for id, e := range s.exports {
		e.close()
		delete(s.exports, id)
	}
}

// SetPort tells the portmapper where a program listens; proto is "tcp" or
// "udp".
func (s *Server) SetPort(prog, vers uint32, proto string, port int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ports[portKey{prog, vers, protoNum(proto)}] = uint32(port)
}

func protoNum(p string) uint32 {
	if p == "udp" {
		return 17
	}
	return 6
}

func (s *Server) imageSet(digest string) (*imageSet, error) {
	s.mu.Lock()
	set := s.images[digest]
	s.mu.Unlock()
	if set != nil {
		return set, nil
	}
	root, err := images.Root(s.opts.Store, digest)
	if err != nil {
		return nil, err
	}
	set, err = loadImageSet(root)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	s.images[digest] = set
	s.mu.Unlock()
	return set, nil
}

func (s *Server) exportByID(id [8]byte) *export {
	s.mu.Lock()
	e := s.exports[id]
	rescan := e == nil && time.Since(s.scanT) > 2*time.Second
	if rescan {
		s.scanT = time.Now()
	}
	s.mu.Unlock()
	if rescan {
		s.scan()
		s.mu.Lock()
		e = s.exports[id]
		s.mu.Unlock()
	}
	return e
}

// dropExportLocked closes key's view and forgets what was cached about
// it; handles into it go stale. s.mu is held.
func (s *Server) dropExportLocked(key string) {
	if e := s.takeExportLocked(key); e != nil {
		e.mu.Lock()
		e.close()
		e.mu.Unlock()
	}
}

// takeExportLocked takes key's view out of service (handles into it go
// stale) and returns it for the caller to close. s.mu is held.
func (s *Server) takeExportLocked(key string) *export {
	id := exportID(key)
	e := s.exports[id]
	delete(s.exports, id)
	for k := range s.acl {
		if k.e.key == key {
			delete(s.acl, k)
		}
	}
	return e
}

// allowed caches the resolver's answer for a few seconds: it reads node
// records from disk and is asked on every call.
func (s *Server) allowed(e *export, client netip.Addr) bool {
	client = client.Unmap()
	k := aclKey{e, client}
	now := time.Now()
	s.mu.Lock()
	a, ok := s.acl[k]
	s.mu.Unlock()
	if ok && now.Before(a.exp) {
		return a.ok
	}
	allowed := s.opts.Resolver.Allowed(e.key, client)
	ttl := 10 * time.Second
	if !allowed {
		ttl = 2 * time.Second
	}
	s.mu.Lock()
	if len(s.acl) >= maxACLEntries {
		// Calls over UDP can come from any forged address: a flood of
		// them costs resolver lookups, not memory.
		clear(s.acl)
	}
	s.acl[k] = aclEntry{ok: allowed, exp: now.Add(ttl)}
	s.mu.Unlock()
	return allowed
}

// Status is what /status shows.
type Status struct {
	Exports []ExportStatus
	Mounts  []MountStatus
	// ReserveBytes is -reserve_mib; FreeBytes the store's free space
	// (-1: unknown). Node writes fail once FreeBytes would go below
	// ReserveBytes.
	ReserveBytes int64
	FreeBytes    int64
}

// ExportStatus describes one node's view.
type ExportStatus struct {
	Node   string
	Path   string
	Digest string
	// Used is what the node's own files use on the store; Quota its
	// quota (0: none).
	Used  int64
	Quota int64 `json:",omitempty"`
}

// MountStatus is one client's MNT.
type MountStatus struct {
	Client string
	Path   string
	Time   time.Time
}

// Status lists views and mounts.
func (s *Server) Status() Status {
	st := Status{ReserveBytes: s.budget.Reserve, FreeBytes: s.storeFree()}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, e := range s.exports {
		st.Exports = append(st.Exports, ExportStatus{Node: e.key, Path: "/nodes/" + e.key, Digest: e.digest, Used: e.used.Load(), Quota: s.budget.QuotaOf(e.key)})
	}
	for m, t := range s.mounts {
		st.Mounts = append(st.Mounts, MountStatus{Client: m.client.String(), Path: "/nodes/" + m.key, Time: t})
	}
	sort.Slice(st.Exports, func(i, j int) bool { return st.Exports[i].Node < st.Exports[j].Node })
	sort.Slice(st.Mounts, func(i, j int) bool { return st.Mounts[i].Path < st.Mounts[j].Path })
	return st
}

// dispatch answers one call; nil means no answer.
func (s *Server) dispatch(msg []byte, remote, local netip.AddrPort, proto string) []byte {
	reply := s.answer(msg, remote, local, proto)
	if s.opts.OnReply != nil && reply != nil {
		s.opts.OnReply(msg, reply[4:])
	}
	return reply
}

// ServeTCP answers RPC calls on ln until it is closed. Calls on one
// connection run concurrently; replies go out as they finish. Out of file
// descriptors (EMFILE) or memory, it pauses accepting, up to a second at a
// time, and the connections it serves go on; connections beyond
// MaxConns or MaxConnsPerClient are closed at once.
func (s *Server) ServeTCP(ln net.Listener) error {
	var pause time.Duration
	for {
		conn, err := ln.Accept()
		if err != nil {
			if !temporary(err) {
				return err
			}
			if pause == 0 {
				s.log.Warn("accepting NFS connections paused; the connections served go on", "err", err)
			}
			s.conns.backoff.Inc()
			pause = nextBackoff(pause)
			time.Sleep(pause)
			continue
		}
		pause = 0
		remote := addrPort(conn.RemoteAddr())
		if limit := s.conns.take(remote.Addr()); limit != "" {
			s.conns.refused.WithLabelValues(limit).Inc()
			s.log.Debug("connection refused: limit reached", "client", remote, "limit", limit)
			conn.Close()
			continue
		}
		go func() {
			defer s.conns.give(remote.Addr())
			s.serveConn(conn)
		}()
	}
}

func addrPort(a net.Addr) netip.AddrPort {
	switch a := a.(type) {
	case *net.TCPAddr:
		return a.AddrPort()
	case *net.UDPAddr:
		return a.AddrPort()
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return ap
}

func (s *Server) serveConn(conn net.Conn) {
	defer conn.Close()
	remote, local := addrPort(conn.RemoteAddr()), addrPort(conn.LocalAddr())
	var wmu sync.Mutex
	// Workers live as long as the connection, so their stacks stay grown;
	// more start while all are busy, up to MaxInFlight.
	work := make(chan []byte)
	var wg sync.WaitGroup
	defer func() {
		close(work)
		wg.Wait()
	}()
	var idle atomic.Int32
	workers := 0
	worker := func() {
		defer wg.Done()
		for msg := range work {
			reply := s.dispatch(msg, remote, local, "tcp")
			if reply != nil {
				wmu.Lock()
				conn.SetWriteDeadline(time.Now().Add(s.opts.RecordTimeout))
				_, err := conn.Write(frame(reply))
				wmu.Unlock()
				release(reply)
				if err != nil {
					conn.Close()
				}
			}
			idle.Add(1)
		}
	}
	hdr := make([]byte, 4)
	br := bufio.NewReaderSize(conn, 64<<10)
	for {
		if !s.awaitRecord(conn, br, func() bool { return workers != int(idle.Load()) }) {
			return
		}
		msg, err := readRecord(br, hdr)
		if err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
				s.log.Debug("connection closed", "client", remote, "err", err)
			}
			return
		}
		// A client that waits for this answer before it sends more (no
		// call buffered, none in flight) gets it without a handoff to a
		// worker, which costs a thread wakeup per call.
		if br.Buffered() == 0 && workers == int(idle.Load()) && s.quick(msg) {
			if reply := s.dispatch(msg, remote, local, "tcp"); reply != nil {
				wmu.Lock()
				conn.SetWriteDeadline(time.Now().Add(s.opts.RecordTimeout))
				_, err := conn.Write(frame(reply))
				wmu.Unlock()
				release(reply)
				if err != nil {
					return
				}
			}
			continue
		}
		if idle.Load() == 0 && workers < s.opts.MaxInFlight {
			workers++
			wg.Add(1)
			idle.Add(1)
			go worker()
		}
		// Blocks while MaxInFlight calls run: the client waits, TCP
		// pushes back.
		idle.Add(-1)
		work <- msg
	}
}

// ServeUDP answers portmap and MOUNT calls on pc until it is closed.
func (s *Server) ServeUDP(pc net.PacketConn) error {
	buf := make([]byte, 64<<10)
	local := addrPort(pc.LocalAddr())
	sem := make(chan struct{}, 64)
	for {
		n, addr, err := pc.ReadFrom(buf)
		if err != nil {
			return err
		}
		msg := append([]byte(nil), buf[:n]...)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem }()
			if reply := s.dispatch(msg, addrPort(addr), local, "udp"); reply != nil {
				pc.WriteTo(reply[4:], addr)
			}
		}()
	}
}
