package nbd

import (
	"bytes"
	"encoding/binary"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

const wantFlags = flagHasFlags | flagSendFlush | flagSendFUA | flagSendTrim | flagSendZeroes | flagCanMultiConn

func TestExportName(t *testing.T) {
	for _, tc := range []struct {
		name        string
		clientFlags uint32
		wantLen     int // bytes after the option: size, flags and the 124 zeroes unless NO_ZEROES
	}{
		{"no zeroes", flagFixedNewstyle | flagNoZeroes, 10},
		{"with zeroes", flagFixedNewstyle, 10 + 124},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := newLab(t, nil)
			c := l.dial()
			c.write(binary.BigEndian.AppendUint32(nil, tc.clientFlags))
			c.option(optExportName, []byte("disk"))
			b := make([]byte, tc.wantLen)
			if _, err := io.ReadFull(c.br, b); err != nil {
				t.Fatalf("reading the NBD_OPT_EXPORT_NAME answer: %v", err)
			}
			if got, want := binary.BigEndian.Uint64(b), uint64(labSizes["disk"]); got != want {
				t.Errorf("size: got %d, want %d", got, want)
			}
			if got, want := binary.BigEndian.Uint16(b[8:]), uint16(wantFlags); got != want {
				t.Errorf("transmission flags: got %#x, want %#x", got, want)
			}
			if !bytes.Equal(b[10:], make([]byte, tc.wantLen-10)) {
				t.Errorf("padding is not zeroes: %x", b[10:])
			}
			// Transmission follows at once: a write reads back.
			if errno, _ := c.do(cmdWrite, 0, 4096, 5, []byte("hello")); errno != 0 {
				t.Fatalf("WRITE: errno %d", errno)
			}
			errno, data := c.do(cmdRead, 0, 4096, 5, nil)
			if errno != 0 || string(data) != "hello" {
				t.Errorf("READ: got errno %d data %q, want 0 %q", errno, data, "hello")
			}
			if got := l.s.Conns(); len(got) != 1 || got[0].Export != "disk" || got[0].BytesRead != 5 || got[0].BytesWritten != 5 || !got[0].Remote.Addr().IsLoopback() {
				t.Errorf("Conns: got %+v, want one on disk from loopback with 5 bytes read and written", got)
			}
		})
	}
}

func TestGoAndInfo(t *testing.T) {
	l := newLab(t, nil)
	c := l.start()
	// INFO first: every requested item, and the export closed again.
	c.option(optInfo, infoData("other", infoBlockSize, infoName, 0x7777))
	got := map[uint16][]byte{}
	for {
		r := c.readOptReply()
		if r.opt != optInfo {
			t.Fatalf("reply for option %d, want %d", r.opt, optInfo)
		}
		if r.rep == repAck {
			break
		}
		if r.rep != repInfo {
			t.Fatalf("NBD_OPT_INFO: reply %#x %q", r.rep, r.data)
		}
		got[binary.BigEndian.Uint16(r.data)] = r.data[2:]
	}
	want := map[uint16][]byte{
		infoExport:    binary.BigEndian.AppendUint16(binary.BigEndian.AppendUint64(nil, uint64(labSizes["other"])), wantFlags),
		infoName:      []byte("other"),
		infoBlockSize: binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint32(nil, 1), 4096), MaxPayload),
	}
	if len(got) != len(want) {
		t.Errorf("NBD_OPT_INFO: got %d information replies, want %d: %x", len(got), len(want), got)
	}
	for k, w := range want {
		if !bytes.Equal(got[k], w) {
			t.Errorf("NBD_INFO %d: got %x, want %x", k, got[k], w)
		}
	}
	if ex := l.exports(); len(ex) != 1 || ex[0].closes.Load() != 1 {
		t.Fatalf("after NBD_OPT_INFO: %d exports opened, want 1 and closed again", len(ex))
	}
	size, flags := c.goExport("disk")
	if size != uint64(labSizes["disk"]) || flags != wantFlags {
		t.Errorf("NBD_OPT_GO: got size %d flags %#x, want %d %#x", size, flags, labSizes["disk"], wantFlags)
	}
	if errno, _ := c.do(cmdFlush, 0, 0, 0, nil); errno != 0 {
		t.Errorf("FLUSH: errno %d", errno)
	}
	if got := l.exports()[1].flushes.Load(); got != 1 {
		t.Errorf("flushes: got %d, want 1", got)
	}
}

