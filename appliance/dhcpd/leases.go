package dhcpd

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"sort"
	"time"

	"github.com/ociboot/ociboot/appliance/config"
	"github.com/ociboot/ociboot/appliance/store"
)

// Lease is one entry of dhcp/leases.json. Expired leases stay in the file so
// that a returning MAC gets its old address back while nobody else took it.
type Lease struct {
	MAC      string
	IP       netip.Addr
	Expiry   time.Time
	Hostname string `json:",omitempty"`
	Node     string `json:",omitempty"` // node key (serial) if the MAC netbooted
}

// Declined is an address a client reported in use by someone else
// (DHCPDECLINE); it is not handed out until Until.
type Declined struct {
	IP    netip.Addr
	Until time.Time
}

// leaseFile is the JSON layout of dhcp/leases.json.
type leaseFile struct {
	Leases   []Lease
	Declined []Declined `json:",omitempty"`
}

// offerHold is how long an offered address stays set aside for the client
// that was offered it. Pi bootloaders REQUEST within a few seconds.
const offerHold = 60 * time.Second

type offer struct {
	ip    netip.Addr
	until time.Time
}

// pool is the lease table of full mode. It is not safe for concurrent use;
// Server serialises access.
type pool struct {
	cfg      *config.Config
	leases   map[string]*Lease // by MAC string
	offers   map[string]offer  // by MAC string, memory only
	declined map[netip.Addr]time.Time
	// reserved maps Nodes[].IP to the index of its node in cfg.Nodes.
	reserved map[netip.Addr]int
}

func newPool(cfg *config.Config) *pool {
	p := &pool{
		cfg:      cfg,
		leases:   map[string]*Lease{},
		offers:   map[string]offer{},
		declined: map[netip.Addr]time.Time{},
		reserved: map[netip.Addr]int{},
	}
	for i, n := range cfg.Nodes {
		if n.IP.IsValid() {
			p.reserved[n.IP] = i
		}
	}
	return p
}

// load reads path into the pool. A missing file is an empty table. Leases for
// addresses that a reservation now claims for another node are dropped, so
// that reservations always win after a config change.
func (p *pool) load(path string) error {
	var f leaseFile
	if err := store.ReadJSON(path, &f); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return err
	}
	for i := range f.Leases {
		l := f.Leases[i]
		mac, err := net.ParseMAC(l.MAC)
		if err != nil || !l.IP.Is4() {
			continue
		}
		if idx, ok := p.reserved[l.IP]; ok && !p.reservationMatches(idx, mac, l.Node) {
			continue
		}
		l.MAC = mac.String()
		p.leases[l.MAC] = &l
	}
	for _, d := range f.Declined {
		if d.IP.Is4() {
			p.declined[d.IP] = d.Until
		}
	}
	return nil
}

func (p *pool) snapshot() leaseFile {
	var f leaseFile
	for _, l := range p.leases {
		f.Leases = append(f.Leases, *l)
	}
	sort.Slice(f.Leases, func(i, j int) bool { return f.Leases[i].IP.Less(f.Leases[j].IP) })
	for ip, until := range p.declined {
		f.Declined = append(f.Declined, Declined{IP: ip, Until: until})
	}
	sort.Slice(f.Declined, func(i, j int) bool { return f.Declined[i].IP.Less(f.Declined[j].IP) })
	return f
}

func (p *pool) reservationMatches(idx int, mac net.HardwareAddr, serial string) bool {
	n := p.cfg.Nodes[idx]
	if n.MAC != nil && mac != nil && n.MAC.String() == mac.String() {
		return true
	}
	return n.Serial != "" && n.Serial == serial
}

// reservation returns the reserved address of the client, by MAC first,
// then by serial.
func (p *pool) reservation(mac net.HardwareAddr, serial string) (netip.Addr, bool) {
	if n, ok := p.cfg.NodeByMAC(mac); ok && n.IP.IsValid() {
		return n.IP, true
	}
	if serial != "" {
		if n, ok := p.cfg.NodeBySerial(serial); ok && n.IP.IsValid() && n.MAC == nil {
			return n.IP, true
		}
	}
	return netip.Addr{}, false
}

// holders maps addresses to the MAC strings holding them by lease (even
// expired) or pending offer, computed once per decision so that scanning a
// large range stays linear.
type holders map[netip.Addr][]holder

type holder struct {
	mac     string
	expired bool
}

func (p *pool) holders(now time.Time) holders {
	h := holders{}
	for m, l := range p.leases {
		h[l.IP] = append(h[l.IP], holder{mac: m, expired: !now.Before(l.Expiry)})
	}
	for m, o := range p.offers {
		if now.Before(o.until) {
			h[o.ip] = append(h[o.ip], holder{mac: m})
		}
	}
	return h
}

// heldByOther reports whether a MAC other than mac holds ip by an offer or
// a lease (an expired one counts unless allowExpired). It walks the tables
// without allocating: the common case, a client returning to its own
// address, must stay cheap under a DISCOVER flood.
func (p *pool) heldByOther(ip netip.Addr, mac string, now time.Time, allowExpired bool) bool {
	for m, l := range p.leases {
		if l.IP == ip && m != mac && (now.Before(l.Expiry) || !allowExpired) {
			return true
		}
	}
	for m, o := range p.offers {
		if o.ip == ip && m != mac && now.Before(o.until) {
			return true
		}
	}
	return false
}

