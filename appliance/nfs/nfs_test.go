package nfs

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

func TestMountAndAttributes(t *testing.T) {
	env := newEnv(t)
	c := env.dial(0, 0)
	root, st := c.mnt("/nodes/node1")
	if st != 0 {
		t.Fatalf("MNT: status %d", st)
	}
	data, eof, st := c.read(c.walk(root, "etc", "hostname"), 0, 100)
	if st != 0 || string(data) != "node\n" || !eof {
		t.Fatalf("READ etc/hostname = %q eof=%v status %d, want \"node\\n\" eof", data, eof, st)
	}
	for _, tc := range []struct {
		path       []string
		typ, mode  uint32
		uid, nlink uint32
	}{
		{[]string{"bin", "su"}, typeReg, 0o4755, 0, 1},
		{[]string{"bin", "sg"}, typeReg, 0o2755, 0, 1},
		{[]string{"tmp"}, typeDir, 0o1777, 0, 2},
		{[]string{"home", "u"}, typeDir, 0o700, 1000, 2},
		{[]string{"usr", "a"}, typeReg, 0o644, 0, 2},
		{[]string{"etc", "link"}, typeLnk, 0o777, 0, 1},
	} {
		a, st := c.getattr(c.walk(root, tc.path...))
		if st != 0 {
			t.Fatalf("GETATTR %v: status %d", tc.path, st)
		}
		if a.typ != tc.typ || a.mode != tc.mode || a.uid != tc.uid || a.nlink != tc.nlink {
			t.Errorf("%v: type %d mode %o uid %d nlink %d, want %d %o %d %d", tc.path, a.typ, a.mode, a.uid, a.nlink, tc.typ, tc.mode, tc.uid, tc.nlink)
		}
	}
	a1, _ := c.getattr(c.walk(root, "usr", "a"))
	a2, _ := c.getattr(c.walk(root, "usr", "b"))
	if a1.fileid != a2.fileid {
		t.Errorf("hard links usr/a and usr/b have fileids %d and %d, want one", a1.fileid, a2.fileid)
	}
	// MNT of a directory inside the root, as libnfs does for a file's dir.
	etc, st := c.mnt("/nodes/node1/etc")
	if st != 0 {
		t.Fatalf("MNT /nodes/node1/etc: status %d", st)
	}
	if _, st := c.lookup(etc, "hostname"); st != 0 {
		t.Errorf("LOOKUP hostname in mounted etc: status %d", st)
	}
	for _, p := range []string{"/nodes/node1/../node2", "/nodes/../images", "/etc", "/nodes/unknown", "/nodes/node1/etc/hostname"} {
		if _, st := c.mnt(p); st == 0 {
			t.Errorf("MNT %s succeeded", p)
		}
	}
}