// TestOptionErrors: refusals the client can recover from get an error
// reply and leave the negotiation open; the connection still reaches the
// export afterwards.
func TestOptionErrors(t *testing.T) {
	for _, tc := range []struct {
		name    string
		opt     uint32
		data    []byte
		rep     uint32
		wantMsg string // in the reply's message
		wantLog string
	}{
		{"unknown export", optGo, infoData("nope"), repErrUnknown, `no disk "nope"`, "unknown export"},
		{"info unknown", optInfo, infoData("nope", infoBlockSize), repErrUnknown, `no disk "nope"`, "unknown export"},
		{"policy", optGo, infoData("denied"), repErrPolicy, "for another node", "refused by policy"},
		{"unknown option", 42, []byte("0123456789"), repErrUnsup, "option 42 is not supported", ""},
		{"structured replies", optStructuredReply, nil, repErrUnsup, "STRUCTURED_REPLY is not supported", ""},
		{"meta context", optSetMetaContext, infoData("disk"), repErrUnsup, "not supported", ""},
		{"starttls", optStartTLS, nil, repErrPolicy, "does not offer TLS", ""},
		{"list with data", optList, []byte("x"), repErrInvalid, "takes no data", ""},
		{"go name too long", optGo, []byte{0, 0, 0, 9, 'd', 'i', 's', 'k', 0, 0}, repErrInvalid, "name length 9", ""},
		{"go missing infos", optGo, append(infoData("disk")[:8], 0, 3, 0, 1), repErrInvalid, "3 information requests announced", ""},
		{"go short", optGo, []byte{0, 0}, repErrInvalid, "want at least 6", ""},
		{"go NUL in name", optGo, infoData("di\x00sk"), repErrInvalid, "NUL", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := newLab(t, nil)
			c := l.start()
			c.option(tc.opt, tc.data)
			r := c.readOptReply()
			if r.opt != tc.opt || r.rep != tc.rep {
				t.Errorf("reply: got option %d type %#x, want %d %#x", r.opt, r.rep, tc.opt, tc.rep)
			}
			if !strings.Contains(string(r.data), tc.wantMsg) {
				t.Errorf("reply message: got %q, want it to contain %q", r.data, tc.wantMsg)
			}
			if tc.wantLog != "" {
				l.log.wait(t, tc.wantLog)
			}
			if size, _ := c.goExport("disk"); size != uint64(labSizes["disk"]) {
				t.Errorf("NBD_OPT_GO after the error: size %d", size)
			}
		})
	}
}

func TestList(t *testing.T) {
	l := newLab(t, nil)
	c := l.start()
	c.option(optList, nil)
	var got []string
	for {
		r := c.readOptReply()
		if r.rep == repAck {
			break
		}
		if r.rep != repServer || r.opt != optList {
			t.Fatalf("NBD_OPT_LIST: reply %d %#x", r.opt, r.rep)
		}
		n := binary.BigEndian.Uint32(r.data)
		if int(n) != len(r.data)-4 {
			t.Fatalf("NBD_REP_SERVER: name length %d in %d bytes", n, len(r.data))
		}
		got = append(got, string(r.data[4:]))
	}
	if strings.Join(got, ",") != "disk,other" {
		t.Errorf("NBD_OPT_LIST: got %q, want [disk other]", got)
	}

	// Without a List function nothing is shown.
	l2 := newLab(t, func(s *Server) { s.List = nil })
	c2 := l2.start()
	c2.option(optList, nil)
	if r := c2.readOptReply(); r.rep != repAck {
		t.Errorf("NBD_OPT_LIST without List: got reply %#x, want a bare NBD_REP_ACK", r.rep)
	}
}

func TestAbort(t *testing.T) {
	l := newLab(t, nil)
	c := l.start()
	c.option(optAbort, nil)
	if r := c.readOptReply(); r.opt != optAbort || r.rep != repAck {
		t.Errorf("NBD_OPT_ABORT: got reply %d %#x, want %d NBD_REP_ACK", r.opt, r.rep, optAbort)
	}
	if !c.closed() {
		t.Error("connection still open after NBD_OPT_ABORT")
	}
}