// usable reports whether ip may go to mac, like free but without a holders
// map.
func (p *pool) usable(ip netip.Addr, mac string, now time.Time, allowExpired bool) bool {
	return p.free(nil, ip, mac, now, allowExpired) && !p.heldByOther(ip, mac, now, allowExpired)
}

// free reports whether ip may be handed to mac now. allowExpired lets it
// take an address whose lease by another MAC has expired (only once nothing
// else is left, so returning clients keep their addresses).
func (p *pool) free(h holders, ip netip.Addr, mac string, now time.Time, allowExpired bool) bool {
	if !ip.IsValid() || !p.cfg.InRange(ip) || ip == p.cfg.ServerIP || ip == p.cfg.Router {
		return false
	}
	if _, ok := p.reserved[ip]; ok {
		return false
	}
	if until, ok := p.declined[ip]; ok && now.Before(until) {
		return false
	}
	for _, o := range h[ip] {
		if o.mac != mac && (!o.expired || !allowExpired) {
			return false
		}
	}
	return true
}

// choose picks the address for mac: its reservation, else its current or
// previous lease, else its pending offer (which may be an expired lease of
// another MAC that choose already settled on), else the address it asks for, else
// the lowest never-leased address, else the longest-expired one. ok is false
// when the pool is exhausted.
func (p *pool) choose(mac net.HardwareAddr, serial string, hint netip.Addr, now time.Time) (netip.Addr, bool) {
	if ip, ok := p.reservation(mac, serial); ok {
		return ip, true
	}
	m := mac.String()
	if l, ok := p.leases[m]; ok && p.usable(l.IP, m, now, false) {
		return l.IP, true
	}
	if o, ok := p.offers[m]; ok && p.usable(o.ip, m, now, true) {
		return o.ip, true
	}
	if hint.Is4() && p.usable(hint, m, now, false) {
		return hint, true
	}
	h := p.holders(now)
	for ip := p.cfg.RangeStart; ip.IsValid() && p.cfg.InRange(ip); ip = ip.Next() {
		if p.free(h, ip, m, now, false) {
			return ip, true
		}
	}
	var best *Lease
	for _, l := range p.leases {
		if !now.Before(l.Expiry) && p.free(h, l.IP, m, now, true) && (best == nil || l.Expiry.Before(best.Expiry)) {
			best = l
		}
	}
	if best != nil {
		return best.IP, true
	}
	return netip.Addr{}, false
}

func (p *pool) hold(mac net.HardwareAddr, ip netip.Addr, now time.Time) {
	p.offers[mac.String()] = offer{ip: ip, until: now.Add(offerHold)}
}

// commit binds ip to mac until expiry, taking it from any expired holder.
func (p *pool) commit(mac net.HardwareAddr, ip netip.Addr, expiry time.Time, hostname, node string) {
	m := mac.String()
	for om, l := range p.leases {
		if om != m && l.IP == ip {
			delete(p.leases, om)
		}
	}
	delete(p.offers, m)
	p.leases[m] = &Lease{MAC: m, IP: ip, Expiry: expiry, Hostname: hostname, Node: node}
}

// release ends mac's lease on ip now but remembers the pairing.
func (p *pool) release(mac net.HardwareAddr, ip netip.Addr, now time.Time) bool {
	l, ok := p.leases[mac.String()]
	if !ok || l.IP != ip {
		return false
	}
	l.Expiry = now
	return true
}

// decline sets ip aside for a lease time and forgets mac's claim on it.
// Only the holder of ip (its lease or its pending offer) can decline it:
// RFC 2131 4.3.3 has the client that was given an address report it in
// use, and a DECLINE from any other MAC would let a host on the segment
// take an address away from the node that holds it.
func (p *pool) decline(mac net.HardwareAddr, ip netip.Addr, now time.Time) bool {
	if !p.cfg.InRange(ip) {
		return false
	}
	m := mac.String()
	l, leased := p.leases[m]
	leased = leased && l.IP == ip
	o, offered := p.offers[m]
	offered = offered && o.ip == ip && now.Before(o.until)
	if !leased && !offered {
		return false
	}
	if leased {
		delete(p.leases, m)
	}
	if offered {
		delete(p.offers, m)
	}
	p.declined[ip] = now.Add(p.cfg.Lease)
	return true
}

// dropOffer forgets an offer the client turned down by choosing another server.
func (p *pool) dropOffer(mac net.HardwareAddr) {
	delete(p.offers, mac.String())
}

// expireOffers forgets stale offers so the map does not grow under a flood
// of DISCOVERs from random MACs.
func (p *pool) expireOffers(now time.Time) {
	for m, o := range p.offers {
		if !now.Before(o.until) {
			delete(p.offers, m)
		}
	}
}

func (p *pool) active(now time.Time) int {
	n := 0
	for _, l := range p.leases {
		if now.Before(l.Expiry) {
			n++
		}
	}
	return n
}

func (l Lease) String() string {
	return fmt.Sprintf("%s=%s until %s", l.MAC, l.IP, l.Expiry.Format(time.RFC3339))
}