func TestWritesNeverReachTheImage(t *testing.T) {
	env := newEnv(t)
	c := env.dial(0, 0)
	n1, _ := c.mnt("/nodes/node1")
	n2, _ := c.mnt("/nodes/node2")
	host := c.walk(n1, "etc", "hostname")
	before, _ := c.getattr(host)
	if st, _ := c.write(host, 0, []byte("changed\n"), fileSync); st != 0 {
		t.Fatalf("WRITE: status %d", st)
	}
	after, st := c.getattr(host)
	if st != 0 {
		t.Fatalf("GETATTR after the copy-up with the old handle: status %d", st)
	}
	if after.fileid != before.fileid {
		t.Errorf("fileid changed from %d to %d by the copy-up", before.fileid, after.fileid)
	}
	if got, _, _ := c.read(host, 0, 100); string(got) != "changed\n" {
		t.Errorf("node1 reads %q, want %q", got, "changed\n")
	}
	if got, _, _ := c.read(c.walk(n2, "etc", "hostname"), 0, 100); string(got) != "node\n" {
		t.Errorf("node2 reads %q: it sees node1's write", got)
	}
	if got := mustRead(t, filepath.Join(env.image, "etc/hostname")); string(got) != "node\n" {
		t.Errorf("image file is %q after a node's write", got)
	}

	// Hard links of the image stay one file inside the node's view.
	a, b := c.walk(n1, "usr", "a"), c.walk(n1, "usr", "b")
	if st, _ := c.write(a, 0, []byte("LINKED"), unstable); st != 0 {
		t.Fatalf("WRITE usr/a: status %d", st)
	}
	if got, _, _ := c.read(b, 0, 100); string(got) != "LINKED" {
		t.Errorf("usr/b reads %q after a write to usr/a, want LINKED", got)
	}
	if got := mustRead(t, filepath.Join(env.image, "usr/b")); string(got) != "linked" {
		t.Errorf("image usr/b is %q", got)
	}
	if got, _, _ := c.read(c.walk(n2, "usr", "b"), 0, 100); string(got) != "linked" {
		t.Errorf("node2 usr/b reads %q", got)
	}

	// Attribute changes copy up too.
	su := c.walk(n1, "bin", "su")
	if st := c.setattr(su, 0o755, 1234, nil); st != 0 {
		t.Fatalf("SETATTR bin/su: status %d", st)
	}
	if a, _ := c.getattr(su); a.mode != 0o755 || a.uid != 1234 {
		t.Errorf("bin/su is mode %o uid %d, want 755 1234", a.mode, a.uid)
	}
	var ist unix.Stat_t
	unix.Lstat(filepath.Join(env.image, "bin/su"), &ist)
	if ist.Mode&0o7777 != 0o4755 || ist.Uid != 0 {
		t.Errorf("image bin/su is mode %o uid %d after a node's chmod/chown", ist.Mode&0o7777, ist.Uid)
	}

	// LINK makes the file the node's own before adding a name.
	if st := c.link(c.walk(n1, "etc", "hostname"), c.walk(n1, "usr"), "h2"); st != 0 {
		t.Fatalf("LINK: status %d", st)
	}
	if a, _ := c.getattr(c.walk(n1, "usr", "h2")); a.nlink != 2 {
		t.Errorf("nlink after LINK = %d, want 2", a.nlink)
	}
}

func TestSetattrGuard(t *testing.T) {
	env := newEnv(t)
	c := env.dial(0, 0)
	root, _ := c.mnt("/nodes/node1")
	fh := c.walk(root, "etc", "hostname")
	a, _ := c.getattr(fh)
	if st := c.setattr(fh, 0o600, -1, &[2]uint32{a.ctime[0] + 1, 0}); st != errNotSync {
		t.Errorf("SETATTR with a wrong ctime guard: status %d, want NOT_SYNC", st)
	}
	if st := c.setattr(fh, 0o600, -1, &a.ctime); st != 0 {
		t.Errorf("SETATTR with the right guard: status %d", st)
	}
	if got, _ := c.getattr(fh); got.mode != 0o600 {
		t.Errorf("mode %o, want 600", got.mode)
	}
}

func TestHandlesSurviveRestart(t *testing.T) {
	env := newEnv(t)
	c := env.dial(0, 0)
	root, _ := c.mnt("/nodes/node1")
	tmp := c.walk(root, "tmp")
	fh, st := c.create(tmp, "new", 0o644)
	if st != 0 {
		t.Fatalf("CREATE: status %d", st)
	}
	st, verf1 := c.write(fh, 0, []byte("before"), unstable)
	if st != 0 {
		t.Fatal(st)
	}
	if st, cv := c.commit(fh); st != 0 || !bytes.Equal(cv, verf1) {
		t.Errorf("COMMIT: status %d verifier %x, want %x", st, cv, verf1)
	}
	host := c.walk(root, "etc", "hostname")
	c.write(host, 0, []byte("copied"), fileSync) // a copied-up file
	etc := c.walk(root, "etc")

	env.restart()
	c = env.dial(0, 0)
	for name, fh := range map[string][]byte{"root": root, "tmp/new": fh, "etc/hostname": host, "etc": etc} {
		if _, st := c.getattr(fh); st != 0 {
			t.Errorf("GETATTR %s after restart: status %d", name, st)
		}
	}
	if got, _, _ := c.read(fh, 0, 100); string(got) != "before" {
		t.Errorf("tmp/new after restart reads %q", got)
	}
	if got, _, _ := c.read(host, 0, 100); string(got) != "copied" {
		t.Errorf("etc/hostname after restart reads %q", got)
	}
	_, verf2 := c.write(fh, 0, []byte("after"), unstable)
	if bytes.Equal(verf1, verf2) {
		t.Error("write verifier did not change across a restart: clients would not resend unstable writes")
	}
}

