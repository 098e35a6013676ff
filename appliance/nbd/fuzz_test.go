package nbd

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ociboot/ociboot/appliance/testenv"
)

// memExport is an in-memory Export for the fuzzers (a file per execution
// would be most of their time).
type memExport struct {
	mu     sync.RWMutex
	data   []byte
	closes *atomic.Int32
}

func (m *memExport) ReadAt(p []byte, off int64) (int, error) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	if off >= int64(len(m.data)) {
		return 0, io.EOF
	}
	n := copy(p, m.data[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (m *memExport) WriteAt(p []byte, off int64) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if off+int64(len(p)) > int64(len(m.data)) {
		return 0, fmt.Errorf("write past the end at %d+%d", off, len(p))
	}
	return copy(m.data[off:], p), nil
}

func (m *memExport) Size() int64  { return int64(len(m.data)) }
func (m *memExport) Flush() error { return nil }
func (m *memExport) Trim(off, n int64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	clear(m.data[off : off+n])
	return nil
}
func (m *memExport) Close() error { m.closes.Add(1); return nil }

// errorLog records Error-level log lines: the server logs a recovered
// panic at Error, and a fuzzer must see it.
type errorLog struct {
	mu    sync.Mutex
	lines []string
}

func (e *errorLog) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelError }
func (e *errorLog) Handle(_ context.Context, r slog.Record) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	line := r.Message
	r.Attrs(func(a slog.Attr) bool { line += " " + a.String(); return true })
	e.lines = append(e.lines, line)
	return nil
}
func (e *errorLog) WithAttrs([]slog.Attr) slog.Handler { return e }
func (e *errorLog) WithGroup(string) slog.Handler      { return e }

// fuzzServer serves "disk" (256 KiB) to everyone and refuses "denied";
// opened and closes count Lookups and Closes.
type fuzzServer struct {
	s       *Server
	log     *errorLog
	opened  atomic.Int32
	closes  atomic.Int32
	lastExp atomic.Pointer[memExport]
}

func newFuzzServer() *fuzzServer {
	fs := &fuzzServer{log: &errorLog{}}
	fs.s = &Server{
		Logger:  slog.New(fs.log),
		Workers: 4,
		Lookup: func(ctx context.Context, name string, remote netip.AddrPort) (Export, error) {
			switch name {
			case "disk":
				fs.opened.Add(1)
				e := &memExport{data: make([]byte, 256<<10), closes: &fs.closes}
				fs.lastExp.Store(e)
				return e, nil
			case "denied":
				return nil, fmt.Errorf("not yours: %w", ErrPolicy)
			}
			return nil, fmt.Errorf("no %q: %w", name, ErrUnknownExport)
		},
		List: func(netip.AddrPort) []string { return []string{"disk"} },
	}
	fs.s.init()
	return fs
}

// run feeds input to a server connection over net.Pipe as the client's
// byte stream, closes the client side when all is written (or the server
// stopped reading) and returns what the server sent. The connection must
// end, and every export it opened must be closed once.
func (fs *fuzzServer) run(t *testing.T, input []byte) []byte {
	cs, ss := net.Pipe()
	wc := &watchConn{Conn: ss}
	c := newConn(fs.s, wc)
	fs.s.mu.Lock()
	fs.s.conns[c] = struct{}{}
	fs.s.connWG.Add(1)
	fs.s.mu.Unlock()
	go c.serve()
	var out bytes.Buffer
	readDone := make(chan struct{})
	go func() {
		io.Copy(&out, cs)
		close(readDone)
	}()
	cs.Write(input) // returns early once the server closed: the rest is unread
	// Let the server answer everything before the client goes away, so
	// that the replies are checked too: it is done when it waits for more
	// input with no request in flight, or when it closed.
	deadline := time.Now().Add(2 * time.Second)
wait:
	for time.Now().Before(deadline) {
		select {
		case <-c.done:
			break wait
		default:
		}
		// total before reading: a Read that returned the last bytes
		// has cleared reading before counting them.
		if wc.total.Load() == int64(len(input)) && wc.reading.Load() && c.inflight.Load() == 0 {
			break
		}
		time.Sleep(20 * time.Microsecond)
	}
	cs.Close()
	select {
	case <-c.done:
	case <-time.After(10 * time.Second):
		t.Fatalf("server connection still running 10 s after the client closed")
	}
	<-readDone
	if o, cl := fs.opened.Load(), fs.closes.Load(); o != cl {
		t.Fatalf("%d exports opened, %d closed", o, cl)
	}
	fs.log.mu.Lock()
	defer fs.log.mu.Unlock()
	if len(fs.log.lines) > 0 {
		t.Fatalf("server logged errors: %q", fs.log.lines)
	}
	return out.Bytes()
}

// watchConn tells when the server waits in Read for input, and how much
// it read.
type watchConn struct {
	net.Conn
	reading atomic.Bool
	total   atomic.Int64
}

func (w *watchConn) Read(p []byte) (int, error) {
	w.reading.Store(true)
	n, err := w.Conn.Read(p)
	w.reading.Store(false)
	w.total.Add(int64(n))
	return n, err
}

