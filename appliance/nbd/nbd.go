// Package nbd is ociboot's NBD server: it serves block storage, one export
// per node, to the Linux kernel's NBD client (set up by nbd-client) and to
// libnbd's tools, over TCP.
//
// It speaks the protocol of the reference implementation's doc/proto.md,
// the parts those clients use:
//
//   - fixed newstyle negotiation only, with NBD_FLAG_NO_ZEROES; a client
//     that does not set NBD_FLAG_C_FIXED_NEWSTYLE is refused with a log
//     line (oldstyle and plain newstyle are obsolete since nbd 3.10);
//   - options NBD_OPT_EXPORT_NAME, NBD_OPT_GO and NBD_OPT_INFO (with
//     NBD_INFO_EXPORT, NBD_INFO_NAME, NBD_INFO_DESCRIPTION and
//     NBD_INFO_BLOCK_SIZE), NBD_OPT_LIST
//     (what Server.List allows the caller to see) and NBD_OPT_ABORT;
//     NBD_OPT_STARTTLS is refused by policy (no TLS), and every other
//     option, structured replies among them, gets NBD_REP_ERR_UNSUP;
//   - simple replies to NBD_CMD_READ, WRITE (with FUA), FLUSH, TRIM,
//     WRITE_ZEROES (with NO_HOLE), CACHE and DISC.
//
// Requests are pipelined: a connection reads requests while a few workers
// of its own run them against the Export and answer in completion order,
// as the kernel expects (it keeps many requests in flight). The payload
// bytes a connection holds at once are capped (Server.MaxBuffered), and no
// length a client announces is allocated before it is checked against the
// caps: an option's data against 8 KiB, a request against MaxPayload.
// Malformed input gets an error reply where the protocol has one, or a
// log line and a closed connection where the stream cannot go on.
package nbd

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"
)

// Export is one export's storage, opened per connection by Lookup. The
// server checks every request against Size before calling ReadAt, WriteAt
// or Trim, and calls them from several goroutines at once (on disjoint or
// overlapping ranges, as the client sent them).
type Export interface {
	io.ReaderAt
	io.WriterAt
	// Size is the export's size in bytes, read once when the client
	// selects the export.
	Size() int64
	// Flush makes what was written durable (fsync): NBD_CMD_FLUSH, and
	// writes with NBD_CMD_FLAG_FUA.
	Flush() error
	// Trim discards a range, which must read back as zeroes afterwards
	// (punch a hole): NBD_CMD_TRIM, and NBD_CMD_WRITE_ZEROES without
	// NBD_CMD_FLAG_NO_HOLE.
	Trim(off, length int64) error
	// Close is called once when the connection ended and no request
	// runs any more.
	Close() error
}

// An Export may also implement these; each adds a transmission flag.
type (
	// ReadOnlyExport: when ReadOnly reports true the export is announced
	// read-only (NBD_FLAG_READ_ONLY) and writes and trims get NBD_EPERM.
	ReadOnlyExport interface{ ReadOnly() bool }
	// MultiConnExport: when MultiConn reports true the export is announced
	// as safe to use over several connections at once
	// (NBD_FLAG_CAN_MULTI_CONN). Only say so if the storage keeps no
	// cache of its own per connection: a write must be visible to every
	// connection's reads once it is answered, and one connection's Flush
	// must make every connection's answered writes durable, as with
	// pwrite and fdatasync on one file.
	MultiConnExport interface{ MultiConn() bool }
	// CacheExport handles NBD_CMD_CACHE (a hint to read a range ahead);
	// its presence announces NBD_FLAG_SEND_CACHE. Without it CACHE
	// requests within the export are answered successfully, doing nothing.
	CacheExport interface{ Cache(off, length int64) error }
	// DescribedExport answers a client's NBD_INFO_DESCRIPTION request.
	// nodedisk says which file it is, so that a client reconnecting after
	// a server restart can tell the same disk from a new one.
	DescribedExport interface{ Description() string }
)

