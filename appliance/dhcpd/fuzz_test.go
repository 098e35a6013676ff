package dhcpd

import (
	"bytes"
	"net"
	"os"
	"testing"

	"github.com/insomniacslk/dhcp/dhcpv4"

	"github.com/ociboot/ociboot/appliance/store"
)

// fuzzStore puts the store on tmpfs when there is one: full mode fsyncs
// leases.json before every ACK.
func fuzzStore(t testing.TB) *store.Store {
	dir := t.TempDir()
	if d, err := os.MkdirTemp("/dev/shm", "obd-fuzz-"); err == nil {
		dir = d
		t.Cleanup(func() { os.RemoveAll(d) })
	}
	st, err := store.Open(dir, store.Options{AllowTmpfs: true})
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// FuzzHandler feeds arbitrary datagrams to a proxy and a full-mode server
// and checks the invariants a Pi and the LAN's router rely on.
func FuzzHandler(f *testing.F) {
	p := pi(0x42, 0x5b154510)
	f.Add(p.Discover(xid1).ToBytes())
	f.Add(p.Request(xid1, p.Discover(xid1)).ToBytes())
	f.Add(plainDiscover(net.HardwareAddr{0x52, 0x54, 0, 0, 0, 1}).ToBytes())
	f.Add([]byte{1, 1, 6, 0})

	proxy := newFixture(f, proxyConfig, fuzzStore(f), nil)
	full := newFixture(f, fullConfig, fuzzStore(f), nil)
	peer := &net.UDPAddr{IP: net.IPv4zero, Port: ClientPort}

	f.Fuzz(func(t *testing.T, b []byte) {
		req, reqErr := dhcpv4.FromBytes(b)

		out, dst := proxy.s.HandlePacket(b, peer)
		if out != nil {
			if reqErr != nil {
				t.Fatalf("proxy answered a packet that does not parse: %v", reqErr)
			}
			reply := checkReply(t, out, dst)
			if got, want := reply.MessageType(), dhcpv4.MessageTypeOffer; got != want {
				t.Fatalf("proxy sent %v, want only %v", got, want)
			}
			if req.MessageType() != dhcpv4.MessageTypeDiscover {
				t.Fatalf("proxy answered a %v", req.MessageType())
			}
			if !reply.YourIPAddr.IsUnspecified() {
				t.Fatalf("proxy offered address %v", reply.YourIPAddr)
			}
			if !bytes.Equal(reply.GetOneOption(dhcpv4.OptionVendorSpecificInformation), PXEOption43) {
				t.Fatalf("proxy offer without the Pi boot menu")
			}
		}

		out, dst = full.s.HandlePacket(b, peer)
		if out != nil {
			reply := checkReply(t, out, dst)
			yi := addrFrom(reply.YourIPAddr)
			switch reply.MessageType() {
			case dhcpv4.MessageTypeOffer, dhcpv4.MessageTypeAck:
				if yi.IsValid() && !full.cfg.Subnet.Contains(yi) {
					t.Fatalf("leased %v outside %v", yi, full.cfg.Subnet)
				}
				if yi.IsValid() && !full.cfg.InRange(yi) {
					if _, ok := full.s.pool.reserved[yi]; !ok {
						t.Fatalf("leased %v: neither in the range nor reserved", yi)
					}
				}
			case dhcpv4.MessageTypeNak:
				if yi.IsValid() {
					t.Fatalf("NAK with yiaddr %v", yi)
				}
			default:
				t.Fatalf("full mode sent %v", reply.MessageType())
			}
		}
	})
}

func checkReply(t *testing.T, out []byte, dst *net.UDPAddr) *dhcpv4.DHCPv4 {
	t.Helper()
	if dst == nil {
		t.Fatal("reply without destination")
	}
	if dst.Port != ClientPort && dst.Port != ServerPort {
		t.Fatalf("reply to port %d", dst.Port)
	}
	reply, err := dhcpv4.FromBytes(out)
	if err != nil {
		t.Fatalf("own reply does not parse: %v", err)
	}
	if reply.OpCode != dhcpv4.OpcodeBootReply {
		t.Fatalf("reply with op %v", reply.OpCode)
	}
	if len(out) > 576 {
		t.Fatalf("reply of %d bytes exceeds the 576 every client must accept", len(out))
	}
	return reply
}
