package nfs

import (
	"crypto/sha256"
	"net/netip"
	"sync"
	"time"
)

// The duplicate request cache keeps the replies of calls that are not
// safe to run twice (proc.cached: CREATE, MKDIR, SYMLINK, MKNOD, REMOVE,
// RMDIR, RENAME, LINK, SETATTR). A client that lost its connection sends
// its calls again on the next one with the same xid; run again, a REMOVE
// that worked the first time would answer NOENT, a guarded CREATE EXIST.
// The key is what identifies a retransmission and nothing else: the
// client's address (not its port: the new connection may come from
// another), the xid, the procedure and a digest of the arguments (so a
// client that reuses xids after a reboot is not answered from the cache).
// While the first call runs, a copy is dropped unanswered: the client
// sends it again, and by then the reply is there (knfsd's RC_DROPIT).

const (
	drcEntries = 4096            // about a minute of a busy node's changes
	drcTTL     = 2 * time.Minute // longer than the Linux client's retransmission timeout (60 s)
)

type drcKey struct {
	client netip.Addr
	xid    uint32
	proc   uint32
	sum    [16]byte
}

type drcEntry struct {
	reply []byte // nil while the call runs
	at    time.Time
}

type drc struct {
	mu    sync.Mutex
	m     map[drcKey]*drcEntry
	order []drcKey // insertion order, oldest first, for eviction
}

func newDRC() *drc { return &drc{m: map[drcKey]*drcEntry{}} }

func drcKeyOf(c *call) drcKey {
	sum := sha256.Sum256(c.args.b)
	k := drcKey{client: c.remote.Addr().Unmap(), xid: c.xid, proc: c.prog<<8 | c.proc}
	copy(k.sum[:], sum[:])
	return k
}

// start looks k up: a kept reply (a copy, with the record mark's room),
// or busy when the first call is still running, or neither, when the
// caller is to run the call and then finish (or forget) k.
func (d *drc) start(k drcKey, now time.Time) (reply []byte, busy bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if e, ok := d.m[k]; ok && now.Sub(e.at) < drcTTL {
		if e.reply == nil {
			return nil, true
		}
		return append([]byte(nil), e.reply...), false
	}
	for len(d.order) > 0 && (len(d.m) >= drcEntries || now.Sub(d.m[d.order[0]].at) >= drcTTL) {
		old := d.order[0]
		d.order = d.order[1:]
		delete(d.m, old)
	}
	d.m[k] = &drcEntry{at: now}
	d.order = append(d.order, k)
	return nil, false
}

// finish keeps reply (which starts with the record mark's 4 bytes) for k.
func (d *drc) finish(k drcKey, reply []byte) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if e, ok := d.m[k]; ok {
		e.reply = append([]byte(nil), reply...)
	}
}

// forget drops k: the call got no reply to keep.
func (d *drc) forget(k drcKey) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if e, ok := d.m[k]; ok && e.reply == nil {
		delete(d.m, k)
		for i, o := range d.order {
			if o == k {
				d.order = append(d.order[:i], d.order[i+1:]...)
				break
			}
		}
	}
}
