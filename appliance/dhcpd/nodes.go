package dhcpd

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sort"
	"sync"
	"time"

	"github.com/ociboot/ociboot/appliance/config"
	"github.com/ociboot/ociboot/appliance/nodes"
	"github.com/ociboot/ociboot/appliance/store"
)

// recorder keeps node records (nodes/<key>/node.json and stage-dhcpd.json)
// up to date without an fsync per packet: a record is written when what it
// says changes, and otherwise at most every interval just to move LastSeen.
// A Pi retries DHCP every few seconds while it waits for a server, and six
// nodes booting at once should not turn into a stream of fsyncs on an SD card.
type recorder struct {
	st       *store.Store
	cfg      *config.Config
	log      *slog.Logger
	interval time.Duration
	now      func() time.Time

	// maxAuto bounds the records of nodes not in Netboot.Nodes.
	maxAuto int

	mu      sync.Mutex
	byMAC   map[string]string // MAC -> node key, learned from requests and records
	entries map[string]*entry
	kick    chan struct{}

	fmu sync.Mutex // one flush at a time
}

type entry struct {
	rec     nodes.Record
	detail  string
	written nodes.Record // as last written; zero if never
	warned  time.Time    // last warning about a refused address claim
}

// DefaultMaxAutoNodes is how many automatically enrolled nodes dhcpd
// records by default: far more than the boards one head node serves, far
// fewer than a flood of invented serials would make.
const DefaultMaxAutoNodes = 64

// verdict is what seen did with a request.
type verdict int

const (
	recorded verdict = iota
	// addressPinned: the node's address is pinned (reservation or first
	// seen) and the request claimed another; the record kept its own.
	addressPinned
	// enrolmentFull: an unknown node beyond maxAuto; not recorded.
	enrolmentFull
)

func newRecorder(st *store.Store, cfg *config.Config, log *slog.Logger, interval time.Duration, now func() time.Time) *recorder {
	return &recorder{
		st:       st,
		cfg:      cfg,
		log:      log,
		interval: interval,
		now:      now,
		byMAC:    map[string]string{},
		entries:  map[string]*entry{},
		kick:     make(chan struct{}, 1),
	}
}

