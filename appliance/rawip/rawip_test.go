package rawip

import (
	"bytes"
	"net/netip"
	"testing"

	"golang.org/x/net/ipv4"
)

var (
	client = netip.MustParseAddrPort("0.0.0.0:68")
	bcast  = netip.MustParseAddrPort("255.255.255.255:67")
)

// TestUDPParsedByXNet: the header UDP writes is what golang.org/x/net/ipv4
// reads, checksum included.
func TestUDPParsedByXNet(t *testing.T) {
	payload := []byte("a DHCP message")
	b := UDP(client, bcast, payload)
	h, err := ipv4.ParseHeader(b)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := h.TotalLen, len(b); got != want {
		t.Errorf("total length: got %d, want %d", got, want)
	}
	if got, want := h.Protocol, 17; got != want {
		t.Errorf("protocol: got %d, want %d", got, want)
	}
	if got, want := h.Dst.String(), "255.255.255.255"; got != want {
		t.Errorf("destination: got %s, want %s", got, want)
	}
	if got := Checksum(b[:20]); got != 0 {
		t.Errorf("checksum over the header with its checksum: got %#04x, want 0", got)
	}
	src, dst, p, ok := ParseUDP(b)
	if !ok {
		t.Fatal("ParseUDP refused UDP's packet")
	}
	if src != client || dst != bcast || !bytes.Equal(p, payload) {
		t.Errorf("ParseUDP: got %v → %v %q, want %v → %v %q", src, dst, p, client, bcast, payload)
	}
}

func TestParseUDP(t *testing.T) {
	good := UDP(client, bcast, []byte("hello"))
	mod := func(f func(b []byte) []byte) []byte { return f(append([]byte(nil), good...)) }
	for _, tc := range []struct {
		name    string
		b       []byte
		ok      bool
		payload string
	}{
		{"good", good, true, "hello"},
		{"ethernet padding", append(append([]byte(nil), good...), 0, 0, 0, 0), true, "hello"},
		{"with options", func() []byte {
			b := append([]byte{0x46}, good[1:20]...)
			b = append(b, 1, 1, 1, 0) // NOP NOP NOP END
			b = append(b, good[20:]...)
			b[3] += 4
			return b
		}(), true, "hello"},
		{"empty", nil, false, ""},
		{"short header", good[:19], false, ""},
		{"IPv6", mod(func(b []byte) []byte { b[0] = 0x65; return b }), false, ""},
		{"TCP", mod(func(b []byte) []byte { b[9] = 6; return b }), false, ""},
		{"header length 4 words", mod(func(b []byte) []byte { b[0] = 0x44; return b }), false, ""},
		{"total length past the end", mod(func(b []byte) []byte { b[3] += 1; return b }), false, ""},
		{"truncated", good[:len(good)-1], false, ""},
		{"fragment", mod(func(b []byte) []byte { b[6] = 0x20; return b }), false, ""},
		{"UDP length too big", mod(func(b []byte) []byte { b[25]++; return b }), false, ""},
		{"UDP length below its header", mod(func(b []byte) []byte { b[24], b[25] = 0, 7; return b }), false, ""},
	} {
		_, _, p, ok := ParseUDP(tc.b)
		if ok != tc.ok || string(p) != tc.payload {
			t.Errorf("%s: got %q, %v; want %q, %v", tc.name, p, ok, tc.payload, tc.ok)
		}
	}
}

// FuzzParseUDP: any bytes from the wire are refused or parsed without a
// panic, and a parsed payload lies inside the packet.
func FuzzParseUDP(f *testing.F) {
	f.Add(UDP(client, bcast, []byte("seed")))
	f.Add([]byte{0x45})
	f.Fuzz(func(t *testing.T, b []byte) {
		src, dst, p, ok := ParseUDP(b)
		if !ok {
			return
		}
		if len(p) > len(b)-28 {
			t.Fatalf("payload of %d bytes from a %d-byte packet", len(p), len(b))
		}
		again := UDP(src, dst, p)
		if _, _, p2, ok := ParseUDP(again); !ok || !bytes.Equal(p, p2) {
			t.Fatalf("reframed packet does not parse back")
		}
	})
}
