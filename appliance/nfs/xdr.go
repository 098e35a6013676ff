package nfs

import (
	"encoding/binary"
	"errors"
)

// errGarbage means the arguments could not be decoded; the caller answers
// GARBAGE_ARGS instead of guessing.
var errGarbage = errors.New("nfs: malformed XDR")

// reader decodes XDR (RFC 4506) from one message. Every method checks the
// remaining length first, so a truncated or hostile message yields
// errGarbage, never a panic or a huge allocation.
type reader struct {
	b   []byte
	err error
}

func (r *reader) fail() {
	if r.err == nil {
		r.err = errGarbage
	}
	r.b = nil
}

func (r *reader) uint32() uint32 {
	if len(r.b) < 4 {
		r.fail()
		return 0
	}
	v := binary.BigEndian.Uint32(r.b)
	r.b = r.b[4:]
	return v
}

func (r *reader) uint64() uint64 {
	if len(r.b) < 8 {
		r.fail()
		return 0
	}
	v := binary.BigEndian.Uint64(r.b)
	r.b = r.b[8:]
	return v
}

func (r *reader) bool() bool {
	switch r.uint32() {
	case 0:
		return false
	case 1:
		return true
	}
	r.fail()
	return false
}

// opaque reads variable-length opaque data of at most max bytes. The result
// aliases the message buffer.
func (r *reader) opaque(max int) []byte {
	n := r.uint32()
	if r.err != nil {
		return nil
	}
	if uint64(n) > uint64(max) {
		r.fail()
		return nil
	}
	return r.fixed(int(n))
}

// fixed reads n bytes plus XDR padding to a multiple of four.
func (r *reader) fixed(n int) []byte {
	padded := (n + 3) &^ 3
	if n < 0 || len(r.b) < padded {
		r.fail()
		return nil
	}
	v := r.b[:n:n]
	r.b = r.b[padded:]
	return v
}

func (r *reader) string(max int) string { return string(r.opaque(max)) }

// writer encodes XDR into a growing buffer.
type writer struct {
	b []byte
}

func (w *writer) uint32(v uint32) { w.b = binary.BigEndian.AppendUint32(w.b, v) }
func (w *writer) uint64(v uint64) { w.b = binary.BigEndian.AppendUint64(w.b, v) }

func (w *writer) bool(v bool) {
	if v {
		w.uint32(1)
	} else {
		w.uint32(0)
	}
}

func (w *writer) opaque(v []byte) {
	w.uint32(uint32(len(v)))
	w.fixed(v)
}

func (w *writer) fixed(v []byte) {
	w.b = append(w.b, v...)
	for len(w.b)%4 != 0 {
		w.b = append(w.b, 0)
	}
}

func (w *writer) string(s string) {
	w.uint32(uint32(len(s)))
	w.b = append(w.b, s...)
	for len(w.b)%4 != 0 {
		w.b = append(w.b, 0)
	}
}
