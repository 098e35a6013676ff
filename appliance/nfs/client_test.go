package nfs

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ociboot/ociboot/appliance/images"
	"github.com/ociboot/ociboot/appliance/nfs/nfscheck"
	"github.com/ociboot/ociboot/appliance/store"
	"github.com/ociboot/ociboot/appliance/testenv"
)

const testDigest = "sha256:89abcdef0123456789abcdef0123456789abcdef0123456789abcdef01234567"

// fakeResolver serves keys listed in images; access per key as in allow
// (nil: everyone).
type fakeResolver struct {
	images map[string]string
	allow  map[string]netip.Addr
}

func (r fakeResolver) Image(key string) (string, error) {
	d, ok := r.images[key]
	if !ok {
		return "", fmt.Errorf("no image for %s", key)
	}
	return d, nil
}

func (r fakeResolver) Allowed(key string, client netip.Addr) bool {
	if r.allow == nil {
		return true
	}
	a, ok := r.allow[key]
	return ok && a == client
}

func (r fakeResolver) Keys() []string { return []string{"node1", "node2"} }

func (r fakeResolver) Clients(key string) []string {
	if a, ok := r.allow[key]; ok {
		return []string{a.String()}
	}
	return nil
}

type testEnv struct {
	t     *testing.T
	st    *store.Store
	image string // image tree
	res   fakeResolver
	srv   *Server
	ln    net.Listener
	// personalize is Options.Personalize for the next start.
	personalize func(key, root string) error
	// limits are the Reserve, Quota and Disks options of every start.
	limits Options
}

func needRoot(t *testing.T) {
	t.Helper()
	testenv.NeedRoot(t, "nfsd sets owners and trusted xattrs")
}

// newEnv makes a store with one image tree:
//
//	etc/hostname "node\n" 0644, bin/su 04755 root, bin/sg 02755,
//	tmp/ 01777, home/u/ owned 1000:1000 0700, usr/a + usr/b one file
//	(hard links), etc/link -> /etc/hostname, dirlink -> /etc, and 300
//	files in many/.
func newEnv(t *testing.T) *testEnv { return newEnvIn(t, t.TempDir(), Options{}) }

// newEnvIn is newEnv with the store in dir and the server's limits
// (Reserve, Quota) from opts.
func newEnvIn(t *testing.T, dir string, opts Options) *testEnv {
	needRoot(t)
	st, err := store.Open(dir, store.Options{AllowTmpfs: true})
	if err != nil {
		t.Fatal(err)
	}
	root, _ := images.Root(st, testDigest)
	for _, d := range []string{"etc", "bin", "tmp", "home/u", "usr", "many"} {
		os.MkdirAll(filepath.Join(root, d), 0o755)
	}
	write := func(name, data string, mode uint32) {
		p := filepath.Join(root, name)
		if err := os.WriteFile(p, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
		unix.Chmod(p, mode)
	}
	write("etc/hostname", "node\n", 0o644)
	write("bin/su", "suid", 0o4755)
	write("bin/sg", "sgid", 0o2755)
	write("usr/a", "linked", 0o644)
	os.Link(filepath.Join(root, "usr/a"), filepath.Join(root, "usr/b"))
	for i := 0; i < 300; i++ {
		write(fmt.Sprintf("many/file-%03d-with-a-longer-name", i), "x", 0o644)
	}
	unix.Chmod(filepath.Join(root, "tmp"), 0o1777)
	os.Chown(filepath.Join(root, "home/u"), 1000, 1000)
	unix.Chmod(filepath.Join(root, "home/u"), 0o700)
	os.Symlink("/etc/hostname", filepath.Join(root, "etc/link"))
	os.Symlink("/etc", filepath.Join(root, "dirlink"))
	env := &testEnv{t: t, st: st, image: root, res: fakeResolver{images: map[string]string{"node1": testDigest, "node2": testDigest}}, limits: opts}
	env.start()
	t.Cleanup(env.stop)
	return env
}

func (e *testEnv) start() {
	srv, err := New(Options{Store: e.st, Resolver: e.res, Personalize: e.personalize, OnReply: checkReply(e.t), Reserve: e.limits.Reserve, Quota: e.limits.Quota, Disks: e.limits.Disks, InsecurePorts: true})
	if err != nil {
		e.t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		e.t.Fatal(err)
	}
	e.srv, e.ln = srv, ln
	go srv.ServeTCP(ln)
}

// checkReply fails t for every malformed reply the server sends, whoever
// the client.
func checkReply(t testing.TB) func(call, reply []byte) {
	return func(call, reply []byte) {
		if err := nfscheck.Reply(call, reply); err != nil {
			t.Error(err)
		}
	}
}

func (e *testEnv) stop() {
	e.ln.Close()
	e.srv.Close()
}

// restart replaces the server with a new one on the same store, as after
// a crash or a head-node reboot.
func (e *testEnv) restart() {
	e.stop()
	e.start()
}

func (e *testEnv) dial(uid, gid uint32, gids ...uint32) *client {
	conn, err := net.Dial("tcp", e.ln.Addr().String())
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { conn.Close() })
	return &client{t: e.t, conn: conn, uid: uid, gid: gid, gids: gids}
}

