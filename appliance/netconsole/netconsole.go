// Package netconsole receives the boot logs nodes send over UDP, for
// boards without a UART per node (the Super6C): the Pi bootloader's
// NETCONSOLE (e.g. NETCONSOLE=6665@169.254.1.1/,6666@/ in the EEPROM
// config: UDP broadcasts to port 6666) and the Linux kernel's netconsole=
// (UDP to the head node's port 6666). Each line is filed under the node that
// sent it, found by the sender's MAC (the bootloader sends from a fixed
// address such as 169.254.1.1, the same for every Pi) or else by its IP, and
// the last MaxLines lines per node are kept in nodes/<key>/console.json.
//
// tftpd runs the receiver: it is the service a node talks to right before
// and while these logs are written.
package netconsole

import (
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sort"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/ociboot/ociboot/appliance/config"
	"github.com/ociboot/ociboot/appliance/nodes"
	"github.com/ociboot/ociboot/appliance/store"
)

// Port is the UDP port both the bootloader's NETCONSOLE (its example
// setting) and the kernel's netconsole send to by default.
const Port = 6666

// Bounds of what is kept: lines per node and characters per line.
const (
	MaxLines   = 200
	MaxLineLen = 512
)

// Options configure a Receiver.
type Options struct {
	Config *config.Config
	Store  *store.Store
	Log    *slog.Logger
	Now    func() time.Time
	// FlushEvery bounds how long received lines wait in memory before
	// they are written to the store (default 2 s): a kernel log arrives
	// in bursts of hundreds of lines, one write per burst is enough.
	FlushEvery time.Duration
}

// Receiver files received lines under their nodes.
type Receiver struct {
	o   Options
	log *slog.Logger

	mu      sync.Mutex
	lines   map[string][]nodes.ConsoleLine // loaded from the store on first use
	dirty   map[string]bool
	keys    map[string]keyEntry // sender → node, cached
	unknown int                 // packets no node could be found for
	packets int
	lastUnk string
}

type keyEntry struct {
	key string
	exp time.Time
}

