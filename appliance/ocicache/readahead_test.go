package ocicache

import (
	"bytes"
	"errors"
	"io"
	"testing"
	"testing/iotest"

	"github.com/ociboot/ociboot/appliance/ocicache/ocitest"
)

func TestReadAhead(t *testing.T) {
	src := ocitest.Random(7, 3<<20+12345)
	for _, tt := range []struct {
		name       string
		size, n    int
		readerWrap func(io.Reader) io.Reader
	}{
		{"big buffers", 1 << 20, 4, func(r io.Reader) io.Reader { return r }},
		{"tiny buffers", 1000, 2, func(r io.Reader) io.Reader { return r }},
		{"one-byte source reads", 4096, 3, iotest.OneByteReader},
	} {
		ra := newReadAhead(tt.readerWrap(bytes.NewReader(src)), tt.size, tt.n)
		got, err := io.ReadAll(iotest.HalfReader(ra))
		ra.Close()
		if err != nil || !bytes.Equal(got, src) {
			t.Errorf("%s: got %d bytes, %v; want the %d source bytes", tt.name, len(got), err, len(src))
		}
	}
	boom := errors.New("boom")
	ra := newReadAhead(io.MultiReader(bytes.NewReader(src[:5000]), iotest.ErrReader(boom)), 1024, 2)
	got, err := io.ReadAll(ra)
	ra.Close()
	if !errors.Is(err, boom) || len(got) != 5000 {
		t.Errorf("error source: got %d bytes, %v; want 5000, boom", len(got), err)
	}
	// Closing early must not leak or block.
	ra = newReadAhead(bytes.NewReader(src), 1024, 2)
	ra.Read(make([]byte, 10))
	ra.Close()
}