// client is a minimal ONC RPC client over TCP.
type client struct {
	t        *testing.T
	conn     net.Conn
	uid, gid uint32
	gids     []uint32
	xid      atomic.Uint32
}

// callHeader writes an RPC call header with an AUTH_SYS credential, or
// AUTH_NONE if cr is nil.
func callHeader(w *writer, xid, prog, vers, proc uint32, cr *cred) {
	w.uint32(xid)
	w.uint32(msgCall)
	w.uint32(2)
	w.uint32(prog)
	w.uint32(vers)
	w.uint32(proc)
	if cr == nil {
		w.uint32(authNone)
		w.uint32(0)
	} else {
		cw := &writer{}
		cw.uint32(1) // stamp
		cw.string("test")
		cw.uint32(cr.uid)
		cw.uint32(cr.gid)
		cw.uint32(uint32(len(cr.gids)))
		for _, g := range cr.gids {
			cw.uint32(g)
		}
		w.uint32(authSys)
		w.opaque(cw.b)
	}
	w.uint32(authNone) // verifier
	w.uint32(0)
}

// raw sends one call and returns the reply after the accept status, which
// must be SUCCESS.
func (c *client) raw(prog, vers, proc uint32, args []byte) *reader {
	c.t.Helper()
	w := &writer{b: make([]byte, 4)}
	xid := c.xid.Add(1)
	callHeader(w, xid, prog, vers, proc, &cred{uid: c.uid, gid: c.gid, gids: c.gids})
	w.b = append(w.b, args...)
	if _, err := c.conn.Write(frame(w.b)); err != nil {
		c.t.Fatal(err)
	}
	c.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	msg, err := readRecord(c.conn, make([]byte, 4))
	if err != nil {
		c.t.Fatalf("reading reply: %v", err)
	}
	if err := nfscheck.Reply(w.b[4:], msg); err != nil {
		c.t.Fatal(err)
	}
	r := &reader{b: msg}
	if got := r.uint32(); got != xid {
		c.t.Fatalf("reply xid %d, want %d", got, xid)
	}
	r.uint32()
	if st := r.uint32(); st != replyAccepted {
		c.t.Fatalf("call denied: %d", st)
	}
	r.uint32()
	r.opaque(400)
	if st := r.uint32(); st != acceptSuccess {
		c.t.Fatalf("accept status %d", st)
	}
	return r
}

func args(f func(w *writer)) []byte {
	w := &writer{}
	f(w)
	return w.b
}

func (c *client) mnt(p string) ([]byte, uint32) {
	r := c.raw(progMount, 3, mountMnt, args(func(w *writer) { w.string(p) }))
	st := r.uint32()
	if st != 0 {
		return nil, st
	}
	return r.opaque(64), st
}

