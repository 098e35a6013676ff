package nfs

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ociboot/ociboot/appliance/store"
)

// TestRemovedFilesHandleStaysStale removes a file and makes new ones until
// one gets the removed file's inode number (ext4 hands it out again at
// once): the old handle must be stale, not name the new file.
func TestRemovedFilesHandleStaysStale(t *testing.T) {
	env := newEnv(t)
	c := env.dial(0, 0)
	root, _ := c.mnt("/nodes/node1")
	tmp := c.walk(root, "tmp")
	old, st := c.create(tmp, "victim", 0o644)
	if st != 0 {
		t.Fatal(st)
	}
	a, _ := c.getattr(old)
	if st := c.nameOp(nfsRemove, tmp, "victim"); st != 0 {
		t.Fatal(st)
	}
	// New files take the lowest free inode of their directory's group:
	// filling the holes below the victim's (left by other tests) gets
	// there. They are made on the host, which is faster than over NFS.
	tmpDir := filepath.Join(env.st.Path(store.NodesDir, "node1", viewRoot), "tmp")
	reused := false
	var name string
	for i := 0; i < 50000 && !reused; i++ {
		name = fmt.Sprintf("new-%d", i)
		p := filepath.Join(tmpDir, name)
		f, err := os.Create(p)
		if err != nil {
			t.Fatal(err)
		}
		f.Close()
		var st unix.Stat_t
		unix.Lstat(p, &st)
		reused = st.Ino == a.fileid
	}
	if !reused {
		t.Fatalf("inode %d was not reused by 50000 new files; the file system does not reuse inode numbers (not ext4?)", a.fileid)
	}
	// The client finds the new file, so the server knows where it is.
	if _, st := c.lookup(tmp, name); st != 0 {
		t.Fatalf("LOOKUP %s: status %d", name, st)
	}
	if got, st := c.getattr(old); st != errStaleFH {
		t.Errorf("GETATTR of a removed file's handle after its inode was reused: status %d (fileid %d mode %o), want STALE", st, got.fileid, got.mode)
	}
	if st, _ := c.write(old, 0, []byte("lost"), fileSync); st != errStaleFH {
		t.Errorf("WRITE through a removed file's handle after its inode was reused: status %d, want STALE", st)
	}
}

// TestLongPaths makes a tree deeper than PATH_MAX out of 255-byte names,
// the longest a name may be, and uses it: before and after a restart of
// the server (when handles resolve by a walk of the whole view).
func TestLongPaths(t *testing.T) {
	env := newEnv(t)
	c := env.dial(0, 0)
	root, _ := c.mnt("/nodes/node1")
	dir := root
	total := 0
	for i := 0; total < 6000; i++ {
		name := fmt.Sprintf("%03d", i) + strings.Repeat("d", 252)
		fh, st := c.mkdir(dir, name, 0o755)
		if st != 0 {
			t.Fatalf("MKDIR at depth %d (path %d bytes): status %d", i, total+256, st)
		}
		dir = fh
		total += 256
	}
	name := strings.Repeat("f", 255)
	fh, st := c.create(dir, name, 0o644)
	if st != 0 {
		t.Fatalf("CREATE of a 255-byte name %d bytes deep: status %d", total, st)
	}
	if st, _ := c.write(fh, 0, []byte("deep"), fileSync); st != 0 {
		t.Fatalf("WRITE: status %d", st)
	}
	if _, st := c.create(dir, name+"x", 0o644); st != errNameTooLong {
		t.Errorf("CREATE of a 256-byte name: status %d, want NAMETOOLONG", st)
	}
	env.restart()
	c = env.dial(0, 0)
	got, _, st := c.read(fh, 0, 10)
	if st != 0 || string(got) != "deep" {
		t.Errorf("READ after a restart: %q, status %d", got, st)
	}
	if _, st := c.lookup(dir, name); st != 0 {
		t.Errorf("LOOKUP after a restart: status %d", st)
	}
	if st := c.nameOp(nfsRemove, dir, name); st != 0 {
		t.Errorf("REMOVE: status %d", st)
	}
}

