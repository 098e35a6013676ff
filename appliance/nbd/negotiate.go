package nbd

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"
)

// conn is one client connection, from accept to close.
type conn struct {
	s      *Server
	nc     net.Conn
	br     *bufio.Reader
	log    *slog.Logger
	remote netip.AddrPort
	since  time.Time
	done   chan struct{} // closed when the connection and its export are closed

	// ctx is Lookup's: it ends when the connection is closed from
	// outside (Shutdown, CloseExport) or Shutdown gives up waiting.
	ctx    context.Context
	cancel context.CancelFunc

	// Set under s.mu: the export once the connection is in transmission,
	// and why it was closed from outside (Shutdown, CloseExport).
	export     string
	exp        Export
	killReason string

	// deadlineMu orders the reader's idle deadline against stop's
	// deadline in the past, so that a stop is never overwritten.
	deadlineMu sync.Mutex
	stopping   atomic.Bool

	transmission // the transmission phase's state (transmit.go)
}

func newConn(s *Server, nc net.Conn) *conn {
	remote := addrPort(nc.RemoteAddr())
	ctx, cancel := context.WithCancel(s.ctx)
	return &conn{
		ctx:    ctx,
		cancel: cancel,
		s:      s,
		nc:     nc,
		br:     bufio.NewReaderSize(nc, 64<<10),
		log:    s.log().With("remote", remote.String()),
		remote: remote,
		since:  time.Now(),
		done:   make(chan struct{}),
	}
}

