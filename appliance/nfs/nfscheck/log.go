package nfscheck

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"sync"
)

// A reply log holds exchanges of a server, for checking after a test
// with a client nobody here wrote: one record per reply, the call's first
// CallHeadLen bytes and the whole reply (without record mark), each with
// a 4-byte big-endian length in front.

// Log writes a reply log. Each record goes out in one Write, so a server
// killed in the middle of a test leaves at most its last record short.
type Log struct {
	mu  sync.Mutex
	w   io.Writer
	buf []byte
	err error
}

// NewLog writes records to w.
func NewLog(w io.Writer) *Log { return &Log{w: w} }

// Record appends one exchange. After a failed write it records nothing
// more and returns that error.
func (l *Log) Record(call, reply []byte) error {
	if len(call) > CallHeadLen {
		call = call[:CallHeadLen]
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.err != nil {
		return l.err
	}
	b := binary.BigEndian.AppendUint32(l.buf[:0], uint32(len(call)))
	b = append(b, call...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(reply)))
	b = append(b, reply...)
	_, l.err = l.w.Write(b)
	if cap(b) <= 64<<10 {
		l.buf = b
	}
	return l.err
}

// Summary is what CheckLog found.
type Summary struct {
	Replies   int
	ByProc    map[string]int // replies by procedure name
	Malformed []error        // the first 20 malformed replies
	Bad       int            // how many were malformed
	Truncated bool           // the last record is short (the server was killed writing it)
}

func (s Summary) String() string {
	procs := make([]string, 0, len(s.ByProc))
	for p, n := range s.ByProc {
		procs = append(procs, fmt.Sprintf("%s %d", p, n))
	}
	sort.Strings(procs)
	cut := ""
	if s.Truncated {
		cut = "; the last record of a log is short (its server was killed while writing it)"
	}
	return fmt.Sprintf("%d replies, %d malformed (%s)%s", s.Replies, s.Bad, strings.Join(procs, ", "), cut)
}

// CheckLog decodes every reply in a reply log. The error is for a log
// that cannot be read; malformed replies are in the summary.
func CheckLog(r io.Reader) (Summary, error) {
	s := Summary{ByProc: map[string]int{}}
	br := bufio.NewReaderSize(r, 1<<20)
	readPart := func(limit uint32) ([]byte, error) {
		var n [4]byte
		if _, err := io.ReadFull(br, n[:]); err != nil {
			return nil, err
		}
		l := binary.BigEndian.Uint32(n[:])
		if l > limit {
			return nil, fmt.Errorf("record of %d bytes: not a reply log", l)
		}
		b := make([]byte, l)
		_, err := io.ReadFull(br, b)
		return b, err
	}
	for {
		call, err := readPart(CallHeadLen)
		if errors.Is(err, io.EOF) {
			return s, nil
		}
		var reply []byte
		if err == nil {
			reply, err = readPart(16 << 20)
		}
		if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
			s.Truncated = true
			return s, nil
		}
		if err != nil {
			return s, err
		}
		s.Replies++
		name := "?"
		if len(call) >= CallHeadLen {
			name = ProcName(binary.BigEndian.Uint32(call[12:]), binary.BigEndian.Uint32(call[16:]), binary.BigEndian.Uint32(call[20:]))
		}
		s.ByProc[name]++
		if err := Reply(call, reply); err != nil {
			s.Bad++
			if len(s.Malformed) < 20 {
				s.Malformed = append(s.Malformed, err)
			}
		}
	}
}

// CheckFiles checks the reply logs at paths (one per run of a server:
// a run killed while writing leaves its last record short, which must
// not shift the next run's records). The error lists the malformed
// replies; no reply at all is an error too (nothing was checked).
func CheckFiles(paths ...string) (Summary, error) {
	all := Summary{ByProc: map[string]int{}}
	var errs []error
	for _, p := range paths {
		f, err := os.Open(p)
		if err != nil {
			errs = append(errs, fmt.Errorf("reply log: %v", err))
			continue
		}
		s, err := CheckLog(f)
		f.Close()
		if err != nil {
			errs = append(errs, fmt.Errorf("reply log %s: %v", p, err))
		}
		all.Replies += s.Replies
		all.Bad += s.Bad
		all.Truncated = all.Truncated || s.Truncated
		for k, n := range s.ByProc {
			all.ByProc[k] += n
		}
		for _, e := range s.Malformed {
			if len(all.Malformed) < 20 {
				all.Malformed = append(all.Malformed, fmt.Errorf("%s: %w", p, e))
			}
		}
	}
	if all.Replies == 0 {
		errs = append(errs, fmt.Errorf("reply logs %v hold no replies: was nfsd started with -reply_log?", paths))
	}
	if all.Bad > 0 {
		errs = append(errs, fmt.Errorf("%d of %d replies malformed", all.Bad, all.Replies))
		errs = append(errs, all.Malformed...)
		if all.Bad > len(all.Malformed) {
			errs = append(errs, fmt.Errorf("(%d more)", all.Bad-len(all.Malformed)))
		}
	}
	return all, errors.Join(errs...)
}
