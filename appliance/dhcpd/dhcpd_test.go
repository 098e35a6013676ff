package dhcpd

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"

	"github.com/ociboot/ociboot/appliance/config"
	"github.com/ociboot/ociboot/appliance/nodes"
	"github.com/ociboot/ociboot/appliance/piemu"
	"github.com/ociboot/ociboot/appliance/store"
)

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func newClock() *clock { return &clock{t: time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)} }

func mustConfig(t testing.TB, netboot string) *config.Config {
	t.Helper()
	cfg, err := config.Parse([]byte(`{"Netboot": ` + netboot + `}`))
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	return cfg
}

// fixture is a Server on a store in a temp dir, with its clock.
type fixture struct {
	t     testing.TB
	s     *Server
	st    *store.Store
	cfg   *config.Config
	clock *clock
}

const proxyConfig = `{"Interface": "obd0", "ServerIP": "10.67.0.1", "DefaultImage": "registry.test:5000/pi/node:1"}`

const fullConfig = `{
	"Interface": "obd0", "Mode": "full", "ServerIP": "10.67.0.1",
	"Subnet": "10.67.0.0/24", "Range": "10.67.0.100-10.67.0.109",
	"Router": "10.67.0.254", "DNS": ["10.67.0.53"], "LeaseSeconds": 600,
	"DefaultImage": "registry.test:5000/pi/node:1",
	"Nodes": [
		{"Name": "by-mac", "MAC": "dc:a6:32:00:00:aa", "IP": "10.67.0.105"},
		{"Name": "by-serial", "Serial": "10000000c0ffee01", "IP": "10.67.0.20", "Image": "registry.test:5000/pi/other:2"}
	]
}`

func newFixture(t testing.TB, netboot string, st *store.Store, conn net.PacketConn) *fixture {
	t.Helper()
	if st == nil {
		var err error
		st, err = store.Open(t.TempDir(), store.Options{AllowTmpfs: true})
		if err != nil {
			t.Fatal(err)
		}
	}
	if conn == nil {
		conn = &nullConn{}
	}
	cfg := mustConfig(t, netboot)
	c := newClock()
	s, err := New(Options{Config: cfg, Store: st, Conn: conn, ServerIP: cfg.ServerIP, Now: c.Now, OwnMAC: net.HardwareAddr{2, 0, 0, 0, 0, 1}})
	if err != nil {
		t.Fatal(err)
	}
	return &fixture{t: t, s: s, st: st, cfg: cfg, clock: c}
}

// nullConn is for tests that call Handle directly.
type nullConn struct{ net.PacketConn }

func pi(last byte, serial uint32) piemu.Pi {
	return piemu.Pi{MAC: net.HardwareAddr{0xdc, 0xa6, 0x32, 0x10, 0x20, last}, Serial: serial}
}

var xid1 = dhcpv4.TransactionID{1, 2, 3, 4}

func plainDiscover(mac net.HardwareAddr, mods ...dhcpv4.Modifier) *dhcpv4.DHCPv4 {
	d, _ := dhcpv4.NewDiscovery(mac, append([]dhcpv4.Modifier{dhcpv4.WithTransactionID(dhcpv4.TransactionID{9, 9, 9, 9})}, mods...)...)
	return d
}

func request(mac net.HardwareAddr, ip, server netip.Addr, mods ...dhcpv4.Modifier) *dhcpv4.DHCPv4 {
	all := []dhcpv4.Modifier{
		dhcpv4.WithHwAddr(mac),
		dhcpv4.WithMessageType(dhcpv4.MessageTypeRequest),
		dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(ip.AsSlice())),
	}
	if server.IsValid() {
		all = append(all, dhcpv4.WithOption(dhcpv4.OptServerIdentifier(server.AsSlice())))
	}
	d, _ := dhcpv4.New(append(all, mods...)...)
	return d
}

func yiaddr(m *dhcpv4.DHCPv4) netip.Addr { return addrFrom(m.YourIPAddr) }

// lease runs DISCOVER + REQUEST for a plain client and returns the ACKed
// address.
func (f *fixture) lease(mac net.HardwareAddr) netip.Addr {
	f.t.Helper()
	offer, _ := f.s.Handle(plainDiscover(mac))
	if offer == nil {
		f.t.Fatalf("no OFFER for %s", mac)
	}
	ack, _ := f.s.Handle(request(mac, yiaddr(offer), f.cfg.ServerIP))
	if ack == nil || ack.MessageType() != dhcpv4.MessageTypeAck {
		f.t.Fatalf("no ACK for %s: %v", mac, ack)
	}
	return yiaddr(ack)
}

func TestOption43MatchesDnsmasq(t *testing.T) {
	// dnsmasq 2.89, pxe-service=0,"Raspberry Pi Boot", as in PI-NETBOOT.md §1.3.
	want, _ := hex.DecodeString("060103" + "0a0400505845" + "0914000011" + hex.EncodeToString([]byte("Raspberry Pi Boot")) + "ff")
	if got := PXEOption43; !bytes.Equal(got, want) {
		t.Errorf("option 43:\ngot  %x\nwant %x", got, want)
	}
	if got, want := len(PXEOption43), 32; got != want {
		t.Errorf("len(option 43) = %d, want %d", got, want)
	}
}