func TestBadHandles(t *testing.T) {
	env := newEnv(t)
	env.res.allow = map[string]netip.Addr{"node1": netip.MustParseAddr("127.0.0.1"), "node2": netip.MustParseAddr("10.99.0.2")}
	env.restart()
	c := env.dial(0, 0)
	root, st := c.mnt("/nodes/node1")
	if st != 0 {
		t.Fatalf("MNT: %d", st)
	}
	if _, st := c.mnt("/nodes/node2"); st != mntAcces {
		t.Errorf("MNT of another node's export: status %d, want ACCES", st)
	}
	e2, err := env.srv.export("node2")
	if err != nil {
		t.Fatal(err)
	}
	foreign := env.srv.key.handle(e2, e2.rootID, 0)
	forged := append([]byte(nil), root...)
	forged[20] ^= 1
	wrongGen := env.srv.key.handle(&export{id: exportID("node1"), gen: 12345}, 1, 0)
	unknownID := env.srv.key.handle(env.srv.exports[exportID("node1")], 1<<60, 0)
	for _, tc := range []struct {
		name string
		fh   []byte
		want uint32
	}{
		{"empty", nil, errBadHandle},
		{"short", root[:10], errBadHandle},
		{"bit flipped", forged, errBadHandle},
		{"other node's export", foreign, errStaleFH},
		{"old view generation", wrongGen, errStaleFH},
		{"unknown file", unknownID, errStaleFH},
	} {
		if _, st := c.getattr(tc.fh); st != tc.want {
			t.Errorf("%s: GETATTR status %d, want %d", tc.name, st, tc.want)
		}
	}
}

func TestOwnersAndPermissions(t *testing.T) {
	env := newEnv(t)
	rootc := env.dial(0, 0)
	user := env.dial(1000, 1000, 27)
	other := env.dial(2000, 2000)
	root, _ := rootc.mnt("/nodes/node1")
	tmp := rootc.walk(root, "tmp")

	fh, st := user.create(tmp, "mine", 0o640)
	if st != 0 {
		t.Fatalf("CREATE as 1000: status %d", st)
	}
	if a, _ := user.getattr(fh); a.uid != 1000 || a.gid != 1000 || a.mode != 0o640 {
		t.Errorf("file created by 1000:1000 has %d:%d mode %o", a.uid, a.gid, a.mode)
	}
	if _, _, st := other.read(fh, 0, 10); st != errAcces {
		t.Errorf("READ of a 0640 file by a stranger: status %d, want ACCES", st)
	}
	// Sticky /tmp: strangers cannot remove others' files (EPERM, as
	// the kernel's may_delete says).
	if st := other.nameOp(nfsRemove, tmp, "mine"); st != errPerm {
		t.Errorf("REMOVE of another user's file in sticky /tmp: status %d, want PERM", st)
	}
	if _, st := other.lookup(rootc.walk(root, "home", "u"), "x"); st != errAcces {
		t.Errorf("LOOKUP in another user's 0700 dir: status %d, want ACCES", st)
	}
	if _, st := user.lookup(rootc.walk(root, "home", "u"), "x"); st != errNoEnt {
		t.Errorf("LOOKUP in own dir: status %d, want NOENT", st)
	}
	if st := user.setattr(fh, 0o644, 0, nil); st != errPerm {
		t.Errorf("chown to root by a user: status %d, want PERM", st)
	}
	// setgid directories pass their group on.
	sgdir, st := rootc.mkdir(tmp, "shared", 0o2775)
	if st != 0 {
		t.Fatal(st)
	}
	rootc.raw(progNFS, 3, nfsSetattr, args(func(w *writer) {
		w.opaque(sgdir)
		w.bool(false)
		w.bool(false)
		w.bool(true)
		w.uint32(50)
		w.bool(false)
		w.uint32(0)
		w.uint32(0)
		w.bool(false)
	}))
	// MKDIR's mode does not set S_ISGID (mkdir(2) ignores it, and knfsd
	// does not apply the mode again); a SETATTR does.
	if st := rootc.setattr(sgdir, 0o2775, -1, nil); st != 0 {
		t.Fatalf("SETATTR 02775: status %d", st)
	}
	sub, st := rootc.mkdir(sgdir, "sub", 0o755)
	if st != 0 {
		t.Fatal(st)
	}
	if a, _ := rootc.getattr(sub); a.gid != 50 || a.mode&unix.S_ISGID == 0 {
		t.Errorf("dir made in a setgid dir: gid %d mode %o, want gid 50 and setgid", a.gid, a.mode)
	}

	for _, tc := range []struct {
		c    *client
		path []string
		ask  uint32
		want uint32
	}{
		{rootc, []string{"home", "u"}, 0x3f, accessRead | accessLookup | accessModify | accessExtend | accessDelete},
		{user, []string{"home", "u"}, 0x3f, accessRead | accessLookup | accessModify | accessExtend | accessDelete},
		{other, []string{"home", "u"}, 0x3f, 0},
		{other, []string{"bin", "su"}, 0x3f, accessRead | accessExecute},
		{rootc, []string{"etc", "hostname"}, accessExecute, 0},
	} {
		st, got := tc.c.access(rootc.walk(root, tc.path...), tc.ask)
		if st != 0 || got != tc.want {
			t.Errorf("ACCESS %v as uid %d = %#x (status %d), want %#x", tc.path, tc.c.uid, got, st, tc.want)
		}
	}
}

