package piemu

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/mdlayher/packet"
	"golang.org/x/sys/unix"

	"github.com/ociboot/ociboot/appliance/rawip"
)

// VendorClass is option 60 of a Pi 4 bootloader DISCOVER.
const VendorClass = "PXEClient:Arch:00000:UNDI:002001"

// BoardRevision is a Pi 4B 4 GB rev 1.1, the revision code the emulator
// reports unless told otherwise.
const BoardRevision = 0xc03111

// BootMenuText is what the bootloader looks for in option 43.
const BootMenuText = "Raspberry Pi Boot"

// requested is option 55 of the Pi 4 bootloader, in its order.
var requested = []dhcpv4.OptionCode{
	dhcpv4.OptionSubnetMask, dhcpv4.OptionRouter, dhcpv4.OptionVendorSpecificInformation,
	dhcpv4.OptionClassIdentifier, dhcpv4.OptionTFTPServerName, dhcpv4.OptionBootfileName,
	dhcpv4.GenericOptionCode(128), dhcpv4.GenericOptionCode(129), dhcpv4.GenericOptionCode(130),
	dhcpv4.GenericOptionCode(131), dhcpv4.GenericOptionCode(132), dhcpv4.GenericOptionCode(133),
	dhcpv4.GenericOptionCode(134), dhcpv4.GenericOptionCode(135),
}

// Pi describes the emulated board.
type Pi struct {
	MAC           net.HardwareAddr
	Serial        uint32 // low 32 bits of the serial: the TFTP prefix
	BoardRevision uint32 // default BoardRevision
	Model         string // "RPi4" (default) or "RPi5"
}

// GUID is option 97 as the bootloader builds it: 0x00, then the FourCC and
// the board revision as little-endian words, the low 4 MAC bytes in wire
// order, and the serial little-endian.
func (p Pi) GUID() []byte {
	model, rev := p.Model, p.BoardRevision
	if model == "" {
		model = "RPi4"
	}
	if rev == 0 {
		rev = BoardRevision
	}
	b := make([]byte, 17)
	copy(b[1:5], model)
	binary.LittleEndian.PutUint32(b[5:9], rev)
	copy(b[9:13], p.MAC[len(p.MAC)-4:])
	binary.LittleEndian.PutUint32(b[13:17], p.Serial)
	return b
}

// SerialHex is the serial as the bootloader prints it in TFTP paths.
func (p Pi) SerialHex() string { return fmt.Sprintf("%08x", p.Serial) }

// Discover is the bootloader's DISCOVER.
func (p Pi) Discover(xid dhcpv4.TransactionID) *dhcpv4.DHCPv4 {
	d, _ := dhcpv4.New(
		dhcpv4.WithTransactionID(xid),
		dhcpv4.WithHwAddr(p.MAC),
		dhcpv4.WithBroadcast(false),
		dhcpv4.WithMessageType(dhcpv4.MessageTypeDiscover),
		dhcpv4.WithOption(dhcpv4.OptParameterRequestList(requested...)),
		dhcpv4.WithGeneric(dhcpv4.OptionClientSystemArchitectureType, []byte{0, 0}),
		dhcpv4.WithGeneric(dhcpv4.OptionClientNetworkInterfaceIdentifier, []byte{1, 2, 1}),
		dhcpv4.WithGeneric(dhcpv4.OptionClientMachineIdentifier, p.GUID()),
		dhcpv4.WithOption(dhcpv4.OptClassIdentifier(VendorClass)),
	)
	return d
}

// Request is the bootloader's REQUEST for the address in offer: same xid,
// option 60 left out.
func (p Pi) Request(xid dhcpv4.TransactionID, offer *dhcpv4.DHCPv4) *dhcpv4.DHCPv4 {
	d, _ := dhcpv4.New(
		dhcpv4.WithTransactionID(xid),
		dhcpv4.WithHwAddr(p.MAC),
		dhcpv4.WithBroadcast(false),
		dhcpv4.WithMessageType(dhcpv4.MessageTypeRequest),
		dhcpv4.WithOption(dhcpv4.OptParameterRequestList(requested...)),
		dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(offer.YourIPAddr)),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(offer.ServerIdentifier())),
		dhcpv4.WithGeneric(dhcpv4.OptionClientSystemArchitectureType, []byte{0, 0}),
		dhcpv4.WithGeneric(dhcpv4.OptionClientNetworkInterfaceIdentifier, []byte{1, 2, 1}),
		dhcpv4.WithGeneric(dhcpv4.OptionClientMachineIdentifier, p.GUID()),
	)
	return d
}

