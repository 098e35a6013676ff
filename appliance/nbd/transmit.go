package nbd

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"net"
	"os"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// replyTimeout closes a connection whose client takes no reply for this
// long: the kernel reads replies as they come, so a client that stops is
// gone or hostile, and would otherwise hold workers and buffers forever.
const replyTimeout = 2 * time.Minute

// coalesceLimit is how many reply bytes are gathered before they are sent
// even though more replies are waiting to be written.
const coalesceLimit = 256 << 10

// transmission is a connection's state in the transmission phase.
type transmission struct {
	size     int64
	readOnly bool

	jobs     chan job
	inflight atomic.Int64 // requests read and not yet answered
	budget   byteBudget

	bytesRead, bytesWritten atomic.Int64

	// Replies: wmu orders them on the wire; waiting counts workers
	// queued for wmu, so that the one holding it can leave its reply in
	// wbuf for the next to send along (one write for many replies).
	wmu     sync.Mutex
	waiting atomic.Int32
	wbuf    []byte
	hdr     [replyHeaderLength]byte
	werr    error
	wdl     time.Time // the write deadline set last

	limiter logLimiter
}

// job is one request on its way to a worker.
type job struct {
	request
	errno uint32  // nonzero: answer with this error without running it
	buf   *[]byte // a WRITE's payload
	held  int64   // bytes of budget held until the reply is sent
}

// transmit serves requests until the client disconnects, the connection
// fails or the server stops it; it returns why, after every request read
// was answered (or failed to be).
func (c *conn) transmit(exp Export) string {
	c.budget.max = c.s.maxBuffered()
	c.budget.cond.L = &c.budget.mu
	n := c.s.workers()
	c.jobs = make(chan job, n)
	var wg sync.WaitGroup
	wg.Add(n)
	for range n {
		go func() {
			defer wg.Done()
			for j := range c.jobs {
				c.run(exp, j)
			}
		}()
	}
	reason := c.readRequests()
	close(c.jobs)
	wg.Wait()
	return reason
}

// readRequests reads and checks requests and hands them to the workers.
func (c *conn) readRequests() string {
	for {
		if c.br.Buffered() < requestHeaderLength {
			c.armIdle()
		}
		hdr, err := c.br.Peek(requestHeaderLength)
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				if c.stopping.Load() {
					return "server shutting down"
				}
				if c.inflight.Load() > 0 {
					continue // the client waits for us, it is not idle
				}
				c.log.Info("nbd: closing idle connection", "idle_timeout", c.s.IdleTimeout)
				return fmt.Sprintf("idle for %v", c.s.IdleTimeout)
			}
			if errors.Is(err, io.EOF) && len(hdr) == 0 {
				return "client closed the connection without NBD_CMD_DISC"
			}
			return "reading a request: " + err.Error()
		}
		r, err := decodeRequest(hdr)
		c.br.Discard(requestHeaderLength)
		if err != nil {
			c.log.Warn("nbd: malformed request; closing the connection (the stream cannot be resynchronised)", "err", err)
			return "malformed request"
		}
		if r.typ == cmdDisc {
			return "client disconnected (NBD_CMD_DISC)"
		}
		errno, fatal := r.check(c.size, c.readOnly)
		if fatal {
			c.log.Warn("nbd: WRITE over the payload limit; closing the connection (its payload cannot be skipped)",
				"request", r.String(), "max_payload", MaxPayload)
			return "WRITE over the payload limit"
		}
		if errno != 0 {
			c.limiter.log(c, "nbd: request refused", "request", r.String(), "errno", errno, "size", c.size, "read_only", c.readOnly)
		} else if c.stopping.Load() {
			errno = errShutdown
		}
		j := job{request: r, errno: errno}
		if errno == 0 && (r.typ == cmdRead || r.typ == cmdWrite) {
			j.held = int64(r.length)
			c.budget.acquire(j.held)
		}
		if r.typ == cmdWrite {
			if errno != 0 {
				if _, err := c.br.Discard(int(r.length)); err != nil {
					return "reading a refused WRITE's payload: " + err.Error()
				}
			} else {
				j.buf = getBuf(r.length)
				if _, err := io.ReadFull(c.br, *j.buf); err != nil {
					putBuf(j.buf)
					c.budget.release(j.held)
					return "reading a WRITE's payload: " + err.Error()
				}
			}
		}
		c.inflight.Add(1)
		c.jobs <- j
	}
}

