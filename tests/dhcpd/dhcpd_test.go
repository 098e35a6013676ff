package dhcpd_test

import (
	"bytes"
	"context"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"

	"github.com/ociboot/ociboot/appliance/dhcpd"
	"github.com/ociboot/ociboot/appliance/nodes"
	"github.com/ociboot/ociboot/appliance/piemu"
	"github.com/ociboot/ociboot/appliance/store"
	"github.com/ociboot/ociboot/appliance/testenv"
	"github.com/ociboot/ociboot/tests/lab"
)

func openStore(t *testing.T, dir string) *store.Store {
	t.Helper()
	st, err := store.Open(dir, store.Options{AllowTmpfs: true})
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// waitRecord polls for a node record with the wanted IP (records are
// written in the background, within about a second).
func waitRecord(t *testing.T, storeDir, key, wantIP string) nodes.Record {
	t.Helper()
	st := openStore(t, storeDir)
	var rec nodes.Record
	var err error
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		rec, err = nodes.Load(st, key)
		if err == nil && rec.IP == wantIP {
			return rec
		}
	}
	t.Fatalf("node %s: record %+v (err %v), want IP %q", key, rec, err, wantIP)
	return rec
}

// A Pi on a LAN whose router (dnsmasq) leases addresses: it hears two
// offers, boots from ours, takes its address from dnsmasq.
func TestProxyBehindDnsmasq(t *testing.T) {
	s := lab.NewSegment(t)
	lan := s.Attach("lan", 254, "")
	head := s.Attach("head", 1, "")
	p := piemu.Pi{MAC: net.HardwareAddr{0xdc, 0xa6, 0x32, 0x67, 0x00, 0x01}, Serial: 0x5b154510}
	piNS := s.Attach("pi", 0, p.MAC.String())

	startDnsmasq(t, s, lan)
	d := startDHCPD(t, head, `{"Interface": "eth0", "DefaultImage": "registry.test:5000/pi/node:1"}`, "")
	d.WaitFor(t, "serving DHCP", 5*time.Second)

	l, err := piDHCP(t, piNS, p, 20*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := len(l.Offers), 2; got != want {
		t.Errorf("Pi heard %d offers, want %d (dnsmasq's and ours)", got, want)
	}
	ip := l.IP.String()
	if !strings.HasPrefix(ip, s.Prefix()+".1") || l.IP.As4()[3] < 150 {
		t.Errorf("address %s is not from dnsmasq's range", ip)
	}
	check(t, "TFTP server", l.TFTP.String(), s.Addr(1))
	check(t, "siaddr", l.SIAddr.String(), s.Addr(1))
	check(t, "option 54", l.ServerID.String(), s.Addr(1))
	check(t, "option 66", l.TFTPName, s.Addr(1))
	check(t, "option 60", l.Option60, "PXEClient")
	check(t, "option 43", hex.EncodeToString(l.Option43), hex.EncodeToString(dhcpd.PXEOption43))
	check(t, "option 97", hex.EncodeToString(l.Option97), hex.EncodeToString(p.GUID()))
	check(t, "boot offer yiaddr", l.BootOffer.YourIPAddr.String(), "0.0.0.0")
	check(t, "router from dnsmasq", l.Router.String(), s.Addr(254))

	rec := waitRecord(t, d.Store, "5b154510", ip)
	check(t, "record MAC", rec.MAC, p.MAC.String())
	check(t, "record model", rec.Model, "RPi4")
	check(t, "record image", rec.Image, "registry.test:5000/pi/node:1")

	st := d.Status(t)
	if got := st.Drops["proxy_ignores_request"]; got < 1 {
		t.Errorf("proxy answered or missed the Pi's REQUEST to dnsmasq: drops %v", st.Drops)
	}
	if got, want := st.Replies["offer"], 1; got != want {
		t.Errorf("proxy sent %d offers, want %d", got, want)
	}
	if m := d.Metrics(t); !strings.Contains(m, `ociboot_dhcpd_requests_total{type="discover"} 1`) {
		t.Errorf("metrics lack the DISCOVER count:\n%s", m)
	}

	// An ordinary client on the LAN gets dnsmasq's lease and nothing from us.
	env := udhcpc(t, s.Attach("laptop", 0, ""))
	check(t, "laptop serverid", env["serverid"], s.Addr(254))
	if st := d.Status(t); st.Replies["offer"] != 1 {
		t.Errorf("proxy answered an ordinary client: %v", st.Replies)
	}
}

const fullNetboot = `{
	"Interface": "eth0", "Mode": "full", "ServerIP": "%[1]s.1",
	"Subnet": "%[1]s.0/24", "Range": "%[1]s.100-%[1]s.120",
	"Router": "%[1]s.254", "DNS": ["%[1]s.53"], "LeaseSeconds": 600,
	"DefaultImage": "registry.test:5000/pi/node:1",
	"Nodes": [{"Name": "reserved", "MAC": "52:54:00:67:00:99", "IP": "%[1]s.50"}]
}`

func fullConfig(s *lab.Segment) string {
	return fmt.Sprintf(fullNetboot, s.Prefix())
}

// Full mode against udhcpc with a PXE vendor class, dhclient with a
// reservation, and a Pi whose kernel and OS then ask again.
func TestFullModeClients(t *testing.T) {
	s := lab.NewSegment(t)
	head := s.Attach("head", 1, "")
	d := startDHCPD(t, head, fullConfig(s), "", "-probe_wait=1s")
	d.WaitFor(t, "serving DHCP", 5*time.Second)

	// udhcpc as a PXE client: lease plus boot options.
	env := udhcpc(t, s.Attach("pxe", 0, "52:54:00:67:00:01"), "-V", piemu.VendorClass, "-O", "43", "-O", "60", "-O", "66")
	if ip := netip.MustParseAddr(env["ip"]); ip.As4()[3] < 100 || ip.As4()[3] > 120 {
		t.Errorf("udhcpc got %s, outside the range", ip)
	}
	check(t, "udhcpc subnet", env["subnet"], "255.255.255.0")
	check(t, "udhcpc router", env["router"], s.Addr(254))
	check(t, "udhcpc dns", strings.TrimSpace(env["dns"]), s.Addr(53))
	check(t, "udhcpc lease", env["lease"], "600")
	check(t, "udhcpc serverid", env["serverid"], s.Addr(1))
	check(t, "udhcpc siaddr", env["siaddr"], s.Addr(1))
	check(t, "udhcpc tftp (66)", env["tftp"], s.Addr(1))
	check(t, "udhcpc opt43", env["opt43"], hex.EncodeToString(dhcpd.PXEOption43))

	// dhclient on a reserved MAC.
	env = dhclient(t, s.Attach("resv", 0, "52:54:00:67:00:99"))
	check(t, "dhclient address", env["new_ip_address"], s.Addr(50))
	check(t, "dhclient mask", env["new_subnet_mask"], "255.255.255.0")
	check(t, "dhclient routers", env["new_routers"], s.Addr(254))
	check(t, "dhclient server", env["new_dhcp_server_identifier"], s.Addr(1))

	// The Pi: bootloader, then the kernel's ip=dhcp (udhcpc without PXE
	// class stands in), then the OS (dhclient): one address throughout.
	p := piemu.Pi{MAC: net.HardwareAddr{0xdc, 0xa6, 0x32, 0x67, 0x00, 0x02}, Serial: 0x0a0b0c0d}
	piNS := s.Attach("pi", 0, p.MAC.String())
	l, err := piDHCP(t, piNS, p, 20*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := len(l.Offers), 1; got != want {
		t.Errorf("Pi heard %d offers, want %d", got, want)
	}
	check(t, "Pi TFTP", l.TFTP.String(), s.Addr(1))
	check(t, "Pi option 43", hex.EncodeToString(l.Option43), hex.EncodeToString(dhcpd.PXEOption43))
	check(t, "Pi option 97", hex.EncodeToString(l.Option97), hex.EncodeToString(p.GUID()))
	check(t, "Pi router", l.Router.String(), s.Addr(254))
	kernel := udhcpc(t, piNS)
	check(t, "kernel's address", kernel["ip"], l.IP.String())
	osEnv := dhclient(t, piNS)
	check(t, "OS's address", osEnv["new_ip_address"], l.IP.String())

	rec := waitRecord(t, d.Store, "0a0b0c0d", l.IP.String())
	check(t, "record MAC", rec.MAC, p.MAC.String())

	st := d.Status(t)
	if got, want := len(st.Leases), 3; got != want {
		t.Errorf("status has %d leases, want %d: %v", got, want, st.Leases)
	}
	if st.Drops["pool_exhausted"] != 0 || st.Replies["nak"] != 0 {
		t.Errorf("unexpected drops/NAKs: %v %v", st.Drops, st.Replies)
	}
}

// Full mode refuses to start beside another server unless forced, and
// warns about it when forced.
func TestFullModeRefusesBesideDnsmasq(t *testing.T) {
	s := lab.NewSegment(t)
	lan := s.Attach("lan", 254, "")
	head := s.Attach("head", 1, "")
	startDnsmasq(t, s, lan)

	d := startDHCPD(t, head, fullConfig(s), "", "-probe_wait=5s")
	select {
	case <-d.Done():
	case <-time.After(15 * time.Second):
		t.Fatalf("full mode kept running beside dnsmasq:\n%s", d.Output())
	}
	if d.Err() == nil {
		t.Errorf("dhcpd exited 0 beside dnsmasq")
	}
	if out := d.Output(); !strings.Contains(out, "another DHCP server answers on this segment") || !strings.Contains(out, s.Addr(254)) {
		t.Errorf("error does not name the other server:\n%s", out)
	}

	forced := strings.Replace(fullConfig(s), `"Mode": "full"`, `"Mode": "full", "ForceDHCP": true`, 1)
	d = startDHCPD(t, head, forced, "", "-probe_wait=5s")
	d.WaitFor(t, "serving anyway because Netboot.ForceDHCP is set", 10*time.Second)
	d.WaitFor(t, "serving DHCP", 5*time.Second)
	if st := d.Status(t); len(st.ForeignServers) != 1 || st.ForeignServers[0].IP != s.Addr(254) {
		t.Errorf("status foreign servers = %v, want %s", st.ForeignServers, s.Addr(254))
	}
}

// Leases survive kill -9 of the service: after a restart every node gets
// its address back and a newcomer gets a different one.
func TestFullModeLeasesSurviveKill9(t *testing.T) {
	s := lab.NewSegment(t)
	head := s.Attach("head", 1, "")
	store := filepath.Join(t.TempDir(), "store")
	d := startDHCPD(t, head, fullConfig(s), store, "-probe_wait=1s")
	d.WaitFor(t, "serving DHCP", 5*time.Second)

	piNS := s.Attach("pis", 0, "")
	pis := []piemu.Pi{
		{MAC: net.HardwareAddr{0xdc, 0xa6, 0x32, 0x67, 0x01, 0x01}, Serial: 0x10000001},
		{MAC: net.HardwareAddr{0xe4, 0x5f, 0x01, 0x67, 0x01, 0x02}, Serial: 0x10000002},
		{MAC: net.HardwareAddr{0xd8, 0x3a, 0xdd, 0x67, 0x01, 0x03}, Serial: 0x10000003, Model: "RPi5"},
	}
	before := map[string]string{}
	for _, p := range pis {
		l, err := piDHCP(t, piNS, p, 15*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		before[p.MAC.String()] = l.IP.String()
	}
	d.Kill(syscall.SIGKILL)
	<-d.Done()

	b, err := os.ReadFile(filepath.Join(store, "dhcp", "leases.json"))
	if err != nil {
		t.Fatal(err)
	}
	for mac, ip := range before {
		if !bytes.Contains(b, []byte(mac)) || !bytes.Contains(b, []byte(ip)) {
			t.Errorf("leases.json after kill -9 lacks %s=%s:\n%s", mac, ip, b)
		}
	}

	d = startDHCPD(t, head, fullConfig(s), store, "-probe_wait=1s")
	d.WaitFor(t, "serving DHCP", 5*time.Second)
	for i := len(pis) - 1; i >= 0; i-- { // reverse order: no luck from allocation order
		p := pis[i]
		l, err := piDHCP(t, piNS, p, 15*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		check(t, "address of "+p.MAC.String()+" after restart", l.IP.String(), before[p.MAC.String()])
	}
	newcomer := piemu.Pi{MAC: net.HardwareAddr{0xdc, 0xa6, 0x32, 0x67, 0x01, 0x04}, Serial: 0x10000004}
	l, err := piDHCP(t, piNS, newcomer, 15*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	for mac, ip := range before {
		if l.IP.String() == ip {
			t.Errorf("newcomer got %s, still leased to %s", ip, mac)
		}
	}
	rec := waitRecord(t, store, "10000003", before[pis[2].MAC.String()])
	check(t, "RPi5 model", rec.Model, "RPi5")
}

// Our option 43 is byte-identical to what dnsmasq sends for
// pxe-service=0,"Raspberry Pi Boot" in proxy mode (the setup of the official
// netboot tutorial), and both proxies answer the Pi the same way.
func TestProxyRepliesMatchDnsmasq(t *testing.T) {
	s := lab.NewSegment(t)
	lan := s.Attach("dnsmasq", 2, "")
	head := s.Attach("head", 1, "")
	p := piemu.Pi{MAC: net.HardwareAddr{0xdc, 0xa6, 0x32, 0x67, 0x02, 0x01}, Serial: 0x12345678}
	piNS := s.Attach("pi", 0, p.MAC.String())
	lab.Dnsmasq(t, lan, "--log-dhcp", "--dhcp-range="+s.Addr(0)+",proxy", "--pxe-service=0,Raspberry Pi Boot")
	d := startDHCPD(t, head, `{"Interface": "eth0"}`, "")
	d.WaitFor(t, "serving DHCP", 5*time.Second)

	offers := map[string]*dhcpv4.DHCPv4{}
	lab.InNS(t, piNS, func() {
		c, err := piemu.Open("eth0")
		if err != nil {
			t.Error(err)
			return
		}
		defer c.Close()
		xid := dhcpv4.TransactionID{0x26, 0xf3, 0x03, 0x39}
		if err := c.Send(p.Discover(xid)); err != nil {
			t.Error(err)
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		for len(offers) < 2 {
			m, err := c.Recv(ctx, xid, p.MAC)
			if err != nil {
				t.Errorf("got %d proxy offers, want 2: %v", len(offers), err)
				return
			}
			offers[m.ServerIdentifier().String()] = m
		}
	})
	ours, theirs := offers[s.Addr(1)], offers[s.Addr(2)]
	if ours == nil || theirs == nil {
		t.Fatalf("offers by server: %v", offers)
	}
	for _, c := range []struct{ name, got, want string }{
		{"option 43", hex.EncodeToString(ours.GetOneOption(dhcpv4.OptionVendorSpecificInformation)),
			hex.EncodeToString(theirs.GetOneOption(dhcpv4.OptionVendorSpecificInformation))},
		{"option 60", ours.ClassIdentifier(), theirs.ClassIdentifier()},
		{"option 97", hex.EncodeToString(ours.GetOneOption(dhcpv4.OptionClientMachineIdentifier)),
			hex.EncodeToString(theirs.GetOneOption(dhcpv4.OptionClientMachineIdentifier))},
		{"yiaddr", ours.YourIPAddr.String(), theirs.YourIPAddr.String()},
		{"type", ours.MessageType().String(), theirs.MessageType().String()},
	} {
		if c.got != c.want {
			t.Errorf("%s: ours %q, dnsmasq %q", c.name, c.got, c.want)
		}
	}
	check(t, "dnsmasq option 43 vs PXEOption43", hex.EncodeToString(theirs.GetOneOption(dhcpv4.OptionVendorSpecificInformation)), hex.EncodeToString(dhcpd.PXEOption43))
}

// A Pi behind a DHCP relay (dnsmasq --dhcp-relay) gets the boot offer
// through it: the proxy replies to giaddr:67, not by broadcast.
func TestProxyThroughRelay(t *testing.T) {
	a := lab.NewSegment(t) // head node's segment
	b := lab.NewSegment(t) // the Pi's segment
	head := a.Attach("head", 1, "")
	relay := a.Attach("relay", 2, "")
	b.Plug(relay, "obd1", 1)
	lab.Run(t, "ip", "-n", head, "route", "add", b.Prefix()+".0/24", "via", a.Addr(2))
	p := piemu.Pi{MAC: net.HardwareAddr{0xdc, 0xa6, 0x32, 0x67, 0x03, 0x01}, Serial: 0x0000beef}
	piNS := b.Attach("pi", 0, p.MAC.String())

	testenv.NeedTool(t, "dnsmasq", "dnsmasq")
	dir := t.TempDir()
	r := lab.Start(t, relay, "dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--port=0", "--user=root",
		"--log-facility=-", "--log-dhcp", "--pid-file="+filepath.Join(dir, "pid"), "--dhcp-leasefile="+filepath.Join(dir, "leases"),
		"--dhcp-relay="+b.Addr(1)+","+a.Addr(1))
	r.WaitFor(t, "DHCP relay", 5*time.Second)
	d := startDHCPD(t, head, `{"Interface": "eth0"}`, "")
	d.WaitFor(t, "serving DHCP", 5*time.Second)

	var offer *dhcpv4.DHCPv4
	lab.InNS(t, piNS, func() {
		c, err := piemu.Open("eth0")
		if err != nil {
			t.Error(err)
			return
		}
		defer c.Close()
		xid := dhcpv4.TransactionID{1, 3, 3, 7}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		for offer == nil && ctx.Err() == nil {
			if err := c.Send(p.Discover(xid)); err != nil {
				t.Error(err)
				return
			}
			rctx, rcancel := context.WithTimeout(ctx, 2*time.Second)
			offer, _ = c.Recv(rctx, xid, p.MAC)
			rcancel()
		}
	})
	if offer == nil {
		t.Fatal("no boot offer through the relay")
	}
	check(t, "relayed offer TFTP server", piemu.TFTPServer(offer).String(), a.Addr(1))
	check(t, "relayed offer giaddr", offer.GatewayIPAddr.String(), b.Addr(1))
	check(t, "relayed option 43", hex.EncodeToString(offer.GetOneOption(dhcpv4.OptionVendorSpecificInformation)), hex.EncodeToString(dhcpd.PXEOption43))
	if st := d.Status(t); st.Replies["offer"] < 1 {
		t.Errorf("status replies = %v", st.Replies)
	}
}

// A second DHCP server on the same host and interface makes start-up fail
// with a hint, instead of two servers silently sharing port 67.
func TestPortTakenByDnsmasq(t *testing.T) {
	s := lab.NewSegment(t)
	head := s.Attach("head", 1, "")
	startDnsmasq(t, s, head)
	d := startDHCPD(t, head, `{"Interface": "eth0"}`, "")
	select {
	case <-d.Done():
	case <-time.After(5 * time.Second):
		t.Fatalf("dhcpd kept running with dnsmasq on port 67:\n%s", d.Output())
	}
	if d.Err() == nil {
		t.Errorf("dhcpd exited 0")
	}
	if out := d.Output(); !strings.Contains(out, "is another DHCP server such as dnsmasq running on this host?") {
		t.Errorf("no hint about the other server:\n%s", out)
	}
}

// At boot the head node's address may arrive after dhcpd starts; proxy mode
// waits for it instead of failing.
func TestProxyWaitsForInterfaceAddress(t *testing.T) {
	s := lab.NewSegment(t)
	head := s.Attach("head", 0, "")
	d := startDHCPD(t, head, `{"Interface": "eth0"}`, "")
	d.WaitFor(t, "waiting for an IPv4 address", 5*time.Second)
	lab.Run(t, "ip", "-n", head, "addr", "add", s.Addr(1)+"/24", "dev", "eth0")
	d.WaitFor(t, "serving DHCP", 5*time.Second)
	if out := d.Output(); !strings.Contains(out, "server_ip="+s.Addr(1)) {
		t.Errorf("server address not taken from the interface:\n%s", out)
	}
}
