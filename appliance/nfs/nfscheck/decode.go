package nfscheck

import (
	"encoding/binary"
	"fmt"
)

// dec reads XDR (RFC 4506) strictly: a short read, a bool other than 0
// or 1, a length over its bound, non-zero padding or a value outside an
// enum stops it with the offset and what it was reading.
type dec struct {
	b   []byte
	off int
	err *fault
}

type fault struct {
	off    int
	reason string
}

func (d *dec) failf(format string, args ...any) {
	if d.err == nil {
		d.err = &fault{off: d.off, reason: fmt.Sprintf(format, args...)}
	}
}

func (d *dec) ok() bool { return d.err == nil }

func (d *dec) u32(what string) uint32 {
	if d.err != nil {
		return 0
	}
	if len(d.b)-d.off < 4 {
		d.failf("%s: message ends %d bytes in, need 4", what, len(d.b)-d.off)
		return 0
	}
	v := binary.BigEndian.Uint32(d.b[d.off:])
	d.off += 4
	return v
}

func (d *dec) u64(what string) uint64 {
	if d.err != nil {
		return 0
	}
	if len(d.b)-d.off < 8 {
		d.failf("%s: message ends %d bytes in, need 8", what, len(d.b)-d.off)
		return 0
	}
	v := binary.BigEndian.Uint64(d.b[d.off:])
	d.off += 8
	return v
}

func (d *dec) bool(what string) bool {
	at := d.off
	v := d.u32(what)
	if d.err != nil {
		return false
	}
	if v > 1 {
		d.off = at
		d.failf("%s: bool is %d, want 0 or 1", what, v)
		return false
	}
	return v == 1
}

// enum reads a value that must be one of names' keys.
func (d *dec) enum(what string, names map[uint32]string) uint32 {
	at := d.off
	v := d.u32(what)
	if d.err != nil {
		return 0
	}
	if _, ok := names[v]; !ok {
		d.off = at
		d.failf("%s: %d is not a value of the enum", what, v)
	}
	return v
}

// fixed reads n bytes and their padding, which must be zero.
func (d *dec) fixed(what string, n int) []byte {
	if d.err != nil {
		return nil
	}
	padded := (n + 3) &^ 3
	if n < 0 || len(d.b)-d.off < padded {
		d.failf("%s: %d bytes (padded to %d) announced, %d left in the message", what, n, padded, len(d.b)-d.off)
		return nil
	}
	v := d.b[d.off : d.off+n]
	for i := d.off + n; i < d.off+padded; i++ {
		if d.b[i] != 0 {
			d.off = i
			d.failf("%s: padding byte is %#x, want 0", what, d.b[i])
			return nil
		}
	}
	d.off += padded
	return v
}

// opaque reads variable-length data of at most max bytes (max < 0: no
// bound but the message).
func (d *dec) opaque(what string, max int) []byte {
	at := d.off
	n := d.u32(what + " length")
	if d.err != nil {
		return nil
	}
	if max >= 0 && uint64(n) > uint64(max) {
		d.off = at
		d.failf("%s: length %d over the bound of %d", what, n, max)
		return nil
	}
	if uint64(n) > uint64(len(d.b)) {
		d.off = at
		d.failf("%s: length %d, %d bytes left in the message", what, n, len(d.b)-d.off-4)
		return nil
	}
	return d.fixed(what, int(n))
}

func (d *dec) str(what string, max int) string { return string(d.opaque(what, max)) }

// end checks that nothing is left over.
func (d *dec) end() {
	if d.err == nil && d.off != len(d.b) {
		d.failf("%d bytes left over after the reply", len(d.b)-d.off)
	}
}

// list reads an XDR optional-data list ("*next" chains): a TRUE before
// each element, FALSE after the last.
func (d *dec) list(what string, elem func(i int)) int {
	n := 0
	for d.ok() && d.bool(fmt.Sprintf("%s[%d] follows", what, n)) {
		elem(n)
		n++
	}
	return n
}