func TestNoSymlinkFollowing(t *testing.T) {
	env := newEnv(t)
	c := env.dial(0, 0)
	root, _ := c.mnt("/nodes/node1")
	dl := c.walk(root, "dirlink")
	if _, st := c.lookup(dl, "hostname"); st != errNotDir {
		t.Errorf("LOOKUP through a symlink to a dir: status %d, want NOTDIR", st)
	}
	if _, st := c.create(dl, "x", 0o644); st != errNotDir {
		t.Errorf("CREATE through a symlink: status %d, want NOTDIR", st)
	}
	r := c.raw(progNFS, 3, nfsReadlink, args(func(w *writer) { w.opaque(c.walk(root, "etc", "link")) }))
	if st := r.uint32(); st != 0 {
		t.Fatalf("READLINK: %d", st)
	}
	readPostOp(r)
	if got := r.string(4096); got != "/etc/hostname" {
		t.Errorf("READLINK = %q", got)
	}
	// A symlink planted behind nfsd's back inside the view must not let
	// a lookup out: the root's parent holds view.json.
	view := filepath.Join(env.st.Path("nodes", "node1"), "root")
	os.Symlink("..", filepath.Join(view, "up"))
	if _, st := c.lookup(c.walk(root, "up"), "view.json"); st == 0 {
		t.Error("LOOKUP through a symlink out of the view succeeded")
	}
	if _, st := c.lookup(root, ".."); st != 0 {
		t.Errorf("LOOKUP .. of the root: status %d, want the root itself", st)
	}
	for name, want := range map[string]uint32{"a/b": errInval, "..": errExist, copyPrefix + "x": errAcces, strings.Repeat("n", 256): errNameTooLong} {
		if _, st := c.create(root, name, 0o644); st != want {
			t.Errorf("CREATE %q: status %d, want %d", name, st, want)
		}
	}
}

func TestReaddirPlusPages(t *testing.T) {
	env := newEnv(t)
	c := env.dial(0, 0)
	root, _ := c.mnt("/nodes/node1")
	many := c.walk(root, "many")
	ids, handles, calls := c.readdirplus(many, 4096)
	if len(ids) != 302 {
		t.Fatalf("READDIRPLUS listed %d entries, want 300 files plus . and ..", len(ids))
	}
	if calls < 5 {
		t.Errorf("READDIRPLUS with maxcount 4096 took %d calls; paging was not exercised", calls)
	}
	for _, name := range []string{"file-000-with-a-longer-name", "file-299-with-a-longer-name"} {
		a, st := c.getattr(handles[name])
		if st != 0 || a.fileid != ids[name] {
			t.Errorf("%s: handle from READDIRPLUS gives fileid %d (status %d), listed %d", name, a.fileid, st, ids[name])
		}
	}
	// Cookies stay valid across a restart: they are the file system's.
	env.restart()
	c = env.dial(0, 0)
	ids2, _, _ := c.readdirplus(many, 4096)
	if len(ids2) != 302 {
		t.Errorf("after restart READDIRPLUS listed %d", len(ids2))
	}
	r := c.raw(progNFS, 3, nfsReaddirplus, args(func(w *writer) { w.opaque(many); w.uint64(0); w.fixed(make([]byte, 8)); w.uint32(10); w.uint32(40) }))
	if st := r.uint32(); st != errTooSmall {
		t.Errorf("READDIRPLUS with maxcount 40: status %d, want TOOSMALL", st)
	}
}