// TestClosingCases: input after which the negotiation cannot go on closes
// the connection with a log line saying why.
func TestClosingCases(t *testing.T) {
	optHeader := func(magic uint64, opt, length uint32) []byte {
		b := binary.BigEndian.AppendUint64(nil, magic)
		b = binary.BigEndian.AppendUint32(b, opt)
		return binary.BigEndian.AppendUint32(b, length)
	}
	for _, tc := range []struct {
		name      string
		send      []byte
		wantReply uint32 // an option reply before the close, if any
		wantLog   string
	}{
		{"non-fixed newstyle client", []byte{0, 0, 0, 0}, 0, "lack NBD_FLAG_C_FIXED_NEWSTYLE"},
		{"unknown client flags", []byte{0, 0, 0, 5}, 0, "unknown bits"},
		{"http client", []byte("GET / HTTP/1.1\r\n\r\n"), 0, "unknown bits"},
		{"bad option magic", append([]byte{0, 0, 0, 3}, optHeader(0x1122334455667788, optGo, 0)...), 0, "option magic 0x1122334455667788"},
		{"request during negotiation", append([]byte{0, 0, 0, 3}, optHeader(uint64(magicRequest)<<32, 0, 0)...), 0, "transmission request during negotiation"},
		{"oversized option", append([]byte{0, 0, 0, 3}, optHeader(magicOpt, optGo, 0xffffffff)...), repErrTooBig, "over the limit of 8192"},
		{"oversized unknown option", append([]byte{0, 0, 0, 3}, optHeader(magicOpt, 99, 1<<30)...), repErrTooBig, "over the limit"},
		{"export name unknown", append(append([]byte{0, 0, 0, 3}, optHeader(magicOpt, optExportName, 4)...), "nope"...), 0, `NBD_OPT_EXPORT_NAME \"nope\" refused`},
		{"export name denied", append(append([]byte{0, 0, 0, 3}, optHeader(magicOpt, optExportName, 6)...), "denied"...), 0, "refused by policy"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := newLab(t, nil)
			c := l.dial()
			c.write(tc.send)
			if tc.wantReply != 0 {
				if r := c.readOptReply(); r.rep != tc.wantReply {
					t.Errorf("reply: got %#x, want %#x", r.rep, tc.wantReply)
				}
			}
			if !c.closed() {
				t.Error("connection not closed")
			}
			l.log.wait(t, tc.wantLog)
			if len(l.s.Conns()) != 0 {
				t.Errorf("Conns: got %v, want none", l.s.Conns())
			}
		})
	}
}

func TestHandshakeTimeout(t *testing.T) {
	l := newLab(t, func(s *Server) { s.HandshakeTimeout = 300 * time.Millisecond })
	c := l.dial() // and then say nothing, as an oldstyle client would
	if !c.closed() {
		t.Fatal("connection not closed after the handshake timeout")
	}
	l.log.wait(t, "an oldstyle client?")

	// The limit is for the whole negotiation, not each read.
	c = l.start()
	start := time.Now()
	for time.Since(start) < 2*time.Second {
		c.option(optList, nil)
		if _, err := c.br.Peek(1); err != nil {
			break
		}
		for r := c.readOptReply(); r.rep != repAck; r = c.readOptReply() {
		}
		time.Sleep(50 * time.Millisecond)
	}
	if !c.closed() {
		t.Fatal("a client sending options for 2 s was not closed by a 300 ms handshake timeout")
	}
}

func TestMaxConns(t *testing.T) {
	l := newLab(t, func(s *Server) { s.MaxConns = 2 })
	a, b := l.start(), l.start()
	a.goExport("disk")
	b.goExport("other")
	c, err := net.Dial("tcp", l.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := c.Read(make([]byte, 1)); n != 0 || err == nil {
		t.Errorf("third connection over MaxConns 2: read %d bytes, err %v; want it closed at once", n, err)
	}
	l.log.wait(t, "too many connections")
	if got := len(l.s.Conns()); got != 2 {
		t.Errorf("Conns: got %d, want 2", got)
	}
}

// TestProbe: a client that connects and closes (a port probe, a health
// check) leaves an Info line, not a warning.
func TestProbe(t *testing.T) {
	l := newLab(t, nil)
	c := l.dial()
	c.nc.Close()
	l.log.wait(t, "level=INFO msg=\"nbd: client closed the connection after the greeting, without negotiating\"")
	if strings.Contains(l.log.String(), "level=WARN") {
		t.Errorf("a probe caused a warning:\n%s", l.log.String())
	}
}
