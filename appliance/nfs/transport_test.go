package nfs

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ociboot/ociboot/appliance/testenv"
)

// transportServer serves a fuzzServer's exports on a loopback listener
// with the given options (Store and Resolver are filled in).
func transportServer(t testing.TB, o Options) (*Server, string) {
	base := fuzzServer(t)
	o.Store, o.Resolver = base.opts.Store, base.opts.Resolver
	base.Close()
	srv, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go srv.ServeTCP(ln)
	return srv, ln.Addr().String()
}

// rpcCall sends one call (AUTH_SYS uid 0, as a node's root sends) on conn
// and returns the reply's accept/reject words after the xid and type:
// reply_stat, then accept_stat or reject_stat and auth_stat.
func rpcCall(conn net.Conn, prog, vers, proc uint32, args []byte) ([]uint32, error) {
	m := &writer{b: make([]byte, 4)}
	callHeader(m, 42, prog, vers, proc, &cred{})
	m.b = append(m.b, args...)
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	defer conn.SetDeadline(time.Time{})
	if _, err := conn.Write(frame(m.b)); err != nil {
		return nil, err
	}
	msg, err := readRecord(conn, make([]byte, 4))
	if err != nil {
		return nil, err
	}
	return replyWords(msg)
}

func replyWords(msg []byte) ([]uint32, error) {
	r := reader{b: msg}
	r.uint32() // xid
	if r.uint32() != msgReply {
		return nil, errors.New("not a reply")
	}
	stat := r.uint32()
	if stat == replyDenied {
		return []uint32{stat, r.uint32(), r.uint32()}, r.err
	}
	r.uint32()
	r.opaque(400) // verifier
	return []uint32{stat, r.uint32()}, r.err
}

// dialFromPort connects from a privileged port (root only), trying random
// ones until one is free.
func dialFromPort(t *testing.T, addr string) net.Conn {
	t.Helper()
	for i := 0; i < 50; i++ {
		port := 600 + rand.IntN(400)
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port}}
		conn, err := d.Dial("tcp", addr)
		if err == nil {
			t.Cleanup(func() { conn.Close() })
			return conn
		}
		if !errors.Is(err, syscall.EADDRINUSE) {
			t.Fatalf("dial %s from port %d: %v", addr, port, err)
		}
	}
	t.Fatal("no free privileged port to dial from")
	return nil
}

var getattrArgs = func() []byte { w := &writer{}; w.opaque(make([]byte, 32)); return w.b }()

// By default NFS and MOUNT calls must come from a privileged port (knfsd's
// "secure"): a process on a node that is not root cannot bind one, so it
// cannot claim uid 0 in AUTH_SYS. The portmapper and NULL answer anyone.
func TestPrivilegedSourcePortRequired(t *testing.T) {
	_, addr := transportServer(t, Options{})
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	tooWeak := fmt.Sprint([]uint32{replyDenied, rejectAuthError, authTooWeak})
	success := fmt.Sprint([]uint32{replyAccepted, acceptSuccess})
	for _, c := range []struct {
		name             string
		prog, vers, proc uint32
		args             []byte
		want             string
	}{
		{"NFS GETATTR", progNFS, 3, nfsGetattr, getattrArgs, tooWeak},
		{"MOUNT EXPORT", progMount, 3, 5, nil, tooWeak},
		{"MOUNT MNT", progMount, 3, 1, func() []byte { w := &writer{}; w.string("/nodes/node1"); return w.b }(), tooWeak},
		{"NFS NULL", progNFS, 3, 0, nil, success},
		{"portmap DUMP", progPortmap, 2, pmapDump, nil, success},
	} {
		got, err := rpcCall(conn, c.prog, c.vers, c.proc, c.args)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if fmt.Sprint(got) != c.want {
			t.Errorf("%s from port %s: reply %v, want %s", c.name, conn.LocalAddr(), got, c.want)
		}
	}

	// UDP (MOUNT) is held to the same rule.
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	base, _ := transportServer(t, Options{})
	go base.ServeUDP(pc)
	uc, err := net.Dial("udp", pc.LocalAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer uc.Close()
	m := &writer{}
	callHeader(m, 7, progMount, 3, 5, &cred{})
	uc.Write(m.b)
	uc.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 9000)
	n, err := uc.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := replyWords(buf[:n]); fmt.Sprint(got) != tooWeak {
		t.Errorf("MOUNT EXPORT over UDP from %s: reply %v, want %s", uc.LocalAddr(), got, tooWeak)
	}

	// The opt-out serves any port.
	_, open := transportServer(t, Options{InsecurePorts: true})
	oc, err := net.Dial("tcp", open)
	if err != nil {
		t.Fatal(err)
	}
	defer oc.Close()
	if got, err := rpcCall(oc, progNFS, 3, nfsGetattr, getattrArgs); err != nil || got[0] != replyAccepted {
		t.Errorf("GETATTR with InsecurePorts: reply %v, %v; want accepted", got, err)
	}

	testenv.NeedRoot(t, "binding a privileged source port")
	pconn := dialFromPort(t, addr)
	if got, err := rpcCall(pconn, progNFS, 3, nfsGetattr, getattrArgs); err != nil || got[0] != replyAccepted {
		t.Errorf("GETATTR from privileged port %s: reply %v, %v; want accepted", pconn.LocalAddr(), got, err)
	}
}

