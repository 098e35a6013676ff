package tftpd

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"path"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/ociboot/ociboot/appliance/metrics"
	"github.com/pin/tftp/v3"
	"golang.org/x/net/ipv4"

	"github.com/ociboot/ociboot/appliance/config"
	"github.com/ociboot/ociboot/appliance/nodes"
	"github.com/ociboot/ociboot/appliance/store"
)

// MaxBlockSize is the largest blksize we grant: 1468 fills a 1500-byte
// Ethernet frame, which the Pi 4 bootloader asks for since 2022.
const MaxBlockSize = 1468

// readBuffer is what a transfer reads from its file at once: 44 blocks of
// 1468 bytes.
const readBuffer = 64 << 10

// Options configure a Server.
type Options struct {
	Config *config.Config
	Store  *store.Store
	Log    *slog.Logger
	// Metrics, if set, gets the transfer counters.
	Metrics metrics.Registerer
	Now     func() time.Time
	// Timeout per retransmission (default 1 s) and retries (default 5).
	Timeout time.Duration
	Retries int
}

// Server is the TFTP server.
type Server struct {
	res     Resolver
	log     *slog.Logger
	now     func() time.Time
	tftp    *tftp.Server
	conns   sync.Map       // *peerConn of each Serve
	serving sync.WaitGroup // running Serve calls
	m       instruments
	mu      sync.Mutex
	stats   map[string]*NodeStats
	stages  map[string]string
	// local are the nodes whose netboot is refused because they boot
	// from their own disk (nodes.InstallState.Local), each logged once.
	local   map[string]bool
	recent  []Transfer
	timeout time.Duration
	retries int
}

// OtherNode stands for every node key that names no known node (not in
// Netboot.Nodes, no record by dhcpd) in metric labels and /status: a
// flood of requests with invented serials adds no label and no state.
const OtherNode = "other"

// Transfer is one finished (or failed) read request.
type Transfer struct {
	Node     string
	File     string
	Remote   string
	Bytes    int64
	Duration time.Duration
	Result   string // "ok", "early-terminate", "not-found", "failed"
	Error    string `json:",omitempty"`
	Time     time.Time
}

// NodeStats are per-node totals for /status.
type NodeStats struct {
	Transfers       int
	Bytes           int64
	Failures        int
	EarlyTerminates int
	NotFound        int
	LastFile        string
	LastError       string `json:",omitempty"`
	LastSeen        time.Time
}

type instruments struct {
	transfers *metrics.CounterVec
	bytes     *metrics.CounterVec
	duration  *metrics.HistogramVec
}

