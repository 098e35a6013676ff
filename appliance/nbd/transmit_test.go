package nbd

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// TestRequestChecks: requests the export cannot serve get the protocol's
// error and the connection goes on.
func TestRequestChecks(t *testing.T) {
	size := uint64(labSizes["disk"])
	for _, tc := range []struct {
		name   string
		typ    uint16
		flags  uint16
		off    uint64
		length uint32
		errno  uint32
	}{
		{"read to the end", cmdRead, 0, size - 512, 512, 0},
		{"read past the end", cmdRead, 0, size - 512, 513, errInval},
		{"read offset past the end", cmdRead, 0, size + 1, 0, errInval},
		{"read offset overflow", cmdRead, 0, 1<<64 - 1, 2, errInval},
		{"read over the payload limit", cmdRead, 0, 0, MaxPayload + 1, errInval},
		{"read empty", cmdRead, 0, 0, 0, 0},
		{"read with FUA", cmdRead, cmdFlagFUA, 0, 4096, 0},
		{"read with NO_HOLE", cmdRead, cmdFlagNoHole, 0, 4096, errInval},
		{"read with DF", cmdRead, cmdFlagDF, 0, 4096, errInval},
		{"write past the end", cmdWrite, 0, size - 1, 2, errNoSpc},
		{"write with NO_HOLE", cmdWrite, cmdFlagNoHole, 0, 2, errInval},
		{"trim past the end", cmdTrim, 0, size, 1, errInval},
		{"trim everything", cmdTrim, 0, 0, uint32(size), 0},
		{"zeroes past the end", cmdWriteZeroes, 0, 0, uint32(size) + 1, errNoSpc},
		{"zeroes with FAST_ZERO (not announced)", cmdWriteZeroes, cmdFlagFastZero, 0, 1, errInval},
		{"zeroes with NO_HOLE and FUA", cmdWriteZeroes, cmdFlagNoHole | cmdFlagFUA, 0, 8192, 0},
		{"cache", cmdCache, 0, 0, 8192, 0},
		{"cache past the end", cmdCache, 0, size, 1, errInval},
		{"flush", cmdFlush, 0, 0, 0, 0},
		{"block status (not negotiated)", 7, 0, 0, 4096, errInval},
		{"unknown command", 200, 0, 0, 0, errInval},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := newLab(t, nil)
			c := l.start()
			c.goExport("disk")
			var payload []byte
			if tc.typ == cmdWrite {
				payload = make([]byte, tc.length)
			}
			if errno, _ := c.do(tc.typ, tc.flags, tc.off, tc.length, payload); errno != tc.errno {
				t.Errorf("%s: got errno %d, want %d", cmdName(tc.typ), errno, tc.errno)
			}
			if tc.errno != 0 {
				l.log.wait(t, "nbd: request refused")
			}
			// The stream is still in step.
			if errno, data := c.do(cmdRead, 0, 0, 16, nil); errno != 0 || len(data) != 16 {
				t.Errorf("READ after: errno %d, %d bytes", errno, len(data))
			}
		})
	}
}

// TestClosingRequests: a request that leaves the stream out of step closes
// the connection, with a log line.
func TestClosingRequests(t *testing.T) {
	for _, tc := range []struct {
		name    string
		send    func(c *client)
		wantLog string
	}{
		{"bad magic", func(c *client) { c.write(make([]byte, 28)) }, "request magic 0x0, want 0x25609513"},
		{"extended header", func(c *client) {
			c.write(binary.BigEndian.AppendUint32(nil, magicExtended))
			c.write(make([]byte, 28))
		}, "extended-header request"},
		{"write over the payload limit", func(c *client) { c.request(cmdWrite, 0, 1, 0, MaxPayload+1, nil) }, "WRITE over the payload limit"},
		{"write of 4 GiB", func(c *client) { c.request(cmdWrite, 0, 1, 0, 0xffffffff, nil) }, "WRITE over the payload limit"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := newLab(t, nil)
			c := l.start()
			c.goExport("disk")
			tc.send(c)
			if !c.closed() {
				t.Error("connection not closed")
			}
			l.log.wait(t, tc.wantLog)
		})
	}
}