// ConnInfo describes one connection in the transmission phase.
type ConnInfo struct {
	Export string
	Remote netip.AddrPort
	Since  time.Time // when the connection was accepted
	// BytesRead and BytesWritten count the export's bytes the client
	// read (READ payloads) and wrote (WRITE payloads).
	BytesRead, BytesWritten int64
}

// Server serves exports over NBD. Its zero value (with Lookup) is ready to
// use; set the fields before the first Serve.
type Server struct {
	// Lookup gives the export a client asked for by name; remote is the
	// TCP peer. An error wrapping ErrUnknownExport answers
	// NBD_REP_ERR_UNKNOWN, one wrapping ErrPolicy NBD_REP_ERR_POLICY (for
	// both the error's text goes to the client); any other error is
	// logged and answered NBD_REP_ERR_UNKNOWN without its text. ctx ends
	// with the negotiation's deadline. NBD_OPT_INFO opens an export and
	// closes it at once; NBD_OPT_GO and NBD_OPT_EXPORT_NAME keep it for
	// the connection. nil: every export is unknown.
	Lookup func(ctx context.Context, name string, remote netip.AddrPort) (Export, error)

	// List gives the export names NBD_OPT_LIST shows to remote: only the
	// ones it may use. nil: the list is empty.
	List func(remote netip.AddrPort) []string

	Logger *slog.Logger // nil: slog.Default()

	// MaxConns caps open connections (negotiating or transmitting); over
	// it a new connection is closed at once, with a log line at most
	// every 10 s. 0: 64.
	MaxConns int

	// HandshakeTimeout bounds the whole negotiation phase, Lookup
	// included. 0: 10 s.
	HandshakeTimeout time.Duration

	// IdleTimeout closes a connection in transmission that sent no
	// request for this long while none was in flight. 0: none (a kernel
	// client with a quiet file system sends nothing for hours).
	IdleTimeout time.Duration

	// Workers is how many requests of one connection run at once. 0: 16.
	Workers int

	// MaxBuffered caps the payload bytes (WRITE data read, READ data to
	// send) one connection holds for its requests in flight; the
	// connection stops reading requests until some are answered. A single
	// request up to MaxPayload always proceeds. 0: 16 MiB.
	MaxBuffered int64

	once      sync.Once
	ctx       context.Context // ends when Shutdown gives up waiting
	cancel    context.CancelFunc
	mu        sync.Mutex
	listeners map[net.Listener]struct{}
	conns     map[*conn]struct{}
	shutdown  bool
	connWG    sync.WaitGroup

	refusedAt time.Time // last "over MaxConns" log line
	refused   int       // refusals not logged since
}

func (s *Server) init() {
	s.once.Do(func() {
		s.ctx, s.cancel = context.WithCancel(context.Background())
		s.listeners = map[net.Listener]struct{}{}
		s.conns = map[*conn]struct{}{}
	})
}

func (s *Server) log() *slog.Logger {
	if s.Logger != nil {
		return s.Logger
	}
	return slog.Default()
}

func (s *Server) maxConns() int {
	if s.MaxConns > 0 {
		return s.MaxConns
	}
	return 64
}

func (s *Server) handshakeTimeout() time.Duration {
	if s.HandshakeTimeout > 0 {
		return s.HandshakeTimeout
	}
	return 10 * time.Second
}

func (s *Server) workers() int {
	if s.Workers > 0 {
		return s.Workers
	}
	return 16
}

func (s *Server) maxBuffered() int64 {
	if s.MaxBuffered > 0 {
		return s.MaxBuffered
	}
	return 16 << 20
}

