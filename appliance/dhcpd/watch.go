package dhcpd

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sort"
	"strings"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/mdlayher/packet"
	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"

	"github.com/ociboot/ociboot/appliance/rawip"
)

// Observed is a DHCP server reply seen on the segment.
type Observed struct {
	From netip.Addr // IP source of the packet
	Msg  *dhcpv4.DHCPv4
}

// Sniffer sends a client's broadcast DISCOVER and sees the server replies
// (UDP 67 -> 68) on the segment, whoever they are addressed to.
type Sniffer interface {
	SendDiscover(m *dhcpv4.DHCPv4) error
	// Recv blocks until a reply arrives or ctx is done.
	Recv(ctx context.Context) (Observed, error)
	Close() error
}

// ErrOtherServer is returned by Probe when another DHCP server answered.
var ErrOtherServer = errors.New("another DHCP server answers on this segment")

// server returns who sent the reply: option 54, else the packet's source.
func (o Observed) server() netip.Addr {
	if sid := addrFrom(o.Msg.ServerIdentifier()); sid.IsValid() {
		return sid
	}
	return o.From
}

func (s *Server) isOwn(o Observed) bool {
	return o.From == s.serverIP || o.server() == s.serverIP
}

// Probe broadcasts one DISCOVER as a client would and waits for offers from
// servers other than this one. Full mode must not start beside another
// server: clients would take whichever offer comes first and the two lease
// tables would hand out the same addresses.
func (s *Server) Probe(ctx context.Context, sn Sniffer, wait time.Duration) error {
	var xid dhcpv4.TransactionID
	rand.Read(xid[:])
	mac := s.ownMAC
	if len(mac) != 6 {
		// A locally administered address, so no real client is impersonated.
		mac = net.HardwareAddr{0x02, 0, 0, 0, 0, 0}
		rand.Read(mac[2:])
	}
	d, err := dhcpv4.New(
		dhcpv4.WithTransactionID(xid),
		dhcpv4.WithHwAddr(mac),
		dhcpv4.WithMessageType(dhcpv4.MessageTypeDiscover),
		dhcpv4.WithBroadcast(true),
		dhcpv4.WithRequestedOptions(dhcpv4.OptionSubnetMask, dhcpv4.OptionRouter))
	if err != nil {
		return fmt.Errorf("dhcpd: probe: %v", err)
	}
	if err := sn.SendDiscover(d); err != nil {
		return fmt.Errorf("dhcpd: probe: sending DISCOVER on %s: %v", s.cfg.Interface, err)
	}
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	others := map[netip.Addr]bool{}
	for {
		o, err := sn.Recv(ctx)
		if err != nil {
			break
		}
		if o.Msg.TransactionID != xid || s.isOwn(o) {
			continue
		}
		if mt := o.Msg.MessageType(); mt == dhcpv4.MessageTypeOffer || mt == dhcpv4.MessageTypeAck {
			s.noteForeign(o)
			others[o.server()] = true
		}
	}
	if len(others) == 0 {
		return nil
	}
	var list []string
	for a := range others {
		list = append(list, a.String())
	}
	sort.Strings(list)
	return fmt.Errorf("%w: %s offered an address on %s within %v; full mode would hand out conflicting leases. Switch that server off, use \"Mode\": \"proxy\" in Netboot, or set \"ForceDHCP\": true if it only serves other clients",
		ErrOtherServer, strings.Join(list, ", "), s.cfg.Interface, wait)
}

// Watch logs a warning for every other DHCP server that replies on the
// segment, at most once a minute per server, until ctx is done.
func (s *Server) Watch(ctx context.Context, sn Sniffer) {
	for {
		o, err := sn.Recv(ctx)
		if err != nil {
			if ctx.Err() == nil {
				s.log.Warn("watching for other DHCP servers stopped", "err", err)
			}
			return
		}
		if s.isOwn(o) {
			continue
		}
		mt := o.Msg.MessageType()
		if mt != dhcpv4.MessageTypeOffer && mt != dhcpv4.MessageTypeAck {
			continue
		}
		s.noteForeign(o)
	}
}

// maxForeign bounds the other DHCP servers remembered for /status.
const maxForeign = 64