func TestParseClient(t *testing.T) {
	p4 := pi(0x01, 0x5b154510)
	p5 := piemu.Pi{MAC: net.HardwareAddr{0x2c, 0xcf, 0x67, 1, 2, 3}, Serial: 0xdeadbeef, Model: "RPi5", BoardRevision: 0xd04170}
	p5r := piemu.Pi{MAC: net.HardwareAddr{0xd8, 0x3a, 0xdd, 1, 2, 3}, Serial: 0xdeadbeef, Model: "5iPR", BoardRevision: 0xb04180}
	repeated := append([]byte{0}, bytes.Repeat([]byte{0x2e, 0x2a, 0x5e, 0xe7}, 4)...)
	for _, tc := range []struct {
		name        string
		m           *dhcpv4.DHCPv4
		wantNetboot bool
		wantModel   string
		wantSerial  string
		wantKey     string
	}{
		{"pi4", p4.Discover(xid1), true, "RPi4", "5b154510", "5b154510"},
		{"pi4 request without option 60", p4.Request(xid1, plainDiscover(p4.MAC)), true, "RPi4", "5b154510", "5b154510"},
		{"pi5", p5.Discover(xid1), true, "RPi5", "deadbeef", "deadbeef"},
		// Some Pi 5 bootloaders have been reported to send the FourCC in
		// the other byte order.
		{"pi5 fourcc 5iPR", p5r.Discover(xid1), true, "RPi5", "deadbeef", "deadbeef"},
		{"cm5 fourcc 5iPR, no vendor class", plainDiscover(p5r.MAC, dhcpv4.WithGeneric(dhcpv4.OptionClientMachineIdentifier, p5r.GUID())), true, "RPi5", "deadbeef", "deadbeef"},
		{"old guid: serial four times", plainDiscover(net.HardwareAddr{0xb8, 0x27, 0xeb, 0x5e, 0x2a, 0x2e},
			dhcpv4.WithGeneric(dhcpv4.OptionClientMachineIdentifier, repeated)), true, "", "e75e2a2e", "e75e2a2e"},
		{"pxe client", plainDiscover(net.HardwareAddr{0x52, 0x54, 0, 1, 2, 3},
			dhcpv4.WithOption(dhcpv4.OptClassIdentifier(piemu.VendorClass))), true, "", "", "52-54-00-01-02-03"},
		{"pi os client", plainDiscover(p4.MAC), false, "", "", "dc-a6-32-10-20-01"},
		{"other vendor class", plainDiscover(net.HardwareAddr{0x52, 0x54, 0, 1, 2, 3},
			dhcpv4.WithOption(dhcpv4.OptClassIdentifier("udhcp 1.36.1"))), false, "", "", "52-54-00-01-02-03"},
		{"short guid", plainDiscover(net.HardwareAddr{0x52, 0x54, 0, 1, 2, 3},
			dhcpv4.WithGeneric(dhcpv4.OptionClientMachineIdentifier, []byte{0, 'R', 'P', 'i', '4'})), false, "", "", "52-54-00-01-02-03"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := ParseClient(tc.m)
			if got, want := c.Netboot, tc.wantNetboot; got != want {
				t.Errorf("Netboot = %v, want %v", got, want)
			}
			if got, want := c.Model, tc.wantModel; got != want {
				t.Errorf("Model = %q, want %q", got, want)
			}
			if got, want := c.Serial, tc.wantSerial; got != want {
				t.Errorf("Serial = %q, want %q", got, want)
			}
			if got, want := c.NodeKey(), tc.wantKey; got != want {
				t.Errorf("NodeKey = %q, want %q", got, want)
			}
		})
	}
	if got, want := ParseClient(p4.Discover(xid1)).BoardRevision, uint32(piemu.BoardRevision); got != want {
		t.Errorf("BoardRevision = %#x, want %#x", got, want)
	}
}

func TestPiMACPrefixes(t *testing.T) {
	for _, mac := range []string{"b8:27:eb:00:00:01", "dc:a6:32:00:00:01", "e4:5f:01:00:00:01", "28:cd:c1:00:00:01", "d8:3a:dd:00:00:01", "2c:cf:67:00:00:01"} {
		m, _ := net.ParseMAC(mac)
		if !IsPiMAC(m) {
			t.Errorf("IsPiMAC(%s) = false, want true", mac)
		}
	}
	if m, _ := net.ParseMAC("52:54:00:00:00:01"); IsPiMAC(m) {
		t.Errorf("IsPiMAC(52:54:00:...) = true, want false")
	}
}

// rawOptions walks the options of an encoded packet and fails on pad bytes
// or anything after End.
func rawOptions(t *testing.T, b []byte) []byte {
	t.Helper()
	if len(b) < 241 {
		t.Fatalf("packet of %d bytes has no options", len(b))
	}
	var codes []byte
	opts := b[240:]
	for i := 0; i < len(opts); {
		code := opts[i]
		if code == 0 {
			t.Fatalf("option 0 (pad) at offset %d", 240+i)
		}
		codes = append(codes, code)
		if code == 255 {
			if rest := opts[i+1:]; len(rest) > 0 {
				t.Fatalf("%d bytes after End", len(rest))
			}
			return codes
		}
		if i+1 >= len(opts) {
			t.Fatalf("truncated option %d", code)
		}
		i += 2 + int(opts[i+1])
	}
	t.Fatal("no End option")
	return nil
}

// captureConn is a loopback socket whose replies are recorded with their
// intended destination and then delivered to the test client instead, so
// that no broadcast leaves the machine.
type captureConn struct {
	*net.UDPConn
	client net.Addr
	sent   chan sent
}

type sent struct {
	b   []byte
	dst net.Addr
}

func (c *captureConn) WriteTo(b []byte, dst net.Addr) (int, error) {
	c.sent <- sent{append([]byte(nil), b...), dst}
	return c.UDPConn.WriteTo(b, c.client)
}

func loopbackPair(t *testing.T) (*captureConn, *net.UDPConn) {
	t.Helper()
	srv, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	cl, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close(); cl.Close() })
	return &captureConn{UDPConn: srv, client: cl.LocalAddr(), sent: make(chan sent, 16)}, cl
}

func serve(t *testing.T, f *fixture) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.s.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Errorf("Serve: %v", err)
		}
	})
}