// TestRetransmissionAfterReconnect sends calls that change the view,
// then the same calls (same xid, same arguments) on a new connection, as
// a client does after it lost the first one before the replies arrived:
// each gets the first call's reply, not the result of running it again.
func TestRetransmissionAfterReconnect(t *testing.T) {
	env := newEnv(t)
	c := env.dial(0, 0)
	root, _ := c.mnt("/nodes/node1")
	tmp := c.walk(root, "tmp")
	if _, st := c.create(tmp, "gone", 0o644); st != 0 {
		t.Fatal(st)
	}
	if _, st := c.create(tmp, "from", 0o644); st != 0 {
		t.Fatal(st)
	}
	for _, tc := range []struct {
		name string
		do   func(c *client) uint32
	}{
		{"REMOVE", func(c *client) uint32 { return c.nameOp(nfsRemove, tmp, "gone") }},
		{"RENAME", func(c *client) uint32 { return c.rename(tmp, "from", tmp, "to") }},
		{"guarded CREATE", func(c *client) uint32 { _, st := c.create(tmp, "new", 0o644); return st }},
		{"MKDIR", func(c *client) uint32 { _, st := c.mkdir(tmp, "dir", 0o755); return st }},
		{"RMDIR", func(c *client) uint32 { return c.nameOp(nfsRmdir, tmp, "dir") }},
	} {
		xid := c.xid.Load()
		if st := tc.do(c); st != 0 {
			t.Fatalf("%s: status %d", tc.name, st)
		}
		again := env.dial(0, 0)
		again.xid.Store(xid)
		if st := tc.do(again); st != 0 {
			t.Errorf("%s retransmitted on a new connection: status %d, want the first reply (OK)", tc.name, st)
		}
		// A new call (another xid) runs.
		if st := tc.do(c); st == 0 {
			t.Errorf("%s with a new xid: status OK, want it to run again and fail", tc.name)
		}
		c.xid.Add(100)
	}
	// Same xid, other arguments: not a retransmission.
	if _, st := c.create(tmp, "x1", 0o644); st != 0 {
		t.Fatal(st)
	}
	c.xid.Add(^uint32(0))
	if _, st := c.create(tmp, "x2", 0o644); st != 0 {
		t.Fatal(st)
	}
	if _, st := c.lookup(tmp, "x2"); st != 0 {
		t.Errorf("CREATE of another name with a reused xid was answered from the cache: LOOKUP status %d", st)
	}
}

// TestResetDoesNotFreezeOtherNodes resets a node whose root holds a large
// tree while another node's client keeps calling: its calls must keep
// being answered while the tree is deleted.
func TestResetDoesNotFreezeOtherNodes(t *testing.T) {
	env := newEnv(t)
	c1 := env.dial(0, 0)
	c2 := env.dial(0, 0)
	root1, _ := c1.mnt("/nodes/node1")
	c2.mnt("/nodes/node2")
	big := filepath.Join(env.st.Path(store.NodesDir, "node2", viewRoot), "big")
	// resetOnce deletes a tree of dirs×150 files of node2's own (made on
	// the host, faster than over NFS) by resetting node2 and counts
	// node1's calls answered meanwhile: when Reset held the server's lock
	// for the whole deletion, none finished in that time. A count, not a
	// time limit, so that a loaded machine (a call scheduled late) cannot
	// fail it.
	resetOnce := func(dirs int) (took time.Duration, during int64, maxWait time.Duration) {
		for i := 0; i < dirs; i++ {
			d := filepath.Join(big, fmt.Sprint(i))
			if err := os.MkdirAll(d, 0o755); err != nil {
				t.Fatal(err)
			}
			for j := 0; j < 150; j++ {
				if err := os.WriteFile(filepath.Join(d, fmt.Sprint(j)), nil, 0o644); err != nil {
					t.Fatal(err)
				}
			}
		}
		var (
			answered atomic.Int64 // node1's calls answered while the tree was deleted
			resetOn  atomic.Bool  // between Reset's start and the tree being gone
			longest  atomic.Int64
			stop     = make(chan struct{})
			done     = make(chan struct{})
		)
		go func() {
			defer close(done)
			for {
				select {
				case <-stop:
					return
				default:
				}
				t0 := time.Now()
				if _, st := c1.getattr(root1); st != 0 {
					t.Errorf("GETATTR on node1 during the reset of node2: status %d", st)
					return
				}
				if resetOn.Load() {
					answered.Add(1)
				}
				if d := int64(time.Since(t0)); d > longest.Load() {
					longest.Store(d)
				}
			}
		}()
		time.Sleep(50 * time.Millisecond)
		start := time.Now()
		resetOn.Store(true)
		if err := env.srv.Reset("node2"); err != nil {
			t.Fatal(err)
		}
		// The deletion is over when nothing is left aside in nodes/.
		for {
			left, _ := filepath.Glob(env.st.Path(store.NodesDir, ".discard-*"))
			if _, err := os.Lstat(big); len(left) == 0 && err != nil {
				break
			}
			if time.Since(start) > time.Minute {
				t.Fatal("the reset tree is not deleted after a minute")
			}
			time.Sleep(10 * time.Millisecond)
		}
		resetOn.Store(false)
		took = time.Since(start)
		close(stop)
		<-done
		return took, answered.Load(), time.Duration(longest.Load())
	}
	// A fast disk deletes the first tree too quickly to tell a freeze
	// from noise: the tree doubles until deleting it takes 200 ms.
	var (
		took, maxWait time.Duration
		during        int64
	)
	for dirs := 100; ; dirs *= 2 {
		took, during, maxWait = resetOnce(dirs)
		if took >= 200*time.Millisecond {
			break
		}
		if dirs >= 1600 {
			t.Fatalf("deleting %d×150 files took %v: too short to tell a freeze from noise", dirs, took)
		}
		t.Logf("deleting %d×150 files took %v; again with twice as many", dirs, took)
		if _, st := c2.mnt("/nodes/node2"); st != 0 {
			t.Fatalf("MNT after the reset: %d", st)
		}
	}
	if got, want := during, int64(5); got < want {
		t.Errorf("node1's calls answered while node2's root (%v to delete) was reset: got %d, want at least %d (longest call %v)", took, got, want, maxWait)
	}
	t.Logf("reset: tree deleted in %v, node1 got %d answers meanwhile, its longest call %v", took, during, maxWait)
	// The node gets a fresh root.
	root2, st := c2.mnt("/nodes/node2")
	if st != 0 {
		t.Fatalf("MNT after the reset: %d", st)
	}
	if _, st := c2.lookup(root2, "big"); st != errNoEnt {
		t.Errorf("LOOKUP big in the new root: status %d, want NOENT", st)
	}
}