// IsBootOffer reports whether a reply is one the bootloader accepts as a
// netboot offer: option 43 carries the boot menu text.
func IsBootOffer(m *dhcpv4.DHCPv4) bool {
	return bytes.Contains(m.GetOneOption(dhcpv4.OptionVendorSpecificInformation), []byte(BootMenuText))
}

// TFTPServer is where the bootloader would fetch from after m: option 66 if
// it is a dotted address, else option 54.
func TFTPServer(m *dhcpv4.DHCPv4) netip.Addr {
	if a, err := netip.ParseAddr(strings.TrimRight(m.TFTPServerName(), "\x00")); err == nil && a.Is4() {
		return a
	}
	a, _ := netip.AddrFromSlice(m.ServerIdentifier().To4())
	return a
}

// Lease is the outcome of a DHCP exchange.
type Lease struct {
	IP     netip.Addr // yiaddr of the ACK
	Mask   net.IPMask
	Router netip.Addr
	// TFTP is the boot server: option 66, else option 54, of the boot offer.
	TFTP netip.Addr
	// SIAddr, ServerID and TFTPName are the boot offer's siaddr, option 54
	// and option 66 as sent.
	SIAddr   netip.Addr
	ServerID netip.Addr
	TFTPName string
	// Option43, Option60 and Option97 are the boot offer's options.
	Option43 []byte
	Option60 string
	Option97 []byte
	// Offers are all offers received for the DISCOVER, first first.
	Offers []*dhcpv4.DHCPv4
	// BootOffer is the offer with the boot menu; Ack the ACK.
	BootOffer, Ack *dhcpv4.DHCPv4
}

// RetryInterval is the bootloader's DHCP_REQ_TIMEOUT default: how long it
// waits for a usable set of offers (a boot offer and an address, from one
// server or two) before it sends the DISCOVER again.
var RetryInterval = 4 * time.Second

// DHCP runs the bootloader's DHCP exchange on iface for a Pi 4 with mac and
// serial until it holds a boot offer and an ACKed address, or ctx ends.
func DHCP(ctx context.Context, iface string, mac net.HardwareAddr, serial uint32) (Lease, error) {
	return Pi{MAC: mac, Serial: serial}.DHCP(ctx, iface)
}