func exchange(t *testing.T, cc *captureConn, cl *net.UDPConn, req *dhcpv4.DHCPv4) (*dhcpv4.DHCPv4, sent) {
	t.Helper()
	if _, err := cl.WriteTo(req.ToBytes(), cc.LocalAddr()); err != nil {
		t.Fatal(err)
	}
	cl.SetReadDeadline(time.Now().Add(2 * time.Second))
	buf := make([]byte, 1500)
	n, _, err := cl.ReadFrom(buf)
	if err != nil {
		t.Fatalf("no reply to %s: %v", req.MessageType(), err)
	}
	m, err := dhcpv4.FromBytes(buf[:n])
	if err != nil {
		t.Fatalf("reply does not parse: %v", err)
	}
	return m, <-cc.sent
}

func expectSilence(t *testing.T, cc *captureConn, cl *net.UDPConn, req *dhcpv4.DHCPv4) {
	t.Helper()
	if _, err := cl.WriteTo(req.ToBytes(), cc.LocalAddr()); err != nil {
		t.Fatal(err)
	}
	cl.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	buf := make([]byte, 1500)
	if n, _, err := cl.ReadFrom(buf); err == nil {
		m, _ := dhcpv4.FromBytes(buf[:n])
		t.Errorf("got a reply to %s, want none: %v", req.MessageType(), m)
	}
}

func TestProxyPiOfferOverLoopback(t *testing.T) {
	cc, cl := loopbackPair(t)
	f := newFixture(t, proxyConfig, nil, cc)
	serve(t, f)
	p := pi(0x01, 0x5b154510)
	disc := p.Discover(xid1)

	reply, s := exchange(t, cc, cl, disc)
	if got, want := s.dst.String(), "255.255.255.255:68"; got != want {
		t.Errorf("sent to %s, want %s", got, want)
	}
	if got, want := reply.MessageType(), dhcpv4.MessageTypeOffer; got != want {
		t.Errorf("type = %v, want %v", got, want)
	}
	if got, want := reply.TransactionID, xid1; got != want {
		t.Errorf("xid = %v, want %v", got, want)
	}
	if !reply.YourIPAddr.IsUnspecified() {
		t.Errorf("yiaddr = %v, want 0.0.0.0 (proxy offers no address)", reply.YourIPAddr)
	}
	for _, c := range []struct {
		name      string
		got, want string
	}{
		{"siaddr", reply.ServerIPAddr.String(), "10.67.0.1"},
		{"option 54", reply.ServerIdentifier().String(), "10.67.0.1"},
		{"option 66", reply.TFTPServerName(), "10.67.0.1"},
		{"option 60", reply.ClassIdentifier(), "PXEClient"},
		{"option 43", hex.EncodeToString(reply.GetOneOption(dhcpv4.OptionVendorSpecificInformation)), hex.EncodeToString(PXEOption43)},
		{"option 97", hex.EncodeToString(reply.GetOneOption(dhcpv4.OptionClientMachineIdentifier)), hex.EncodeToString(p.GUID())},
		{"chaddr", reply.ClientHWAddr.String(), p.MAC.String()},
		{"tftp server as the Pi picks it", piemu.TFTPServer(reply).String(), "10.67.0.1"},
	} {
		if c.got != c.want {
			t.Errorf("%s = %q, want %q", c.name, c.got, c.want)
		}
	}
	if reply.GetOneOption(dhcpv4.OptionIPAddressLeaseTime) != nil || reply.GetOneOption(dhcpv4.OptionSubnetMask) != nil {
		t.Errorf("proxy offer carries lease options: %v", reply)
	}
	rawOptions(t, s.b)

	// The Pi's REQUEST goes to the real server; the proxy stays silent
	// but learns the node's address.
	offer := &dhcpv4.DHCPv4{YourIPAddr: net.IPv4(10, 67, 0, 77), Options: dhcpv4.Options{}}
	offer.UpdateOption(dhcpv4.OptServerIdentifier(net.IPv4(10, 67, 0, 254)))
	expectSilence(t, cc, cl, p.Request(xid1, offer))
	// The OS's plain DHCP on the same Pi is not ours either.
	expectSilence(t, cc, cl, plainDiscover(p.MAC))

	f.s.FlushNodes()
	rec, err := nodes.Load(f.st, "5b154510")
	if err != nil {
		t.Fatalf("node record: %v", err)
	}
	if got, want := rec.MAC, p.MAC.String(); got != want {
		t.Errorf("record MAC = %q, want %q", got, want)
	}
	if got, want := rec.IP, "10.67.0.77"; got != want {
		t.Errorf("record IP = %q, want %q (learned from the REQUEST)", got, want)
	}
	if got, want := rec.Model, "RPi4"; got != want {
		t.Errorf("record Model = %q, want %q", got, want)
	}
	if got, want := rec.Image, "registry.test:5000/pi/node:1"; got != want {
		t.Errorf("record Image = %q, want %q", got, want)
	}
	prog, err := nodes.Progress(f.st, "5b154510")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := prog.Stage, nodes.StageDHCP; got != want {
		t.Errorf("stage = %q, want %q", got, want)
	}
}

func TestProxyIgnores(t *testing.T) {
	f := newFixture(t, proxyConfig, nil, nil)
	p := pi(0x02, 0x12345678)
	relayed := p.Discover(xid1)
	relayed.GatewayIPAddr = net.IPv4(10, 67, 5, 1)
	relayed.HopCount = 1

	for _, tc := range []struct {
		name   string
		m      *dhcpv4.DHCPv4
		reason string
	}{
		{"plain client", plainDiscover(net.HardwareAddr{0x52, 0x54, 0, 0, 0, 1}), "not_netboot"},
		{"pi request", p.Request(xid1, p.Discover(xid1)), "proxy_ignores_request"},
		{"inform", func() *dhcpv4.DHCPv4 {
			m, _ := dhcpv4.NewInform(p.MAC, net.IPv4(10, 67, 0, 9), dhcpv4.WithOption(dhcpv4.OptClassIdentifier(piemu.VendorClass)))
			return m
		}(), "proxy_ignores_inform"},
		{"own probe", plainDiscover(net.HardwareAddr{2, 0, 0, 0, 0, 1}, dhcpv4.WithOption(dhcpv4.OptClassIdentifier(piemu.VendorClass))), "own_packet"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := f.s.m.drops.get(tc.reason)
			if reply, _ := f.s.Handle(tc.m); reply != nil {
				t.Errorf("got reply %v, want none", reply)
			}
			if got, want := f.s.m.drops.get(tc.reason), before+1; got != want {
				t.Errorf("drops[%s] = %d, want %d", tc.reason, got, want)
			}
		})
	}

	reply, dst := f.s.Handle(relayed)
	if reply == nil {
		t.Fatal("no reply to a relayed Pi DISCOVER")
	}
	if got, want := dst.String(), "10.67.5.1:67"; got != want {
		t.Errorf("relayed reply sent to %s, want %s", got, want)
	}
	if got, want := reply.GatewayIPAddr.String(), "10.67.5.1"; got != want {
		t.Errorf("giaddr = %s, want %s", got, want)
	}
}