// Serve accepts connections on ln until Shutdown (then it returns nil) or
// until ln fails for good. Several Serve calls may run at once.
func (s *Server) Serve(ln net.Listener) error {
	s.init()
	s.mu.Lock()
	if s.shutdown {
		s.mu.Unlock()
		ln.Close()
		return nil
	}
	s.listeners[ln] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, ln)
		s.mu.Unlock()
	}()
	var delay time.Duration
	for {
		nc, err := ln.Accept()
		if err != nil {
			s.mu.Lock()
			down := s.shutdown
			s.mu.Unlock()
			if down {
				return nil
			}
			if errors.Is(err, net.ErrClosed) {
				return err
			}
			// Out of file descriptors and the like: wait and retry,
			// as net/http does, rather than spin or give up.
			if delay == 0 {
				delay = 5 * time.Millisecond
			} else if delay *= 2; delay > time.Second {
				delay = time.Second
			}
			s.log().Warn("nbd: accept failed; retrying", "addr", ln.Addr().String(), "err", err, "retry_in", delay)
			time.Sleep(delay)
			continue
		}
		delay = 0
		s.mu.Lock()
		if s.shutdown {
			s.mu.Unlock()
			nc.Close()
			return nil
		}
		if len(s.conns) >= s.maxConns() {
			s.refuse(nc)
			s.mu.Unlock()
			nc.Close()
			continue
		}
		c := newConn(s, nc)
		s.conns[c] = struct{}{}
		s.connWG.Add(1)
		s.mu.Unlock()
		go c.serve()
	}
}

// refuse logs a connection over MaxConns, at most once every 10 s (a
// client retrying in a loop would otherwise fill the log). s.mu is held.
func (s *Server) refuse(nc net.Conn) {
	s.refused++
	if time.Since(s.refusedAt) < 10*time.Second {
		return
	}
	s.log().Warn("nbd: too many connections; closing new ones at once (raise MaxConns, or look for a client reconnecting in a loop)",
		"remote", nc.RemoteAddr().String(), "open", len(s.conns), "max_conns", s.maxConns(), "refused", s.refused)
	s.refusedAt = time.Now()
	s.refused = 0
}

// Shutdown stops accepting, closes connections still negotiating, answers
// the requests connections in transmission already sent (any request read
// after Shutdown began gets NBD_ESHUTDOWN), then closes them and their
// exports. When ctx ends first it closes every connection at once and
// returns ctx's error; exports are then closed as their last request
// returns.
func (s *Server) Shutdown(ctx context.Context) error {
	s.init()
	s.mu.Lock()
	s.shutdown = true
	for ln := range s.listeners {
		ln.Close()
	}
	for c := range s.conns {
		c.stop()
	}
	s.mu.Unlock()
	done := make(chan struct{})
	go func() {
		s.connWG.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
	}
	s.cancel()
	s.mu.Lock()
	for c := range s.conns {
		c.kill("shutdown deadline")
	}
	s.mu.Unlock()
	return ctx.Err()
}

// Conns lists the connections in the transmission phase.
func (s *Server) Conns() []ConnInfo {
	s.init()
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []ConnInfo
	for c := range s.conns {
		if c.exp == nil {
			continue
		}
		out = append(out, ConnInfo{
			Export:       c.export,
			Remote:       c.remote,
			Since:        c.since,
			BytesRead:    c.bytesRead.Load(),
			BytesWritten: c.bytesWritten.Load(),
		})
	}
	return out
}

// CloseExport closes every connection in transmission on export name (for
// example because its storage was dropped) and returns how many there
// were, once their requests have returned and their Exports are closed.
// Requests in flight fail; the clients see the connection drop. A client
// that selects the export after CloseExport returns gets a new connection:
// the caller's Lookup must refuse it if the export is gone.
func (s *Server) CloseExport(name string) int {
	s.init()
	s.mu.Lock()
	var cs []*conn
	for c := range s.conns {
		if c.exp != nil && c.export == name {
			c.kill("export closed by the server")
			cs = append(cs, c)
		}
	}
	s.mu.Unlock()
	for _, c := range cs {
		<-c.done
	}
	return len(cs)
}