// New makes a server; call Serve with a UDP socket.
func New(o Options) *Server {
	s := &Server{
		res:     Resolver{Config: o.Config, Store: o.Store},
		log:     o.Log,
		now:     o.Now,
		stats:   map[string]*NodeStats{},
		stages:  map[string]string{},
		local:   map[string]bool{},
		timeout: o.Timeout,
		retries: o.Retries,
	}
	if s.log == nil {
		s.log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if s.now == nil {
		s.now = time.Now
	}
	if s.timeout == 0 {
		s.timeout = time.Second
	}
	if s.retries == 0 {
		s.retries = 5
	}
	s.m = instruments{
		transfers: metrics.NewCounterVec(metrics.CounterOpts{Name: "transfers_total", Help: "Read requests by node and result (ok, early-terminate, not-found, failed)."}, []string{"node", "result"}),
		bytes:     metrics.NewCounterVec(metrics.CounterOpts{Name: "bytes_total", Help: "Bytes sent by node."}, []string{"node"}),
		duration:  metrics.NewHistogramVec(metrics.HistogramOpts{Name: "transfer_seconds", Help: "Duration of completed transfers.", Buckets: metrics.ExponentialBuckets(0.001, 4, 9)}, []string{"node"}),
	}
	if o.Metrics != nil {
		o.Metrics.MustRegister(s.m.transfers, s.m.bytes, s.m.duration)
	}
	ts := tftp.NewServer(s.read, nil) // no write handler: WRQs get an error
	ts.SetBlockSize(MaxBlockSize)
	// Grant what the client asks up to MaxBlockSize. pin/tftp's MTU-based
	// clamp falls back to 512 bytes for a request that lacks IP_PKTINFO
	// (one queued before Serve enabled it), which would slow that boot 3x.
	ts.SetBlockSizeNegotiation(false)
	ts.SetTimeout(s.timeout)
	ts.SetRetries(s.retries)
	// All transfers run over the socket Serve gets, wrapped in a peerConn
	// (conn.go), so that no ERROR goes back to a client whose ERROR ended
	// its transfer (the Pi's early terminate).
	ts.EnableSinglePort()
	s.tftp = ts
	return s
}

// EnablePacketInfo turns on IP_PKTINFO on the socket for Serve, so that
// each request carries the local address the generated cmdline.txt names.
// Call it right after binding: a request queued before lacks it.
func EnablePacketInfo(conn *net.UDPConn) error {
	if err := ipv4.NewPacketConn(conn).SetControlMessage(ipv4.FlagDst|ipv4.FlagInterface, true); err != nil {
		return fmt.Errorf("tftpd: enabling IP_PKTINFO on %s: %v", conn.LocalAddr(), err)
	}
	return nil
}

// Listen opens a UDP socket for Serve on addr (e.g. "127.0.0.1:0") with
// IP_PKTINFO enabled.
func Listen(addr string) (*net.UDPConn, error) {
	a, err := net.ResolveUDPAddr("udp4", addr)
	if err != nil {
		return nil, err
	}
	conn, err := net.ListenUDP("udp4", a)
	if err != nil {
		return nil, err
	}
	if err := EnablePacketInfo(conn); err != nil {
		conn.Close()
		return nil, err
	}
	return conn, nil
}

// Serve answers requests on conn until Shutdown. conn is usually the
// socket from Listen; through a peerConn, replies leave from the address
// each request arrived on.
func (s *Server) Serve(conn net.PacketConn) error {
	s.serving.Add(1)
	defer s.serving.Done()
	pc := newPeerConn(conn)
	s.conns.Store(pc, true)
	defer s.conns.Delete(pc)
	return s.tftp.Serve(pc)
}

// Shutdown stops accepting requests and waits for running transfers: in
// single-port mode pin/tftp's Shutdown only tells Serve to stop, and Serve
// returns once the transfers have ended.
func (s *Server) Shutdown() {
	s.tftp.Shutdown()
	s.serving.Wait()
}

// localFor is the address remote's request arrived on.
func (s *Server) localFor(remote netip.AddrPort) netip.Addr {
	var local netip.Addr
	s.conns.Range(func(k, _ any) bool {
		local = k.(*peerConn).local(remote)
		return !local.IsValid()
	})
	return local
}

// content is what a request is answered with.
type content struct {
	r    io.ReadSeeker
	c    io.Closer
	node Node
}

// open decides what to send for name.
func (s *Server) open(name string, remote, local netip.Addr) (content, Request, error) {
	req, err := ParseRequest(name)
	if err != nil {
		return content{}, req, fmt.Errorf("%w: %v", ErrNotFound, err)
	}
	// The root boot.ipxe is the same for every iPXE client: it only
	// redirects to the client's own directory.
	if req.Key == "" && req.File == "boot.ipxe" {
		if _, ok := nodes.KeyByIP(s.res.Config, s.res.Store, remote); !ok {
			return content{r: strings.NewReader(IPXEChain)}, req, nil
		}
	}
	n, err := s.res.Node(req, remote)
	if err != nil {
		return content{}, req, err
	}
	req.Key = n.Key
	inst := nodes.InstallOf(s.res.Config, s.res.Store, n.Key)
	if s.installed(n.Key, inst) {
		return content{}, req, fmt.Errorf("%w: %s", ErrNotFound, inst.NotNetbooted(n.Key))
	}
	head := local
	if !head.IsValid() {
		head = s.res.Config.ServerIP
	}
	kargs := append([]string(nil), s.res.Config.KernelArgs...)
	if nodes.Netconsole(s.res.Config, n.Key) && head.IsValid() {
		kargs = append(kargs, NetconsoleArg(head))
	}
	if head.IsValid() {
		kargs = append(kargs, DiskArgs(head, n.Key, diskOf(s.res.Config, n.Key))...)
		if inst.Pending {
			kargs = append(kargs, InstallArgs(head, inst.Want.Device)...)
		}
	}
	switch req.File {
	case "cmdline.txt":
		img, err := n.ReadFile("cmdline.txt")
		if err != nil {
			return content{}, req, err
		}
		return content{r: strings.NewReader(Cmdline(img, head, n.Key, kargs) + "\n"), node: n}, req, nil
	case "config.txt":
		img, err := n.ReadFile("config.txt")
		if err != nil {
			return content{}, req, err
		}
		return content{r: strings.NewReader(ConfigTxt(img, s.res.Config.ConfigTxt)), node: n}, req, nil
	case "boot.ipxe":
		if req.Key == "" {
			break
		}
		img, err := n.ReadFile("cmdline.txt")
		if err != nil {
			return content{}, req, err
		}
		k := n.Kernel()
		if k == "" {
			return content{}, req, fmt.Errorf("%w: no kernel in the boot directory of %s", ErrNotFound, n.Source())
		}
		script := IPXEScript(k, n.Initrd(k), Cmdline(img, head, n.Key, kargs))
		return content{r: strings.NewReader(script), node: n}, req, nil
	}
	f, err := n.Open(req.File)
	if err != nil {
		return content{}, req, err
	}
	return content{r: f, c: f, node: n}, req, nil
}

// installed reports whether node key boots from its own disk now, so that
// its netboot is refused; the first refusal is logged.
func (s *Server) installed(key string, inst nodes.InstallState) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !inst.Local {
		delete(s.local, key)
		return false
	}
	if !s.local[key] {
		s.local[key] = true
		s.log.Info(inst.NotNetbooted(key), "node", key)
	}
	return true
}