// New makes a receiver; feed it with ServeUDP or ServePacket and run
// Flusher.
func New(o Options) *Receiver {
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.FlushEvery == 0 {
		o.FlushEvery = 2 * time.Second
	}
	r := &Receiver{o: o, log: o.Log, lines: map[string][]nodes.ConsoleLine{}, dirty: map[string]bool{}, keys: map[string]keyEntry{}}
	if r.log == nil {
		r.log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return r
}

// Handle files payload, sent by mac (nil if unknown) from src.
func (r *Receiver) Handle(mac net.HardwareAddr, src netip.AddrPort, payload []byte) {
	now := r.o.Now().UTC()
	key, ok := r.key(mac, src.Addr(), now)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.packets++
	if !ok {
		r.unknown++
		r.lastUnk = src.String()
		if mac != nil {
			r.lastUnk += " (" + mac.String() + ")"
		}
		return
	}
	lines, loaded := r.lines[key]
	if !loaded {
		lines = nodes.LoadConsole(r.o.Store, key)
	}
	for _, text := range SplitLines(payload) {
		lines = append(lines, nodes.ConsoleLine{Time: now, From: src.String(), Text: text})
	}
	if len(lines) > MaxLines {
		lines = append([]nodes.ConsoleLine(nil), lines[len(lines)-MaxLines:]...)
	}
	r.lines[key] = lines
	r.dirty[key] = true
}

// key finds the node that sent a packet: by MAC through its record or
// Nodes[] entry, else by the address reserved or recorded for it.
func (r *Receiver) key(mac net.HardwareAddr, ip netip.Addr, now time.Time) (string, bool) {
	sender := mac.String() + "/" + ip.String()
	r.mu.Lock()
	e, ok := r.keys[sender]
	r.mu.Unlock()
	if ok && now.Before(e.exp) {
		return e.key, e.key != ""
	}
	var key string
	if mac != nil {
		k := nodes.Canonical(r.o.Config, r.o.Store, nodes.MACKey(mac))
		_, configured := r.o.Config.NodeByMAC(mac)
		if _, err := nodes.Load(r.o.Store, k); err == nil || configured {
			key = k
		}
	}
	if key == "" && ip.IsValid() {
		key, _ = nodes.KeyByIP(r.o.Config, r.o.Store, ip)
	}
	r.mu.Lock()
	if len(r.keys) > 4096 {
		clear(r.keys) // a flood of spoofed senders costs lookups, not memory
	}
	r.keys[sender] = keyEntry{key: key, exp: now.Add(10 * time.Second)}
	r.mu.Unlock()
	return key, key != ""
}

// SplitLines cuts a datagram into printable lines: CR and trailing
// whitespace dropped, invalid UTF-8 and control characters replaced, each
// line cut at MaxLineLen, empty lines left out. The kernel's extended
// format ("6,1234,5678,-;text") keeps its header: it carries the level
// and the kernel's timestamp.
func SplitLines(b []byte) []string {
	var out []string
	for _, l := range strings.Split(strings.ToValidUTF8(string(b), "\uFFFD"), "\n") {
		l = strings.Map(func(c rune) rune {
			if c == '\t' {
				return ' '
			}
			if c < 0x20 || c == 0x7f {
				return -1
			}
			return c
		}, l)
		l = strings.TrimRight(l, " ")
		if l == "" {
			continue
		}
		if len(l) > MaxLineLen {
			cut := MaxLineLen
			for cut > 0 && !utf8.RuneStart(l[cut]) {
				cut--
			}
			l = l[:cut]
		}
		out = append(out, l)
	}
	return out
}

// Flush writes the lines received since the last flush.
func (r *Receiver) Flush() {
	r.mu.Lock()
	todo := map[string][]nodes.ConsoleLine{}
	for k := range r.dirty {
		todo[k] = r.lines[k]
	}
	clear(r.dirty)
	r.mu.Unlock()
	for k, lines := range todo {
		if err := nodes.SaveConsole(r.o.Store, k, lines); err != nil {
			r.log.Warn("saving boot log lines", "node", k, "err", err)
		}
	}
}

// Flusher flushes every FlushEvery until done is closed, then once more.
func (r *Receiver) Flusher(done <-chan struct{}) {
	t := time.NewTicker(r.o.FlushEvery)
	defer t.Stop()
	for {
		select {
		case <-done:
			r.Flush()
			return
		case <-t.C:
			r.Flush()
		}
	}
}

// ServeUDP reads datagrams from conn (bound to Port). With keyed false
// they are only drained: the packet socket sees the same datagrams with
// the sender's MAC, and the bound socket keeps the kernel from answering
// "port unreachable".
func (r *Receiver) ServeUDP(conn net.PacketConn, keyed bool) error {
	buf := make([]byte, 65536)
	for {
		n, from, err := conn.ReadFrom(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		ua, ok := from.(*net.UDPAddr)
		if !keyed || !ok {
			continue
		}
		r.Handle(nil, ua.AddrPort(), buf[:n])
	}
}

// Status is what /status shows of the receiver.
type Status struct {
	Packets int
	// Unknown counts packets no node was found for; LastUnknown is the
	// last such sender.
	Unknown     int
	LastUnknown string `json:",omitempty"`
	// Nodes lists how many lines each node has.
	Nodes map[string]int
}

// Status returns the receiver's counters.
func (r *Receiver) Status() Status {
	r.mu.Lock()
	defer r.mu.Unlock()
	st := Status{Packets: r.packets, Unknown: r.unknown, LastUnknown: r.lastUnk, Nodes: map[string]int{}}
	keys := make([]string, 0, len(r.lines))
	for k := range r.lines {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		st.Nodes[k] = len(r.lines[k])
	}
	return st
}