// addrPort is a net.Addr as the netip.AddrPort Lookup and ConnInfo carry,
// with IPv4-mapped addresses unmapped; zero when it is not an IP address
// (net.Pipe in tests).
func addrPort(a net.Addr) netip.AddrPort {
	if ta, ok := a.(*net.TCPAddr); ok {
		ap := ta.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	if a == nil {
		return netip.AddrPort{}
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return ap
}

// stop is Shutdown's request: a negotiating connection is closed, one in
// transmission stops reading new requests (a read deadline in the past
// wakes the reader) and answers the ones it has. s.mu is held.
func (c *conn) stop() {
	if c.exp == nil {
		c.kill("server shutting down")
		return
	}
	c.deadlineMu.Lock()
	c.stopping.Store(true)
	c.nc.SetReadDeadline(time.Now())
	c.deadlineMu.Unlock()
}

// kill closes the connection at once; reason goes into its last log line.
// s.mu is held.
func (c *conn) kill(reason string) {
	if c.killReason == "" {
		c.killReason = reason
	}
	c.cancel()
	c.nc.Close()
}

// serve runs the connection: negotiation, then transmission, then the
// cleanup. A panic (a bug: input must never cause one) ends only this
// connection.
func (c *conn) serve() {
	var exp Export
	reason := "negotiation failed"
	defer func() {
		if p := recover(); p != nil {
			c.log.Error("nbd: panic serving connection; closing it (this is a bug)", "panic", p, "stack", string(debug.Stack()))
			reason = "panic"
		}
		c.nc.Close()
		c.cancel()
		c.s.mu.Lock()
		if c.killReason != "" {
			reason = c.killReason
		}
		delete(c.s.conns, c)
		c.s.mu.Unlock()
		if exp != nil {
			if err := exp.Close(); err != nil {
				c.log.Warn("nbd: closing export", "err", err)
			}
			c.log.Info("nbd: connection ended", "reason", reason,
				"duration", time.Since(c.since).Round(time.Millisecond),
				"bytes_read", c.bytesRead.Load(), "bytes_written", c.bytesWritten.Load())
		}
		close(c.done)
		c.s.connWG.Done()
	}()
	var err error
	exp, err = c.negotiate()
	if err != nil {
		c.s.mu.Lock()
		killed := c.killReason
		c.s.mu.Unlock()
		switch {
		case killed != "":
			c.log.Debug("nbd: connection closed during negotiation", "reason", killed)
		case err == errClosedEarly:
			// A port probe or health check, not a failing client.
			c.log.Info("nbd: client closed the connection after the greeting, without negotiating")
		case errors.Is(err, os.ErrDeadlineExceeded):
			c.log.Warn("nbd: negotiation timed out; closing", "timeout", c.s.handshakeTimeout(), "err", err)
		default:
			c.log.Warn("nbd: negotiation failed; closing", "err", err)
		}
		return
	}
	if exp == nil { // NBD_OPT_ABORT
		return
	}
	reason = c.transmit(exp)
}

var (
	// errAbort ends a negotiation the client aborted.
	errAbort = errors.New("client sent NBD_OPT_ABORT")
	// errClosedEarly: the client closed before sending its flags.
	errClosedEarly = errors.New("client closed the connection before sending its flags")
)

// negotiate runs the fixed newstyle handshake. It returns the export the
// client chose (the connection is then registered as in transmission), or
// nil and nil after NBD_OPT_ABORT, or an error saying why it closes.
func (c *conn) negotiate() (Export, error) {
	c.nc.SetDeadline(time.Now().Add(c.s.handshakeTimeout()))
	var greeting [greetingLength]byte
	binary.BigEndian.PutUint64(greeting[0:], magicInit)
	binary.BigEndian.PutUint64(greeting[8:], magicOpt)
	binary.BigEndian.PutUint16(greeting[16:], flagFixedNewstyle|flagNoZeroes)
	if _, err := c.nc.Write(greeting[:]); err != nil {
		return nil, fmt.Errorf("sending the greeting: %w", err)
	}
	var b [16]byte
	if _, err := io.ReadFull(c.br, b[:4]); err != nil {
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return nil, fmt.Errorf("no client flags after the greeting (an oldstyle client? only fixed newstyle negotiation is served): %w", err)
		}
		if errors.Is(err, io.EOF) {
			return nil, errClosedEarly
		}
		return nil, fmt.Errorf("reading the client flags: %w", err)
	}
	flags := binary.BigEndian.Uint32(b[:])
	if flags&^clientFlagsKnown != 0 {
		return nil, fmt.Errorf("client flags %#08x has unknown bits (want NBD_FLAG_C_FIXED_NEWSTYLE and optionally NBD_FLAG_C_NO_ZEROES): not an NBD client?", flags)
	}
	if flags&flagFixedNewstyle == 0 {
		return nil, fmt.Errorf("client flags %#x lack NBD_FLAG_C_FIXED_NEWSTYLE: only fixed newstyle negotiation is served (nbd-client 3.10 and later and libnbd speak it)", flags)
	}
	noZeroes := flags&flagNoZeroes != 0
	var data []byte // one option's data, at most maxOption bytes
	for n := 0; ; n++ {
		if _, err := io.ReadFull(c.br, b[:]); err != nil {
			if n > 0 && errors.Is(err, io.EOF) {
				return nil, errors.New("client closed the connection during negotiation")
			}
			return nil, fmt.Errorf("reading option header %d: %w", n+1, err)
		}
		if m := binary.BigEndian.Uint64(b[:]); m != magicOpt {
			if binary.BigEndian.Uint32(b[:]) == magicRequest {
				return nil, errors.New("transmission request during negotiation (client skipped NBD_OPT_GO or EXPORT_NAME?)")
			}
			return nil, fmt.Errorf("option magic %#016x, want IHAVEOPT (%#016x)", m, uint64(magicOpt))
		}
		opt := binary.BigEndian.Uint32(b[8:])
		length := binary.BigEndian.Uint32(b[12:])
		if length > maxOption {
			c.optReply(opt, repErrTooBig, fmt.Sprintf("option data of %d bytes; this server takes at most %d", length, maxOption))
			return nil, fmt.Errorf("%s with %d bytes of data, over the limit of %d", optName(opt), length, maxOption)
		}
		if n >= maxOptions {
			c.optReply(opt, repErrTooBig, "too many options")
			return nil, fmt.Errorf("%d options without choosing an export", n)
		}
		if data == nil {
			data = make([]byte, maxOption)
		}
		d := data[:length]
		if _, err := io.ReadFull(c.br, d); err != nil {
			return nil, fmt.Errorf("reading %d bytes of %s data: %w", length, optName(opt), err)
		}
		exp, err := c.option(opt, d, noZeroes)
		if exp != nil || err != nil {
			if err == errAbort {
				return nil, nil
			}
			return exp, err
		}
	}
}

// option answers one option. It returns an export when the client entered
// transmission, an error when the connection must close.
func (c *conn) option(opt uint32, data []byte, noZeroes bool) (Export, error) {
	if c.shuttingDown() && opt != optAbort {
		c.optReply(opt, repErrShutdown, "server shutting down")
		return nil, errors.New("server shutting down")
	}
	switch opt {
	case optExportName:
		if err := checkName(data); err != nil {
			return nil, fmt.Errorf("NBD_OPT_EXPORT_NAME: %v", err)
		}
		name := string(data)
		exp, _, msg := c.lookup(name)
		if exp == nil {
			// The option has no error reply: the protocol says close.
			return nil, fmt.Errorf("NBD_OPT_EXPORT_NAME %q refused (%s)", name, msg)
		}
		size, tflags, err := c.describe(name, exp)
		if err != nil {
			exp.Close()
			return nil, err
		}
		if !c.enter(name, exp, size) {
			exp.Close()
			return nil, errors.New("server shutting down")
		}
		b := make([]byte, 10, 10+124)
		binary.BigEndian.PutUint64(b, uint64(size))
		binary.BigEndian.PutUint16(b[8:], tflags)
		if !noZeroes {
			b = b[:10+124]
		}
		if _, err := c.nc.Write(b); err != nil {
			return exp, fmt.Errorf("answering NBD_OPT_EXPORT_NAME: %w", err)
		}
		c.log.Info("nbd: client selected export", "size", size, "by", "NBD_OPT_EXPORT_NAME")
		return exp, nil

	case optAbort:
		// The client may close without reading the answer.
		c.optReply(opt, repAck, "")
		return nil, errAbort

	case optList:
		if len(data) != 0 {
			return nil, c.optReply(opt, repErrInvalid, "NBD_OPT_LIST takes no data")
		}
		var names []string
		if c.s.List != nil {
			names = c.s.List(c.remote)
		}
		var out []byte
		for _, name := range names {
			if err := checkName([]byte(name)); err != nil {
				c.log.Warn("nbd: List gave an export name the protocol cannot carry; left out", "name", name, "err", err)
				continue
			}
			out = appendOptReply(out, opt, repServer, len(name)+4)
			out = binary.BigEndian.AppendUint32(out, uint32(len(name)))
			out = append(out, name...)
		}
		out = appendOptReply(out, opt, repAck, 0)
		_, err := c.nc.Write(out)
		return nil, err

	case optStartTLS:
		if len(data) != 0 {
			return nil, c.optReply(opt, repErrInvalid, "NBD_OPT_STARTTLS takes no data")
		}
		return nil, c.optReply(opt, repErrPolicy, "this server does not offer TLS")

	case optInfo, optGo:
		req, err := decodeInfoRequest(data)
		if err != nil {
			return nil, c.optReply(opt, repErrInvalid, optName(opt)+": "+err.Error())
		}
		exp, rep, msg := c.lookup(req.name)
		if exp == nil {
			return nil, c.optReply(opt, rep, msg)
		}
		size, tflags, err := c.describe(req.name, exp)
		if err != nil {
			exp.Close()
			return nil, err
		}
		out := appendOptReply(nil, opt, repInfo, 12)
		out = binary.BigEndian.AppendUint16(out, infoExport)
		out = binary.BigEndian.AppendUint64(out, uint64(size))
		out = binary.BigEndian.AppendUint16(out, tflags)
		for _, info := range req.infos {
			switch info {
			case infoName:
				out = appendOptReply(out, opt, repInfo, 2+len(req.name))
				out = binary.BigEndian.AppendUint16(out, infoName)
				out = append(out, req.name...)
			case infoDescription:
				if d, ok := exp.(DescribedExport); ok {
					desc := d.Description()
					if len(desc) > maxName {
						desc = desc[:maxName]
					}
					out = appendOptReply(out, opt, repInfo, 2+len(desc))
					out = binary.BigEndian.AppendUint16(out, infoDescription)
					out = append(out, desc...)
				}
			case infoBlockSize:
				out = appendOptReply(out, opt, repInfo, 14)
				out = binary.BigEndian.AppendUint16(out, infoBlockSize)
				out = binary.BigEndian.AppendUint32(out, 1) // a byte-addressed file: any alignment
				out = binary.BigEndian.AppendUint32(out, preferredBlock)
				out = binary.BigEndian.AppendUint32(out, MaxPayload)
			}
		}
		out = appendOptReply(out, opt, repAck, 0)
		if opt == optInfo {
			if err := exp.Close(); err != nil {
				c.log.Warn("nbd: closing export after NBD_OPT_INFO", "export", req.name, "err", err)
			}
			_, err := c.nc.Write(out)
			return nil, err
		}
		if !c.enter(req.name, exp, size) {
			exp.Close()
			return nil, c.optReply(opt, repErrShutdown, "server shutting down")
		}
		if _, err := c.nc.Write(out); err != nil {
			return exp, fmt.Errorf("answering NBD_OPT_GO: %w", err)
		}
		c.log.Info("nbd: client selected export", "size", size, "by", "NBD_OPT_GO")
		return exp, nil
	}
	// Structured replies, metadata contexts and anything newer: the
	// client falls back (libnbd to simple replies).
	return nil, c.optReply(opt, repErrUnsup, optName(opt)+" is not supported by this server")
}

// lookup asks Server.Lookup for an export. Without one it returns the
// option error reply and its message.
func (c *conn) lookup(name string) (Export, uint32, string) {
	if c.s.Lookup == nil {
		return nil, repErrUnknown, fmt.Sprintf("no export %q", name)
	}
	ctx, cancel := context.WithTimeout(c.ctx, c.s.handshakeTimeout())
	defer cancel()
	exp, err := c.s.Lookup(ctx, name, c.remote)
	switch {
	case err == nil && exp == nil:
		c.log.Error("nbd: Lookup returned neither an export nor an error (a bug of the caller)", "export", name)
		return nil, repErrUnknown, fmt.Sprintf("export %q is unavailable: server error", name)
	case err == nil:
		return exp, 0, ""
	// Refusals are the caller's policy, which logs them (nbdd: once a
	// minute per peer, so that a flood cannot fill the log); here they
	// are debug lines.
	case errors.Is(err, ErrPolicy):
		c.log.Debug("nbd: export refused by policy", "export", name, "err", err)
		return nil, repErrPolicy, err.Error()
	case errors.Is(err, ErrUnknownExport):
		c.log.Debug("nbd: unknown export", "export", name, "err", err)
		return nil, repErrUnknown, err.Error()
	}
	c.log.Warn("nbd: opening export failed", "export", name, "err", err)
	return nil, repErrUnknown, fmt.Sprintf("export %q is unavailable: server error (see the server's log)", name)
}

// describe reads an export's size and transmission flags.
func (c *conn) describe(name string, exp Export) (int64, uint16, error) {
	size := exp.Size()
	if size < 0 {
		return 0, 0, fmt.Errorf("export %q reports size %d", name, size)
	}
	flags := uint16(flagHasFlags | flagSendFlush | flagSendFUA | flagSendTrim | flagSendZeroes)
	if ro, ok := exp.(ReadOnlyExport); ok && ro.ReadOnly() {
		flags |= flagReadOnly
	}
	if mc, ok := exp.(MultiConnExport); ok && mc.MultiConn() {
		flags |= flagCanMultiConn
	}
	if _, ok := exp.(CacheExport); ok {
		flags |= flagSendCache
	}
	return size, flags, nil
}

// enter registers the connection as in transmission on exp, unless the
// server is shutting down, and lifts the negotiation's deadline.
func (c *conn) enter(name string, exp Export, size int64) bool {
	c.s.mu.Lock()
	defer c.s.mu.Unlock()
	if c.s.shutdown || c.killReason != "" {
		return false
	}
	c.nc.SetDeadline(time.Time{})
	c.export, c.exp = name, exp
	c.size = size
	c.readOnly = false
	if ro, ok := exp.(ReadOnlyExport); ok && ro.ReadOnly() {
		c.readOnly = true
	}
	c.log = c.log.With("export", name)
	return true
}

func (c *conn) shuttingDown() bool {
	c.s.mu.Lock()
	defer c.s.mu.Unlock()
	return c.s.shutdown
}

// optReply sends one option reply; an error reply carries msg for the
// client to show. It returns the write's error.
func (c *conn) optReply(opt, rep uint32, msg string) error {
	if len(msg) > maxName {
		msg = msg[:maxName]
	}
	out := appendOptReply(nil, opt, rep, len(msg))
	out = append(out, msg...)
	_, err := c.nc.Write(out)
	return err
}

// appendOptReply appends an option reply header announcing length bytes
// of data.
func appendOptReply(b []byte, opt, rep uint32, length int) []byte {
	b = binary.BigEndian.AppendUint64(b, magicOptReply)
	b = binary.BigEndian.AppendUint32(b, opt)
	b = binary.BigEndian.AppendUint32(b, rep)
	return binary.BigEndian.AppendUint32(b, uint32(length))
}
