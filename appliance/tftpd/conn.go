package tftpd

import (
	"net"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/net/ipv4"
)

// peerConn is the listening socket as pin/tftp sees it. pin/tftp runs in
// single-port mode, so every packet of every transfer passes here, which
// lets tftpd do two things pin/tftp does not:
//
//   - No ERROR goes back to a client whose ERROR ended its transfer. The
//     Pi bootloader answers an OACK with ERROR 0 "early terminate" when it
//     only wanted the size, and closes its port; pin/tftp answers any
//     client ERROR with an ERROR of its own, which RFC 1350 §7 forbids
//     (errors are neither acknowledged nor answered) and which lands on
//     the Pi's closed port.
//   - Replies leave from the address each request arrived on (IP_PKTINFO
//     both ways), and the read handler learns that address for the
//     generated cmdline.txt: in single-port mode pin/tftp only uses the
//     control messages of a bare *net.UDPConn.
type peerConn struct {
	net.PacketConn              // LocalAddr, Close, deadlines
	uc             *net.UDPConn // nil when conn is not a UDP socket (then no IP_PKTINFO)
	oob            []byte       // control messages of the read in progress (pin/tftp reads from one goroutine)

	mu    sync.RWMutex
	peers map[netip.AddrPort]*peerState
	swept time.Time
}

type peerState struct {
	local   netip.Addr // the address the peer's request reached
	src     []byte     // IP_PKTINFO control message sending from local
	errored bool       // it sent an ERROR after its request
	seen    time.Time
}

// TFTP opcodes the wrapper looks at (RFC 1350).
const (
	opRRQ   = 1
	opERROR = 5
)

func newPeerConn(conn net.PacketConn) *peerConn {
	c := &peerConn{PacketConn: conn, peers: map[netip.AddrPort]*peerState{}}
	if uc, ok := conn.(*net.UDPConn); ok {
		c.uc = uc
		ipv4.NewPacketConn(uc).SetControlMessage(ipv4.FlagDst|ipv4.FlagInterface, true)
		c.oob = ipv4.NewControlMessage(ipv4.FlagDst | ipv4.FlagInterface)
	}
	return c
}

// ReadFrom reads one packet and notes who sent it to which address, and
// whether it is an ERROR.
func (c *peerConn) ReadFrom(b []byte) (int, net.Addr, error) {
	if c.uc == nil {
		return c.PacketConn.ReadFrom(b)
	}
	n, oobn, _, ap, err := c.uc.ReadMsgUDPAddrPort(b, c.oob)
	if err != nil {
		return n, nil, err
	}
	from := net.UDPAddrFromAddrPort(ap)
	if n < 2 || b[0] != 0 || b[1] != opRRQ && b[1] != opERROR {
		// ACKs, the bulk of the traffic, change nothing here.
		return n, from, nil
	}
	var cm ipv4.ControlMessage
	cm.Parse(c.oob[:oobn])
	ua := from
	peer := unmap(ua.AddrPort())
	now := time.Now()
	c.mu.Lock()
	c.sweep(now)
	p := c.peers[peer]
	if p == nil {
		p = &peerState{}
		c.peers[peer] = p
	}
	if a, ok := netip.AddrFromSlice(cm.Dst); ok && !a.Unmap().IsMulticast() && a.Unmap() != netip.AddrFrom4([4]byte{255, 255, 255, 255}) && a.Unmap() != p.local {
		p.local = a.Unmap()
		p.src = (&ipv4.ControlMessage{Src: p.local.AsSlice()}).Marshal()
	}
	p.errored = b[1] == opERROR
	p.seen = now
	c.mu.Unlock()
	return n, from, nil
}

// WriteTo sends b to addr from the address addr's packets reached, and
// drops an ERROR for a peer whose last packet was an ERROR.
func (c *peerConn) WriteTo(b []byte, addr net.Addr) (int, error) {
	ua, ok := addr.(*net.UDPAddr)
	if c.uc == nil || !ok {
		return c.PacketConn.WriteTo(b, addr)
	}
	ap := unmap(ua.AddrPort())
	c.mu.RLock()
	p := c.peers[ap]
	var src []byte
	drop := false
	if p != nil {
		src = p.src
		drop = p.errored && len(b) >= 2 && b[0] == 0 && b[1] == opERROR
	}
	c.mu.RUnlock()
	if drop {
		return len(b), nil
	}
	n, _, err := c.uc.WriteMsgUDPAddrPort(b, src, ap)
	return n, err
}

// local is the address remote's packets reached, if known.
func (c *peerConn) local(remote netip.AddrPort) netip.Addr {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if p := c.peers[unmap(remote)]; p != nil {
		return p.local
	}
	return netip.Addr{}
}

// sweep forgets peers silent for longer than any transfer waits (the Pi
// uses a new port for every request). c.mu is held.
func (c *peerConn) sweep(now time.Time) {
	if now.Sub(c.swept) < 30*time.Second {
		return
	}
	c.swept = now
	for k, p := range c.peers {
		if now.Sub(p.seen) > 2*time.Minute {
			delete(c.peers, k)
		}
	}
}

func unmap(a netip.AddrPort) netip.AddrPort { return netip.AddrPortFrom(a.Addr().Unmap(), a.Port()) }
