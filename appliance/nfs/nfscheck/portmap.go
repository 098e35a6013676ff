package nfscheck

import (
	"fmt"
	"strconv"
	"strings"
)

// Portmap v2 and rpcbind v3/v4 (RFC 1833).

var pmap2Procs = []string{"NULL", "SET", "UNSET", "GETPORT", "DUMP", "CALLIT"}

var rpcbProcs = []string{"NULL", "SET", "UNSET", "GETADDR", "DUMP", "CALLIT", "GETTIME",
	"UADDR2TADDR", "TADDR2UADDR", "GETVERSADDR", "INDIRECT", "GETADDRLIST", "GETSTAT"}

func (d *dec) pmap2(proc uint32) {
	switch proc {
	case 1, 2: // SET, UNSET
		d.bool("result")
	case 3: // GETPORT
		at := d.off
		if p := d.u32("port"); d.ok() && p > 65535 {
			d.off = at
			d.failf("port %d is not a port", p)
		}
	case 4: // DUMP
		d.list("pmaplist", func(i int) {
			for _, f := range []string{"prog", "vers", "prot", "port"} {
				d.u32(fmt.Sprintf("pmaplist[%d].%s", i, f))
			}
		})
	case 5: // CALLIT
		d.u32("port")
		d.opaque("res", -1)
	}
}

// uaddr checks a universal address (RFC 5665 §5.2.3.3): empty (not
// registered) or an IPv4/IPv6 address followed by two port octets.
func (d *dec) uaddr(what string) {
	at := d.off
	a := d.str(what, -1)
	if !d.ok() || a == "" {
		return
	}
	i := strings.LastIndexByte(a, '.')
	j := -1
	if i > 0 {
		j = strings.LastIndexByte(a[:i], '.')
	}
	bad := j <= 0
	if !bad {
		for _, p := range []string{a[j+1 : i], a[i+1:]} {
			if n, err := strconv.Atoi(p); err != nil || n < 0 || n > 255 {
				bad = true
			}
		}
	}
	if bad {
		d.off = at
		d.failf("%s %q is not a universal address", what, a)
	}
}

func (d *dec) rpcb(vers, proc uint32) {
	switch proc {
	case 1, 2: // SET, UNSET
		d.bool("result")
	case 3, 9: // GETADDR, GETVERSADDR
		d.uaddr("uaddr")
	case 4: // DUMP
		d.list("rpcblist", func(i int) {
			e := fmt.Sprintf("rpcblist[%d]", i)
			d.u32(e + ".r_prog")
			d.u32(e + ".r_vers")
			d.str(e+".r_netid", -1)
			d.uaddr(e + ".r_addr")
			d.str(e+".r_owner", -1)
		})
	case 5, 10: // CALLIT, INDIRECT
		d.uaddr("addr")
		d.opaque("results", -1)
	case 6: // GETTIME
		d.u32("time")
	case 7: // UADDR2TADDR
		d.u32("netbuf.maxlen")
		d.opaque("netbuf.buf", -1)
	case 8: // TADDR2UADDR
		d.uaddr("uaddr")
	case 11: // GETADDRLIST
		d.list("rpcb_entry_list", func(i int) {
			e := fmt.Sprintf("rpcb_entry_list[%d]", i)
			d.uaddr(e + ".r_maddr")
			d.str(e+".r_nc_netid", -1)
			d.u32(e + ".r_nc_semantics")
			d.str(e+".r_nc_protofmly", -1)
			d.str(e+".r_nc_proto", -1)
		})
	case 12: // GETSTAT: rpcb_stat_byvers, one rpcb_stat per version
		for v := 0; v < 3 && d.ok(); v++ {
			s := fmt.Sprintf("rpcb_stat[%d]", v)
			for p := 0; p < 13; p++ { // RPCBSTAT_HIGHPROC
				d.u32(fmt.Sprintf("%s.info[%d]", s, p))
			}
			d.u32(s + ".setinfo")
			d.u32(s + ".unsetinfo")
			d.list(s+".addrinfo", func(i int) {
				e := fmt.Sprintf("%s.addrinfo[%d]", s, i)
				for _, f := range []string{"prog", "vers", "success", "failure"} {
					d.u32(e + "." + f)
				}
				d.str(e+".netid", -1)
			})
			d.list(s+".rmtinfo", func(i int) {
				e := fmt.Sprintf("%s.rmtinfo[%d]", s, i)
				for _, f := range []string{"prog", "vers", "proc", "success", "failure", "indirect"} {
					d.u32(e + "." + f)
				}
				d.str(e+".netid", -1)
			})
		}
	}
}