func TestRenameRemoveKeepHandles(t *testing.T) {
	env := newEnv(t)
	c := env.dial(0, 0)
	root, _ := c.mnt("/nodes/node1")
	tmp, etc := c.walk(root, "tmp"), c.walk(root, "etc")
	fh, _ := c.create(tmp, "a", 0o644)
	c.write(fh, 0, []byte("A"), fileSync)
	if st := c.rename(tmp, "a", etc, "hostname"); st != 0 {
		t.Fatalf("RENAME over an image file: status %d", st)
	}
	if got, _, st := c.read(fh, 0, 10); st != 0 || string(got) != "A" {
		t.Errorf("renamed file through its old handle: %q status %d", got, st)
	}
	if got := mustRead(t, filepath.Join(env.image, "etc/hostname")); string(got) != "node\n" {
		t.Errorf("image etc/hostname is %q after a rename over it", got)
	}
	env.restart() // the handle must resolve by walking the view now
	c = env.dial(0, 0)
	if got, _, st := c.read(fh, 0, 10); st != 0 || string(got) != "A" {
		t.Errorf("after restart: %q status %d", got, st)
	}
	d, _ := c.mkdir(tmp, "d", 0o755)
	f, _ := c.create(d, "f", 0o644)
	if st := c.rename(tmp, "d", root, "moved"); st != 0 {
		t.Fatal(st)
	}
	if _, st := c.getattr(f); st != 0 {
		t.Errorf("file in a renamed directory: status %d", st)
	}
	if st := c.nameOp(nfsRmdir, root, "moved"); st != errNotEmpty {
		t.Errorf("RMDIR of a non-empty dir: status %d, want NOTEMPTY", st)
	}
	if st := c.nameOp(nfsRemove, c.walk(root, "moved"), "f"); st != 0 {
		t.Fatal(st)
	}
	if st := c.nameOp(nfsRmdir, root, "moved"); st != 0 {
		t.Errorf("RMDIR: status %d", st)
	}
	if _, st := c.getattr(f); st != errStaleFH {
		t.Errorf("handle of a removed file: status %d, want STALE", st)
	}
}

func TestResetDropsTheView(t *testing.T) {
	env := newEnv(t)
	c := env.dial(0, 0)
	root, _ := c.mnt("/nodes/node1")
	host := c.walk(root, "etc", "hostname")
	c.write(host, 0, []byte("dirty"), fileSync)
	if err := env.srv.Reset("node1"); err != nil {
		t.Fatal(err)
	}
	if _, st := c.getattr(host); st != errStaleFH {
		t.Errorf("old handle after reset: status %d, want STALE", st)
	}
	root, _ = c.mnt("/nodes/node1")
	if got, _, _ := c.read(c.walk(root, "etc", "hostname"), 0, 100); string(got) != "node\n" {
		t.Errorf("after reset etc/hostname reads %q, want the image's", got)
	}
}

// Calls on one connection are answered concurrently and matched by xid.
func TestPipelinedCalls(t *testing.T) {
	env := newEnv(t)
	c := env.dial(0, 0)
	root, _ := c.mnt("/nodes/node1")
	big, _ := c.create(c.walk(root, "tmp"), "big", 0o644)
	data := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB
	if st, _ := c.write(big, 0, data, unstable); st != 0 {
		t.Fatal(st)
	}
	const n = 32
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			cc := env.dial(0, 0)
			got, _, st := cc.read(big, uint64(i)*4096, 64<<10)
			if st != 0 || !bytes.Equal(got, data[i*4096:i*4096+64<<10]) {
				errs <- fmt.Errorf("read %d: status %d, %d bytes", i, st, len(got))
			}
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	// Many calls in flight on a single connection.
	w := &writer{}
	for i := uint32(0); i < n; i++ {
		m := &writer{b: make([]byte, 4)}
		callHeader(m, 1000+i, progNFS, 3, nfsRead, nil)
		m.opaque(big)
		m.uint64(uint64(i) * 1000)
		m.uint32(1000)
		w.b = append(w.b, frame(m.b)...)
	}
	if _, err := c.conn.Write(w.b); err != nil {
		t.Fatal(err)
	}
	seen := map[uint32]bool{}
	for i := 0; i < n; i++ {
		msg, err := readRecord(c.conn, make([]byte, 4))
		if err != nil {
			t.Fatal(err)
		}
		seen[(&reader{b: msg}).uint32()] = true
	}
	if len(seen) != n {
		t.Errorf("%d distinct replies to %d pipelined calls", len(seen), n)
	}
}