func TestKnownOnly(t *testing.T) {
	known := pi(0x03, 0xc0ffee01)
	byMAC := pi(0x04, 0x0badf00d)
	stranger := pi(0x05, 0x11111111)
	cfg := `{"Interface": "obd0", "ServerIP": "10.67.0.1", "Enroll": "known-only", "DefaultImage": "r.test/a:1",
		"Nodes": [{"Serial": "c0ffee01"}, {"MAC": "` + byMAC.MAC.String() + `", "Image": "r.test/b:2"}]}`
	f := newFixture(t, cfg, nil, nil)
	for _, tc := range []struct {
		p    piemu.Pi
		want bool
	}{{known, true}, {byMAC, true}, {stranger, false}} {
		reply, _ := f.s.Handle(tc.p.Discover(xid1))
		if got := reply != nil; got != tc.want {
			t.Errorf("%s answered = %v, want %v", tc.p.SerialHex(), got, tc.want)
		}
	}
	f.s.FlushNodes()
	if _, err := nodes.Load(f.st, stranger.SerialHex()); err == nil {
		t.Errorf("unknown node %s was recorded under known-only", stranger.SerialHex())
	}
	rec, err := nodes.Load(f.st, byMAC.SerialHex())
	if err != nil {
		t.Fatal(err)
	}
	if got, want := rec.Image, "r.test/b:2"; got != want {
		t.Errorf("image of node known by MAC = %q, want %q", got, want)
	}
}

func TestNodeRecordsAreRateLimited(t *testing.T) {
	f := newFixture(t, proxyConfig, nil, nil)
	p := pi(0x06, 0x00abcdef)
	f.s.Handle(p.Discover(xid1))
	f.s.FlushNodes()
	first, err := nodes.Load(f.st, "00abcdef")
	if err != nil {
		t.Fatal(err)
	}
	// A retry ten seconds later changes nothing worth an fsync.
	f.clock.Add(10 * time.Second)
	f.s.Handle(p.Discover(xid1))
	f.s.FlushNodes()
	rec, _ := nodes.Load(f.st, "00abcdef")
	if got, want := rec.LastSeen, first.LastSeen; !got.Equal(want) {
		t.Errorf("LastSeen rewritten after 10s: got %v, want %v", got, want)
	}
	// After the interval it is written again.
	f.clock.Add(time.Minute)
	f.s.Handle(p.Discover(xid1))
	f.s.FlushNodes()
	rec, _ = nodes.Load(f.st, "00abcdef")
	if got, want := rec.LastSeen, first.LastSeen.Add(70*time.Second); !got.Equal(want) {
		t.Errorf("LastSeen after 70s = %v, want %v", got, want)
	}
	if got, want := rec.Enrolled, first.Enrolled; !got.Equal(want) {
		t.Errorf("Enrolled changed: %v, want %v", got, want)
	}
}

func TestFullPiBootThenKernelAndOS(t *testing.T) {
	f := newFixture(t, fullConfig, nil, nil)
	p := pi(0x07, 0x77777777)

	offer, dst := f.s.Handle(p.Discover(xid1))
	if offer == nil {
		t.Fatal("no OFFER")
	}
	if got, want := dst.String(), "255.255.255.255:68"; got != want {
		t.Errorf("OFFER to %s, want %s", got, want)
	}
	ip := yiaddr(offer)
	if !f.cfg.InRange(ip) {
		t.Fatalf("offered %s outside the range", ip)
	}
	ack, _ := f.s.Handle(p.Request(xid1, offer))
	if ack == nil || ack.MessageType() != dhcpv4.MessageTypeAck {
		t.Fatalf("REQUEST without option 60 not ACKed: %v", ack)
	}
	for _, m := range []*dhcpv4.DHCPv4{offer, ack} {
		for _, c := range []struct{ name, got, want string }{
			{"yiaddr", yiaddr(m).String(), ip.String()},
			{"mask", net.IP(m.SubnetMask()).String(), "255.255.255.0"},
			{"router", m.Router()[0].String(), "10.67.0.254"},
			{"dns", m.DNS()[0].String(), "10.67.0.53"},
			{"lease", m.IPAddressLeaseTime(0).String(), "10m0s"},
			{"siaddr", m.ServerIPAddr.String(), "10.67.0.1"},
			{"option 54", m.ServerIdentifier().String(), "10.67.0.1"},
			{"option 66", m.TFTPServerName(), "10.67.0.1"},
			{"option 60", m.ClassIdentifier(), "PXEClient"},
			{"option 43", hex.EncodeToString(m.GetOneOption(dhcpv4.OptionVendorSpecificInformation)), hex.EncodeToString(PXEOption43)},
		} {
			if c.got != c.want {
				t.Errorf("%s %s = %q, want %q", m.MessageType(), c.name, c.got, c.want)
			}
		}
	}

	// The kernel's ip=dhcp: same MAC, no option 97 or 60, new xid.
	kernel := f.lease(p.MAC)
	if kernel != ip {
		t.Errorf("kernel got %s, want the bootloader's %s", kernel, ip)
	}
	// The OS's client with a client identifier and hostname, same MAC.
	osDisc := plainDiscover(p.MAC, dhcpv4.WithOption(dhcpv4.OptClientIdentifier([]byte("\xffduid-something"))),
		dhcpv4.WithOption(dhcpv4.OptHostName("node7")))
	offer2, _ := f.s.Handle(osDisc)
	if got := yiaddr(offer2); got != ip {
		t.Errorf("OS client offered %s, want %s", got, ip)
	}
	if offer2.ClassIdentifier() != "" || offer2.GetOneOption(dhcpv4.OptionVendorSpecificInformation) != nil {
		t.Errorf("plain client got PXE options: %v", offer2)
	}

	// Persisted before the ACK.
	var lf leaseFile
	if err := store.ReadJSON(LeasesPath(f.st), &lf); err != nil {
		t.Fatal(err)
	}
	if got, want := len(lf.Leases), 1; got != want {
		t.Fatalf("leases.json has %d leases, want %d", got, want)
	}
	if got, want := lf.Leases[0].IP, ip; got != want {
		t.Errorf("leases.json IP = %s, want %s", got, want)
	}
	if got, want := lf.Leases[0].Node, "77777777"; got != want {
		t.Errorf("leases.json Node = %q, want %q", got, want)
	}

	f.s.FlushNodes()
	rec, err := nodes.Load(f.st, "77777777")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := rec.IP, ip.String(); got != want {
		t.Errorf("record IP = %q, want %q", got, want)
	}

	// A restart reloads the table: same address for the MAC, and the
	// kernel's request is still tied to the node.
	g := newFixture(t, fullConfig, f.st, nil)
	if got := g.lease(p.MAC); got != ip {
		t.Errorf("after restart got %s, want %s", got, ip)
	}
	other := g.lease(net.HardwareAddr{0x52, 0x54, 0, 0, 0, 9})
	if other == ip {
		t.Errorf("second client got the first client's %s", ip)
	}
}