// Builders for client streams (seeds and tests).

func optBytes(opt uint32, data []byte) []byte {
	b := binary.BigEndian.AppendUint64(nil, magicOpt)
	b = binary.BigEndian.AppendUint32(b, opt)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	return append(b, data...)
}

func reqBytes(typ, flags uint16, cookie, off uint64, length uint32, payload []byte) []byte {
	b := binary.BigEndian.AppendUint32(nil, magicRequest)
	b = binary.BigEndian.AppendUint16(b, flags)
	b = binary.BigEndian.AppendUint16(b, typ)
	b = binary.BigEndian.AppendUint64(b, cookie)
	b = binary.BigEndian.AppendUint64(b, off)
	b = binary.BigEndian.AppendUint32(b, length)
	return append(b, payload...)
}

func concat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

var clientFlags = []byte{0, 0, 0, flagFixedNewstyle | flagNoZeroes}

// goPrefix is the negotiation FuzzRequest's inputs follow.
var goPrefix = concat(clientFlags, optBytes(optGo, infoData("disk")))

// goPrefixReply is how many bytes the server answers goPrefix with:
// greeting, NBD_INFO_EXPORT, NBD_REP_ACK.
const goPrefixReply = greetingLength + 20 + 12 + 20

func negotiateSeeds() [][]byte {
	return [][]byte{
		concat(clientFlags, optBytes(optGo, infoData("disk", infoBlockSize, infoName)), reqBytes(cmdRead, 0, 1, 0, 512, nil), reqBytes(cmdDisc, 0, 2, 0, 0, nil)),
		concat(clientFlags, optBytes(optExportName, []byte("disk")), reqBytes(cmdWrite, cmdFlagFUA, 1, 512, 4, []byte("abcd"))),
		concat([]byte{0, 0, 0, flagFixedNewstyle}, optBytes(optExportName, []byte("disk"))),
		concat(clientFlags, optBytes(optInfo, infoData("disk", infoBlockSize)), optBytes(optList, nil), optBytes(optAbort, nil)),
		concat(clientFlags, optBytes(optStructuredReply, nil), optBytes(optStartTLS, nil), optBytes(optSetMetaContext, infoData("disk")), optBytes(99, []byte("xyz")), optBytes(optGo, infoData("disk"))),
		concat(clientFlags, optBytes(optGo, infoData("nope")), optBytes(optGo, infoData("denied")), optBytes(optInfo, []byte{0, 0, 0, 40, 1})),
		concat(clientFlags, optBytes(optList, []byte("junk")), optBytes(optExportName, []byte("nope"))),
		concat(clientFlags, binary.BigEndian.AppendUint64(nil, magicOpt), []byte{0, 0, 0, 7, 0xff, 0xff, 0xff, 0xff}),
		concat(clientFlags, []byte("IHAVEOPX")),
		{0, 0, 0, 0},
		{0xff, 0xff, 0xff, 0xff},
	}
}

func requestSeeds() [][]byte {
	return [][]byte{
		reqBytes(cmdRead, 0, 1, 0, 4096, nil),
		concat(reqBytes(cmdWrite, 0, 1, 0, 8, []byte("abcdefgh")), reqBytes(cmdRead, 0, 2, 0, 8, nil), reqBytes(cmdFlush, 0, 3, 0, 0, nil)),
		concat(reqBytes(cmdTrim, cmdFlagFUA, 1, 4096, 8192, nil), reqBytes(cmdWriteZeroes, cmdFlagNoHole, 2, 0, 4096, nil), reqBytes(cmdWriteZeroes, 0, 3, 8192, 4096, nil)),
		concat(reqBytes(cmdCache, 0, 1, 0, 4096, nil), reqBytes(7, 0, 2, 0, 4096, nil), reqBytes(cmdRead, 0, 3, 1<<62, 10, nil), reqBytes(cmdWrite, 0, 4, 256<<10, 1, []byte{1})),
		concat(reqBytes(cmdRead, cmdFlagDF, 1, 0, 1, nil), reqBytes(cmdRead, 0, 2, 0, MaxPayload+1, nil), reqBytes(cmdDisc, 0, 3, 0, 0, nil)),
		reqBytes(cmdWrite, 0, 1, 0, 0xffffffff, nil),
		concat(reqBytes(cmdWrite, 0, 9, 0, 4, []byte("ab")), []byte("cd")),
		make([]byte, 28),
	}
}

