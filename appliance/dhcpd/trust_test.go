package dhcpd

import (
	"fmt"
	"net"
	"net/netip"
	"testing"

	"github.com/insomniacslk/dhcp/dhcpv4"

	"github.com/ociboot/ociboot/appliance/nfs"
	"github.com/ociboot/ociboot/appliance/nodes"
)

// routerOffer is the home router's OFFER a Pi answers with its REQUEST in
// proxy mode.
func routerOffer(ip string) *dhcpv4.DHCPv4 {
	offer := &dhcpv4.DHCPv4{YourIPAddr: net.ParseIP(ip).To4(), Options: dhcpv4.Options{}}
	offer.UpdateOption(dhcpv4.OptServerIdentifier(net.IPv4(10, 67, 0, 254)))
	return offer
}

// A host on the LAN forges REQUESTs with a known Pi's MAC (and serial)
// asking for its own address: the node's address, which nfsd exports the
// node's root to, must not move to the forger (issue 14: the forger could
// mount the node's root read-write and lock the node out).
func TestProxyForgedRequestDoesNotMoveNodeAddress(t *testing.T) {
	for _, tc := range []struct {
		name, netboot string
		first, want   string
	}{
		{"first seen", proxyConfig, "10.67.0.77", "10.67.0.77"},
		{"reserved", `{"Interface": "obd0", "ServerIP": "10.67.0.1", "DefaultImage": "registry.test:5000/pi/node:1",
			"Nodes": [{"Serial": "5b154511", "IP": "10.67.0.50"}]}`, "10.67.0.50", "10.67.0.50"},
		// The reservation wins even over the node's own first claim.
		{"reserved, node claims another", `{"Interface": "obd0", "ServerIP": "10.67.0.1", "DefaultImage": "registry.test:5000/pi/node:1",
			"Nodes": [{"Serial": "5b154511", "IP": "10.67.0.50"}]}`, "10.67.0.77", "10.67.0.50"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, tc.netboot, nil, nil)
			p := pi(0x11, 0x5b154511)
			if reply, _ := f.s.Handle(p.Discover(xid1)); reply == nil {
				t.Fatal("no proxy OFFER for the Pi")
			}
			f.s.Handle(p.Request(xid1, routerOffer(tc.first)))
			f.s.FlushNodes()

			forgeries := []*dhcpv4.DHCPv4{
				// the bootloader's REQUEST, option 97 and all
				p.Request(dhcpv4.TransactionID{7, 7, 7, 7}, routerOffer("10.67.0.66")),
				// an OS client's REQUEST: MAC only
				request(p.MAC, netip.MustParseAddr("10.67.0.66"), netip.MustParseAddr("10.67.0.254")),
				// RENEWING from the forger's address
				func() *dhcpv4.DHCPv4 {
					d, _ := dhcpv4.New(dhcpv4.WithHwAddr(p.MAC), dhcpv4.WithMessageType(dhcpv4.MessageTypeRequest), dhcpv4.WithClientIP(net.IPv4(10, 67, 0, 66)))
					return d
				}(),
			}
			for _, d := range forgeries {
				if reply, _ := f.s.HandlePacket(d.ToBytes(), &net.UDPAddr{IP: net.IPv4(10, 67, 0, 66), Port: 68}); reply != nil {
					t.Errorf("proxy answered a REQUEST")
				}
			}
			f.clock.Add(2 * f.s.nodes.interval)
			f.s.Handle(p.Discover(xid1))
			f.s.FlushNodes()
			rec, err := nodes.Load(f.st, p.SerialHex())
			if err != nil {
				t.Fatal(err)
			}
			if got, want := rec.IP, tc.want; got != want {
				t.Errorf("node address after forged REQUESTs = %q, want %q", got, want)
			}
			if got := f.s.m.drops.get("address_pinned"); got < len(forgeries) {
				t.Errorf("address_pinned drops = %d, want ≥ %d", got, len(forgeries))
			}
			res := nfs.NodeResolver{Config: f.cfg, Store: f.st}
			if res.Allowed(p.SerialHex(), netip.MustParseAddr("10.67.0.66")) {
				t.Errorf("nfsd would let the forger's address 10.67.0.66 mount %s", p.SerialHex())
			}
			if !res.Allowed(p.SerialHex(), netip.MustParseAddr(tc.want)) {
				t.Errorf("nfsd refuses the node's own address %s", tc.want)
			}
		})
	}
}