func TestFullReservations(t *testing.T) {
	f := newFixture(t, fullConfig, nil, nil)
	byMAC, _ := net.ParseMAC("dc:a6:32:00:00:aa")
	if got, want := f.lease(byMAC), netip.MustParseAddr("10.67.0.105"); got != want {
		t.Errorf("MAC reservation: got %s, want %s", got, want)
	}
	// Reserved by serial: the bootloader sends the serial, the kernel does
	// not; both get the reservation.
	p := pi(0x08, 0xc0ffee01)
	offer, _ := f.s.Handle(p.Discover(xid1))
	if got, want := yiaddr(offer), netip.MustParseAddr("10.67.0.20"); got != want {
		t.Errorf("serial reservation: got %s, want %s", got, want)
	}
	f.s.Handle(p.Request(xid1, offer))
	if got, want := f.lease(p.MAC), netip.MustParseAddr("10.67.0.20"); got != want {
		t.Errorf("kernel of reserved node: got %s, want %s", got, want)
	}
	// A client asking for a reserved address is refused.
	stranger := net.HardwareAddr{0x52, 0x54, 0, 0, 0, 1}
	nak, _ := f.s.Handle(request(stranger, netip.MustParseAddr("10.67.0.105"), netip.Addr{}))
	if nak == nil || nak.MessageType() != dhcpv4.MessageTypeNak {
		t.Errorf("INIT-REBOOT for a reserved address: got %v, want NAK", nak)
	}
	offer, _ = f.s.Handle(plainDiscover(stranger, dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(net.IPv4(10, 67, 0, 105)))))
	if got := yiaddr(offer); got == netip.MustParseAddr("10.67.0.105") {
		t.Errorf("stranger was offered the reserved %s", got)
	}
}

func TestFullExhaustion(t *testing.T) {
	cfg := `{"Interface": "obd0", "Mode": "full", "ServerIP": "10.67.0.1", "Subnet": "10.67.0.0/24",
		"Range": "10.67.0.100-10.67.0.102", "Nodes": [{"MAC": "dc:a6:32:00:00:aa", "IP": "10.67.0.101"}]}`
	f := newFixture(t, cfg, nil, nil)
	a := f.lease(net.HardwareAddr{0x52, 0x54, 0, 0, 0, 1})
	b := f.lease(net.HardwareAddr{0x52, 0x54, 0, 0, 0, 2})
	if a == b {
		t.Fatalf("two clients share %s", a)
	}
	for _, ip := range []netip.Addr{a, b} {
		if ip == netip.MustParseAddr("10.67.0.101") {
			t.Errorf("reserved 10.67.0.101 leased to a stranger")
		}
	}
	if offer, _ := f.s.Handle(plainDiscover(net.HardwareAddr{0x52, 0x54, 0, 0, 0, 3})); offer != nil {
		t.Errorf("exhausted pool offered %s", yiaddr(offer))
	}
	if got, want := f.s.m.drops.get("pool_exhausted"), 1; got != want {
		t.Errorf("pool_exhausted drops = %d, want %d", got, want)
	}
	// The reservation is still honoured.
	res, _ := net.ParseMAC("dc:a6:32:00:00:aa")
	if got, want := f.lease(res), netip.MustParseAddr("10.67.0.101"); got != want {
		t.Errorf("reserved node got %s, want %s", got, want)
	}
	// Once a lease expires its address goes to the waiting client.
	f.clock.Add(2 * time.Hour)
	if got := f.lease(net.HardwareAddr{0x52, 0x54, 0, 0, 0, 3}); got != a && got != b {
		t.Errorf("after expiry got %s, want %s or %s", got, a, b)
	}
}