// TestPipelined sends many requests before reading any reply, as the
// kernel does: they run at once and every reply carries its cookie.
func TestPipelined(t *testing.T) {
	l := newLab(t, nil)
	release := make(chan struct{})
	l.wrap = func(e *countingExport) { e.hold = release }
	c := l.start()
	c.goExport("disk")
	const n = 64
	want := map[uint64][]byte{}
	go func() {
		// The server must have several requests inside the export at
		// once before any returns.
		deadline := time.Now().Add(10 * time.Second)
		for time.Now().Before(deadline) {
			if ex := l.exports(); len(ex) == 1 && ex[0].inside.Load() >= 8 {
				break
			}
			time.Sleep(time.Millisecond)
		}
		close(release)
	}()
	for i := range n {
		b := bytes.Repeat([]byte{byte(i)}, 4096)
		want[uint64(i)] = b
		c.request(cmdWrite, 0, uint64(i), uint64(i)*4096, 4096, b)
	}
	seen := map[uint64]bool{}
	for range n {
		errno, cookie := c.readReply()
		if errno != 0 || seen[cookie] || want[cookie] == nil {
			t.Fatalf("reply errno %d cookie %d (seen before: %v)", errno, cookie, seen[cookie])
		}
		seen[cookie] = true
	}
	if got := l.exports()[0].maxInside.Load(); got < 8 {
		t.Errorf("requests in the export at once: got %d, want >= 8", got)
	}
	// Reads back, pipelined too, replies in any order.
	for i := range n {
		c.request(cmdRead, 0, uint64(1000+i), uint64(i)*4096, 4096, nil)
	}
	for range n {
		errno, cookie := c.readReply()
		data := make([]byte, 4096)
		if _, err := io.ReadFull(c.br, data); err != nil || errno != 0 {
			t.Fatalf("READ reply: errno %d, %v", errno, err)
		}
		if w := want[cookie-1000]; !bytes.Equal(data, w) {
			t.Errorf("READ cookie %d: data %x..., want %x...", cookie, data[:4], w[:4])
		}
	}
}

// TestBufferCap: a connection holds at most MaxBuffered payload bytes; it
// stops reading until replies free some, and one request larger than the
// cap still runs alone.
func TestBufferCap(t *testing.T) {
	l := newLab(t, func(s *Server) { s.MaxBuffered = 64 << 10 })
	release := make(chan struct{})
	l.wrap = func(e *countingExport) { e.hold = release }
	c := l.start()
	c.goExport("disk")
	for i := range 32 {
		c.request(cmdWrite, 0, uint64(i), uint64(i)*16384, 16384, make([]byte, 16384))
	}
	e := l.exports()[0]
	for deadline := time.Now().Add(10 * time.Second); e.inside.Load() < 4 && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond) // time for more, were the cap not kept
	if got, want := e.inside.Load(), int32(4); got != want {
		t.Errorf("16 KiB writes in flight under a 64 KiB cap: got %d, want %d", got, want)
	}
	close(release)
	for range 32 {
		if errno, _ := c.readReply(); errno != 0 {
			t.Fatalf("errno %d", errno)
		}
	}
	if errno, data := c.do(cmdRead, 0, 0, 512<<10, nil); errno != 0 || len(data) != 512<<10 {
		t.Errorf("READ of 512 KiB over a 64 KiB cap: errno %d, %d bytes", errno, len(data))
	}
}

func TestFUAAndFlush(t *testing.T) {
	l := newLab(t, nil)
	c := l.start()
	c.goExport("disk")
	e := l.exports()[0]
	for _, tc := range []struct {
		typ, flags uint16
		flushes    int32
	}{
		{cmdWrite, 0, 0},
		{cmdWrite, cmdFlagFUA, 1},
		{cmdFlush, 0, 1},
		{cmdTrim, cmdFlagFUA, 1},
		{cmdWriteZeroes, cmdFlagFUA, 1},
		{cmdRead, cmdFlagFUA, 0},
	} {
		before := e.flushes.Load()
		var payload []byte
		length := uint32(4096)
		if tc.typ == cmdWrite {
			payload = make([]byte, length)
		}
		if tc.typ == cmdFlush {
			length = 0
		}
		if errno, _ := c.do(tc.typ, tc.flags, 0, length, payload); errno != 0 {
			t.Fatalf("%s flags %#x: errno %d", cmdName(tc.typ), tc.flags, errno)
		}
		if got := e.flushes.Load() - before; got != tc.flushes {
			t.Errorf("%s flags %#x: got %d flushes, want %d", cmdName(tc.typ), tc.flags, got, tc.flushes)
		}
	}
}

// allocated is how many bytes of file name the file system allocated.
func allocated(t *testing.T, name string) int64 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(name, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}