// FuzzNegotiate feeds a client byte stream (client flags, options, and
// requests if it gets there) into a server connection: nothing may panic
// or hang, every opened export is closed, and what the server sends is the
// greeting followed by option replies answering options the client sent.
func FuzzNegotiate(f *testing.F) {
	for _, s := range negotiateSeeds() {
		f.Add(s)
	}
	fs := newFuzzServer()
	f.Fuzz(func(t *testing.T, input []byte) {
		out := fs.run(t, input)
		if len(out) < greetingLength || binary.BigEndian.Uint64(out) != magicInit || binary.BigEndian.Uint64(out[8:]) != magicOpt {
			t.Fatalf("server output does not start with the greeting: %x", out)
		}
		sent := map[uint32]bool{}
		for in := input[min(4, len(input)):]; len(in) >= 16 && binary.BigEndian.Uint64(in) == magicOpt; {
			sent[binary.BigEndian.Uint32(in[8:])] = true
			n := uint64(binary.BigEndian.Uint32(in[12:]))
			if n > uint64(len(in)-16) {
				break
			}
			in = in[16+n:]
		}
		for rest := out[greetingLength:]; len(rest) >= 20 && binary.BigEndian.Uint64(rest) == magicOptReply; {
			opt, n := binary.BigEndian.Uint32(rest[8:]), binary.BigEndian.Uint32(rest[16:])
			if !sent[opt] {
				t.Fatalf("reply to option %d, which the client did not send", opt)
			}
			if n > maxName+64 {
				t.Fatalf("option reply with %d bytes of data", n)
			}
			if uint64(n) > uint64(len(rest)-20) {
				break // cut off by the client's close
			}
			rest = rest[20+n:]
		}
	})
}

// FuzzRequest feeds a transmission-phase byte stream to a connection that
// negotiated "disk" (256 KiB): nothing may panic or hang, and every reply
// is a simple reply to a request of the stream, with a READ's data when it
// succeeded.
func FuzzRequest(f *testing.F) {
	for _, s := range requestSeeds() {
		f.Add(s)
	}
	fs := newFuzzServer()
	f.Fuzz(func(t *testing.T, input []byte) {
		out := fs.run(t, concat(goPrefix, input))
		if len(out) < goPrefixReply {
			t.Fatalf("negotiation answered with %d bytes, want %d", len(out), goPrefixReply)
		}
		out = out[goPrefixReply:]
		// The requests of the stream, by cookie; a cookie used for
		// requests of different kinds makes the replies ambiguous.
		type sent struct {
			read   bool
			length uint32
			n      int
		}
		reqs := map[uint64]*sent{}
		ambiguous := false
		for in := input; len(in) >= requestHeaderLength && binary.BigEndian.Uint32(in) == magicRequest; {
			r, _ := decodeRequest(in)
			in = in[requestHeaderLength:]
			if r.typ == cmdDisc {
				break
			}
			if s := reqs[r.cookie]; s != nil {
				if s.read != (r.typ == cmdRead) || s.length != r.length {
					ambiguous = true
				}
				s.n++
			} else {
				reqs[r.cookie] = &sent{read: r.typ == cmdRead, length: r.length, n: 1}
			}
			if r.typ == cmdWrite {
				if r.length > MaxPayload || uint64(r.length) > uint64(len(in)) {
					break
				}
				in = in[r.length:]
			}
		}
		for len(out) > 0 {
			if len(out) < replyHeaderLength {
				t.Fatalf("%d bytes left, not a reply", len(out))
			}
			if m := binary.BigEndian.Uint32(out); m != magicReply {
				t.Fatalf("reply magic %#x", m)
			}
			errno, cookie := binary.BigEndian.Uint32(out[4:]), binary.BigEndian.Uint64(out[8:])
			out = out[replyHeaderLength:]
			s := reqs[cookie]
			if s == nil || s.n == 0 {
				t.Fatalf("reply (errno %d) to cookie %#x, which no request in flight has", errno, cookie)
			}
			s.n--
			if ambiguous {
				return
			}
			if s.read && errno == 0 {
				if uint64(len(out)) < uint64(s.length) {
					return // cut off by the client's close
				}
				out = out[s.length:]
			}
		}
	})
}

// TestWriteFuzzSeeds regenerates testdata/fuzz when OCIBOOT_WRITE_SEEDS=1.
func TestWriteFuzzSeeds(t *testing.T) {
	testenv.OptIn(t, "OCIBOOT_WRITE_SEEDS", "rewriting the seed corpus")
	for name, seeds := range map[string][][]byte{"FuzzNegotiate": negotiateSeeds(), "FuzzRequest": requestSeeds()} {
		dir := filepath.Join("testdata", "fuzz", name)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for i, s := range seeds {
			body := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", s)
			if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("seed-%02d", i)), []byte(body), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// TestFuzzSeedsReachTransmission checks that run does what the fuzzers
// need: a stream after goPrefix reaches the export, and every reply comes
// back before the client closes. (The READ may run before the WRITE: the
// server runs requests in flight in any order, as the protocol allows.)
func TestFuzzSeedsReachTransmission(t *testing.T) {
	fs := newFuzzServer()
	out := fs.run(t, concat(goPrefix, reqBytes(cmdWrite, 0, 1, 100, 3, []byte("abc")), reqBytes(cmdRead, 0, 2, 100, 3, nil)))
	if len(out) != goPrefixReply+2*replyHeaderLength+3 {
		t.Errorf("server output %x: want the negotiation, two replies and the data read", out)
	}
	if e := fs.lastExp.Load(); e == nil || string(e.data[100:103]) != "abc" {
		t.Errorf("the export does not hold the write")
	}
}
