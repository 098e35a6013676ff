package nfs

import (
	"fmt"
	"sort"
)

// portmap answers portmap v2 and the GETADDR call of rpcbind v3/v4 for the
// programs this server runs. Registrations from others are refused: nfsd
// owns port 111 on the head node only for the NFS clients of its nodes.
func (s *Server) portmap(c *call, w *writer) bool {
	switch {
	case c.proc == 0:
	case c.proc == 1 || c.proc == 2: // SET, UNSET
		if c.vers == 2 {
			c.args.uint32()
			c.args.uint32()
			c.args.uint32()
			c.args.uint32()
		} else {
			c.args.uint32()
			c.args.uint32()
			c.args.string(64)
			c.args.string(128)
			c.args.string(128)
		}
		if c.args.err != nil {
			return false
		}
		w.bool(false)
	case c.vers == 2 && c.proc == 3: // GETPORT
		prog, vers, proto := c.args.uint32(), c.args.uint32(), c.args.uint32()
		c.args.uint32()
		if c.args.err != nil {
			return false
		}
		s.mu.Lock()
		w.uint32(s.ports[portKey{prog, vers, proto}])
		s.mu.Unlock()
	case c.vers == 2 && c.proc == 4: // DUMP
		s.mu.Lock()
		keys := make([]portKey, 0, len(s.ports))
		for k := range s.ports {
			keys = append(keys, k)
		}
		sort.Slice(keys, func(i, j int) bool {
			a, b := keys[i], keys[j]
			return a.prog < b.prog || a.prog == b.prog && (a.vers < b.vers || a.vers == b.vers && a.proto < b.proto)
		})
		for _, k := range keys {
			w.bool(true)
			w.uint32(k.prog)
			w.uint32(k.vers)
			w.uint32(k.proto)
			w.uint32(s.ports[k])
		}
		s.mu.Unlock()
		w.bool(false)
	case c.vers >= 3 && c.proc == 3: // GETADDR
		prog, vers := c.args.uint32(), c.args.uint32()
		netid := c.args.string(64)
		c.args.string(128)
		c.args.string(128)
		if c.args.err != nil {
			return false
		}
		var proto uint32
		switch netid {
		case "tcp":
			proto = 6
		case "udp":
			proto = 17
		}
		s.mu.Lock()
		port := s.ports[portKey{prog, vers, proto}]
		s.mu.Unlock()
		a := c.local.Addr().Unmap()
		if port == 0 || proto == 0 || !a.Is4() {
			w.string("")
			break
		}
		b := a.As4()
		w.string(fmt.Sprintf("%d.%d.%d.%d.%d.%d", b[0], b[1], b[2], b[3], port>>8, port&0xff))
	default:
		w.b = nil
	}
	return true
}
