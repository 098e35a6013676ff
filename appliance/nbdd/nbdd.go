// Package nbdd is the logic of the nbdd service: it serves each node's NBD
// disk (package nodedisk) to that node only, over the NBD protocol
// (package nbd), and takes the nodes' install reports (install.go).
//
// Who may use a disk follows nfsd's trust rule for roots: the TCP peer's
// address must be the node's own (reserved in Netboot.Nodes[].IP or
// leased and recorded by dhcpd), and the export name the node's key. A
// peer that is no node's, or that names another node's disk, is refused
// with NBD_REP_ERR_POLICY; a node without an NBD disk in the config gets
// NBD_REP_ERR_UNKNOWN, and the log says which config key to set.
//
// The config is live: a changed config.json applies to the next
// connection, and connections already served keep going (closing one
// would fail the node's file system under it). A disk dropped by a reset
// or forget in nfsd (nodedisk.Drop) is noticed within a second (Watch),
// and its connections are closed.
package nbdd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ociboot/ociboot/appliance/metrics"

	"github.com/ociboot/ociboot/appliance/budget"
	"github.com/ociboot/ociboot/appliance/config"
	"github.com/ociboot/ociboot/appliance/nbd"
	"github.com/ociboot/ociboot/appliance/nodedisk"
	"github.com/ociboot/ociboot/appliance/nodes"
	"github.com/ociboot/ociboot/appliance/store"
)

// Options configure a Server.
type Options struct {
	Store *store.Store
	Log   *slog.Logger
	// Reserve is the store's free space disk writes never take (nbdd's
	// -reserve_mib, as nfsd's for roots).
	Reserve int64
	// RootUsed is what node key's root uses on the store (nfsd's count,
	// RootUsage): the root and the disk share the node's quota. nil: 0.
	RootUsed func(key string) int64
	// Metrics, if set, receives the server's metrics.
	Metrics metrics.Registerer
}

// Server serves the nodes' disks.
type Server struct {
	// NBD is the protocol server; the caller runs its Serve and
	// Shutdown.
	NBD *nbd.Server

	opts   Options
	log    *slog.Logger
	cfg    atomic.Pointer[config.Config]
	budget *budget.Budget

	mu   sync.Mutex
	open map[*disk]struct{}

	read, written *metrics.CounterVec
	refused       *metrics.CounterVec
	warned        sync.Map // reason+peer → time.Time of the last log line
}

// New makes a server for cfg (SetConfig replaces it).
func New(cfg *config.Config, opts Options) *Server {
	log := opts.Log
	if log == nil {
		log = slog.Default()
	}
	s := &Server{opts: opts, log: log, open: map[*disk]struct{}{}}
	s.cfg.Store(cfg)
	s.budget = &budget.Budget{Log: log, Reserve: opts.Reserve, Writes: "NBD disk", NoSpace: "NBD_ENOSPC", OverQuota: "NBD_ENOSPC",
		Quota: func(key string) int64 { return nodes.QuotaOf(s.Config(), key) }}
	s.NBD = &nbd.Server{Lookup: s.Lookup, List: s.List, Logger: log}
	s.read = metrics.NewCounterVec(metrics.CounterOpts{Name: "read_bytes_total", Help: "Bytes nodes read from their NBD disks."}, []string{"node"})
	s.written = metrics.NewCounterVec(metrics.CounterOpts{Name: "written_bytes_total", Help: "Bytes nodes wrote to their NBD disks."}, []string{"node"})
	s.refused = metrics.NewCounterVec(metrics.CounterOpts{Name: "refused_total", Help: "NBD exports refused: reason policy (not the node's own address or disk) or unknown (no NBD disk configured, or it cannot be opened)."}, []string{"reason"})
	if opts.Metrics != nil {
		opts.Metrics.MustRegister(s.read, s.written, s.refused, collector{s})
	}
	return s
}

// Config is the config in use.
func (s *Server) Config() *config.Config { return s.cfg.Load() }

// SetConfig applies a new config to the connections that come after.
func (s *Server) SetConfig(cfg *config.Config) { s.cfg.Store(cfg) }

// Identify is the node whose own address a is: nodes.KeyByIP, as
// Canonical names it (the key of its directory on the store).
func (s *Server) Identify(a netip.Addr) (string, bool) {
	cfg := s.Config()
	k, ok := nodes.KeyByIP(cfg, s.opts.Store, a.Unmap())
	if !ok {
		return "", false
	}
	return nodes.Canonical(cfg, s.opts.Store, k), true
}