// TestTrimAndZeroes runs on a real file: TRIM and WRITE_ZEROES punch
// holes, WRITE_ZEROES with NO_HOLE writes zeroes that stay allocated.
func TestTrimAndZeroes(t *testing.T) {
	l := newLab(t, nil)
	c := l.start()
	c.goExport("disk")
	file := filepath.Join(l.dir, "disk")
	data := make([]byte, 256<<10)
	for i := range data {
		data[i] = byte(i%251 + 1)
	}
	for _, tc := range []struct {
		name       string
		typ, flags uint16
		wantAlloc  int64 // of the 256 KiB range afterwards
	}{
		{"trim", cmdTrim, 0, 0},
		{"zeroes", cmdWriteZeroes, 0, 0},
		{"zeroes no hole", cmdWriteZeroes, cmdFlagNoHole, 256 << 10},
	} {
		if errno, _ := c.do(cmdWrite, 0, 0, uint32(len(data)), data); errno != 0 {
			t.Fatalf("WRITE: errno %d", errno)
		}
		if errno, _ := c.do(cmdFlush, 0, 0, 0, nil); errno != 0 {
			t.Fatalf("FLUSH: errno %d", errno)
		}
		if got := allocated(t, file); got < int64(len(data)) {
			t.Fatalf("%s: %d bytes allocated after writing %d", tc.name, got, len(data))
		}
		if errno, _ := c.do(tc.typ, tc.flags, 0, uint32(len(data)), nil); errno != 0 {
			t.Fatalf("%s: errno %d", tc.name, errno)
		}
		if got := allocated(t, file); got != tc.wantAlloc {
			t.Errorf("%s: %d bytes allocated, want %d", tc.name, got, tc.wantAlloc)
		}
		if tc.typ == cmdWriteZeroes {
			_, back := c.do(cmdRead, 0, 0, uint32(len(data)), nil)
			if !bytes.Equal(back, make([]byte, len(data))) {
				t.Errorf("%s: range does not read back as zeroes", tc.name)
			}
		}
	}
}

func TestErrno(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want uint32
	}{
		{nil, 0},
		{errors.New("disk on fire"), errIO},
		{syscall.EIO, errIO},
		{&os.PathError{Op: "write", Path: "x", Err: syscall.ENOSPC}, errNoSpc},
		{fmt.Errorf("quota: %w", syscall.EDQUOT), errNoSpc},
		{syscall.EFBIG, errNoSpc},
		{syscall.EPERM, errPerm},
		{syscall.EROFS, errPerm},
		{os.ErrPermission, errPerm},
		{syscall.EINVAL, errInval},
		{syscall.EOVERFLOW, errOverflow},
		{syscall.EOPNOTSUPP, errNotSup},
		{syscall.ESHUTDOWN, errShutdown},
	} {
		if got := Errno(tc.err); got != tc.want {
			t.Errorf("Errno(%v): got %d, want %d", tc.err, got, tc.want)
		}
	}
}

// TestExportErrors: an error from the storage reaches the client as the
// protocol's value, with a log line.
func TestExportErrors(t *testing.T) {
	l := newLab(t, nil)
	l.wrap = func(e *countingExport) { e.failWrite = &os.PathError{Op: "write", Path: "disk", Err: syscall.EDQUOT} }
	c := l.start()
	c.goExport("disk")
	if errno, _ := c.do(cmdWrite, 0, 0, 4, []byte("abcd")); errno != errNoSpc {
		t.Errorf("WRITE on a disk over quota: got errno %d, want %d", errno, errNoSpc)
	}
	l.log.wait(t, "nbd: request failed")
}

func TestReadOnly(t *testing.T) {
	l := newLab(t, nil)
	l.wrap = func(e *countingExport) { e.readOnly = true }
	c := l.start()
	if _, flags := c.goExport("disk"); flags&flagReadOnly == 0 {
		t.Errorf("flags %#x lack NBD_FLAG_READ_ONLY", flags)
	}
	for _, typ := range []uint16{cmdWrite, cmdTrim, cmdWriteZeroes} {
		var payload []byte
		if typ == cmdWrite {
			payload = []byte("x")
		}
		if errno, _ := c.do(typ, 0, 0, 1, payload); errno != errPerm {
			t.Errorf("%s on a read-only export: got errno %d, want %d", cmdName(typ), errno, errPerm)
		}
	}
	if errno, _ := c.do(cmdRead, 0, 0, 1, nil); errno != 0 {
		t.Errorf("READ on a read-only export: errno %d", errno)
	}
}