// attrs is a decoded fattr3.
type attrs struct {
	typ, mode, nlink, uid, gid uint32
	size                       uint64
	rdevMaj, rdevMin           uint32
	fileid                     uint64
	mtime, ctime               [2]uint32
}

func readAttrs(r *reader) attrs {
	var a attrs
	a.typ, a.mode, a.nlink, a.uid, a.gid = r.uint32(), r.uint32(), r.uint32(), r.uint32(), r.uint32()
	a.size = r.uint64()
	r.uint64()
	a.rdevMaj, a.rdevMin = r.uint32(), r.uint32()
	r.uint64()
	a.fileid = r.uint64()
	r.uint32()
	r.uint32()
	a.mtime = [2]uint32{r.uint32(), r.uint32()}
	a.ctime = [2]uint32{r.uint32(), r.uint32()}
	return a
}

func readPostOp(r *reader) (attrs, bool) {
	if r.bool() {
		return readAttrs(r), true
	}
	return attrs{}, false
}

func skipWcc(r *reader) {
	if r.bool() {
		r.uint64()
		r.uint64()
		r.uint64()
	}
	readPostOp(r)
}

func (c *client) getattr(fh []byte) (attrs, uint32) {
	r := c.raw(progNFS, 3, nfsGetattr, args(func(w *writer) { w.opaque(fh) }))
	st := r.uint32()
	if st != 0 {
		return attrs{}, st
	}
	return readAttrs(r), st
}

func (c *client) lookup(dir []byte, name string) ([]byte, uint32) {
	r := c.raw(progNFS, 3, nfsLookup, args(func(w *writer) { w.opaque(dir); w.string(name) }))
	st := r.uint32()
	if st != 0 {
		return nil, st
	}
	return r.opaque(64), st
}

// walk looks up a slash-separated path from dir and fails the test on error.
func (c *client) walk(dir []byte, names ...string) []byte {
	c.t.Helper()
	for _, n := range names {
		fh, st := c.lookup(dir, n)
		if st != 0 {
			c.t.Fatalf("LOOKUP %s: status %d", n, st)
		}
		dir = fh
	}
	return dir
}

func (c *client) read(fh []byte, off uint64, n uint32) ([]byte, bool, uint32) {
	r := c.raw(progNFS, 3, nfsRead, args(func(w *writer) { w.opaque(fh); w.uint64(off); w.uint32(n) }))
	st := r.uint32()
	readPostOp(r)
	if st != 0 {
		return nil, false, st
	}
	r.uint32()
	eof := r.bool()
	return r.opaque(maxIO), eof, st
}

func (c *client) write(fh []byte, off uint64, data []byte, stable uint32) (uint32, []byte) {
	r := c.raw(progNFS, 3, nfsWrite, args(func(w *writer) {
		w.opaque(fh)
		w.uint64(off)
		w.uint32(uint32(len(data)))
		w.uint32(stable)
		w.opaque(data)
	}))
	st := r.uint32()
	skipWcc(r)
	if st != 0 {
		return st, nil
	}
	r.uint32()
	r.uint32()
	return st, r.fixed(8)
}

// modeOnly writes a sattr3 that sets only the mode.
func modeOnly(w *writer, mode uint32) {
	w.bool(true)
	w.uint32(mode)
	w.bool(false) // uid
	w.bool(false) // gid
	w.bool(false) // size
	w.uint32(0)   // atime: don't change
	w.uint32(0)   // mtime: don't change
}

func (c *client) create(dir []byte, name string, mode uint32) ([]byte, uint32) {
	r := c.raw(progNFS, 3, nfsCreate, args(func(w *writer) {
		w.opaque(dir)
		w.string(name)
		w.uint32(createGuarded)
		modeOnly(w, mode)
	}))
	st := r.uint32()
	if st != 0 {
		return nil, st
	}
	r.bool()
	return r.opaque(64), st
}