// Lookup is nbd.Server.Lookup: the disk of the node whose address remote
// is, if name names that node.
func (s *Server) Lookup(ctx context.Context, name string, remote netip.AddrPort) (nbd.Export, error) {
	cfg := s.Config()
	peer := remote.Addr().Unmap()
	own, ok := s.Identify(peer)
	if !ok {
		s.refuse("policy", peer, "NBD export refused: the peer is not a node's own address (Netboot.Nodes[].IP, or leased by dhcpd)", "export", name)
		return nil, fmt.Errorf("%w: %s is not a node's own address", nbd.ErrPolicy, peer)
	}
	key := name
	if store.ValidName(name) {
		key = nodes.Canonical(cfg, s.opts.Store, name)
	}
	if key != own {
		s.refuse("policy", peer, "NBD export refused: a node may only use its own disk (the export name is its key)", "export", name, "node", own)
		return nil, fmt.Errorf("%w: %s is node %s's address; its disk is export %q", nbd.ErrPolicy, peer, own, own)
	}
	d, err := nodedisk.Open(cfg, s.opts.Store, key, nodedisk.Limits{Budget: s.budget, RootUsed: s.opts.RootUsed})
	if errors.Is(err, nodedisk.ErrNoDisk) {
		_, field := nodes.DiskOf(cfg, key)
		s.refuse("unknown", peer, "NBD export refused: the node has no NBD disk; set Netboot.NodeDisk or the node's Netboot.Nodes[].Disk, e.g. {\"Size\": \"20G\"}", "node", key, "field", field, "err", err)
		return nil, fmt.Errorf("%w: %v", nbd.ErrUnknownExport, err)
	}
	if err != nil {
		s.refuse("unknown", peer, "NBD export refused: the node's disk cannot be opened", "node", key, "err", err)
		return nil, fmt.Errorf("%w: node %s's disk cannot be opened on the head node; see nbdd's log", nbd.ErrUnknownExport, key)
	}
	w := &disk{Disk: d, s: s, name: name, read: s.read.WithLabelValues(key), written: s.written.WithLabelValues(key)}
	s.mu.Lock()
	s.open[w] = struct{}{}
	s.mu.Unlock()
	return w, nil
}

// List is nbd.Server.List: a node sees its own disk, if it has one.
func (s *Server) List(remote netip.AddrPort) []string {
	key, ok := s.Identify(remote.Addr())
	if !ok {
		return nil
	}
	if dc, _ := nodes.DiskOf(s.Config(), key); dc.NBD() {
		return []string{key}
	}
	return nil
}

// refuse counts and logs a refused export, each reason and peer at most
// once a minute: a node whose nbd-client retries would fill the log.
func (s *Server) refuse(reason string, peer netip.Addr, msg string, args ...any) {
	s.refused.WithLabelValues(reason).Inc()
	k := reason + " " + peer.String()
	now := time.Now()
	if last, ok := s.warned.Load(k); ok && now.Sub(last.(time.Time)) < time.Minute {
		return
	}
	s.warned.Store(k, now)
	s.log.Warn(msg, append([]any{"peer", peer.String()}, args...)...)
}

// disk is an open disk as the NBD server uses it: counted, and known to
// Watch.
type disk struct {
	*nodedisk.Disk
	s             *Server
	name          string // the export name the client asked for
	read, written metrics.Counter
}

func (d *disk) ReadAt(p []byte, off int64) (int, error) {
	n, err := d.Disk.ReadAt(p, off)
	d.read.Add(float64(n))
	return n, err
}

func (d *disk) WriteAt(p []byte, off int64) (int, error) {
	n, err := d.Disk.WriteAt(p, off)
	d.written.Add(float64(n))
	return n, err
}

func (d *disk) Close() error {
	d.s.mu.Lock()
	delete(d.s.open, d)
	d.s.mu.Unlock()
	return d.Disk.Close()
}

// Watch closes the connections of disks that were dropped while served
// (a forced reset or forget in nfsd), checking every interval until ctx
// is done. What the node writes to a dropped disk is lost, so its
// connection goes at once; the node's next attach gets a fresh disk.
func (s *Server) Watch(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		s.closeDropped()
	}
}

func (s *Server) closeDropped() {
	s.mu.Lock()
	names := map[string]string{}
	for d := range s.open {
		if d.Dropped() {
			names[d.name] = d.Key()
		}
	}
	s.mu.Unlock()
	// Not under s.mu: CloseExport waits for the exports' Close.
	for name, key := range names {
		n := s.NBD.CloseExport(name)
		s.log.Info("node's NBD disk was dropped (reset or forgotten); its connections are closed", "node", key, "connections", n)
	}
}

