package nfs

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"sync"
)

// ONC RPC (RFC 5531) constants used here.
const (
	msgCall  = 0
	msgReply = 1

	replyAccepted = 0
	replyDenied   = 1

	acceptSuccess      = 0
	acceptProgUnavail  = 1
	acceptProgMismatch = 2
	acceptProcUnavail  = 3
	acceptGarbageArgs  = 4
	acceptSystemErr    = 5

	rejectRPCMismatch = 0
	rejectAuthError   = 1

	authNone = 0
	authSys  = 1

	authBadCred  = 1
	authTooWeak  = 5
	maxAuthBytes = 400
)

// maxRecord bounds one RPC message on TCP: a 1 MiB WRITE plus headers. A
// client that announces more is cut off instead of making us allocate it.
const maxRecord = 1<<20 + 64<<10

// cred is the caller's identity. With AUTH_NONE it is nobody (65534).
type cred struct {
	flavor uint32
	uid    uint32
	gid    uint32
	gids   []uint32
}

// inGroup reports whether the caller is a member of gid.
func (c cred) inGroup(gid uint32) bool {
	if c.gid == gid {
		return true
	}
	for _, g := range c.gids {
		if g == gid {
			return true
		}
	}
	return false
}

// call is one decoded RPC call.
type call struct {
	xid              uint32
	prog, vers, proc uint32
	cred             cred
	args             reader
	remote, local    netip.AddrPort
	proto            string // "tcp" or "udp"
}

// errRPCVersion is a call with an RPC version other than 2.
var errRPCVersion = errors.New("nfs: RPC version is not 2")

// errNotCall is a message that is not a call (e.g. a stray reply); it is
// dropped without an answer.
var errNotCall = errors.New("nfs: not an RPC call")

// parseCall decodes the call header. On errRPCVersion and on errors after
// the xid was read, c.xid is valid so that a rejection can be sent.
func parseCall(msg []byte) (c *call, err error) {
	r := reader{b: msg}
	c = &call{}
	c.xid = r.uint32()
	mtype := r.uint32()
	if r.err != nil {
		return nil, errGarbage
	}
	if mtype != msgCall {
		return nil, errNotCall
	}
	if rpcvers := r.uint32(); rpcvers != 2 {
		if r.err != nil {
			return c, errGarbage
		}
		return c, errRPCVersion
	}
	c.prog, c.vers, c.proc = r.uint32(), r.uint32(), r.uint32()
	flavor := r.uint32()
	body := r.opaque(maxAuthBytes)
	_ = r.uint32() // verifier flavor: we accept any and answer AUTH_NONE
	_ = r.opaque(maxAuthBytes)
	if r.err != nil {
		return c, errGarbage
	}
	c.cred = cred{flavor: flavor, uid: 65534, gid: 65534}
	if flavor == authSys {
		cr, err := parseAuthSys(body)
		if err != nil {
			return c, err
		}
		c.cred = cr
	}
	c.args = r
	return c, nil
}

var errBadCred = errors.New("nfs: malformed AUTH_SYS credential")

func parseAuthSys(body []byte) (cred, error) {
	r := reader{b: body}
	_ = r.uint32()    // stamp
	_ = r.opaque(255) // machine name
	c := cred{flavor: authSys, uid: r.uint32(), gid: r.uint32()}
	n := r.uint32()
	if n > 16 {
		return cred{}, errBadCred
	}
	for i := uint32(0); i < n && r.err == nil; i++ {
		c.gids = append(c.gids, r.uint32())
	}
	if r.err != nil {
		return cred{}, errBadCred
	}
	return c, nil
}

// replyHeader starts an accepted reply with the given status.
func replyHeader(xid, stat uint32) *writer {
	w := &writer{b: make([]byte, 4, 256)} // room for the TCP record mark
	w.uint32(xid)
	w.uint32(msgReply)
	w.uint32(replyAccepted)
	w.uint32(authNone)
	w.uint32(0)
	w.uint32(stat)
	return w
}

func replyMismatch(xid, stat, low, high uint32) []byte {
	w := replyHeader(xid, stat)
	w.uint32(low)
	w.uint32(high)
	return w.b
}

func replyDeniedMsg(xid, reject, detail uint32, extra ...uint32) []byte {
	w := &writer{b: make([]byte, 4, 64)}
	w.uint32(xid)
	w.uint32(msgReply)
	w.uint32(replyDenied)
	w.uint32(reject)
	w.uint32(detail)
	for _, v := range extra {
		w.uint32(v)
	}
	return w.b
}

// recordChunk is how much of a fragment is read (and allocated) at a
// time: the buffer grows with the bytes that arrived, never to the size a
// fragment header announces before its data is there.
const recordChunk = 64 << 10

// readRecord reads one RPC message from a TCP stream (RFC 5531 §11 record
// marking), joining fragments.
func readRecord(r io.Reader, hdr []byte) ([]byte, error) {
	var msg []byte
	for {
		if _, err := io.ReadFull(r, hdr[:4]); err != nil {
			return nil, err
		}
		h := binary.BigEndian.Uint32(hdr[:4])
		last := h&(1<<31) != 0
		n := int(h &^ (1 << 31))
		if len(msg)+n > maxRecord {
			return nil, fmt.Errorf("record of more than %d bytes", maxRecord)
		}
		for n > 0 {
			k := min(n, recordChunk)
			start := len(msg)
			msg = slices.Grow(msg, k)[:start+k]
			if _, err := io.ReadFull(r, msg[start:]); err != nil {
				return nil, err
			}
			n -= k
		}
		if last {
			return msg, nil
		}
	}
}

// Replies are built with four spare bytes in front: TCP fills them with the
// record mark of a single last fragment, UDP sends what follows them.
func frame(reply []byte) []byte {
	binary.BigEndian.PutUint32(reply, uint32(len(reply)-4)|1<<31)
	return reply
}

// Large replies (READ) come from a pool and go back to it once sent, so a
// busy server does not allocate and clear a megabyte per call.
var bigBufs = sync.Pool{New: func() any { b := make([]byte, 0, maxIO+64<<10); return &b }}

const bigBuf = 64 << 10

// grow extends b by n bytes (contents undefined), moving to a pooled
// buffer when it gets large.
func grow(b []byte, n int) []byte {
	if len(b)+n <= cap(b) {
		return b[:len(b)+n]
	}
	if len(b)+n > bigBuf && len(b)+n <= maxIO+64<<10 {
		nb := (*bigBufs.Get().(*[]byte))[:len(b)+n]
		copy(nb, b)
		return nb
	}
	nb := make([]byte, len(b)+n, len(b)+n+256)
	copy(nb, b)
	return nb
}

// release returns a sent reply's buffer to the pool.
func release(b []byte) {
	if cap(b) == maxIO+64<<10 {
		b = b[:0]
		bigBufs.Put(&b)
	}
}