// loadKnown learns MAC to node mappings from the config and from records
// earlier runs wrote, so that the kernel's and the OS's DHCP requests (which
// carry no option 97) are tied to their node.
func (r *recorder) loadKnown() {
	recs, errs := nodes.List(r.st)
	for _, err := range errs {
		r.log.Warn("skipping unreadable node record", "err", err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, rec := range recs {
		r.entries[rec.Serial] = &entry{rec: rec, written: rec}
		if mac, err := net.ParseMAC(rec.MAC); err == nil {
			r.byMAC[mac.String()] = rec.Serial
		}
	}
	for _, n := range r.cfg.Nodes {
		if n.MAC != nil && n.Serial != "" {
			r.byMAC[n.MAC.String()] = n.Serial
		}
	}
}

// configured returns the config entry of the client, by serial, then MAC.
func (r *recorder) configured(c Client, serial string) (config.NodeConfig, bool) {
	if serial != "" {
		if n, ok := r.cfg.NodeBySerial(serial); ok {
			return n, true
		}
	}
	return r.cfg.NodeByMAC(c.MAC)
}

// identify returns the node key for the client ("" if it is not a node: a
// plain DHCP client in full mode) and whether the config names it.
func (r *recorder) identify(c Client) (key string, known bool) {
	serial := r.serialOf(c)
	n, known := r.configured(c, serial)
	switch {
	case serial != "":
		key = serial
	case known && n.Serial != "":
		key = n.Serial
	case known || c.Netboot:
		key = c.NodeKey()
	default:
		r.mu.Lock()
		key = r.byMAC[c.MAC.String()]
		r.mu.Unlock()
	}
	return key, known
}

// serialOf returns the client's serial from the request, or the one learned
// for its MAC.
func (r *recorder) serialOf(c Client) string {
	if c.Serial != "" {
		return c.Serial
	}
	r.mu.Lock()
	k := r.byMAC[c.MAC.String()]
	r.mu.Unlock()
	if _, err := config.NormalizeSerial(k); err == nil && len(k) == 8 {
		return k
	}
	if n, ok := r.cfg.NodeByMAC(c.MAC); ok {
		return n.Serial
	}
	return ""
}

// seen notes that the node key sent a request now; ip, if valid, is the
// address it uses: assigned by us (full mode: its lease) or only claimed
// (proxy mode: the address a REQUEST asks another server for).
//
// The record's IP is what nfsd exports the node's root to, so it is
// pinned: a reservation (Nodes[].IP) always wins, and otherwise the first
// address seen stays until the config reserves another. A claim alone
// never moves it: any host on the segment can send a REQUEST with a
// node's MAC and serial. Only full mode's leases, which dhcpd itself
// decides, move a recorded address.
func (r *recorder) seen(c Client, key string, ip netip.Addr, assigned bool, now time.Time) verdict {
	if key == "" || !store.ValidName(key) {
		return recorded
	}
	n, configured := r.configured(c, c.Serial)
	if !configured && len(key) == 8 {
		n, configured = r.cfg.NodeBySerial(key)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	e, ok := r.entries[key]
	if !ok {
		if !configured && r.autoCountLocked() >= r.maxAuto {
			r.log.Debug("not enrolling node: automatic enrolment is full; list it in Netboot.Nodes", "node", key, "mac", c.MAC.String(), "max", r.maxAuto)
			return enrolmentFull
		}
		e = &entry{rec: nodes.Record{Serial: key, Enrolled: now}}
		r.entries[key] = e
	}
	rec := &e.rec
	v := recorded
	if ip.IsValid() {
		claimed := ip
		switch {
		case configured && n.IP.IsValid():
			ip = n.IP
		case assigned || rec.IP == "":
		default:
			ip, _ = netip.ParseAddr(rec.IP)
		}
		if claimed != ip {
			v = addressPinned
			if now.Sub(e.warned) >= time.Minute {
				e.warned = now
				r.log.Warn("refused a DHCP claim to move a node's address: it is pinned (a reservation or the first address seen); if the node really moved, reserve its new address in Netboot.Nodes[].IP",
					"node", key, "mac", c.MAC.String(), "pinned", ip.String(), "claimed", claimed.String())
			}
		}
	}
	rec.MAC = c.MAC.String()
	r.byMAC[rec.MAC] = key
	if c.Model != "" {
		rec.Model = c.Model
	}
	if ip.IsValid() {
		rec.IP = ip.String()
		e.detail = "address " + ip.String()
	} else if e.detail == "" {
		e.detail = "boot options sent"
	}
	if configured {
		rec.Name, rec.Image, rec.Platform = n.Name, n.Image, n.Platform
	} else {
		rec.Name, rec.Image, rec.Platform = "", r.cfg.DefaultImage, r.cfg.Platform
	}
	if rec.Enrolled.IsZero() {
		rec.Enrolled = now
	}
	rec.LastSeen = now
	if changed(e.written, *rec) {
		// Wake the writer now; LastSeen alone waits for its next tick.
		select {
		case r.kick <- struct{}{}:
		default:
		}
	}
	return v
}

// autoCountLocked counts the recorded nodes that Netboot.Nodes does not
// list; r.mu is held.
func (r *recorder) autoCountLocked() int {
	n := 0
	for k, e := range r.entries {
		if _, ok := r.cfg.NodeBySerial(k); ok {
			continue
		}
		if mac, err := net.ParseMAC(e.rec.MAC); err == nil {
			if _, ok := r.cfg.NodeByMAC(mac); ok {
				continue
			}
		}
		n++
	}
	return n
}

// changed reports whether rec says something that w, the record as last
// written, does not (LastSeen aside).
func changed(w, rec nodes.Record) bool {
	return w.Serial == "" || w.MAC != rec.MAC || w.IP != rec.IP || w.Model != rec.Model ||
		w.Name != rec.Name || w.Image != rec.Image || w.Platform != rec.Platform
}

func (r *recorder) run(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-r.kick:
		}
		r.flush()
	}
}

// flush writes the records that changed, and those whose LastSeen moved by
// at least the interval.
func (r *recorder) flush() {
	r.fmu.Lock()
	defer r.fmu.Unlock()
	type job struct {
		rec    nodes.Record
		detail string
	}
	var jobs []job
	r.mu.Lock()
	for _, e := range r.entries {
		stale := e.rec.LastSeen.Sub(e.written.LastSeen) >= r.interval
		if changed(e.written, e.rec) || stale {
			jobs = append(jobs, job{e.rec, e.detail})
		}
	}
	r.mu.Unlock()
	for _, j := range jobs {
		if err := nodes.Save(r.st, j.rec); err != nil {
			r.log.Error("node record not saved: its address, MAC and last-seen time are only in memory (nfsd's export and the status page use the saved record) until a save succeeds; free space on the store (/perm)", "node", j.rec.Serial, "ip", j.rec.IP, "err", err)
			continue
		}
		st := nodes.Stage{Stage: nodes.StageDHCP, Time: j.rec.LastSeen, Detail: j.detail}
		if err := nodes.SaveStage(r.st, j.rec.Serial, "dhcpd", st); err != nil {
			r.log.Error("node boot stage not saved: the status page shows an older stage until a save succeeds; free space on the store (/perm)", "node", j.rec.Serial, "stage", st.Stage, "err", err)
		}
		r.mu.Lock()
		if e, ok := r.entries[j.rec.Serial]; ok {
			e.written = j.rec
		}
		r.mu.Unlock()
	}
}

// NodeStatus is one node in /status.
type NodeStatus struct {
	Node     string
	Name     string `json:",omitempty"`
	MAC      string
	IP       string `json:",omitempty"`
	Model    string `json:",omitempty"`
	Image    string `json:",omitempty"`
	LastSeen time.Time
}

func (r *recorder) status() []NodeStatus {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []NodeStatus
	for k, e := range r.entries {
		out = append(out, NodeStatus{Node: k, Name: e.rec.Name, MAC: e.rec.MAC, IP: e.rec.IP, Model: e.rec.Model, Image: e.rec.Image, LastSeen: e.rec.LastSeen})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Node < out[j].Node })
	return out
}

func (n NodeStatus) String() string { return fmt.Sprintf("%s %s %s", n.Node, n.MAC, n.IP) }