// TestShutdown: Shutdown answers the requests already sent, then closes;
// a negotiating connection is closed at once.
func TestShutdown(t *testing.T) {
	l := newLab(t, nil)
	release := make(chan struct{})
	l.wrap = func(e *countingExport) { e.hold = release }
	c := l.start()
	c.goExport("disk")
	negotiating := l.start()
	for i := range 4 {
		c.request(cmdRead, 0, uint64(i), 0, 4096, nil)
	}
	for l.exports()[0].inside.Load() < 4 {
		time.Sleep(time.Millisecond)
	}
	done := make(chan error, 1)
	go func() { done <- l.s.Shutdown(context.Background()) }()
	if !negotiating.closed() {
		t.Error("negotiating connection not closed by Shutdown")
	}
	select {
	case err := <-done:
		t.Fatalf("Shutdown returned (%v) with requests in flight", err)
	case <-time.After(100 * time.Millisecond):
	}
	close(release)
	for range 4 {
		errno, _ := c.readReply()
		if errno != 0 {
			t.Errorf("request in flight at Shutdown: errno %d, want 0", errno)
		}
		io.ReadFull(c.br, make([]byte, 4096))
	}
	if err := <-done; err != nil {
		t.Errorf("Shutdown: %v", err)
	}
	if !c.closed() {
		t.Error("connection not closed after Shutdown")
	}
	if got := l.exports()[0].closes.Load(); got != 1 {
		t.Errorf("export closed %d times, want 1", got)
	}
	l.log.wait(t, "reason=\"server shutting down\"")
}

// TestShutdownDeadline: when Shutdown's context ends first, connections
// close at once and it returns the context's error.
func TestShutdownDeadline(t *testing.T) {
	l := newLab(t, nil)
	release := make(chan struct{})
	l.wrap = func(e *countingExport) { e.hold = release }
	c := l.start()
	c.goExport("disk")
	c.request(cmdRead, 0, 1, 0, 4096, nil)
	for l.exports()[0].inside.Load() < 1 {
		time.Sleep(time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := l.s.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Shutdown: got %v, want %v", err, context.DeadlineExceeded)
	}
	if !c.closed() {
		t.Error("connection not closed after Shutdown's deadline")
	}
	close(release)
}

func TestCloseExport(t *testing.T) {
	l := newLab(t, nil)
	a, b, o := l.start(), l.start(), l.start()
	a.goExport("disk")
	b.goExport("disk")
	o.goExport("other")
	if got := len(l.s.Conns()); got != 3 {
		t.Fatalf("Conns: got %d, want 3", got)
	}
	if got := l.s.CloseExport("disk"); got != 2 {
		t.Errorf("CloseExport(disk): got %d, want 2", got)
	}
	// Both exports are closed when CloseExport returns.
	closed := 0
	for _, e := range l.exports() {
		closed += int(e.closes.Load())
	}
	if closed != 2 {
		t.Errorf("exports closed when CloseExport returned: got %d, want 2", closed)
	}
	if !a.closed() || !b.closed() {
		t.Error("a connection on the closed export is still open")
	}
	if errno, _ := o.do(cmdRead, 0, 0, 512, nil); errno != 0 {
		t.Errorf("READ on the other export: errno %d", errno)
	}
	if got := l.s.Conns(); len(got) != 1 || got[0].Export != "other" {
		t.Errorf("Conns: got %+v, want one on other", got)
	}
	if got := l.s.CloseExport("nothing"); got != 0 {
		t.Errorf("CloseExport(nothing): got %d, want 0", got)
	}
	l.log.wait(t, `reason="export closed by the server"`)
}

func TestIdleTimeout(t *testing.T) {
	l := newLab(t, func(s *Server) { s.IdleTimeout = time.Second })
	c := l.start()
	c.goExport("disk")
	// Busy for longer than the timeout: not idle.
	for range 20 {
		if errno, _ := c.do(cmdRead, 0, 0, 512, nil); errno != 0 {
			t.Fatalf("errno %d", errno)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if !c.closed() {
		t.Fatal("idle connection not closed")
	}
	l.log.wait(t, "closing idle connection")
}

// TestDisc: NBD_CMD_DISC answers what is in flight, then closes.
func TestDisc(t *testing.T) {
	l := newLab(t, nil)
	c := l.start()
	c.goExport("disk")
	data := make([]byte, 1<<20)
	for i := range data {
		data[i] = byte(rand.N(256))
	}
	c.request(cmdWrite, 0, 7, 0, uint32(len(data)), data)
	c.request(cmdDisc, 0, 8, 0, 0, nil)
	if errno, cookie := c.readReply(); errno != 0 || cookie != 7 {
		t.Errorf("WRITE before DISC: errno %d cookie %d", errno, cookie)
	}
	if !c.closed() {
		t.Error("connection open after NBD_CMD_DISC")
	}
	l.log.wait(t, "NBD_CMD_DISC")
	got, err := os.ReadFile(filepath.Join(l.dir, "disk"))
	if err != nil || !bytes.Equal(got, data) {
		t.Errorf("file after the write: %v, equal %v", err, bytes.Equal(got, data))
	}
}