func (c *client) mkdir(dir []byte, name string, mode uint32) ([]byte, uint32) {
	r := c.raw(progNFS, 3, nfsMkdir, args(func(w *writer) {
		w.opaque(dir)
		w.string(name)
		modeOnly(w, mode)
	}))
	st := r.uint32()
	if st != 0 {
		return nil, st
	}
	r.bool()
	return r.opaque(64), st
}

// setattr sets the mode (and, if uid >= 0, the owner), with an optional
// ctime guard.
func (c *client) setattr(fh []byte, mode uint32, uid int64, guard *[2]uint32) uint32 {
	r := c.raw(progNFS, 3, nfsSetattr, args(func(w *writer) {
		w.opaque(fh)
		w.bool(true)
		w.uint32(mode)
		w.bool(uid >= 0)
		if uid >= 0 {
			w.uint32(uint32(uid))
		}
		w.bool(false)
		w.bool(false)
		w.uint32(0)
		w.uint32(0)
		w.bool(guard != nil)
		if guard != nil {
			w.uint32(guard[0])
			w.uint32(guard[1])
		}
	}))
	return r.uint32()
}

func (c *client) nameOp(proc uint32, dir []byte, name string) uint32 {
	return c.raw(progNFS, 3, proc, args(func(w *writer) { w.opaque(dir); w.string(name) })).uint32()
}

func (c *client) rename(from []byte, fromName string, to []byte, toName string) uint32 {
	return c.raw(progNFS, 3, nfsRename, args(func(w *writer) {
		w.opaque(from)
		w.string(fromName)
		w.opaque(to)
		w.string(toName)
	})).uint32()
}

func (c *client) link(file, dir []byte, name string) uint32 {
	return c.raw(progNFS, 3, nfsLink, args(func(w *writer) { w.opaque(file); w.opaque(dir); w.string(name) })).uint32()
}

func (c *client) commit(fh []byte) (uint32, []byte) {
	r := c.raw(progNFS, 3, nfsCommit, args(func(w *writer) { w.opaque(fh); w.uint64(0); w.uint32(0) }))
	st := r.uint32()
	skipWcc(r)
	if st != 0 {
		return st, nil
	}
	return st, r.fixed(8)
}

func (c *client) access(fh []byte, bits uint32) (uint32, uint32) {
	r := c.raw(progNFS, 3, nfsAccess, args(func(w *writer) { w.opaque(fh); w.uint32(bits) }))
	st := r.uint32()
	readPostOp(r)
	if st != 0 {
		return st, 0
	}
	return st, r.uint32()
}

// readdirplus lists dir completely with the given maxcount, following
// cookies, and returns name → fileid plus the number of calls it took.
func (c *client) readdirplus(dir []byte, maxcount uint32) (map[string]uint64, map[string][]byte, int) {
	c.t.Helper()
	ids, handles := map[string]uint64{}, map[string][]byte{}
	var cookie uint64
	verf := make([]byte, 8)
	calls := 0
	for {
		calls++
		r := c.raw(progNFS, 3, nfsReaddirplus, args(func(w *writer) {
			w.opaque(dir)
			w.uint64(cookie)
			w.fixed(verf)
			w.uint32(maxcount / 2)
			w.uint32(maxcount)
		}))
		if st := r.uint32(); st != 0 {
			c.t.Fatalf("READDIRPLUS: status %d", st)
		}
		readPostOp(r)
		verf = append([]byte(nil), r.fixed(8)...)
		for r.bool() {
			id := r.uint64()
			name := r.string(255)
			cookie = r.uint64()
			readPostOp(r)
			if r.bool() {
				handles[name] = append([]byte(nil), r.opaque(64)...)
			}
			if _, dup := ids[name]; dup {
				c.t.Fatalf("READDIRPLUS returned %q twice", name)
			}
			ids[name] = id
		}
		eof := r.bool()
		if r.err != nil {
			c.t.Fatalf("READDIRPLUS reply: %v", r.err)
		}
		if eof {
			return ids, handles, calls
		}
		if calls > 1000 {
			c.t.Fatal("READDIRPLUS does not end")
		}
	}
}

func mustRead(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

var _ = bytes.Equal
