package nfscheck

import (
	"bytes"
	"encoding/binary"
	"errors"
	"strings"
	"testing"
)

// x builds XDR words and byte strings by hand for the cases below.
func x(parts ...any) []byte {
	var b []byte
	for _, p := range parts {
		switch v := p.(type) {
		case int:
			b = binary.BigEndian.AppendUint32(b, uint32(v))
		case uint64:
			b = binary.BigEndian.AppendUint64(b, v)
		case string: // opaque<> / string<>
			b = binary.BigEndian.AppendUint32(b, uint32(len(v)))
			b = append(b, v...)
			for len(b)%4 != 0 {
				b = append(b, 0)
			}
		case []byte: // raw
			b = append(b, v...)
		}
	}
	return b
}

func call(prog, vers, proc int) []byte { return x(0x1234, 0, 2, prog, vers, proc) }

var accepted = x(0x1234, 1, 0, 0, 0) // xid, REPLY, MSG_ACCEPTED, AUTH_NONE verifier

func ok(body ...any) []byte { return acc(append([]any{0}, body...)...) }

// acc is an accepted reply with the given accept_stat and body.
func acc(parts ...any) []byte { return append(append([]byte(nil), accepted...), x(parts...)...) }

// fattr3 of a directory.
var fattr = x(2, 0o755, 2, 0, 0, uint64(4096), uint64(4096), 0, 0, uint64(1), uint64(99), 1, 2, 3, 4, 5, 6)

var wcc = x(1, uint64(4096), 1, 2, 3, 4, 1, fattr)