// A record announcing a megabyte costs what arrives, not what it
// announces: a host that opens many connections and sends only headers
// must not make nfsd allocate a megabyte for each.
func TestReadRecordAllocatesOnlyWhatArrives(t *testing.T) {
	var in bytes.Buffer
	binary.Write(&in, binary.BigEndian, uint32(maxRecord-16)|1<<31)
	in.Write(make([]byte, 100))
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	_, err := readRecord(&in, make([]byte, 4))
	runtime.ReadMemStats(&after)
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("truncated record: err %v, want unexpected EOF", err)
	}
	if got, limit := after.TotalAlloc-before.TotalAlloc, uint64(256<<10); got > limit {
		t.Errorf("reading 104 bytes of a record announcing %d allocated %d bytes, want ≤ %d", maxRecord-16, got, limit)
	}
	// A whole record still reads back intact, across chunks and fragments.
	want := bytes.Repeat([]byte("0123456789abcdef"), (3*recordChunk+5)/16)
	in.Reset()
	binary.Write(&in, binary.BigEndian, uint32(recordChunk+3))
	in.Write(want[:recordChunk+3])
	binary.Write(&in, binary.BigEndian, uint32(len(want)-recordChunk-3)|1<<31)
	in.Write(want[recordChunk+3:])
	got, err := readRecord(&in, make([]byte, 4))
	if err != nil || !bytes.Equal(got, want) {
		t.Errorf("two-fragment record: %d bytes, %v; want %d bytes back", len(got), err, len(want))
	}
}

// answered reports whether a NULL call on a new connection from local gets
// an answer (false: the server closed the connection).
func answered(t *testing.T, addr string, local net.IP) (net.Conn, bool) {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: local}}
	conn, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	_, err = rpcCall(conn, progNFS, 3, 0, nil)
	return conn, err == nil
}

