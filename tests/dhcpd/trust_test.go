package dhcpd_test

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"

	"github.com/ociboot/ociboot/appliance/config"
	"github.com/ociboot/ociboot/appliance/nfs"
	"github.com/ociboot/ociboot/appliance/nodes"
	"github.com/ociboot/ociboot/appliance/piemu"
	"github.com/ociboot/ociboot/tests/lab"
)

// forge sends DHCP messages from the attacker's namespace through a packet
// socket, with whatever chaddr and options they carry.
func forge(t *testing.T, ns string, msgs ...*dhcpv4.DHCPv4) {
	t.Helper()
	lab.InNS(t, ns, func() {
		c, err := piemu.Open("eth0")
		if err != nil {
			t.Error(err)
			return
		}
		defer c.Close()
		for _, m := range msgs {
			if err := c.Send(m); err != nil {
				t.Error(err)
			}
		}
	})
}

// waitDrops waits until dhcpd's /status counts at least n drops for reason.
func waitDrops(t *testing.T, d *lab.DHCPD, reason string, n int) {
	t.Helper()
	var got int
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if got = d.Status(t).Drops[reason]; got >= n {
			return
		}
	}
	t.Errorf("dhcpd counted %d %q drops, want ≥ %d", got, reason, n)
}

// A laptop on the home LAN forges the bootloader's and an OS client's
// REQUESTs with a booted Pi's MAC and serial, asking for its own address
// (issue 14). dhcpd, the real binary in proxy mode behind dnsmasq, keeps
// the Pi's first address: the forger's address never becomes one nfsd
// exports the Pi's root to.
func TestProxyForgedRequestFromAnotherHost(t *testing.T) {
	s := lab.NewSegment(t)
	lan := s.Attach("lan", 254, "")
	head := s.Attach("head", 1, "")
	p := piemu.Pi{MAC: net.HardwareAddr{0xdc, 0xa6, 0x32, 0x67, 0x14, 0x01}, Serial: 0x5b151401}
	piNS := s.Attach("pi", 0, p.MAC.String())
	attacker := s.Attach("attacker", 66, "52:54:00:66:66:66")

	startDnsmasq(t, s, lan)
	netboot := `{"Interface": "eth0", "DefaultImage": "registry.test:5000/pi/node:1"}`
	d := startDHCPD(t, head, netboot, "")
	d.WaitFor(t, "serving DHCP", 5*time.Second)
	l, err := piDHCP(t, piNS, p, 20*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	ip := l.IP.String()
	waitRecord(t, d.Store, p.SerialHex(), ip)

	stolen := s.Addr(66)
	offer := &dhcpv4.DHCPv4{YourIPAddr: net.ParseIP(stolen).To4(), Options: dhcpv4.Options{}}
	offer.UpdateOption(dhcpv4.OptServerIdentifier(net.ParseIP(s.Addr(254)).To4()))
	osRequest, _ := dhcpv4.New(dhcpv4.WithHwAddr(p.MAC), dhcpv4.WithMessageType(dhcpv4.MessageTypeRequest),
		dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(net.ParseIP(stolen).To4())))
	forge(t, attacker, p.Request(dhcpv4.TransactionID{6, 6, 6, 6}, offer), osRequest)
	waitDrops(t, d, "address_pinned", 2)
	time.Sleep(1500 * time.Millisecond) // past the record writer's tick

	st := openStore(t, d.Store)
	rec, err := nodes.Load(st, p.SerialHex())
	if err != nil {
		t.Fatal(err)
	}
	check(t, "node address after the forged REQUESTs", rec.IP, ip)
	cfg, err := config.Parse([]byte(`{"Netboot": ` + netboot + `}`))
	if err != nil {
		t.Fatal(err)
	}
	res := nfs.NodeResolver{Config: cfg, Store: st}
	if res.Allowed(p.SerialHex(), netip.MustParseAddr(stolen)) {
		t.Errorf("nfsd would export %s's root to the forger at %s", p.SerialHex(), stolen)
	}
	if !res.Allowed(p.SerialHex(), l.IP) {
		t.Errorf("nfsd refuses the Pi's own address %s", ip)
	}
}

// In full mode another host DECLINEs the address a Pi holds (issue 14):
// dhcpd ignores it, and the Pi gets its address again.
func TestFullDeclineFromAnotherHost(t *testing.T) {
	s := lab.NewSegment(t)
	head := s.Attach("head", 1, "")
	p := piemu.Pi{MAC: net.HardwareAddr{0xdc, 0xa6, 0x32, 0x67, 0x14, 0x02}, Serial: 0x5b151402}
	piNS := s.Attach("pi", 0, p.MAC.String())
	attacker := s.Attach("attacker", 0, "52:54:00:66:66:67")
	d := startDHCPD(t, head, fullConfig(s), "", "-probe_wait=1s")
	d.WaitFor(t, "serving DHCP", 5*time.Second)
	l, err := piDHCP(t, piNS, p, 20*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	decline, _ := dhcpv4.New(dhcpv4.WithHwAddr(net.HardwareAddr{0x52, 0x54, 0, 0x66, 0x66, 0x67}), dhcpv4.WithMessageType(dhcpv4.MessageTypeDecline),
		dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(l.IP.AsSlice())), dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.ParseIP(s.Addr(1)).To4())))
	forge(t, attacker, decline)
	waitDrops(t, d, "decline_not_holder", 1)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var again piemu.Lease
	lab.InNS(t, piNS, func() { again, err = p.DHCP(ctx, "eth0") })
	if err != nil {
		t.Fatal(err)
	}
	check(t, "Pi's address after another host's DECLINE", again.IP.String(), l.IP.String())
}
