package ocicache

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
)

// stream lets the unpacker read a layer while it downloads: it follows the
// temp file Blobs.put writes, and reports the end of the layer only once
// put has checked its digest and renamed it into place. The image tree
// is renamed to its final name only after every layer ended so, so
// nothing unverified is ever taken for ready.
type stream struct {
	mu      sync.Mutex
	cond    *sync.Cond
	f       *os.File // the current attempt's temp file, open for reading
	n       int64    // bytes of it written
	read    bool     // a reader took bytes of this or an earlier attempt
	restart bool     // a later attempt began after bytes were read
	done    bool
	err     error // the download's result, once done
}

// errRestart says that a download the unpacker followed was retried after
// the unpacker had read part of it: the unpack starts over from the
// stored blobs, as those bytes were never verified.
var errRestart = errors.New("ocicache: a followed layer download was retried")

func newStream() *stream {
	s := &stream{}
	s.cond = sync.NewCond(&s.mu)
	return s
}

// begin starts an attempt writing to path.
func (s *stream) begin(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("ocicache: opening %s to follow it: %v", path, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.f != nil {
		s.f.Close()
	}
	s.f, s.n = f, 0
	if s.read {
		s.restart = true
	}
	s.cond.Broadcast()
	return nil
}

// grew wraps put's byte counter to also wake readers.
func (s *stream) grew(counted func(int)) func(int) {
	return func(n int) {
		s.mu.Lock()
		s.n += int64(n)
		s.mu.Unlock()
		s.cond.Broadcast()
		if counted != nil {
			counted(n)
		}
	}
}

// end records the download's final result.
func (s *stream) end(err error) {
	s.mu.Lock()
	s.done, s.err = true, err
	s.mu.Unlock()
	s.cond.Broadcast()
}

// close releases the file once nobody reads it any more.
func (s *stream) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.f != nil {
		s.f.Close()
		s.f = nil
	}
}

// reader reads the layer from its start as it arrives, until ctx ends.
func (s *stream) reader(ctx context.Context) io.Reader {
	context.AfterFunc(ctx, func() {
		s.mu.Lock()
		s.cond.Broadcast()
		s.mu.Unlock()
	})
	return &streamReader{s: s, ctx: ctx}
}

type streamReader struct {
	s   *stream
	ctx context.Context
	off int64
}

func (r *streamReader) Read(p []byte) (int, error) {
	s := r.s
	s.mu.Lock()
	for {
		switch {
		case r.ctx.Err() != nil:
			s.mu.Unlock()
			return 0, r.ctx.Err()
		case s.restart:
			s.mu.Unlock()
			return 0, errRestart
		case s.f != nil && r.off < s.n:
		case s.done && s.err != nil:
			err := s.err
			s.mu.Unlock()
			return 0, err
		case s.done:
			s.mu.Unlock()
			return 0, io.EOF
		default:
			s.cond.Wait()
			continue
		}
		break
	}
	s.read = true
	f, avail := s.f, s.n-r.off
	s.mu.Unlock()
	if int64(len(p)) > avail {
		p = p[:avail]
	}
	n, err := f.ReadAt(p, r.off)
	r.off += int64(n)
	if err != nil {
		s.mu.Lock()
		restart := s.restart
		s.mu.Unlock()
		if restart {
			// begin closed the file under us for a new attempt.
			return n, errRestart
		}
		if err == io.EOF && n > 0 {
			err = nil
		}
	}
	return n, err
}

// restarted reports whether an attempt began after bytes were read: what
// the reader saw may then have been bytes the digest check refused.
func (s *stream) restarted() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.restart
}
