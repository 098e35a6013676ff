package netconsole

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/ociboot/ociboot/appliance/config"
	"github.com/ociboot/ociboot/appliance/nodes"
	"github.com/ociboot/ociboot/appliance/rawip"
	"github.com/ociboot/ociboot/appliance/store"
	"github.com/ociboot/ociboot/tests/lab"
)

func setup(t *testing.T, netboot string) (*store.Store, *Receiver) {
	t.Helper()
	st, err := store.Open(t.TempDir(), store.Options{AllowTmpfs: true})
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Parse([]byte(`{"Netboot": ` + netboot + `}`))
	if err != nil {
		t.Fatal(err)
	}
	return st, New(Options{Config: cfg, Store: st, FlushEvery: 50 * time.Millisecond})
}

// waitLines polls the store until key's last line is last.
func waitLines(t *testing.T, st *store.Store, r *Receiver, key string, last string) []nodes.ConsoleLine {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		r.Flush()
		lines := nodes.LoadConsole(st, key)
		if len(lines) > 0 && lines[len(lines)-1].Text == last || time.Now().After(deadline) {
			return lines
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestKernelNetconsoleByIP: the kernel's netconsole sends from the node's
// own address; lines are filed under the node recorded with it, the last
// MaxLines kept.
func TestKernelNetconsoleByIP(t *testing.T) {
	st, r := setup(t, `{}`)
	nodes.Save(st, nodes.Record{Serial: "abcd1234", IP: "127.0.0.1"})
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	go r.ServeUDP(conn, true)
	node, err := net.DialUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}, conn.LocalAddr().(*net.UDPAddr))
	if err != nil {
		t.Fatal(err)
	}
	defer node.Close()
	for i := 0; i < MaxLines+50; i++ {
		fmt.Fprintf(node, "[    %d.000000] line %d\n", i, i)
		if i%50 == 0 {
			time.Sleep(time.Millisecond) // loopback drops bursts beyond the socket buffer
		}
	}
	lines := waitLines(t, st, r, "abcd1234", fmt.Sprintf("[    %d.000000] line %d", MaxLines+49, MaxLines+49))
	if got, want := len(lines), MaxLines; got != want {
		t.Fatalf("stored lines: got %d, want %d", got, want)
	}
	if got, want := lines[len(lines)-1].Text, fmt.Sprintf("[    %d.000000] line %d", MaxLines+49, MaxLines+49); got != want {
		t.Errorf("last line: got %q, want %q", got, want)
	}
	if got, want := lines[len(lines)-1].From, node.LocalAddr().String(); got != want {
		t.Errorf("From: got %q, want %q", got, want)
	}
	// A sender that is no node's is counted, not stored.
	r.Handle(nil, netip.MustParseAddrPort("10.9.9.9:6665"), []byte("who am I\n"))
	if st := r.Status(); st.Unknown != 1 || st.LastUnknown != "10.9.9.9:6665" {
		t.Errorf("status: got %+v, want one unknown from 10.9.9.9:6665", st)
	}
}

func TestSplitLines(t *testing.T) {
	long := strings.Repeat("é", MaxLineLen)
	for _, tc := range []struct {
		in   string
		want []string
	}{
		{"a\r\nb\n\n  \nc", []string{"a", "b", "c"}},
		{"tab\there\x1b[0m\x00", []string{"tab here[0m"}},
		{"bad \xff utf8", []string{"bad \uFFFD utf8"}},
		{long, []string{long[:MaxLineLen]}},
	} {
		got := SplitLines([]byte(tc.in))
		if strings.Join(got, "|") != strings.Join(tc.want, "|") {
			t.Errorf("SplitLines(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// TestBootloaderNetconsoleByMAC: the Pi bootloader's NETCONSOLE sends UDP
// broadcasts from a fixed address (169.254.1.1 in the documented example),
// the same for every Pi; the packet socket files them by the sender's MAC
// under the record dhcpd keeps for it (by serial).
func TestBootloaderNetconsoleByMAC(t *testing.T) {
	seg := lab.NewSegment(t)
	head := seg.Attach("head", 1, "")
	pi := seg.Attach("pi", 0, "dc:a6:32:10:20:01")
	lab.Run(t, "ip", "-n", pi, "addr", "add", "169.254.1.1/16", "dev", "eth0")
	lab.Run(t, "ip", "-n", pi, "route", "add", "255.255.255.255", "dev", "eth0")
	st, r := setup(t, `{}`)
	nodes.Save(st, nodes.Record{Serial: "5b154510", MAC: "dc:a6:32:10:20:01", IP: seg.Addr(7)})
	done := make(chan struct{})
	defer close(done)
	lab.InNS(t, head, func() {
		c, err := ListenPacket("eth0")
		if err != nil {
			t.Error(err)
			return
		}
		go func() { <-done; c.Close() }()
		go r.ServePacket(c)
		u, err := net.ListenUDP("udp4", &net.UDPAddr{Port: Port})
		if err != nil {
			t.Error(err)
			return
		}
		go func() { <-done; u.Close() }()
		go r.ServeUDP(u, false)
	})
	lab.InNS(t, pi, func() {
		c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(169, 254, 1, 1), Port: 6665})
		if err != nil {
			t.Error(err)
			return
		}
		defer c.Close()
		if err := setBroadcast(c); err != nil {
			t.Error(err)
			return
		}
		for _, l := range []string{"RPi: BOOTLOADER release VERSION:2c4b2a9c", "NET 169.254.1.1 255.255.0.0 gw 0.0.0.0 tftp 10.67.0.1", "TFTP_GET: dc-a6-32-10-20-01 10.67.0.1 5b154510/start4.elf"} {
			if _, err := c.WriteToUDP([]byte(l+"\n"), &net.UDPAddr{IP: net.IPv4bcast, Port: Port}); err != nil {
				t.Error(err)
			}
		}
	})
	lines := waitLines(t, st, r, "5b154510", "TFTP_GET: dc-a6-32-10-20-01 10.67.0.1 5b154510/start4.elf")
	if got, want := len(lines), 3; got != want {
		t.Fatalf("lines of 5b154510: got %d (%+v), want %d; status %+v", got, lines, want, r.Status())
	}
	if got, want := lines[2].Text, "TFTP_GET: dc-a6-32-10-20-01 10.67.0.1 5b154510/start4.elf"; got != want {
		t.Errorf("line 3: got %q, want %q", got, want)
	}
	if got, want := lines[0].From, "169.254.1.1:6665"; got != want {
		t.Errorf("From: got %q, want %q", got, want)
	}
}

// FuzzParse: whatever a packet socket delivers parses or is refused
// without a panic, and what is filed stays within the bounds.
func FuzzParse(f *testing.F) {
	f.Add([]byte("\x45\x00\x00\x21\x00\x00\x40\x00\x40\x11\x00\x00\xa9\xfe\x01\x01\xff\xff\xff\xff\x1a\x09\x1a\x0a\x00\x0d\x00\x00hello"))
	f.Add([]byte("\x4f\x00\x00\x14"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		_, dst, payload, ok := rawip.ParseUDP(b)
		if !ok || dst.Port() != Port {
			return
		}
		for _, l := range SplitLines(payload) {
			if len(l) > MaxLineLen || l == "" || strings.ContainsAny(l, "\n\r\x00") {
				t.Fatalf("line %q", l)
			}
		}
	})
}
