package nbd

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// logBuffer collects a server's log lines for tests to look for.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// wait waits until the log has a line containing substr.
func (l *logBuffer) wait(t testing.TB, substr string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(l.String(), substr) {
		if time.Now().After(deadline) {
			t.Fatalf("no log line with %q in:\n%s", substr, l.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// countingExport wraps an Export and counts what the server asked of it.
type countingExport struct {
	Export
	flushes, trims, closes atomic.Int32
	inside, maxInside      atomic.Int32  // ReadAt/WriteAt calls running at once
	hold                   chan struct{} // when set, ReadAt and WriteAt wait for it to close
	failWrite              error
	readOnly               bool
}

func (e *countingExport) enter() func() {
	n := e.inside.Add(1)
	for {
		m := e.maxInside.Load()
		if n <= m || e.maxInside.CompareAndSwap(m, n) {
			break
		}
	}
	if e.hold != nil {
		<-e.hold
	}
	return func() { e.inside.Add(-1) }
}

func (e *countingExport) ReadAt(p []byte, off int64) (int, error) {
	defer e.enter()()
	return e.Export.ReadAt(p, off)
}

func (e *countingExport) WriteAt(p []byte, off int64) (int, error) {
	defer e.enter()()
	if e.failWrite != nil {
		return 0, e.failWrite
	}
	return e.Export.WriteAt(p, off)
}

func (e *countingExport) Flush() error          { e.flushes.Add(1); return e.Export.Flush() }
func (e *countingExport) Trim(o, n int64) error { e.trims.Add(1); return e.Export.Trim(o, n) }
func (e *countingExport) Close() error          { e.closes.Add(1); return e.Export.Close() }
func (e *countingExport) ReadOnly() bool        { return e.readOnly }
func (e *countingExport) MultiConn() bool       { return e.Export.(MultiConnExport).MultiConn() }

// lab is a server on a loopback port with file exports in a temporary
// directory: "disk" (1 MiB), "other" (64 KiB) and "big" (64 MiB, sparse)
// for any client (NBD_OPT_LIST shows the first two), "denied"
// refused by policy. Each Lookup wraps its File in a countingExport, kept
// in opened.
type lab struct {
	t      *testing.T
	s      *Server
	addr   string
	dir    string
	log    *logBuffer
	serve  chan error
	mu     sync.Mutex
	opened []*countingExport
	wrap   func(*countingExport) // adjusts each export before the server sees it
}

var labSizes = map[string]int64{"disk": 1 << 20, "other": 64 << 10, "big": 64 << 20}

func newLab(t *testing.T, adjust func(*Server)) *lab {
	t.Helper()
	l := &lab{t: t, dir: t.TempDir(), log: &logBuffer{}, serve: make(chan error, 1)}
	for name, size := range labSizes {
		if err := os.WriteFile(filepath.Join(l.dir, name), nil, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(filepath.Join(l.dir, name), size); err != nil {
			t.Fatal(err)
		}
	}
	l.s = &Server{
		Logger: slog.New(slog.NewTextHandler(io.MultiWriter(l.log, testWriter{t}), &slog.HandlerOptions{Level: slog.LevelDebug})),
		Lookup: l.lookup,
		List: func(remote netip.AddrPort) []string {
			if remote.Addr() == netip.MustParseAddr("127.0.0.1") {
				return []string{"disk", "other"}
			}
			return nil
		},
	}
	if adjust != nil {
		adjust(l.s)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l.addr = ln.Addr().String()
	go func() { l.serve <- l.s.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := l.s.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		if err := <-l.serve; err != nil {
			t.Errorf("Serve after Shutdown: got %v, want nil", err)
		}
		l.mu.Lock()
		defer l.mu.Unlock()
		for _, e := range l.opened {
			if got := e.closes.Load(); got != 1 {
				t.Errorf("an export was closed %d times, want 1", got)
			}
		}
	})
	return l
}

func (l *lab) lookup(ctx context.Context, name string, remote netip.AddrPort) (Export, error) {
	if !remote.Addr().IsLoopback() {
		return nil, fmt.Errorf("remote %v is not loopback: %w", remote, ErrPolicy)
	}
	if name == "denied" {
		return nil, fmt.Errorf("export %q is for another node: %w", name, ErrPolicy)
	}
	if _, ok := labSizes[name]; !ok {
		return nil, fmt.Errorf("no disk %q: %w", name, ErrUnknownExport)
	}
	f, err := os.OpenFile(filepath.Join(l.dir, name), os.O_RDWR, 0)
	if err != nil {
		return nil, err
	}
	fe, err := NewFile(f)
	if err != nil {
		return nil, err
	}
	e := &countingExport{Export: fe}
	if l.wrap != nil {
		l.wrap(e)
	}
	l.mu.Lock()
	l.opened = append(l.opened, e)
	l.mu.Unlock()
	return e, nil
}

func (l *lab) exports() []*countingExport {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]*countingExport(nil), l.opened...)
}

// testWriter sends log lines to t.Log (shown with -v or on failure).
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

// client speaks the client side byte by byte, so that tests can send what
// real clients never would.
type client struct {
	t  *testing.T
	nc net.Conn
	br *bufio.Reader
}

// dial connects and reads the greeting, which must be fixed newstyle with
// NO_ZEROES.
func (l *lab) dial() *client {
	l.t.Helper()
	nc, err := net.Dial("tcp", l.addr)
	if err != nil {
		l.t.Fatal(err)
	}
	l.t.Cleanup(func() { nc.Close() })
	nc.SetDeadline(time.Now().Add(30 * time.Second))
	c := &client{t: l.t, nc: nc, br: bufio.NewReader(nc)}
	var g [greetingLength]byte
	if _, err := io.ReadFull(c.br, g[:]); err != nil {
		l.t.Fatalf("reading the greeting: %v", err)
	}
	if got, want := binary.BigEndian.Uint64(g[0:]), uint64(magicInit); got != want {
		l.t.Errorf("greeting magic: got %#x, want %#x", got, want)
	}
	if got, want := binary.BigEndian.Uint64(g[8:]), uint64(magicOpt); got != want {
		l.t.Errorf("greeting second magic: got %#x, want %#x", got, want)
	}
	if got, want := binary.BigEndian.Uint16(g[16:]), uint16(flagFixedNewstyle|flagNoZeroes); got != want {
		l.t.Errorf("handshake flags: got %#x, want %#x", got, want)
	}
	return c
}

// start dials and sends the usual client flags.
func (l *lab) start() *client {
	l.t.Helper()
	c := l.dial()
	c.write(binary.BigEndian.AppendUint32(nil, flagFixedNewstyle|flagNoZeroes))
	return c
}

func (c *client) write(b []byte) {
	c.t.Helper()
	if _, err := c.nc.Write(b); err != nil {
		c.t.Fatalf("client write: %v", err)
	}
}

func (c *client) option(opt uint32, data []byte) {
	c.t.Helper()
	b := binary.BigEndian.AppendUint64(nil, magicOpt)
	b = binary.BigEndian.AppendUint32(b, opt)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	c.write(append(b, data...))
}

type optReply struct {
	opt, rep uint32
	data     []byte
}

func (c *client) readOptReply() optReply {
	c.t.Helper()
	var h [20]byte
	if _, err := io.ReadFull(c.br, h[:]); err != nil {
		c.t.Fatalf("reading an option reply: %v", err)
	}
	if got, want := binary.BigEndian.Uint64(h[:]), uint64(magicOptReply); got != want {
		c.t.Fatalf("option reply magic: got %#x, want %#x", got, want)
	}
	r := optReply{opt: binary.BigEndian.Uint32(h[8:]), rep: binary.BigEndian.Uint32(h[12:])}
	r.data = make([]byte, binary.BigEndian.Uint32(h[16:]))
	if _, err := io.ReadFull(c.br, r.data); err != nil {
		c.t.Fatalf("reading %d bytes of option reply data: %v", len(r.data), err)
	}
	return r
}

// infoData is NBD_OPT_GO/INFO data.
func infoData(name string, infos ...uint16) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(len(name)))
	b = append(b, name...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(infos)))
	for _, i := range infos {
		b = binary.BigEndian.AppendUint16(b, i)
	}
	return b
}