// In full mode a DECLINE from a MAC that does not hold the address is
// ignored: otherwise any host takes a node's address away (issue 14).
func TestFullDeclineOnlyFromHolder(t *testing.T) {
	f := newFixture(t, fullConfig, nil, nil)
	holder := net.HardwareAddr{0x52, 0x54, 0, 0, 1, 1}
	ip := f.lease(holder)
	decline := func(mac net.HardwareAddr) *dhcpv4.DHCPv4 {
		d, _ := dhcpv4.New(dhcpv4.WithHwAddr(mac), dhcpv4.WithMessageType(dhcpv4.MessageTypeDecline),
			dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(ip.AsSlice())), dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.IPv4(10, 67, 0, 1))))
		return d
	}
	attacker := net.HardwareAddr{0x52, 0x54, 0, 0, 6, 6}
	f.s.HandlePacket(decline(attacker).ToBytes(), &net.UDPAddr{IP: net.IPv4zero, Port: 68})
	if got, want := f.s.m.drops.get("decline_not_holder"), 1; got != want {
		t.Errorf("decline_not_holder = %d, want %d", got, want)
	}
	if got := f.lease(holder); got != ip {
		t.Errorf("after another MAC's DECLINE the holder got %s, want its %s", got, ip)
	}
	// The holder's own DECLINE still sets the address aside.
	f.s.Handle(decline(holder))
	if got := f.lease(holder); got == ip {
		t.Errorf("holder's DECLINE ignored: %s offered again", ip)
	}
}

// A flood of DISCOVERs with invented serials records at most MaxAutoNodes
// nodes; nodes listed in the config are still recorded and answered.
func TestAutoEnrolmentIsBounded(t *testing.T) {
	netboot := `{"Interface": "obd0", "ServerIP": "10.67.0.1", "DefaultImage": "registry.test:5000/pi/node:1",
		"Nodes": [{"Serial": "c0c0c0c0"}]}`
	f := newFixture(t, netboot, nil, nil)
	f.s.nodes.maxAuto = 5
	answered := 0
	for i := 0; i < 200; i++ {
		p := pi(byte(i), 0x70000000+uint32(i))
		p.MAC[4] = byte(i >> 8)
		if reply, _ := f.s.HandlePacket(p.Discover(xid1).ToBytes(), &net.UDPAddr{IP: net.IPv4zero, Port: 68}); reply != nil {
			answered++
		}
	}
	if got, want := answered, 5; got != want {
		t.Errorf("answered %d invented serials, want %d", got, want)
	}
	known := pi(0xfe, 0xc0c0c0c0)
	if reply, _ := f.s.Handle(known.Discover(xid1)); reply == nil {
		t.Errorf("configured node not answered once automatic enrolment is full")
	}
	f.s.FlushNodes()
	recs, errs := nodes.List(f.st)
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	if got, want := len(recs), 6; got != want {
		t.Errorf("%d node records after the flood, want %d", got, want)
	}
	if got, want := len(f.s.Status().Nodes), 6; got != want {
		t.Errorf("/status lists %d nodes, want %d", got, want)
	}
	if got, want := f.s.m.drops.get("enrolment_full"), 195; got != want {
		t.Errorf("enrolment_full drops = %d, want %d", got, want)
	}
	// A restart keeps the bound: records on disk count.
	f2 := newFixture(t, netboot, f.st, nil)
	f2.s.nodes.maxAuto = 5
	if reply, _ := f2.s.Handle(pi(0xfd, 0x7fffffff).Discover(xid1)); reply != nil {
		t.Errorf("a new invented serial was answered after a restart")
	}
}

// Forged OFFERs from 1000 invented server addresses are counted, but
// /status remembers at most maxForeign servers.
func TestForeignServersAreBounded(t *testing.T) {
	f := newFixture(t, fullConfig, nil, nil)
	d := plainDiscover(net.HardwareAddr{0x52, 0x54, 0, 0, 0, 1})
	for i := 0; i < 1000; i++ {
		f.s.noteForeign(offerFrom(d, fmt.Sprintf("10.68.%d.%d", i/250, 1+i%250)))
	}
	if got, want := f.s.m.foreign.get("offer"), 1000; got != want {
		t.Errorf("foreign offers counted = %d, want %d", got, want)
	}
	if got, want := len(f.s.Status().ForeignServers), maxForeign; got != want {
		t.Errorf("/status remembers %d foreign servers, want %d", got, want)
	}
}