func TestReply(t *testing.T) {
	for _, tc := range []struct {
		name        string
		call, reply []byte
		want        string // "" for well-formed, else part of the reason
	}{
		{"NULL", call(100003, 3, 0), ok(), ""},
		{"NULL with a word left over", call(100003, 3, 0), ok(7), "4 bytes left over"},
		{"GETATTR", call(100003, 3, 1), ok(0, fattr), ""},
		{"GETATTR failure", call(100003, 3, 1), ok(70), ""},
		{"GETATTR with an unknown status", call(100003, 3, 1), ok(12345), "not a value of the enum"},
		{"GETATTR with ftype 9", call(100003, 3, 1), ok(0, append(x(9), fattr[4:]...)), "type: 9"},
		{"LOOKUP", call(100003, 3, 3), ok(0, "handle", 1, fattr, 0), ""},
		{"LOOKUP failure without dir attributes", call(100003, 3, 3), ok(2), "message ends"},
		{"CREATE failure", call(100003, 3, 8), ok(17, wcc), ""},
		// The shape issue 19 found: a FALSE in front of wcc_data.
		{"CREATE failure with a word in front of wcc_data", call(100003, 3, 8), ok(17, 0, wcc), "type"},
		{"CREATE", call(100003, 3, 8), ok(0, 1, "fh", 1, fattr, wcc), ""},
		{"READ", call(100003, 3, 6), ok(0, 0, 5, 1, "hello"), ""},
		{"READ with count beside the data", call(100003, 3, 6), ok(0, 0, 4, 1, "hello"), "count is 4"},
		{"READ with non-zero padding", call(100003, 3, 6), ok(0, 0, 1, 1, []byte{0, 0, 0, 1, 'h', 'x', 0, 0}), "padding"},
		{"WRITE with committed 3", call(100003, 3, 7), ok(0, 0, 0, 5, 3, "12345678"[:0], []byte("12345678")), "committed"},
		{"READDIRPLUS", call(100003, 3, 17), ok(0, 0, []byte("verfverf"), 1, uint64(5), "a", uint64(1), 1, fattr, 1, "fh", 0, 1), ""},
		{"READDIRPLUS with a bool of 2", call(100003, 3, 17), ok(0, 0, []byte("verfverf"), 2), "bool is 2"},
		{"RENAME failure", call(100003, 3, 14), ok(13, 0, 0, 0, 0), ""},
		{"nseconds out of range", call(100003, 3, 1), ok(0, append(append([]byte(nil), fattr[:len(fattr)-4]...), x(1e9)...)), "nseconds"},
		{"MNT", call(100005, 3, 1), ok(0, "fh", 1, 1), ""},
		{"MNT failure with a handle", call(100005, 3, 1), ok(13, "fh"), "left over"},
		{"EXPORT", call(100005, 3, 5), ok(1, "/nodes/a", 1, "10.0.0.0/8", 0, 0), ""},
		{"GETPORT", call(100000, 2, 3), ok(2049), ""},
		{"GETADDR", call(100000, 4, 3), ok("127.0.0.1.8.1"), ""},
		{"GETADDR with a bad uaddr", call(100000, 4, 3), ok("localhost"), "universal address"},
		{"rpcbind DUMP", call(100000, 3, 4), ok(1, 100003, 3, "tcp", "127.0.0.1.8.1", "superuser", 0), ""},
		{"SUCCESS for a program nobody defined", call(400000, 1, 0), ok(), "do not define"},
		{"PROG_MISMATCH", call(100003, 2, 0), acc(2, 3, 3), ""},
		{"PROG_MISMATCH with an empty range", call(100003, 2, 0), acc(2, 3, 2), "empty"},
		{"RPC_MISMATCH", x(0x1234, 0, 3), x(0x1234, 1, 1, 0, 2, 2), ""},
		{"AUTH_TOOWEAK", call(100003, 3, 1), x(0x1234, 1, 1, 1, 5), ""},
		{"wrong xid", call(100003, 3, 0), append(x(0x4321), ok()[4:]...), "xid"},
		{"a CALL for a reply", call(100003, 3, 0), x(0x1234, 0, 0, 0, 0, 0), "msg_type"},
		{"SUCCESS to a truncated call", x(0x1234, 0), ok(), "SUCCESS for a call too short"},
		{"GARBAGE_ARGS to a truncated call", x(0x1234, 0), acc(4), ""},
	} {
		err := Reply(tc.call, tc.reply)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s: %v", tc.name, err)
		case tc.want != "" && err == nil:
			t.Errorf("%s: accepted, want an error saying %q", tc.name, tc.want)
		case tc.want != "" && !strings.Contains(err.Error(), tc.want):
			t.Errorf("%s: error %q does not say %q", tc.name, err, tc.want)
		}
		var e *Error
		if err != nil && (!errors.As(err, &e) || !bytes.Equal(e.Reply, tc.reply)) {
			t.Errorf("%s: error %T does not carry the reply", tc.name, err)
		}
	}
}

func TestLog(t *testing.T) {
	var buf bytes.Buffer
	l := NewLog(&buf)
	l.Record(append(call(100003, 3, 1), make([]byte, 100)...), ok(0, fattr))
	l.Record(call(100003, 3, 8), ok(17, 0, wcc))
	l.Record(call(100005, 3, 0), ok())
	full := buf.Len()
	l.Record(call(100003, 3, 0), ok())
	s, err := CheckLog(bytes.NewReader(buf.Bytes()[:full+10]))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := s.Replies, 3; got != want {
		t.Errorf("replies: got %d, want %d", got, want)
	}
	if got, want := s.Bad, 1; got != want || len(s.Malformed) != 1 || !strings.Contains(s.Malformed[0].Error(), "NFSv3 CREATE (SUCCESS NFS3ERR_EXIST)") {
		t.Errorf("malformed: got %d %v, want %d (the CREATE)", got, s.Malformed, want)
	}
	if !s.Truncated {
		t.Errorf("a short last record is not reported")
	}
	if got, want := s.ByProc["NFSv3 GETATTR"], 1; got != want {
		t.Errorf("GETATTR count: got %d, want %d (%v)", got, want, s)
	}
}