func TestFullRequestStates(t *testing.T) {
	f := newFixture(t, fullConfig, nil, nil)
	mac := net.HardwareAddr{0x52, 0x54, 0, 0, 0, 1}
	ip := f.lease(mac)

	// RENEWING: ciaddr set, unicast reply.
	renew, _ := dhcpv4.New(dhcpv4.WithHwAddr(mac), dhcpv4.WithMessageType(dhcpv4.MessageTypeRequest), dhcpv4.WithClientIP(ip.AsSlice()))
	ack, dst := f.s.Handle(renew)
	if ack == nil || ack.MessageType() != dhcpv4.MessageTypeAck {
		t.Fatalf("renew: got %v, want ACK", ack)
	}
	if got, want := dst.String(), ip.String()+":68"; got != want {
		t.Errorf("renew ACK to %s, want %s", got, want)
	}
	// INIT-REBOOT with someone else's address: NAK, broadcast.
	nak, dst := f.s.Handle(request(net.HardwareAddr{0x52, 0x54, 0, 0, 0, 2}, ip, netip.Addr{}))
	if nak == nil || nak.MessageType() != dhcpv4.MessageTypeNak {
		t.Fatalf("taken address: got %v, want NAK", nak)
	}
	if got, want := dst.String(), "255.255.255.255:68"; got != want {
		t.Errorf("NAK to %s, want %s", got, want)
	}
	// Address outside the subnet: NAK.
	if nak, _ := f.s.Handle(request(mac, netip.MustParseAddr("192.168.1.5"), netip.Addr{})); nak == nil || nak.MessageType() != dhcpv4.MessageTypeNak {
		t.Errorf("foreign address: got %v, want NAK", nak)
	}
	// SELECTING another server: silence, and the offer is released.
	mac3 := net.HardwareAddr{0x52, 0x54, 0, 0, 0, 3}
	offer, _ := f.s.Handle(plainDiscover(mac3))
	if reply, _ := f.s.Handle(request(mac3, yiaddr(offer), netip.MustParseAddr("10.67.0.99"))); reply != nil {
		t.Errorf("answered a REQUEST for another server: %v", reply)
	}
	if got, want := f.s.m.drops.get("other_server_selected"), 1; got != want {
		t.Errorf("other_server_selected = %d, want %d", got, want)
	}
	// RELEASE keeps the pairing: the same address comes back.
	rel, _ := dhcpv4.New(dhcpv4.WithHwAddr(mac), dhcpv4.WithMessageType(dhcpv4.MessageTypeRelease), dhcpv4.WithClientIP(ip.AsSlice()),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.IPv4(10, 67, 0, 1))))
	if reply, _ := f.s.Handle(rel); reply != nil {
		t.Errorf("RELEASE answered: %v", reply)
	}
	if got := f.s.Leases()[0].Expiry; !got.Equal(f.clock.Now()) {
		t.Errorf("released lease expires %v, want now", got)
	}
	if got := f.lease(mac); got != ip {
		t.Errorf("after release got %s, want %s", got, ip)
	}
	// DECLINE sets the address aside.
	dec, _ := dhcpv4.New(dhcpv4.WithHwAddr(mac), dhcpv4.WithMessageType(dhcpv4.MessageTypeDecline),
		dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(ip.AsSlice())), dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.IPv4(10, 67, 0, 1))))
	f.s.Handle(dec)
	if got := f.lease(mac); got == ip {
		t.Errorf("declined %s offered again", ip)
	}
	// INFORM: options, no address, unicast to ciaddr.
	inf, _ := dhcpv4.NewInform(net.HardwareAddr{0x52, 0x54, 0, 0, 0, 4}, net.IPv4(10, 67, 0, 200))
	ack, dst = f.s.Handle(inf)
	if ack == nil || ack.MessageType() != dhcpv4.MessageTypeAck {
		t.Fatalf("INFORM: got %v, want ACK", ack)
	}
	if !ack.YourIPAddr.IsUnspecified() || ack.GetOneOption(dhcpv4.OptionIPAddressLeaseTime) != nil {
		t.Errorf("INFORM ACK carries a lease: %v", ack)
	}
	if got, want := dst.String(), "10.67.0.200:68"; got != want {
		t.Errorf("INFORM ACK to %s, want %s", got, want)
	}
}

type fakeSniffer struct {
	sent    []*dhcpv4.DHCPv4
	replies func(d *dhcpv4.DHCPv4) []Observed
	queue   chan Observed
}

func (f *fakeSniffer) SendDiscover(m *dhcpv4.DHCPv4) error {
	f.sent = append(f.sent, m)
	for _, o := range f.replies(m) {
		f.queue <- o
	}
	return nil
}

func (f *fakeSniffer) Recv(ctx context.Context) (Observed, error) {
	select {
	case o := <-f.queue:
		return o, nil
	case <-ctx.Done():
		return Observed{}, ctx.Err()
	}
}

func (f *fakeSniffer) Close() error { return nil }

func offerFrom(d *dhcpv4.DHCPv4, server string) Observed {
	o, _ := dhcpv4.NewReplyFromRequest(d, dhcpv4.WithMessageType(dhcpv4.MessageTypeOffer),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.ParseIP(server))))
	return Observed{From: netip.MustParseAddr(server), Msg: o}
}

func TestProbe(t *testing.T) {
	for _, tc := range []struct {
		name    string
		servers []string
		wantErr bool
	}{
		{"alone", nil, false},
		{"only our own reply", []string{"10.67.0.1"}, false},
		{"dnsmasq on the segment", []string{"10.67.0.1", "10.67.0.254"}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, fullConfig, nil, nil)
			sn := &fakeSniffer{queue: make(chan Observed, 4), replies: func(d *dhcpv4.DHCPv4) []Observed {
				var out []Observed
				for _, s := range tc.servers {
					out = append(out, offerFrom(d, s))
				}
				return out
			}}
			err := f.s.Probe(context.Background(), sn, 100*time.Millisecond)
			if got := errors.Is(err, ErrOtherServer); got != tc.wantErr {
				t.Errorf("Probe() = %v, want ErrOtherServer: %v", err, tc.wantErr)
			}
			if got, want := len(sn.sent), 1; got != want {
				t.Fatalf("sent %d DISCOVERs, want %d", got, want)
			}
			if !sn.sent[0].IsBroadcast() {
				t.Errorf("probe DISCOVER without broadcast flag")
			}
			if tc.wantErr {
				st := f.s.Status()
				if got, want := len(st.ForeignServers), 1; got != want {
					t.Fatalf("status lists %d foreign servers, want %d", got, want)
				}
				if got, want := st.ForeignServers[0].IP, "10.67.0.254"; got != want {
					t.Errorf("foreign server = %s, want %s", got, want)
				}
			}
		})
	}
}

