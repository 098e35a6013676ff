package nfs

import (
	"bufio"
	"errors"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"time"

	"github.com/ociboot/ociboot/appliance/metrics"
	"golang.org/x/sys/unix"
)

// Transport limits. A host on the LAN can open connections and send
// records at will; these keep what it costs nfsd bounded, so that it never
// runs out of file descriptors or memory and the nodes' connections keep
// being served.
const (
	// DefaultMaxConns bounds the TCP connections served at once, on all
	// listeners (and at most half the process's file descriptor limit, so
	// the calls of the connections served still find descriptors to open
	// files with).
	DefaultMaxConns = 1024
	// DefaultMaxConnsPerClient bounds the connections of one address: a
	// Linux client uses one per mount (nconnect up to 16), the initramfs's
	// mount one more, and a host behind NAT (ExportTo) stands for several.
	DefaultMaxConnsPerClient = 64
	// DefaultIdleTimeout closes a connection with no call in flight that
	// sent nothing for this long; knfsd closes idle connections after six
	// minutes too, and clients reconnect transparently.
	DefaultIdleTimeout = 6 * time.Minute
	// DefaultRecordTimeout is how long one record (from its first byte)
	// may take to arrive, and one reply to be taken by the client: a 1 MiB
	// WRITE needs well under a second on the slowest link a node has.
	DefaultRecordTimeout = 60 * time.Second
)

// maxACLEntries bounds the cached access answers (export, client address).
const maxACLEntries = 4096

// PrivilegedPort is the first port an unprivileged process can bind:
// NFS and MOUNT calls must come from below it unless Options.InsecurePorts
// (knfsd's "secure", the default of its exports).
const PrivilegedPort = 1024

// securePort reports whether a call from remote to prog may be served: the
// portmapper answers anyone, NFS and MOUNT only privileged source ports
// unless InsecurePorts. A process on a node that is not root cannot bind
// such a port, so it cannot speak AUTH_SYS as uid 0 to the node's root.
func (s *Server) securePort(prog *program, proc uint32, remote netip.AddrPort) bool {
	return s.opts.InsecurePorts || !prog.auth || proc == 0 || remote.Port() < PrivilegedPort
}

// refusedPort counts a call refused for its source port and says why in
// the log, at most once a minute.
func (s *Server) refusedPort(remote netip.AddrPort) {
	l := s.conns
	l.insecure.Inc()
	now := time.Now()
	l.mu.Lock()
	warn := now.Sub(l.warned) >= time.Minute
	if warn {
		l.warned = now
	}
	l.mu.Unlock()
	if warn {
		s.log.Warn("refused NFS/MOUNT call from an unprivileged source port: only root on a node can send from ports below 1024; if a client cannot, start nfsd with -insecure_ports", "client", remote.String())
	}
}

// connLimits counts the connections being served, in total and per client
// address.
type connLimits struct {
	max, perClient int

	mu     sync.Mutex
	total  int
	byAddr map[netip.Addr]int

	open    metrics.Gauge
	refused *metrics.CounterVec
	backoff metrics.Counter
	// insecure counts calls refused for their source port; warned is the
	// last time one was logged.
	insecure metrics.Counter
	warned   time.Time
}

func newConnLimits(max, perClient int) *connLimits {
	if max <= 0 {
		max = DefaultMaxConns
		var lim unix.Rlimit
		if unix.Getrlimit(unix.RLIMIT_NOFILE, &lim) == nil && lim.Cur/2 < uint64(max) {
			max = int(lim.Cur / 2)
		}
	}
	if perClient <= 0 {
		perClient = DefaultMaxConnsPerClient
	}
	return &connLimits{max: max, perClient: perClient, byAddr: map[netip.Addr]int{},
		open: metrics.NewGauge(metrics.GaugeOpts{Name: "connections", Help: "TCP connections being served."}),
		refused: metrics.NewCounterVec(metrics.CounterOpts{Name: "connections_refused_total",
			Help: "TCP connections closed at once because a limit was reached, by limit (total, per_client)."}, []string{"limit"}),
		backoff: metrics.NewCounter(metrics.CounterOpts{Name: "accept_backoffs_total",
			Help: "Times accepting paused because the process was out of file descriptors or memory."}),
		insecure: metrics.NewCounter(metrics.CounterOpts{Name: "insecure_port_calls_total",
			Help: "NFS and MOUNT calls refused because they came from a source port of 1024 or above."}),
	}
}

func (l *connLimits) collectors() []metrics.Collector {
	return []metrics.Collector{l.open, l.refused, l.backoff, l.insecure}
}

// take reserves a slot for a connection from addr; "" if one is free, else
// the limit that was reached.
func (l *connLimits) take(addr netip.Addr) string {
	addr = addr.Unmap()
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case l.total >= l.max:
		return "total"
	case l.byAddr[addr] >= l.perClient:
		return "per_client"
	}
	l.total++
	l.byAddr[addr]++
	l.open.Set(float64(l.total))
	return ""
}

func (l *connLimits) give(addr netip.Addr) {
	addr = addr.Unmap()
	l.mu.Lock()
	defer l.mu.Unlock()
	l.total--
	if l.byAddr[addr]--; l.byAddr[addr] <= 0 {
		delete(l.byAddr, addr)
	}
	l.open.Set(float64(l.total))
}

// temporary reports whether an Accept error passes by itself: out of file
// descriptors or kernel memory, or a connection reset before it was
// accepted. The listener stays open; accepting resumes after a pause.
func temporary(err error) bool {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return true
	}
	for _, e := range []error{syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM, syscall.ECONNABORTED, syscall.ECONNRESET} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// nextBackoff doubles the pause between accepts after a temporary error,
// from 5 ms up to one second (as net/http's server does).
func nextBackoff(d time.Duration) time.Duration {
	if d == 0 {
		return 5 * time.Millisecond
	}
	if d *= 2; d > time.Second {
		d = time.Second
	}
	return d
}

// awaitRecord waits until the next record starts arriving on conn (br
// reads it) and gives the record RecordTimeout from then. It reports false
// when the connection is to be closed: gone, or idle for IdleTimeout while
// busy() (calls in flight) is false. A call in flight keeps the
// connection: its client waits for the answer, not idles.
func (s *Server) awaitRecord(conn net.Conn, br *bufio.Reader, busy func() bool) bool {
	if br.Buffered() == 0 {
		for {
			conn.SetReadDeadline(time.Now().Add(s.opts.IdleTimeout))
			_, err := br.Peek(1)
			if err == nil {
				break
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() && busy() {
				continue
			}
			if errors.As(err, &ne) && ne.Timeout() {
				s.log.Debug("closing idle connection", "client", conn.RemoteAddr().String(), "idle", s.opts.IdleTimeout)
			}
			return false
		}
	}
	conn.SetReadDeadline(time.Now().Add(s.opts.RecordTimeout))
	return true
}