func (s *Server) noteForeign(o Observed) {
	s.m.foreign.WithLabelValues(msgName(o.Msg.MessageType())).Inc()
	srv := o.server()
	now := s.now()
	s.fmu.Lock()
	last, ok := s.foreign[srv]
	if ok || len(s.foreign) < maxForeign {
		s.foreign[srv] = now
	} else {
		// Forged replies from invented addresses: counted, not kept.
		ok, last = true, now
	}
	s.fmu.Unlock()
	if !ok || now.Sub(last) >= time.Minute {
		s.log.Warn("another DHCP server answers on this segment", "server", srv.String(), "type", msgName(o.Msg.MessageType()),
			"client", o.Msg.ClientHWAddr.String(), "yiaddr", o.Msg.YourIPAddr.String(), "mode", s.cfg.Mode)
	}
}

// PacketSniffer is a Sniffer on an AF_PACKET socket, so it sees replies
// addressed to any client without binding port 68 (which a DHCP client on
// the head node may hold).
type PacketSniffer struct {
	conn *packet.Conn
	mac  net.HardwareAddr
}

// ListenSniffer opens a PacketSniffer on the interface. It needs
// CAP_NET_RAW.
func ListenSniffer(iface string) (*PacketSniffer, error) {
	ifi, err := net.InterfaceByName(iface)
	if err != nil {
		return nil, fmt.Errorf("dhcpd: %v", err)
	}
	// Only UDP from port 67 to port 68, unfragmented, reaches userspace:
	// the head node's NFS and TFTP traffic must not be copied to us.
	prog, err := bpf.Assemble([]bpf.Instruction{
		bpf.LoadAbsolute{Off: 9, Size: 1},
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: unix.IPPROTO_UDP, SkipFalse: 8},
		bpf.LoadAbsolute{Off: 6, Size: 2},
		bpf.JumpIf{Cond: bpf.JumpBitsSet, Val: 0x1fff, SkipTrue: 6},
		bpf.LoadMemShift{Off: 0},
		bpf.LoadIndirect{Off: 0, Size: 2},
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: ServerPort, SkipFalse: 3},
		bpf.LoadIndirect{Off: 2, Size: 2},
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: ClientPort, SkipFalse: 1},
		bpf.RetConstant{Val: 1 << 16},
		bpf.RetConstant{Val: 0},
	})
	if err != nil {
		return nil, fmt.Errorf("dhcpd: assembling packet filter: %v", err)
	}
	c, err := packet.Listen(ifi, packet.Datagram, unix.ETH_P_IP, &packet.Config{Filter: prog})
	if err != nil {
		return nil, fmt.Errorf("dhcpd: watching %s for other DHCP servers: %v (needs CAP_NET_RAW)", iface, err)
	}
	return &PacketSniffer{conn: c, mac: ifi.HardwareAddr}, nil
}

// SendDiscover broadcasts m from 0.0.0.0:68 as a client without an address.
func (p *PacketSniffer) SendDiscover(m *dhcpv4.DHCPv4) error {
	b := rawip.UDP(netip.AddrPortFrom(netip.IPv4Unspecified(), ClientPort), netip.AddrPortFrom(broadcast, ServerPort), m.ToBytes())
	_, err := p.conn.WriteTo(b, &packet.Addr{HardwareAddr: ethernetBroadcast})
	return err
}

var (
	broadcast         = netip.AddrFrom4([4]byte{255, 255, 255, 255})
	ethernetBroadcast = net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
)

// Recv returns the next DHCP reply on the segment.
func (p *PacketSniffer) Recv(ctx context.Context) (Observed, error) {
	p.conn.SetReadDeadline(time.Time{})
	stop := context.AfterFunc(ctx, func() { p.conn.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	buf := make([]byte, 1600)
	for {
		n, _, err := p.conn.ReadFrom(buf)
		if err != nil {
			if ctx.Err() != nil {
				return Observed{}, ctx.Err()
			}
			return Observed{}, err
		}
		from, _, payload, ok := rawip.ParseUDP(buf[:n])
		if !ok {
			continue
		}
		m, err := dhcpv4.FromBytes(payload)
		if err != nil || m.OpCode != dhcpv4.OpcodeBootReply {
			continue
		}
		return Observed{From: from.Addr(), Msg: m}, nil
	}
}

// Close releases the socket.
func (p *PacketSniffer) Close() error { return p.conn.Close() }
