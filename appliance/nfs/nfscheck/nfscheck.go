// Package nfscheck decodes the replies of an NFSv3 server strictly: the
// ONC RPC reply header (RFC 5531), NFSv3 and MOUNT v3 results (RFC 1813)
// and portmap/rpcbind results (RFC 1833). Every union arm, every length
// and every enum is checked, padding must be zero and nothing may be left
// over. It is written from the RFCs for tests, apart from the server's
// own encoder, so that a mistake in the encoder does not repeat itself
// in the check.
package nfscheck

import (
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"strings"
)

// Program numbers (RFC 1833 §3, RFC 1813 §1.2, Appendix I).
const (
	progPortmap = 100000
	progNFS     = 100003
	progMount   = 100005
)

// RPC reply header values (RFC 5531 §9).
var (
	acceptStat = map[uint32]string{0: "SUCCESS", 1: "PROG_UNAVAIL", 2: "PROG_MISMATCH", 3: "PROC_UNAVAIL", 4: "GARBAGE_ARGS", 5: "SYSTEM_ERR"}
	rejectStat = map[uint32]string{0: "RPC_MISMATCH", 1: "AUTH_ERROR"}
	authStat   = map[uint32]string{0: "AUTH_OK", 1: "AUTH_BADCRED", 2: "AUTH_REJECTEDCRED", 3: "AUTH_BADVERF",
		4: "AUTH_REJECTEDVERF", 5: "AUTH_TOOWEAK", 6: "AUTH_INVALIDRESP", 7: "AUTH_FAILED",
		13: "RPCSEC_GSS_CREDPROBLEM", 14: "RPCSEC_GSS_CTXPROBLEM"}
	replyStat = map[uint32]string{0: "MSG_ACCEPTED", 1: "MSG_DENIED"}
)

const maxAuthBytes = 400 // opaque_auth body

// CallHeadLen is how much of a call Reply needs: xid, message type, RPC
// version, program, version and procedure.
const CallHeadLen = 24

// Error is a malformed reply.
type Error struct {
	Proc   string // e.g. "NFSv3 CREATE", "MOUNTv3 MNT", "rpcbind v4 GETADDR"
	Status string // the RPC status and, for SUCCESS, the procedure's own
	Offset int    // where in Reply decoding stopped
	Reason string
	Reply  []byte
}

func (e *Error) Error() string {
	return fmt.Sprintf("malformed reply to %s (%s): at byte %d of %d: %s\n%s", e.Proc, e.Status, e.Offset, len(e.Reply), e.Reason, dump(e.Reply, e.Offset))
}

// dump shows the bytes of a reply, a long one around off.
func dump(b []byte, off int) string {
	if len(b) <= 1024 {
		return hex.Dump(b)
	}
	lo, hi := max(off-256, 256), min(off+256, len(b))
	var s strings.Builder
	s.WriteString(hex.Dump(b[:256]))
	fmt.Fprintf(&s, "... (bytes %d to %d)\n", lo, hi)
	s.WriteString(hex.Dump(b[lo:hi]))
	return s.String()
}

// ProcName names procedure proc of program prog, version vers.
func ProcName(prog, vers, proc uint32) string {
	pick := func(names []string) string {
		if proc < uint32(len(names)) {
			return names[proc]
		}
		return fmt.Sprintf("procedure %d", proc)
	}
	switch prog {
	case progNFS:
		return fmt.Sprintf("NFSv%d %s", vers, pick(nfs3Procs))
	case progMount:
		return fmt.Sprintf("MOUNTv%d %s", vers, pick(mount3Procs))
	case progPortmap:
		if vers == 2 {
			return "portmap v2 " + pick(pmap2Procs)
		}
		return fmt.Sprintf("rpcbind v%d %s", vers, pick(rpcbProcs))
	}
	return fmt.Sprintf("program %d v%d procedure %d", prog, vers, proc)
}

// Reply checks reply, one RPC message without its TCP record mark, as the
// answer to call, of which at least the first CallHeadLen bytes are
// needed to decode a successful reply. It returns *Error for a malformed
// reply.
func Reply(call, reply []byte) error {
	var xid, prog, vers, proc uint32
	head := len(call) >= CallHeadLen
	if len(call) >= 4 {
		xid = binary.BigEndian.Uint32(call)
	}
	if head {
		prog, vers, proc = binary.BigEndian.Uint32(call[12:]), binary.BigEndian.Uint32(call[16:]), binary.BigEndian.Uint32(call[20:])
		if binary.BigEndian.Uint32(call[4:]) != 0 || binary.BigEndian.Uint32(call[8:]) != 2 {
			head = false // not a version 2 call: no results to expect
		}
	}
	name := "a call too short to name a procedure"
	if head {
		name = ProcName(prog, vers, proc)
	}
	d := &dec{b: reply}
	status := ""
	fail := func() error {
		return &Error{Proc: name, Status: status, Offset: d.err.off, Reason: d.err.reason, Reply: reply}
	}
	if got := d.u32("xid"); d.ok() && (len(call) < 4 || got != xid) {
		d.off = 0
		d.failf("xid %#x does not match the call's %#x", got, xid)
	}
	at := d.off
	if mt := d.u32("msg_type"); d.ok() && mt != 1 {
		d.off = at
		d.failf("msg_type %d, want REPLY (1)", mt)
	}
	rs := d.enum("reply_stat", replyStat)
	if !d.ok() {
		return fail()
	}
	if rs == 1 { // MSG_DENIED
		rj := d.enum("reject_stat", rejectStat)
		status = "MSG_DENIED " + rejectStat[rj]
		switch {
		case !d.ok():
		case rj == 0:
			d.mismatch()
		default:
			as := d.enum("auth_stat", authStat)
			status += " " + authStat[as]
			if as == 0 && d.ok() {
				d.failf("AUTH_ERROR with AUTH_OK")
			}
		}
		d.end()
		if !d.ok() {
			return fail()
		}
		return nil
	}
	d.u32("verf.flavor")
	d.opaque("verf.body", maxAuthBytes)
	as := d.enum("accept_stat", acceptStat)
	status = acceptStat[as]
	if !d.ok() {
		return fail()
	}
	switch as {
	case 0:
		if !head {
			d.failf("SUCCESS for %s", name)
			return fail()
		}
		var s string
		switch {
		case prog == progNFS && vers == 3 && proc < uint32(len(nfs3Procs)):
			s = d.nfs3(proc)
		case prog == progMount && vers == 3 && proc < uint32(len(mount3Procs)):
			s = d.mount3(proc)
		case prog == progPortmap && vers == 2 && proc < uint32(len(pmap2Procs)):
			d.pmap2(proc)
		case prog == progPortmap && vers == 3 && proc <= 8, prog == progPortmap && vers == 4 && proc < uint32(len(rpcbProcs)):
			d.rpcb(vers, proc)
		default:
			d.failf("SUCCESS for %s, which RFC 1813 and RFC 1833 do not define (want PROG_UNAVAIL, PROG_MISMATCH or PROC_UNAVAIL)", name)
		}
		if s != "" {
			status += " " + s
		}
	case 2:
		d.mismatch()
	}
	d.end()
	if !d.ok() {
		return fail()
	}
	return nil
}

// mismatch reads a version range, low before high.
func (d *dec) mismatch() {
	lo := d.u32("mismatch_info.low")
	at := d.off
	if hi := d.u32("mismatch_info.high"); d.ok() && hi < lo {
		d.off = at
		d.failf("version range %d to %d is empty", lo, hi)
	}
}