func TestWatchCountsForeignReplies(t *testing.T) {
	f := newFixture(t, fullConfig, nil, nil)
	sn := &fakeSniffer{queue: make(chan Observed, 4)}
	d := plainDiscover(net.HardwareAddr{0x52, 0x54, 0, 0, 0, 1})
	sn.queue <- offerFrom(d, "10.67.0.1")
	sn.queue <- offerFrom(d, "10.67.0.254")
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	f.s.Watch(ctx, sn)
	if got, want := f.s.m.foreign.get("offer"), 1; got != want {
		t.Errorf("foreign offers = %d, want %d", got, want)
	}
}

func TestStatus(t *testing.T) {
	f := newFixture(t, fullConfig, nil, nil)
	f.lease(net.HardwareAddr{0x52, 0x54, 0, 0, 0, 1})
	p := pi(0x09, 0x99999999)
	f.s.Handle(p.Discover(xid1))
	st := f.s.Status()
	if got, want := len(st.Leases), 1; got != want {
		t.Errorf("status leases = %d, want %d", got, want)
	}
	if got, want := len(st.Nodes), 1; got != want {
		t.Fatalf("status nodes = %d, want %d", got, want)
	}
	if got, want := st.Nodes[0].Node, "99999999"; got != want {
		t.Errorf("status node = %q, want %q", got, want)
	}
	if got, want := st.Requests["discover"], 2; got != want {
		t.Errorf("discover requests = %d, want %d", got, want)
	}
	if got, want := st.Replies["offer"], 2; got != want {
		t.Errorf("offers = %d, want %d", got, want)
	}
}