// armIdle sets the idle deadline for the next request, unless Shutdown
// already set one in the past.
func (c *conn) armIdle() {
	if c.s.IdleTimeout <= 0 {
		return
	}
	c.deadlineMu.Lock()
	if !c.stopping.Load() {
		c.nc.SetReadDeadline(time.Now().Add(c.s.IdleTimeout))
	}
	c.deadlineMu.Unlock()
}

// run executes one request and answers it.
func (c *conn) run(exp Export, j job) {
	var buf *[]byte
	defer func() {
		if p := recover(); p != nil {
			// A bug in the Export or here: this connection ends, the
			// server goes on.
			c.log.Error("nbd: panic running a request; closing the connection (this is a bug)",
				"request", j.request.String(), "panic", p, "stack", string(debug.Stack()))
			c.nc.Close()
		}
		if buf != nil {
			putBuf(buf)
		}
		if j.held > 0 {
			c.budget.release(j.held)
		}
		c.inflight.Add(-1)
	}()
	errno := j.errno
	var data []byte
	if errno == 0 {
		off, n := int64(j.offset), int64(j.length)
		fua := j.flags&cmdFlagFUA != 0
		var err error
		switch j.typ {
		case cmdRead:
			buf = getBuf(j.length)
			var got int
			got, err = exp.ReadAt(*buf, off)
			if err == io.EOF && got == len(*buf) {
				err = nil
			} else if err == io.EOF {
				err = fmt.Errorf("storage ends at %d, before the export's size %d: %w", off+int64(got), c.size, err)
			}
			if err == nil {
				data = *buf
				c.bytesRead.Add(n)
			}
		case cmdWrite:
			_, err = exp.WriteAt(*j.buf, off)
			putBuf(j.buf)
			if err == nil {
				c.bytesWritten.Add(n)
			}
		case cmdFlush:
			err = exp.Flush()
		case cmdTrim:
			if n > 0 {
				err = exp.Trim(off, n)
			}
			if errors.Is(err, syscall.EOPNOTSUPP) {
				err = nil // a trim is a hint; storage that cannot punch holes ignores it
			}
		case cmdWriteZeroes:
			if n > 0 && j.flags&cmdFlagNoHole == 0 {
				err = exp.Trim(off, n)
			}
			if n > 0 && (j.flags&cmdFlagNoHole != 0 || errors.Is(err, syscall.EOPNOTSUPP)) {
				err = writeZeroes(exp, off, n)
			}
		case cmdCache:
			if ce, ok := exp.(CacheExport); ok && n > 0 {
				err = ce.Cache(off, n)
			}
		}
		if err == nil && fua && (j.typ == cmdWrite || j.typ == cmdTrim || j.typ == cmdWriteZeroes) {
			err = exp.Flush()
		}
		if err != nil {
			errno = Errno(err)
			c.limiter.log(c, "nbd: request failed", "request", j.request.String(), "errno", errno, "err", err)
		}
	}
	c.reply(j.cookie, errno, data)
}

// zeroes is what writeZeroes writes from.
var zeroes = sync.OnceValue(func() []byte { return make([]byte, 1<<20) })

// writeZeroes writes zeroes over a range (NBD_CMD_WRITE_ZEROES with
// NO_HOLE: the range must stay allocated).
func writeZeroes(exp Export, off, n int64) error {
	z := zeroes()
	for n > 0 {
		chunk := min(n, int64(len(z)))
		if _, err := exp.WriteAt(z[:chunk], off); err != nil {
			return err
		}
		off += chunk
		n -= chunk
	}
	return nil
}