// read is the pin/tftp read handler.
func (s *Server) read(name string, rf io.ReaderFrom) error {
	start := s.now()
	var remote, local netip.Addr
	if ot, ok := rf.(tftp.OutgoingTransfer); ok {
		ra := ot.RemoteAddr()
		remote, _ = netip.AddrFromSlice(ra.IP)
		remote = remote.Unmap()
		local = s.localFor(netip.AddrPortFrom(remote, uint16(ra.Port)))
	}
	c, req, err := s.open(name, remote, local)
	if req.Key != "" && !nodes.Known(s.res.Config, s.res.Store, req.Key) {
		// Served (with Enroll auto any serial boots DefaultImage), but
		// neither recorded nor labelled by its key: see OtherNode.
		req.Key = OtherNode
	}
	t := Transfer{Node: req.Key, File: name, Remote: remote.String(), Time: start}
	if err != nil {
		t.Result, t.Error = "not-found", err.Error()
		if !errors.Is(err, ErrNotFound) {
			t.Result = "failed"
		}
		s.finish(t)
		// The client sees TFTP error 1 with a short text; the log has the
		// reason.
		return errors.New(shortReason(err))
	}
	if c.c != nil {
		defer c.c.Close()
	}
	s.stage(req)
	var r io.Reader = c.r
	if c.c != nil {
		// A file: pin/tftp reads one block at a time, a read(2) each
		// without a buffer.
		br := &pooledReader{r: c.r}
		defer br.release()
		r = br
	}
	var sum hash.Hash
	if path.Base(req.File) == "pieeprom.upd" {
		sum = sha256.New()
		r = io.TeeReader(r, sum)
	}
	// pin/tftp learns tsize from a Seeker; the tee hides it.
	n, err := rf.ReadFrom(seekable{r, c.r})
	t.Bytes, t.Duration = n, s.now().Sub(start)
	switch {
	case err == nil:
		t.Result = "ok"
		if sum != nil {
			s.eepromUpdate(req.Key, name, n, sum, c.node)
		}
	case isEarlyTerminate(err):
		// The Pi learns the size from the OACK and aborts with error 0;
		// it asks again right away. A normal end, not a failure.
		t.Result = "early-terminate"
	default:
		t.Result, t.Error = "failed", err.Error()
	}
	s.finish(t)
	return nil
}

// readBuffers are the read buffers of running transfers: a buffer per
// request would cost more than the rest of answering one that ends after
// the OACK (the Pi's size query).
var readBuffers = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, readBuffer) }}

// pooledReader reads r through a pooled buffer taken at the first read.
type pooledReader struct {
	r  io.Reader
	br *bufio.Reader
}

func (p *pooledReader) Read(b []byte) (int, error) {
	if p.br == nil {
		p.br = readBuffers.Get().(*bufio.Reader)
		p.br.Reset(p.r)
	}
	return p.br.Read(b)
}

func (p *pooledReader) release() {
	if p.br != nil {
		p.br.Reset(nil)
		readBuffers.Put(p.br)
		p.br = nil
	}
}

// seekable reads through r and seeks s, the file r reads: pin/tftp seeks
// only to learn the size before the first read.
type seekable struct {
	io.Reader
	s io.Seeker
}

func (x seekable) Seek(off int64, whence int) (int64, error) { return x.s.Seek(off, whence) }

// isEarlyTerminate recognises the client's ERROR 0 in answer to our OACK
// (pin/tftp reports it as "sending block 0: code=0, ...").
func isEarlyTerminate(err error) bool {
	return strings.Contains(err.Error(), "sending block 0: code=0")
}