// goExport sends NBD_OPT_GO and reads its replies up to the ACK; it
// returns the export's size and transmission flags.
func (c *client) goExport(name string) (size uint64, flags uint16) {
	c.t.Helper()
	c.option(optGo, infoData(name))
	for {
		r := c.readOptReply()
		switch r.rep {
		case repInfo:
			if binary.BigEndian.Uint16(r.data) == infoExport {
				size, flags = binary.BigEndian.Uint64(r.data[2:]), binary.BigEndian.Uint16(r.data[10:])
			}
		case repAck:
			return size, flags
		default:
			c.t.Fatalf("NBD_OPT_GO %q: reply %#x %q", name, r.rep, r.data)
		}
	}
}

func (c *client) request(typ, flags uint16, cookie, off uint64, length uint32, payload []byte) {
	c.t.Helper()
	b := binary.BigEndian.AppendUint32(make([]byte, 0, 28+len(payload)), magicRequest)
	b = binary.BigEndian.AppendUint16(b, flags)
	b = binary.BigEndian.AppendUint16(b, typ)
	b = binary.BigEndian.AppendUint64(b, cookie)
	b = binary.BigEndian.AppendUint64(b, off)
	b = binary.BigEndian.AppendUint32(b, length)
	c.write(append(b, payload...))
}

// readReply reads a simple reply header.
func (c *client) readReply() (errno uint32, cookie uint64) {
	c.t.Helper()
	var h [16]byte
	if _, err := io.ReadFull(c.br, h[:]); err != nil {
		c.t.Fatalf("reading a reply: %v", err)
	}
	if got, want := binary.BigEndian.Uint32(h[:]), uint32(magicReply); got != want {
		c.t.Fatalf("reply magic: got %#x, want %#x", got, want)
	}
	return binary.BigEndian.Uint32(h[4:]), binary.BigEndian.Uint64(h[8:])
}

// do sends one request and reads its reply, and for a successful READ its
// data.
func (c *client) do(typ, flags uint16, off uint64, length uint32, payload []byte) (uint32, []byte) {
	c.t.Helper()
	c.request(typ, flags, 0x1234, off, length, payload)
	errno, cookie := c.readReply()
	if cookie != 0x1234 {
		c.t.Fatalf("%s: reply cookie %#x, want 0x1234", cmdName(typ), cookie)
	}
	var data []byte
	if typ == cmdRead && errno == 0 {
		data = make([]byte, length)
		if _, err := io.ReadFull(c.br, data); err != nil {
			c.t.Fatalf("reading READ data: %v", err)
		}
	}
	return errno, data
}

// closed reports whether the server closed the connection (EOF or reset)
// before sending anything more.
func (c *client) closed() bool {
	c.t.Helper()
	c.nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	b, err := c.br.ReadByte()
	if err == nil {
		c.t.Logf("server sent %#x, want a closed connection", b)
		return false
	}
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		c.t.Logf("connection still open after 10 s")
		return false
	}
	return err == io.EOF || errors.Is(err, syscall.ECONNRESET)
}