// Conn is one connection on the status.
type Conn struct {
	Node, Export string
	Remote       string
	Since        time.Time
	BytesRead    int64
	BytesWritten int64
}

// DiskStatus is one node's disk on the status.
type DiskStatus struct {
	Node string
	// Size is the configured size (0: none configured, a disk left from
	// an earlier config); Allocated what it takes on the store.
	Size, Allocated int64
	Exists          bool
	KeepOnReset     bool `json:",omitempty"`
}

// Status is nbdd's /status.
type Status struct {
	Conns []Conn
	Disks []DiskStatus
	// ReserveBytes is -reserve_mib; FreeBytes the store's free space
	// (-1: unknown).
	ReserveBytes, FreeBytes int64
}

// Status describes the connections and the disks: the nodes with an NBD
// disk configured and those with a disk file on the store.
func (s *Server) Status() Status {
	cfg := s.Config()
	st := Status{ReserveBytes: s.opts.Reserve, FreeBytes: -1}
	if free, err := budget.FreeAt(s.opts.Store.Root); err == nil {
		st.FreeBytes = free
	}
	for _, c := range s.NBD.Conns() {
		node := c.Export
		if store.ValidName(node) {
			node = nodes.Canonical(cfg, s.opts.Store, node)
		}
		st.Conns = append(st.Conns, Conn{Node: node, Export: c.Export, Remote: c.Remote.String(), Since: c.Since, BytesRead: c.BytesRead, BytesWritten: c.BytesWritten})
	}
	sort.Slice(st.Conns, func(i, j int) bool { return st.Conns[i].Since.Before(st.Conns[j].Since) })
	for _, key := range s.diskNodes(cfg) {
		ds := DiskStatus{Node: key}
		if dc, _ := nodes.DiskOf(cfg, key); dc.NBD() {
			ds.Size, ds.KeepOnReset = dc.Size, dc.KeepOnReset
		}
		info := nodedisk.Stat(s.opts.Store, key)
		ds.Exists, ds.Allocated = info.Exists, info.Allocated
		st.Disks = append(st.Disks, ds)
	}
	return st
}

// diskNodes lists the nodes that have an NBD disk configured (listed
// ones; Netboot.NodeDisk gives one to every node) or a disk on the store.
// Only known nodes have a directory, so the list is bounded.
func (s *Server) diskNodes(cfg *config.Config) []string {
	seen := map[string]bool{}
	for _, n := range cfg.Nodes {
		key := n.Serial
		if key == "" && n.MAC != nil {
			key = nodes.MACKey(n.MAC)
		}
		if n.Disk.NBD() && key != "" {
			seen[key] = true
		}
	}
	ents, _ := os.ReadDir(s.opts.Store.Path(store.NodesDir))
	for _, e := range ents {
		if !e.IsDir() || !store.ValidName(e.Name()) {
			continue
		}
		if dc, _ := nodes.DiskOf(cfg, e.Name()); dc.NBD() || nodedisk.Stat(s.opts.Store, e.Name()).Exists {
			seen[e.Name()] = true
		}
	}
	out := make([]string, 0, len(seen))
	for k := range seen {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// collector exports the connections and the disks' use when scraped.
type collector struct{ s *Server }

var (
	descConns     = metrics.NewDesc("connections", "NBD connections serving a disk now.", nil, nil)
	descAllocated = metrics.NewDesc("disk_allocated_bytes", "Bytes a node's NBD disk takes on the store (its written blocks).", []string{"node"}, nil)
	descSize      = metrics.NewDesc("disk_size_bytes", "A node's NBD disk's configured size.", []string{"node"}, nil)
)

func (c collector) Describe(ch chan<- *metrics.Desc) {
	ch <- descConns
	ch <- descAllocated
	ch <- descSize
}

func (c collector) Collect(ch chan<- metrics.Metric) {
	st := c.s.Status()
	ch <- metrics.MustNewConstMetric(descConns, metrics.GaugeValue, float64(len(st.Conns)))
	for _, d := range st.Disks {
		ch <- metrics.MustNewConstMetric(descAllocated, metrics.GaugeValue, float64(d.Allocated), d.Node)
		if d.Size > 0 {
			ch <- metrics.MustNewConstMetric(descSize, metrics.GaugeValue, float64(d.Size), d.Node)
		}
	}
}