func TestPortmapAndMountOverUDP(t *testing.T) {
	env := newEnv(t)
	env.srv.SetPort(progMount, 3, "udp", 2049)
	env.srv.SetPort(progNFS, 3, "tcp", 2049)
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	go env.srv.ServeUDP(pc)
	conn, err := net.Dial("udp", pc.LocalAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	call := func(prog, vers, proc uint32, a []byte) *reader {
		m := &writer{}
		callHeader(m, 7, prog, vers, proc, nil)
		m.b = append(m.b, a...)
		conn.Write(m.b)
		buf := make([]byte, 9000)
		n, err := conn.Read(buf)
		if err != nil {
			t.Fatal(err)
		}
		r := &reader{b: buf[:n]}
		for i := 0; i < 6; i++ {
			r.uint32()
		}
		return r
	}
	for _, tc := range []struct {
		prog, vers, proto, want uint32
	}{{progMount, 3, 17, 2049}, {progNFS, 3, 6, 2049}, {progNFS, 3, 17, 0}, {progMount, 1, 17, 0}} {
		r := call(progPortmap, 2, pmapGetport, args(func(w *writer) { w.uint32(tc.prog); w.uint32(tc.vers); w.uint32(tc.proto); w.uint32(0) }))
		if got := r.uint32(); got != tc.want {
			t.Errorf("GETPORT %d v%d proto %d = %d, want %d", tc.prog, tc.vers, tc.proto, got, tc.want)
		}
	}
	r := call(progPortmap, 3, pmapGetport, args(func(w *writer) { w.uint32(progNFS); w.uint32(3); w.string("tcp"); w.string(""); w.string("") }))
	if got := r.string(64); got != "127.0.0.1.8.1" {
		t.Errorf("rpcbind GETADDR = %q, want 127.0.0.1.8.1", got)
	}
	r = call(progMount, 3, mountMnt, args(func(w *writer) { w.string("/nodes/node1") }))
	if st := r.uint32(); st != 0 || len(r.opaque(64)) != handleLen {
		t.Errorf("MNT over UDP: status %d", st)
	}
}

// nfsd killed while making a node's root: view.json written, the tree not
// yet renamed into place. The next start makes it again.
func TestCrashWhileMakingRoot(t *testing.T) {
	env := newEnv(t)
	c := env.dial(0, 0)
	if _, st := c.mnt("/nodes/node1"); st != 0 {
		t.Fatal(st)
	}
	env.stop()
	dir := env.st.Path("nodes", "node1")
	tmp, err := os.MkdirTemp(dir, ".root.tmp-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(dir, "root"), filepath.Join(tmp, "half")); err != nil {
		t.Fatal(err)
	}
	env.start()
	c = env.dial(0, 0)
	root, st := c.mnt("/nodes/node1")
	if st != 0 {
		t.Fatalf("MNT after a crash while making the root: status %d", st)
	}
	if got, _, _ := c.read(c.walk(root, "etc", "hostname"), 0, 100); string(got) != "node\n" {
		t.Errorf("etc/hostname reads %q", got)
	}
	if ents, _ := filepath.Glob(filepath.Join(dir, ".root.tmp-*")); len(ents) != 0 {
		t.Errorf("leftovers of the crash: %v", ents)
	}
}

// A damaged view.json never makes nfsd replace the node's root (and its
// changes) with a fresh one; MNT fails and says what to do.
func TestDamagedViewRecordKeepsRoot(t *testing.T) {
	env := newEnv(t)
	c := env.dial(0, 0)
	root, _ := c.mnt("/nodes/node1")
	fh, _ := c.create(c.walk(root, "tmp"), "precious", 0o644)
	c.write(fh, 0, []byte("keep me"), fileSync)
	env.stop()
	dir := env.st.Path("nodes", "node1")
	os.WriteFile(filepath.Join(dir, "view.json"), []byte("{garbage"), 0o644)
	env.start()
	c = env.dial(0, 0)
	if _, st := c.mnt("/nodes/node1"); st == 0 {
		t.Error("MNT succeeded over an unreadable view.json")
	}
	if got, err := os.ReadFile(filepath.Join(dir, "root", "tmp", "precious")); err != nil || string(got) != "keep me" {
		t.Errorf("the node's file after a damaged view.json: %q, %v", got, err)
	}
}