// reply sends a simple reply (with data, a READ's payload). Replies queue
// in wbuf while other workers wait to add theirs; the last one sends them
// all in one write. Large payloads go out with one writev, uncopied.
func (c *conn) reply(cookie uint64, errno uint32, data []byte) {
	c.waiting.Add(1)
	c.wmu.Lock()
	c.waiting.Add(-1)
	defer c.wmu.Unlock()
	if c.werr != nil {
		return
	}
	h := c.hdr[:]
	binary.BigEndian.PutUint32(h[0:], magicReply)
	binary.BigEndian.PutUint32(h[4:], errno)
	binary.BigEndian.PutUint64(h[8:], cookie)
	var err error
	if len(data) >= 32<<10 {
		c.wbuf = append(c.wbuf, h...)
		c.armWrite()
		bufs := net.Buffers{c.wbuf, data}
		_, err = bufs.WriteTo(c.nc)
		c.wbuf = c.wbuf[:0]
	} else {
		c.wbuf = append(c.wbuf, h...)
		c.wbuf = append(c.wbuf, data...)
		if c.waiting.Load() == 0 || len(c.wbuf) >= coalesceLimit {
			c.armWrite()
			_, err = c.nc.Write(c.wbuf)
			c.wbuf = c.wbuf[:0]
		}
	}
	if err != nil {
		c.werr = err
		c.log.Debug("nbd: sending a reply failed; closing", "err", err)
		c.nc.Close() // the reader stops; the other workers drop their replies
	}
}

// armWrite keeps the write deadline between replyTimeout/2 and
// replyTimeout ahead, moving it only when half of it has passed (setting
// it for every reply would update a runtime timer per reply).
// wmu is held.
func (c *conn) armWrite() {
	now := time.Now()
	if c.wdl.Sub(now) > replyTimeout/2 {
		return
	}
	c.wdl = now.Add(replyTimeout)
	c.nc.SetWriteDeadline(c.wdl)
}

// byteBudget caps the payload bytes a connection holds.
type byteBudget struct {
	mu        sync.Mutex
	cond      sync.Cond
	used, max int64
}

// acquire waits until n bytes fit, or until nothing else is held (one
// request larger than the budget still proceeds, alone).
func (b *byteBudget) acquire(n int64) {
	b.mu.Lock()
	for b.used > 0 && b.used+n > b.max {
		b.cond.Wait()
	}
	b.used += n
	b.mu.Unlock()
}

func (b *byteBudget) release(n int64) {
	b.mu.Lock()
	b.used -= n
	b.mu.Unlock()
	b.cond.Signal()
}

// logLimiter lets a connection log one refused or failed request every
// 10 s: a client retrying a failing range, or a failing disk, would
// otherwise write a line per request.
type logLimiter struct {
	mu         sync.Mutex
	last       time.Time
	suppressed int
}

func (l *logLimiter) log(c *conn, msg string, args ...any) {
	l.mu.Lock()
	if !l.last.IsZero() && time.Since(l.last) < 10*time.Second {
		l.suppressed++
		l.mu.Unlock()
		return
	}
	n := l.suppressed
	l.last, l.suppressed = time.Now(), 0
	l.mu.Unlock()
	if n > 0 {
		args = append(args, "not_logged_since_last", n)
	}
	c.log.Warn(msg, args...)
}

// Payload buffers come from pools by power-of-two size, 4 KiB to
// MaxPayload: a kernel client's requests are a few sizes over and over.
var bufPools [26]sync.Pool // classes 12 (4 KiB) to 25 (MaxPayload, 32 MiB)

func bufClass(n uint32) int {
	if n <= 4096 {
		return 12
	}
	return bits.Len32(n - 1)
}

// getBuf gives a buffer of n bytes; the pointer goes back to putBuf, so
// that putting it back allocates nothing.
func getBuf(n uint32) *[]byte {
	c := bufClass(n)
	if p, ok := bufPools[c].Get().(*[]byte); ok {
		*p = (*p)[:n]
		return p
	}
	b := make([]byte, n, 1<<c)
	return &b
}

func putBuf(p *[]byte) {
	c := bufClass(uint32(cap(*p)))
	if cap(*p) != 1<<c || c >= len(bufPools) {
		return
	}
	bufPools[c].Put(p)
}