// DHCP runs the exchange for p on iface.
func (p Pi) DHCP(ctx context.Context, iface string) (Lease, error) {
	c, err := Open(iface)
	if err != nil {
		return Lease{}, err
	}
	defer c.Close()
	var xid dhcpv4.TransactionID
	rand.Read(xid[:])

	var l Lease
	for l.BootOffer == nil || !l.IP.IsValid() {
		if err := ctx.Err(); err != nil {
			return l, fmt.Errorf("piemu: no boot offer and address for %s: %w (offers seen: %d)", p.MAC, err, len(l.Offers))
		}
		l = Lease{}
		if err := c.Send(p.Discover(xid)); err != nil {
			return l, err
		}
		round, cancel := context.WithTimeout(ctx, RetryInterval)
		var addrOffer *dhcpv4.DHCPv4
		for l.BootOffer == nil || addrOffer == nil {
			m, err := c.Recv(round, xid, p.MAC)
			if err != nil {
				break
			}
			if m.MessageType() != dhcpv4.MessageTypeOffer {
				continue
			}
			l.Offers = append(l.Offers, m)
			if l.BootOffer == nil && IsBootOffer(m) {
				l.BootOffer = m
			}
			if addrOffer == nil && m.YourIPAddr != nil && !m.YourIPAddr.IsUnspecified() {
				addrOffer = m
			}
		}
		cancel()
		if l.BootOffer == nil || addrOffer == nil {
			l.BootOffer = nil
			continue
		}
		b := l.BootOffer
		l.TFTP = TFTPServer(b)
		l.SIAddr, _ = netip.AddrFromSlice(b.ServerIPAddr.To4())
		l.ServerID, _ = netip.AddrFromSlice(b.ServerIdentifier().To4())
		l.TFTPName = b.TFTPServerName()
		l.Option43 = b.GetOneOption(dhcpv4.OptionVendorSpecificInformation)
		l.Option60 = b.ClassIdentifier()
		l.Option97 = b.GetOneOption(dhcpv4.OptionClientMachineIdentifier)

		if err := c.Send(p.Request(xid, addrOffer)); err != nil {
			return l, err
		}
		actx, cancel := context.WithTimeout(ctx, RetryInterval)
		for {
			m, err := c.Recv(actx, xid, p.MAC)
			if err != nil {
				break
			}
			sid := m.ServerIdentifier()
			if !sid.Equal(addrOffer.ServerIdentifier()) {
				continue
			}
			if m.MessageType() == dhcpv4.MessageTypeNak {
				break
			}
			if m.MessageType() == dhcpv4.MessageTypeAck {
				l.Ack = m
				l.IP, _ = netip.AddrFromSlice(m.YourIPAddr.To4())
				l.Mask = m.SubnetMask()
				if r := m.Router(); len(r) > 0 {
					l.Router, _ = netip.AddrFromSlice(r[0].To4())
				}
				break
			}
		}
		cancel()
		if !l.IP.IsValid() {
			l.BootOffer = nil
		}
	}
	return l, nil
}

// Conn sends and receives DHCP as an unconfigured client: from 0.0.0.0:68
// to the broadcast address, and every frame to port 68 reaching the
// interface, broadcast or unicast.
type Conn struct {
	pc *packet.Conn
}

// Open brings iface up and opens an AF_PACKET socket on it.
func Open(iface string) (*Conn, error) {
	ifi, err := net.InterfaceByName(iface)
	if err != nil {
		return nil, fmt.Errorf("piemu: %v", err)
	}
	pc, err := packet.Listen(ifi, packet.Datagram, unix.ETH_P_IP, nil)
	if err != nil {
		return nil, fmt.Errorf("piemu: packet socket on %s: %v (needs root)", iface, err)
	}
	return &Conn{pc: pc}, nil
}

// Close releases the socket.
func (c *Conn) Close() error { return c.pc.Close() }

// Send broadcasts m from 0.0.0.0:68.
func (c *Conn) Send(m *dhcpv4.DHCPv4) error {
	b := rawip.UDP(netip.AddrPortFrom(netip.IPv4Unspecified(), 68), netip.AddrPortFrom(netip.AddrFrom4([4]byte{255, 255, 255, 255}), 67), m.ToBytes())
	if _, err := c.pc.WriteTo(b, &packet.Addr{HardwareAddr: net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}}); err != nil {
		return fmt.Errorf("piemu: sending %s: %v", m.MessageType(), err)
	}
	return nil
}

// ErrTimeout is returned by Recv when ctx ends first.
var ErrTimeout = errors.New("piemu: no reply")

// Recv returns the next server reply for xid and mac.
func (c *Conn) Recv(ctx context.Context, xid dhcpv4.TransactionID, mac net.HardwareAddr) (*dhcpv4.DHCPv4, error) {
	if dl, ok := ctx.Deadline(); ok {
		c.pc.SetReadDeadline(dl)
	} else {
		c.pc.SetReadDeadline(time.Time{})
	}
	stop := context.AfterFunc(ctx, func() { c.pc.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	buf := make([]byte, 1600)
	for {
		n, _, err := c.pc.ReadFrom(buf)
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrTimeout, err)
		}
		src, dst, payload, ok := rawip.ParseUDP(buf[:n])
		if !ok || src.Port() != 67 || dst.Port() != 68 {
			continue
		}
		m, err := dhcpv4.FromBytes(payload)
		if err != nil || m.OpCode != dhcpv4.OpcodeBootReply || m.TransactionID != xid || !bytes.Equal(m.ClientHWAddr, mac) {
			continue
		}
		return m, nil
	}
}