// Connections beyond the per-client and total limits are closed at once;
// freeing one lets the next in.
func TestConnectionLimits(t *testing.T) {
	_, addr := transportServer(t, Options{MaxConns: 4, MaxConnsPerClient: 2})
	a, b, c := net.IPv4(127, 0, 0, 1), net.IPv4(127, 0, 0, 2), net.IPv4(127, 0, 0, 3)
	first, _ := answered(t, addr, a)
	for i, x := range []struct {
		from net.IP
		want bool
	}{{a, true}, {a, false}, {b, true}, {b, true}, {c, false}} {
		if _, got := answered(t, addr, x.from); got != x.want {
			t.Errorf("connection %d from %s answered = %v, want %v", i+2, x.from, got, x.want)
		}
	}
	first.Close()
	deadline := time.Now().Add(3 * time.Second)
	for {
		if _, ok := answered(t, addr, c); ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("a closed connection's slot was not given to the next client")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// closedWithin reports whether the server closes conn within d.
func closedWithin(conn net.Conn, d time.Duration) bool {
	conn.SetReadDeadline(time.Now().Add(d))
	_, err := io.Copy(io.Discard, conn)
	var ne net.Error
	return !(errors.As(err, &ne) && ne.Timeout())
}

// An idle connection is closed after IdleTimeout, and a record that
// trickles in (a byte every 100 ms, "slowloris") after RecordTimeout.
func TestIdleAndRecordDeadlines(t *testing.T) {
	_, addr := transportServer(t, Options{IdleTimeout: 300 * time.Millisecond, RecordTimeout: 500 * time.Millisecond})
	idle, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	if !closedWithin(idle, 3*time.Second) {
		t.Errorf("idle connection still open after 3 s, IdleTimeout 300 ms")
	}

	slow, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close()
	done := make(chan bool)
	go func() { done <- closedWithin(slow, 4*time.Second) }()
	start := time.Now()
	slow.Write([]byte{0x80, 0, 0x03, 0xe8}) // a last fragment of 1000 bytes
	for i := 0; i < 40; i++ {
		time.Sleep(100 * time.Millisecond)
		if _, err := slow.Write([]byte{0}); err != nil {
			break
		}
	}
	if !<-done {
		t.Errorf("trickling record still read after 4 s, RecordTimeout 500 ms")
	} else if el := time.Since(start); el < 400*time.Millisecond {
		t.Errorf("trickling record cut after %v, before its RecordTimeout of 500 ms", el)
	}
}

// Out of file descriptors, nfsd pauses accepting and keeps serving the
// connections it has (issue 14: it exited). The server runs in a child
// process with a low RLIMIT_NOFILE, so the test's own connections do not
// count against it.
func TestServeTCPSurvivesEMFILE(t *testing.T) {
	if os.Getenv("OCIBOOT_NFS_EMFILE_CHILD") == "1" {
		emfileChild(t)
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestServeTCPSurvivesEMFILE$")
	cmd.Env = append(os.Environ(), "OCIBOOT_NFS_EMFILE_CHILD=1")
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	var waitErr error
	t.Cleanup(func() { cmd.Process.Kill(); <-exited })
	sc := bufio.NewScanner(stdout)
	var addr string
	for sc.Scan() {
		if a, ok := strings.CutPrefix(sc.Text(), "ADDR "); ok {
			addr = a
			break
		}
	}
	go func() {
		io.Copy(io.Discard, stdout)
		waitErr = cmd.Wait()
		close(exited)
	}()
	if addr == "" {
		t.Fatalf("child printed no address; stderr:\n%s", stderr.String())
	}
	kept, ok := answered(t, addr, nil)
	if !ok {
		t.Fatal("first connection not answered")
	}
	var flood []net.Conn
	for i := 0; i < 60; i++ {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			break
		}
		flood = append(flood, c)
	}
	time.Sleep(500 * time.Millisecond)
	select {
	case <-exited:
		t.Fatalf("nfs server exited when out of file descriptors: %v\n%s", waitErr, stderr.String())
	default:
	}
	if _, err := rpcCall(kept, progNFS, 3, 0, nil); err != nil {
		t.Errorf("connection served before the descriptors ran out: %v", err)
	}
	for _, c := range flood {
		c.Close()
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, ok := answered(t, addr, nil); ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no new connection served after descriptors were free again\n%s", stderr.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	stdin.Close()
	<-exited
	if waitErr != nil {
		t.Errorf("child: %v\n%s", waitErr, stderr.String())
	}
}

func emfileChild(t *testing.T) {
	srv, _ := transportServer(t, Options{})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	fds, _ := os.ReadDir("/proc/self/fd")
	lim := unix.Rlimit{Cur: uint64(len(fds) + 16), Max: 1 << 20}
	var old unix.Rlimit
	unix.Getrlimit(unix.RLIMIT_NOFILE, &old)
	lim.Max = old.Max
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.ServeTCP(ln) }()
	fmt.Printf("ADDR %s\n", ln.Addr())
	stdinClosed := make(chan struct{})
	go func() { io.Copy(io.Discard, os.Stdin); close(stdinClosed) }()
	select {
	case err := <-served:
		t.Fatalf("ServeTCP returned: %v", err)
	case <-stdinClosed:
	}
}

// FuzzRecords feeds a TCP byte stream to the record reader: it never
// panics, and the records it returns never hold more bytes than arrived.
func FuzzRecords(f *testing.F) {
	f.Add([]byte{0x80, 0, 0, 4, 1, 2, 3, 4})
	f.Add([]byte{0, 0, 0, 2, 1, 2, 0x80, 0, 0, 1, 9})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0})
	f.Add([]byte{0x80, 0x10, 0, 0, 1, 2, 3})
	f.Fuzz(func(t *testing.T, b []byte) {
		r := bytes.NewReader(b)
		hdr := make([]byte, 4)
		got := 0
		for {
			msg, err := readRecord(r, hdr)
			if err != nil {
				break
			}
			if got += len(msg); got > len(b) {
				t.Fatalf("records hold %d bytes of a %d-byte stream", got, len(b))
			}
			if len(msg) > maxRecord {
				t.Fatalf("record of %d bytes, more than maxRecord", len(msg))
			}
		}
	})
}

// MOUNT over UDP answers calls from any (forged) source address; the
// access answers cached for them stay bounded.
func TestAccessCacheIsBounded(t *testing.T) {
	needRoot(t)
	srv, _ := transportServer(t, Options{})
	e, err := srv.export("node1")
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3*maxACLEntries; i++ {
		srv.allowed(e, netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}))
	}
	srv.mu.Lock()
	n := len(srv.acl)
	srv.mu.Unlock()
	if n > maxACLEntries {
		t.Errorf("%d cached access answers after calls from %d addresses, want ≤ %d", n, 3*maxACLEntries, maxACLEntries)
	}
}