// TestCopyUpOffTheReader writes to a large file of the image, which copies
// it first, and meanwhile asks for attributes on the same connection: the
// GETATTR is answered before the WRITE.
func TestCopyUpOffTheReader(t *testing.T) {
	env := newEnv(t)
	f, err := os.Create(filepath.Join(env.image, "usr", "big"))
	if err != nil {
		t.Fatal(err)
	}
	chunk := make([]byte, 1<<20)
	for i := range chunk {
		chunk[i] = byte(i)
	}
	for i := 0; i < 384; i++ {
		f.Write(chunk)
	}
	f.Close()
	c := env.dial(0, 0)
	root, _ := c.mnt("/nodes/node1")
	big := c.walk(root, "usr", "big")
	host := c.walk(root, "etc", "hostname")
	send := func(proc uint32, a []byte) uint32 {
		w := &writer{b: make([]byte, 4)}
		xid := c.xid.Add(1)
		callHeader(w, xid, progNFS, 3, proc, &cred{})
		w.b = append(w.b, a...)
		if _, err := c.conn.Write(frame(w.b)); err != nil {
			t.Fatal(err)
		}
		return xid
	}
	start := time.Now()
	wxid := send(nfsWrite, args(func(w *writer) {
		w.opaque(big)
		w.uint64(0)
		w.uint32(4)
		w.uint32(fileSync)
		w.opaque([]byte("head"))
	}))
	time.Sleep(20 * time.Millisecond)
	gxid := send(nfsGetattr, args(func(w *writer) { w.opaque(host) }))
	var order []uint32
	c.conn.SetReadDeadline(time.Now().Add(time.Minute))
	for len(order) < 2 {
		msg, err := readRecord(c.conn, make([]byte, 4))
		if err != nil {
			t.Fatal(err)
		}
		order = append(order, (&reader{b: msg}).uint32())
		if len(order) == 1 {
			t.Logf("first reply after %v", time.Since(start))
		}
	}
	t.Logf("both replies after %v", time.Since(start))
	if order[0] != gxid || order[1] != wxid {
		t.Errorf("replies came as xids %v; want the GETATTR (%d) before the WRITE that copies 384 MiB (%d)", order, gxid, wxid)
	}
	if got, _, _ := c.read(big, 0, 8); string(got) != "head\x04\x05\x06\x07" {
		t.Errorf("after the WRITE the file starts %q", got)
	}
}

// TestRenameBetweenResolveAndOpen renames another file over the path a
// WRITE's handle resolved to, after the resolve and before the open: the
// data must not land in the other file.
func TestRenameBetweenResolveAndOpen(t *testing.T) {
	env := newEnv(t)
	c := env.dial(0, 0)
	root, _ := c.mnt("/nodes/node1")
	tmp := c.walk(root, "tmp")
	a, _ := c.create(tmp, "a", 0o644)
	if _, st := c.create(tmp, "b", 0o644); st != 0 {
		t.Fatal(st)
	}
	view := filepath.Join(env.st.Path(store.NodesDir, "node1", viewRoot), "tmp")
	// a keeps a second name, so it still exists after b replaces "a".
	if err := os.Link(filepath.Join(view, "a"), filepath.Join(view, "a-too")); err != nil {
		t.Fatal(err)
	}
	done := false
	testHookResolved = func(o *obj) {
		if !done && o.rel == "tmp/a" {
			done = true
			if err := os.Rename(filepath.Join(view, "b"), filepath.Join(view, "a")); err != nil {
				t.Error(err)
			}
		}
	}
	defer func() { testHookResolved = nil }()
	st, _ := c.write(a, 0, []byte("for a"), fileSync)
	if !done {
		t.Fatal("the hook did not run")
	}
	if got := string(mustRead(t, filepath.Join(view, "a"))); got != "" {
		t.Errorf("the file renamed over a's path holds %q: the WRITE (status %d) went to the wrong file", got, st)
	}
	// The server looks for a's file again and writes there, or answers
	// STALE; never the wrong file.
	if got := string(mustRead(t, filepath.Join(view, "a-too"))); st == 0 && got != "for a" {
		t.Errorf("WRITE answered OK but a's file holds %q", got)
	}
}
