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
	net.PacketConn                  // LocalAddr, Close, deadlines
	pc             *ipv4.PacketConn // nil when conn is not a UDP socket

	mu    sync.Mutex
	peers map[netip.AddrPort]*peerState
	swept time.Time
}

type peerState struct {
	local   netip.Addr // the address the peer's packets reached
	errored bool       // its last packet was an ERROR
	seen    time.Time
}

func newPeerConn(conn net.PacketConn) *peerConn {
	c := &peerConn{PacketConn: conn, peers: map[netip.AddrPort]*peerState{}}
	if uc, ok := conn.(*net.UDPConn); ok {
		c.pc = ipv4.NewPacketConn(uc)
		c.pc.SetControlMessage(ipv4.FlagDst|ipv4.FlagInterface, true)
	}
	return c
}

// ReadFrom reads one packet and notes who sent it to which address, and
// whether it is an ERROR.
func (c *peerConn) ReadFrom(b []byte) (int, net.Addr, error) {
	var n int
	var cm *ipv4.ControlMessage
	var from net.Addr
	var err error
	if c.pc != nil {
		n, cm, from, err = c.pc.ReadFrom(b)
	} else {
		n, from, err = c.PacketConn.ReadFrom(b)
	}
	if err != nil {
		return n, from, err
	}
	ua, ok := from.(*net.UDPAddr)
	if !ok || n < 2 {
		return n, from, nil
	}
	peer := unmap(ua.AddrPort())
	now := time.Now()
	c.mu.Lock()
	c.sweep(now)
	p := c.peers[peer]
	if p == nil {
		p = &peerState{}
		c.peers[peer] = p
	}
	if cm != nil {
		if a, ok := netip.AddrFromSlice(cm.Dst); ok && !a.Unmap().IsMulticast() && a.Unmap() != netip.AddrFrom4([4]byte{255, 255, 255, 255}) {
			p.local = a.Unmap()
		}
	}
	p.errored = b[0] == 0 && b[1] == 5
	p.seen = now
	c.mu.Unlock()
	return n, from, nil
}

// WriteTo sends b to addr from the address addr's packets reached, and
// drops an ERROR for a peer whose last packet was an ERROR.
func (c *peerConn) WriteTo(b []byte, addr net.Addr) (int, error) {
	var cm *ipv4.ControlMessage
	if ua, ok := addr.(*net.UDPAddr); ok {
		c.mu.Lock()
		p := c.peers[unmap(ua.AddrPort())]
		var local netip.Addr
		drop := false
		if p != nil {
			local = p.local
			drop = p.errored && len(b) >= 2 && b[0] == 0 && b[1] == 5
		}
		c.mu.Unlock()
		if drop {
			return len(b), nil
		}
		if local.IsValid() {
			cm = &ipv4.ControlMessage{Src: local.AsSlice()}
		}
	}
	if c.pc == nil {
		return c.PacketConn.WriteTo(b, addr)
	}
	return c.pc.WriteTo(b, cm, addr)
}

// local is the address remote's packets reached, if known.
func (c *peerConn) local(remote netip.AddrPort) netip.Addr {
	c.mu.Lock()
	defer c.mu.Unlock()
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