// eepromUpdate records a bootloader update the node fetched whole, for
// its status.
func (s *Server) eepromUpdate(key, file string, n int64, sum hash.Hash, node Node) {
	if key == "" || key == OtherNode {
		return
	}
	u := nodes.EEPROMUpdate{File: file, Size: n, SHA256: hex.EncodeToString(sum.Sum(nil)), Source: node.Source(), Time: s.now().UTC()}
	s.log.Info("bootloader update served", "node", key, "file", file, "bytes", n, "sha256", u.SHA256)
	if err := nodes.SaveEEPROMUpdate(s.res.Store, key, u); err != nil {
		s.log.Warn("recording the bootloader update", "node", key, "err", err)
	}
}

func shortReason(err error) string {
	s := err.Error()
	if errors.Is(err, ErrNotFound) {
		return "File not found"
	}
	if len(s) > 100 {
		s = s[:100]
	}
	return s
}

// stage records the boot stage a request shows, only when it changes so
// that a boot costs a few writes, not one per file.
func (s *Server) stage(req Request) {
	if req.Key == "" || req.Key == OtherNode {
		return
	}
	var st string
	base := path.Base(req.File)
	switch {
	case base == "start4.elf" || base == "start.elf" || base == "config.txt" || base == "boot.ipxe":
		st = nodes.StageFirmware
	case strings.HasPrefix(base, "kernel") && strings.HasSuffix(base, ".img"), strings.HasPrefix(base, "vmlinuz"), base == "bzImage":
		st = nodes.StageKernel
	default:
		return
	}
	s.mu.Lock()
	changed := s.stages[req.Key] != st
	s.stages[req.Key] = st
	s.mu.Unlock()
	if !changed {
		return
	}
	if err := nodes.SaveStage(s.res.Store, req.Key, "tftpd", nodes.Stage{Stage: st, Time: s.now(), Detail: req.File}); err != nil {
		s.log.Warn("recording boot stage", "node", req.Key, "err", err)
	}
}

func (s *Server) finish(t Transfer) {
	node := t.Node
	if node == "" {
		node = "unknown"
	}
	s.m.transfers.WithLabelValues(node, t.Result).Inc()
	s.m.bytes.WithLabelValues(node).Add(float64(t.Bytes))
	if t.Result == "ok" {
		s.m.duration.WithLabelValues(node).Observe(t.Duration.Seconds())
	}
	s.mu.Lock()
	ns := s.stats[node]
	if ns == nil {
		ns = &NodeStats{}
		s.stats[node] = ns
	}
	ns.Transfers++
	ns.Bytes += t.Bytes
	ns.LastFile, ns.LastSeen = t.File, t.Time
	switch t.Result {
	case "failed":
		ns.Failures++
		ns.LastError = t.Error
	case "not-found":
		ns.NotFound++
	case "early-terminate":
		ns.EarlyTerminates++
	}
	s.recent = append(s.recent, t)
	if len(s.recent) > 50 {
		s.recent = s.recent[len(s.recent)-50:]
	}
	s.mu.Unlock()
	attrs := []any{"node", node, "file", t.File, "remote", t.Remote, "result", t.Result, "bytes", t.Bytes, "ms", t.Duration.Milliseconds()}
	switch t.Result {
	case "failed":
		s.log.Warn("transfer failed", append(attrs, "err", t.Error)...)
	case "not-found":
		// A Pi probes files that need not exist (dt-blob.bin, ...): those
		// stay at debug level. A node without an image cannot boot at
		// all: that is worth a warning and a line on the status page.
		if strings.Contains(t.Error, nodes.ErrNoImage.Error()) {
			s.log.Warn("node has no image to boot", append(attrs, "err", t.Error)...)
		} else {
			s.log.Debug("not found", append(attrs, "err", t.Error)...)
		}
	default:
		s.log.Info("transfer", attrs...)
	}
	if t.Result == "failed" && t.Node != "" && t.Node != OtherNode {
		nodes.SaveStage(s.res.Store, t.Node, "tftpd-error", nodes.Stage{LastError: "tftp " + t.File + ": " + t.Error, ErrorTime: t.Time})
	}
}

// Status is /status.
type Status struct {
	Nodes  map[string]NodeStats
	Recent []Transfer
}

// Status returns per-node totals and the last transfers, newest first.
func (s *Server) Status() Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := Status{Nodes: map[string]NodeStats{}}
	for k, v := range s.stats {
		st.Nodes[k] = *v
	}
	for i := len(s.recent) - 1; i >= 0; i-- {
		st.Recent = append(st.Recent, s.recent[i])
	}
	sort.SliceStable(st.Recent, func(i, j int) bool { return st.Recent[i].Time.After(st.Recent[j].Time) })
	return st
}
