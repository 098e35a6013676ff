package nfs

import (
	"fmt"
	"net"
	"net/netip"
	"sort"
)

// The portmapper answers portmap v2 and rpcbind v3/v4 (GETADDR, DUMP) for
// the programs this server runs. Registrations from others are refused:
// nfsd owns port 111 on the head node only for the NFS clients of its
// nodes.

// pmapSet answers portmap v2 SET and UNSET (a mapping) with FALSE.
func (s *Server) pmapSet(c *call, w *writer) bool {
	for i := 0; i < 4; i++ { // prog, vers, prot, port
		c.args.uint32()
	}
	if c.args.err != nil {
		return false
	}
	w.bool(false)
	return true
}

// rpcbSet answers rpcbind SET and UNSET (an rpcb) with FALSE.
func (s *Server) rpcbSet(c *call, w *writer) bool {
	c.args.uint32() // prog
	c.args.uint32() // vers
	c.args.string(64)
	c.args.string(128)
	c.args.string(128)
	if c.args.err != nil {
		return false
	}
	w.bool(false)
	return true
}

func (s *Server) getport(c *call, w *writer) bool {
	prog, vers, proto := c.args.uint32(), c.args.uint32(), c.args.uint32()
	c.args.uint32()
	if c.args.err != nil {
		return false
	}
	s.mu.Lock()
	w.uint32(s.ports[portKey{prog, vers, proto}])
	s.mu.Unlock()
	return true
}

func (s *Server) pmapDump(c *call, w *writer) bool {
	for _, m := range s.mappings() {
		w.bool(true)
		w.uint32(m.prog)
		w.uint32(m.vers)
		w.uint32(m.proto)
		w.uint32(m.port)
	}
	w.bool(false)
	return true
}

func (s *Server) getaddr(c *call, w *writer) bool {
	prog, vers := c.args.uint32(), c.args.uint32()
	netid := c.args.string(64)
	c.args.string(128)
	c.args.string(128)
	if c.args.err != nil {
		return false
	}
	proto := map[string]uint32{"tcp": 6, "udp": 17}[netid]
	s.mu.Lock()
	port := s.ports[portKey{prog, vers, proto}]
	s.mu.Unlock()
	if port == 0 || proto == 0 {
		w.string("")
		return true
	}
	w.string(uaddr(localFor(c), port))
	return true
}

// rpcbDump answers rpcbind DUMP (rpcinfo <host>).
func (s *Server) rpcbDump(c *call, w *writer) bool {
	local := localFor(c)
	for _, m := range s.mappings() {
		w.bool(true)
		w.uint32(m.prog)
		w.uint32(m.vers)
		w.string(map[uint32]string{6: "tcp", 17: "udp"}[m.proto])
		w.string(uaddr(local, m.port))
		w.string("superuser")
	}
	w.bool(false)
	return true
}

type mapping struct{ prog, vers, proto, port uint32 }

// mappings lists the registered ports in program, version, protocol order.
func (s *Server) mappings() []mapping {
	s.mu.Lock()
	out := make([]mapping, 0, len(s.ports))
	for k, p := range s.ports {
		out = append(out, mapping{k.prog, k.vers, k.proto, p})
	}
	s.mu.Unlock()
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		return a.prog < b.prog || a.prog == b.prog && (a.vers < b.vers || a.vers == b.vers && a.proto < b.proto)
	})
	return out
}

// localFor is the address the client reached us on. A UDP socket bound to
// all addresses does not know it; the route back to the client does (a UDP
// "connect" sends nothing).
func localFor(c *call) netip.Addr {
	a := c.local.Addr().Unmap()
	if !a.IsUnspecified() {
		return a
	}
	conn, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(c.remote))
	if err != nil {
		return a
	}
	defer conn.Close()
	return conn.LocalAddr().(*net.UDPAddr).AddrPort().Addr().Unmap()
}

// uaddr is an RPC universal address ("h1.h2.h3.h4.p1.p2"); "" for what
// cannot be written as one here (IPv6).
func uaddr(a netip.Addr, port uint32) string {
	if !a.Is4() {
		return ""
	}
	b := a.As4()
	return fmt.Sprintf("%d.%d.%d.%d.%d.%d", b[0], b[1], b[2], b[3], port>>8, port&0xff)
}