func TestCorruptLeaseFileStopsStart(t *testing.T) {
	st, err := store.Open(t.TempDir(), store.Options{AllowTmpfs: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(LeasesPath(st), []byte("{not json"), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := mustConfig(t, fullConfig)
	_, err = New(Options{Config: cfg, Store: st, Conn: &nullConn{}, ServerIP: cfg.ServerIP})
	if err == nil {
		t.Fatal("New accepted a corrupt leases.json")
	}
}

func TestKnownOnlyFullMode(t *testing.T) {
	cfg := strings.Replace(fullConfig, `"Mode": "full",`, `"Mode": "full", "Enroll": "known-only",`, 1)
	f := newFixture(t, cfg, nil, nil)
	stranger := pi(0x0a, 0x22222222)
	offer, _ := f.s.Handle(stranger.Discover(xid1))
	if offer == nil {
		t.Fatal("unknown Pi got no address in full mode")
	}
	if offer.GetOneOption(dhcpv4.OptionVendorSpecificInformation) != nil || offer.ClassIdentifier() != "" {
		t.Errorf("unknown Pi got boot options under known-only: %v", offer)
	}
	ack, _ := f.s.Handle(stranger.Request(xid1, offer))
	if ack == nil || ack.MessageType() != dhcpv4.MessageTypeAck {
		t.Fatalf("unknown Pi not ACKed: %v", ack)
	}
	f.s.FlushNodes()
	if _, err := nodes.Load(f.st, stranger.SerialHex()); err == nil {
		t.Errorf("unknown node recorded under known-only")
	}
	// The configured node (by serial) still boots.
	known := pi(0x0b, 0xc0ffee01)
	offer, _ = f.s.Handle(known.Discover(xid1))
	if offer == nil || !bytes.Equal(offer.GetOneOption(dhcpv4.OptionVendorSpecificInformation), PXEOption43) {
		t.Errorf("known node got no boot options: %v", offer)
	}
}

// A bootloader whose REQUEST carries neither option 60 nor option 97 still
// gets the boot options in its ACK: the transaction started as netboot.
func TestFullAckKeepsBootOptionsForBareRequest(t *testing.T) {
	f := newFixture(t, fullConfig, nil, nil)
	p := pi(0x0c, 0x0c0c0c0c)
	offer, _ := f.s.Handle(p.Discover(xid1))
	bare := request(p.MAC, yiaddr(offer), f.cfg.ServerIP, dhcpv4.WithTransactionID(xid1))
	ack, _ := f.s.Handle(bare)
	if ack == nil || ack.MessageType() != dhcpv4.MessageTypeAck {
		t.Fatalf("got %v, want ACK", ack)
	}
	if got, want := ack.GetOneOption(dhcpv4.OptionVendorSpecificInformation), PXEOption43; !bytes.Equal(got, want) {
		t.Errorf("ACK option 43 = %x, want %x", got, want)
	}
	// Another transaction from the same MAC (the kernel) is a plain client.
	other := request(p.MAC, yiaddr(offer), f.cfg.ServerIP, dhcpv4.WithTransactionID(dhcpv4.TransactionID{7, 7, 7, 7}))
	ack, _ = f.s.Handle(other)
	if ack == nil || ack.GetOneOption(dhcpv4.OptionVendorSpecificInformation) != nil {
		t.Errorf("kernel's ACK: %v, want an ACK without boot options", ack)
	}
}

func TestIPXEClientGetsBootScript(t *testing.T) {
	userClass := dhcpv4.WithOption(dhcpv4.OptGeneric(dhcpv4.OptionUserClassInformation, []byte("iPXE")))
	// QEMU's iPXE sends its all-zero SMBIOS UUID as option 97.
	zeroUUID := dhcpv4.WithOption(dhcpv4.OptGeneric(dhcpv4.OptionClientMachineIdentifier, make([]byte, 17)))
	pxe := dhcpv4.WithOption(dhcpv4.OptClassIdentifier("PXEClient:Arch:00000:UNDI:002001"))
	mac := net.HardwareAddr{0x52, 0x54, 0x00, 0x12, 0x34, 0x56}
	for _, tt := range []struct {
		name string
		mods []dhcpv4.Modifier
		want string
	}{
		{"ipxe", []dhcpv4.Modifier{pxe, userClass, zeroUUID}, IPXEScript},
		{"plain pxe rom", []dhcpv4.Modifier{pxe}, ""},
	} {
		for _, mode := range []string{proxyConfig, fullConfig} {
			f := newFixture(t, mode, nil, nil)
			offer, _ := f.s.Handle(plainDiscover(mac, tt.mods...))
			if offer == nil {
				t.Fatalf("%s: no offer", tt.name)
			}
			if c := ParseClient(plainDiscover(mac, tt.mods...)); c.NodeKey() != "52-54-00-12-34-56" {
				t.Errorf("%s: node key %q, want the MAC key", tt.name, c.NodeKey())
			}
			if got := offer.BootFileName; got != tt.want {
				t.Errorf("%s: boot file: got %q, want %q", tt.name, got, tt.want)
			}
			if got := string(offer.GetOneOption(dhcpv4.OptionBootfileName)); got != tt.want {
				t.Errorf("%s: option 67: got %q, want %q", tt.name, got, tt.want)
			}
			// The Pi's boot menu would send iPXE into a PXE menu boot.
			if got, want := len(offer.GetOneOption(dhcpv4.OptionVendorSpecificInformation)) > 0, tt.want == ""; got != want {
				t.Errorf("%s: option 43 present: got %v, want %v", tt.name, got, want)
			}
		}
	}
	// A Pi never gets a boot file, even if it were to send a user class.
	f := newFixture(t, proxyConfig, nil, nil)
	d := pi(1, 0xabcd0001).Discover(xid1)
	d.UpdateOption(dhcpv4.OptGeneric(dhcpv4.OptionUserClassInformation, []byte("iPXE")))
	offer, _ := f.s.Handle(d)
	if offer == nil || offer.BootFileName != "" {
		t.Errorf("Pi offer: got %v, want one without boot file", offer)
	}
}

// diskFull plays a full /perm: every lease save fails with ENOSPC while on.
type diskFull struct {
	mu   sync.Mutex
	full bool
}

func (d *diskFull) set(full bool) { d.mu.Lock(); d.full = full; d.mu.Unlock() }

func (d *diskFull) write(path string, v any) error {
	d.mu.Lock()
	full := d.full
	d.mu.Unlock()
	if full {
		return &os.PathError{Op: "write", Path: path, Err: syscall.ENOSPC}
	}
	return store.WriteJSON(path, v)
}

// With the store full, a running node's renewal is still ACKed (its
// binding is already in leases.json), a new client gets no lease, and the
// failure shows in /status and the counters until a save succeeds.
func TestRenewalsACKedWhenLeasesCannotBeSaved(t *testing.T) {
	st, err := store.Open(t.TempDir(), store.Options{AllowTmpfs: true})
	if err != nil {
		t.Fatal(err)
	}
	cfg := mustConfig(t, fullConfig)
	c := newClock()
	disk := &diskFull{}
	s, err := New(Options{Config: cfg, Store: st, Conn: &nullConn{}, ServerIP: cfg.ServerIP, Now: c.Now, WriteLeases: disk.write})
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{t: t, s: s, st: st, cfg: cfg, clock: c}
	old := net.HardwareAddr{0x02, 0, 0, 0, 0, 0x31}
	ip := f.lease(old)

	disk.set(true)
	c.Add(5 * time.Minute)
	renew := request(old, ip, netip.Addr{})
	ack, _ := s.Handle(renew)
	if ack == nil || ack.MessageType() != dhcpv4.MessageTypeAck {
		t.Fatalf("renewal with the disk full: got %v, want an ACK", ack)
	}
	if got, want := yiaddr(ack), ip; got != want {
		t.Errorf("renewed address: got %s, want %s", got, want)
	}
	newcomer := net.HardwareAddr{0x02, 0, 0, 0, 0, 0x32}
	offer, _ := s.Handle(plainDiscover(newcomer))
	if offer == nil {
		t.Fatal("no OFFER for a new client")
	}
	if reply, _ := s.Handle(request(newcomer, yiaddr(offer), cfg.ServerIP)); reply != nil && reply.MessageType() == dhcpv4.MessageTypeAck {
		t.Errorf("new lease ACKed although it could not be saved")
	}
	stat := s.Status()
	if !strings.Contains(stat.LeaseSaveError, "no space left") {
		t.Errorf("Status.LeaseSaveError: got %q, want the ENOSPC error", stat.LeaseSaveError)
	}
	if got, want := s.m.unsaved.get("renewal"), 1; got != want {
		t.Errorf("unsaved renewal ACKs: got %d, want %d", got, want)
	}
	if got, want := s.m.drops.get("store_error"), 1; got != want {
		t.Errorf("store_error drops: got %d, want %d", got, want)
	}

	// Space again: the next renewal saves, and the error clears.
	disk.set(false)
	if ack, _ := s.Handle(request(old, ip, netip.Addr{})); ack == nil || ack.MessageType() != dhcpv4.MessageTypeAck {
		t.Fatalf("renewal after space came back: %v", ack)
	}
	if got := s.Status().LeaseSaveError; got != "" {
		t.Errorf("LeaseSaveError after a good save: %q", got)
	}
	var lf leaseFile
	if err := store.ReadJSON(LeasesPath(st), &lf); err != nil {
		t.Fatal(err)
	}
	found := false
	for _, l := range lf.Leases {
		if l.MAC == old.String() {
			found = true
			if got, want := l.Expiry, c.Now().Add(cfg.Lease); !got.Equal(want) {
				t.Errorf("renewed expiry on disk: got %v, want %v", got, want)
			}
		}
	}
	if !found {
		t.Errorf("lease of %s missing from leases.json: %+v", old, lf.Leases)
	}
}
