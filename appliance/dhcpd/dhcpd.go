// Package dhcpd is the DHCP server that starts every node's netboot.
//
// In proxy mode (the default) another server on the segment leases
// addresses; dhcpd answers only DISCOVERs of netboot clients, with no address
// and the boot options a Raspberry Pi bootloader looks for (option 43 with
// "Raspberry Pi Boot", option 60 "PXEClient", the TFTP server in siaddr,
// option 54 and option 66). It never answers a REQUEST, so it can never ACK
// an address the real server handed out; it only reads the REQUESTs that
// nodes broadcast to learn their addresses.
//
// In full mode dhcpd is the segment's only server: it leases addresses from
// Netboot.Range, keyed by MAC (not client identifier, so the bootloader, the
// kernel's ip=dhcp and the OS's client all get the same address), honours
// Netboot.Nodes[].IP reservations, and persists leases in dhcp/leases.json
// before it ACKs.
//
// Replies go to 255.255.255.255:68 from port 67 on the configured interface
// (or to the relay at giaddr:67), which is what dnsmasq's proxy does and
// avoids injecting ARP entries for clients that have no address yet.
//
// A node the config lists with an Install that it has reported done
// (nodes.InstallState.Local) boots from its own disk: in proxy mode its
// netboot DISCOVERs get no answer, in full mode it still gets its address
// but no boot options; the first such request is logged.
//
// Every netboot client is recorded in the store under nodes/<key>/: key is
// the Pi serial from option 97 (8 lowercase hex digits), or the MAC in the
// bootloader's dash form ("dc-a6-32-01-02-03") for clients that do not send
// a Pi GUID. Records are rewritten when they change, otherwise at most once
// a minute, so that retrying bootloaders do not cause an fsync per packet.
//
// In full mode the head node cannot ask itself for an address. gokrazy's
// DHCP client takes a fixed one instead with
// -static_network_config='{"IP":"10.42.0.1","Netmask":"////AA==",...}'
// (inline JSON or a file path). Netmask is a Go net.IPMask and therefore
// base64 of the mask bytes ("////AA==" is /24, "//8AAA==" is /16); a dotted
// "255.255.255.0" makes the client exit with a base64 error, and a missing
// Netmask means /24.
package dhcpd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sort"
	"sync"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/ociboot/ociboot/appliance/metrics"

	"github.com/ociboot/ociboot/appliance/config"
	"github.com/ociboot/ociboot/appliance/nodes"
	"github.com/ociboot/ociboot/appliance/store"
)

// Ports of DHCP.
const (
	ServerPort = 67
	ClientPort = 68
)

// Options configure a Server. Config, Store, Conn and ServerIP are required.
type Options struct {
	Config *config.Config
	Store  *store.Store
	// Conn receives requests on port 67 and sends replies. On the appliance
	// it is ListenUDP's socket bound to the interface; tests pass loopback
	// sockets.
	Conn net.PacketConn
	// ServerIP is the head node's address: siaddr, option 54 and option 66.
	ServerIP netip.Addr
	// OwnMAC is the interface's MAC; requests from it (our own probe) are
	// ignored.
	OwnMAC net.HardwareAddr
	// Now is the clock (time.Now if nil).
	Now func() time.Time
	Log *slog.Logger
	// Metrics, if set, receives the server's Prometheus collectors.
	Metrics metrics.Registerer
	// RecordInterval bounds how often an unchanged node record is rewritten
	// just to move LastSeen (default one minute).
	RecordInterval time.Duration
	// MaxAutoNodes bounds the nodes enrolled automatically (not in
	// Netboot.Nodes) that are recorded; a netboot client beyond it is not
	// recorded and gets no boot options, so invented serials cannot grow
	// the store without bound. Default DefaultMaxAutoNodes.
	MaxAutoNodes int
	// WriteLeases writes the lease table to path crash-safely; default
	// store.WriteJSON. Tests inject a failing writer to play a full disk.
	WriteLeases func(path string, v any) error
}

// Server answers DHCP requests.
type Server struct {
	cfg      *config.Config
	st       *store.Store
	conn     net.PacketConn
	serverIP netip.Addr
	ownMAC   net.HardwareAddr
	now      func() time.Time
	log      *slog.Logger
	m        *instruments

	mu     sync.Mutex
	pool   *pool
	netXID map[string]netbootXID // by MAC: recent netboot transactions
	// local are the configured nodes that boot from their own disk,
	// each logged once (installedLocal).
	local map[string]bool
	swept time.Time // last time netXID was pruned
	// offersSwept is when stale offers were last dropped.
	offersSwept time.Time
	saved       bool // pool matches leases.json
	// onDisk is the MAC → address binding leases.json holds: a REQUEST
	// for the address already on disk is a renewal, which is ACKed even
	// when the new expiry cannot be saved (see handleRequest).
	onDisk      map[string]netip.Addr
	writeLeases func(path string, v any) error
	// saveErr is the last failed lease save ("" once a save succeeds).
	saveErr     string
	saveErrTime time.Time

	nodes *recorder

	fmu     sync.Mutex
	foreign map[netip.Addr]time.Time // other DHCP servers seen, last time
}

// maxNetbootXIDs bounds the netboot transactions remembered at once: a
// flood of DISCOVERs from invented MACs must not grow the table without
// bound (entries expire after offerHold).
const maxNetbootXIDs = 4096

type netbootXID struct {
	xid  dhcpv4.TransactionID
	when time.Time
}

// LeasesPath is the lease file below the store root.
func LeasesPath(st *store.Store) string {
	return st.Path(store.DHCPDir, "leases.json")
}

// New loads the lease table (full mode) and the known nodes.
func New(o Options) (*Server, error) {
	if o.Config == nil || o.Store == nil || o.Conn == nil {
		return nil, errors.New("dhcpd: Options need Config, Store and Conn")
	}
	if !o.ServerIP.Is4() {
		return nil, fmt.Errorf("dhcpd: no IPv4 server address; set Netboot.ServerIP or give %s an IPv4 address", o.Config.Interface)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.RecordInterval == 0 {
		o.RecordInterval = time.Minute
	}
	s := &Server{
		cfg:      o.Config,
		st:       o.Store,
		conn:     o.Conn,
		serverIP: o.ServerIP,
		ownMAC:   o.OwnMAC,
		now:      o.Now,
		log:      o.Log,
		m:        newMetrics(),
		pool:     newPool(o.Config),
		netXID:   map[string]netbootXID{},
		local:    map[string]bool{},
		saved:    true,
		foreign:  map[netip.Addr]time.Time{},
		onDisk:   map[string]netip.Addr{},

		writeLeases: o.WriteLeases,
	}
	if s.writeLeases == nil {
		s.writeLeases = store.WriteJSON
	}
	if o.Metrics != nil {
		if err := s.m.register(o.Metrics); err != nil {
			return nil, fmt.Errorf("dhcpd: metrics: %v", err)
		}
	}
	if err := store.CleanTemps(o.Store.Path(store.DHCPDir)); err != nil {
		return nil, fmt.Errorf("dhcpd: %v", err)
	}
	if s.full() {
		if err := s.pool.load(LeasesPath(o.Store)); err != nil {
			return nil, fmt.Errorf("dhcpd: loading leases: %w", err)
		}
		s.setOnDisk(s.pool.snapshot())
		s.m.leases.Set(float64(s.pool.active(s.now())))
	}
	if o.MaxAutoNodes <= 0 {
		o.MaxAutoNodes = DefaultMaxAutoNodes
	}
	s.nodes = newRecorder(o.Store, o.Config, o.Log, o.RecordInterval, o.Now)
	s.nodes.maxAuto = o.MaxAutoNodes
	s.nodes.loadKnown()
	return s, nil
}

func (s *Server) full() bool { return s.cfg.Mode == config.ModeFull }

// Serve reads and answers requests until ctx is done or the conn fails.
// Node records are written in the background while it runs.
func (s *Server) Serve(ctx context.Context) error {
	done := make(chan struct{})
	defer close(done)
	go func() {
		select {
		case <-ctx.Done():
			s.conn.SetReadDeadline(time.Unix(1, 0))
		case <-done:
		}
	}()
	go s.nodes.run(ctx)
	defer s.nodes.flush()
	buf := make([]byte, 1500)
	for {
		n, peer, err := s.conn.ReadFrom(buf)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return fmt.Errorf("dhcpd: reading requests: %v", err)
		}
		reply, dst := s.HandlePacket(buf[:n], peer)
		if reply == nil {
			continue
		}
		if _, err := s.conn.WriteTo(reply, dst); err != nil {
			s.m.drops.WithLabelValues("send_error").Inc()
			s.log.Warn("sending reply failed", "to", dst.String(), "err", err)
		}
	}
}

// HandlePacket parses one datagram and returns the encoded reply and where
// to send it, or nil. It never panics on malformed input.
func (s *Server) HandlePacket(b []byte, peer net.Addr) ([]byte, *net.UDPAddr) {
	req, err := dhcpv4.FromBytes(b)
	if err != nil {
		s.m.drops.WithLabelValues("malformed").Inc()
		return nil, nil
	}
	reply, dst := s.Handle(req)
	if reply == nil {
		return nil, nil
	}
	return Encode(reply), dst
}

// Encode serialises a reply without the pad bytes dhcpv4 appends to reach
// the BOOTP minimum of 300 bytes: the 2020-01 Pi 4 bootloader dropped replies
// containing option 0, and DHCP clients accept short packets.
func Encode(m *dhcpv4.DHCPv4) []byte {
	b := m.ToBytes()
	// The fixed header and cookie are 240 bytes; options follow, ended by
	// End (255), which is non-zero, so trimming zeros stops right after it.
	end := len(b)
	for end > 240 && b[end-1] == 0 {
		end--
	}
	return b[:end]
}

// Handle decides the reply to a parsed request and performs its effects
// (offers held, leases committed, nodes noted). It returns nil when the
// request gets no answer.
func (s *Server) Handle(req *dhcpv4.DHCPv4) (*dhcpv4.DHCPv4, *net.UDPAddr) {
	if req.OpCode != dhcpv4.OpcodeBootRequest {
		s.m.drops.WithLabelValues("not_request").Inc()
		return nil, nil
	}
	mt := req.MessageType()
	s.m.requests.WithLabelValues(msgName(mt)).Inc()
	if len(req.ClientHWAddr) != 6 || isZero(req.ClientHWAddr) {
		s.m.drops.WithLabelValues("bad_hwaddr").Inc()
		return nil, nil
	}
	if s.ownMAC != nil && req.ClientHWAddr.String() == s.ownMAC.String() {
		s.m.drops.WithLabelValues("own_packet").Inc()
		return nil, nil
	}
	client := ParseClient(req)
	now := s.now()

	s.mu.Lock()
	if now.Sub(s.swept) >= time.Second {
		// Forget old transactions so random MACs cannot grow the map.
		for m, x := range s.netXID {
			if now.Sub(x.when) >= offerHold {
				delete(s.netXID, m)
			}
		}
		s.swept = now
	}
	if client.Netboot && mt == dhcpv4.MessageTypeDiscover && len(s.netXID) < maxNetbootXIDs {
		s.netXID[client.MAC.String()] = netbootXID{xid: req.TransactionID, when: now}
	} else if x, ok := s.netXID[client.MAC.String()]; ok && x.xid == req.TransactionID && now.Sub(x.when) < offerHold {
		// The Pi's REQUEST lacks option 60; it still wants the boot options.
		client.Netboot = true
	}
	s.mu.Unlock()

	key, known := s.nodes.identify(client)
	if client.Netboot && !known && s.cfg.Enroll == config.EnrollKnownOnly {
		if !s.full() {
			s.m.drops.WithLabelValues("not_enrolled").Inc()
			return nil, nil
		}
		// Full mode still gives the machine an address, but no boot options
		// and no node record: known-only means unknown machines do not boot
		// from us.
		client.Netboot = false
		key = ""
	}

	if client.Netboot && known && s.installedLocal(key) {
		// The node boots from its own disk now (Nodes[].Install).
		if !s.full() {
			s.m.drops.WithLabelValues("installed").Inc()
			return nil, nil
		}
		// Full mode: its OS still needs an address, only no netboot.
		client.Netboot = false
	}

	var reply *dhcpv4.DHCPv4
	var dst *net.UDPAddr
	if s.full() {
		reply, dst = s.handleFull(req, mt, client, key, now)
	} else {
		reply, dst = s.handleProxy(req, mt, client, key, now)
	}
	if reply != nil {
		s.m.replies.WithLabelValues(msgName(reply.MessageType())).Inc()
	}
	return reply, dst
}

// installedLocal reports whether node key (one the config lists) has
// installed itself to its own disk and is no longer netbooted
// (nodes.InstallState.Local); the first netboot request that is refused
// for it is logged.
func (s *Server) installedLocal(key string) bool {
	inst := nodes.InstallOf(s.cfg, s.st, key)
	s.mu.Lock()
	defer s.mu.Unlock()
	if !inst.Local {
		delete(s.local, key)
		return false
	}
	if !s.local[key] {
		s.local[key] = true
		s.log.Info(inst.NotNetbooted(key), "node", key, "mode", s.cfg.Mode)
	}
	return true
}

func (s *Server) handleProxy(req *dhcpv4.DHCPv4, mt dhcpv4.MessageType, client Client, key string, now time.Time) (*dhcpv4.DHCPv4, *net.UDPAddr) {
	switch mt {
	case dhcpv4.MessageTypeDiscover:
		if !client.Netboot {
			s.m.drops.WithLabelValues("not_netboot").Inc()
			return nil, nil
		}
		if s.nodes.seen(client, key, netip.Addr{}, false, now) == enrolmentFull {
			s.m.drops.WithLabelValues("enrolment_full").Inc()
			return nil, nil
		}
		reply, err := dhcpv4.NewReplyFromRequest(req,
			dhcpv4.WithMessageType(dhcpv4.MessageTypeOffer),
			dhcpv4.WithBroadcast(true))
		if err != nil {
			s.m.drops.WithLabelValues("internal").Inc()
			return nil, nil
		}
		s.addBootOptions(reply, client)
		return reply, s.destination(req, reply)
	case dhcpv4.MessageTypeRequest:
		// Not ours to answer; but the address the node asks the real server
		// for is the one nfsd exports to, the first time it is seen. Any
		// host can send a REQUEST with a node's MAC, so the claim never
		// moves an address once it is known (see recorder.seen).
		if key != "" {
			ip := addrFrom(req.RequestedIPAddress())
			if !ip.IsValid() {
				ip = addrFrom(req.ClientIPAddr)
			}
			if ip.IsValid() && s.nodes.seen(client, key, ip, false, now) == addressPinned {
				s.m.drops.WithLabelValues("address_pinned").Inc()
			}
		}
		s.m.drops.WithLabelValues("proxy_ignores_" + msgName(mt)).Inc()
		return nil, nil
	default:
		s.m.drops.WithLabelValues("proxy_ignores_" + msgName(mt)).Inc()
		return nil, nil
	}
}

// addBootOptions makes reply one a Pi bootloader accepts: TFTP server in
// siaddr, option 54 and option 66 alike, so every bootloader generation
// agrees on it whichever field it reads.
func (s *Server) addBootOptions(reply *dhcpv4.DHCPv4, client Client) {
	ip := net.IP(s.serverIP.AsSlice())
	reply.ServerIPAddr = ip
	reply.UpdateOption(dhcpv4.OptServerIdentifier(ip))
	if !client.Netboot {
		return
	}
	reply.UpdateOption(dhcpv4.OptClassIdentifier(PXEClass))
	reply.UpdateOption(dhcpv4.OptTFTPServerName(s.serverIP.String()))
	// The Pi asks for fixed file names and ignores the boot file; iPXE
	// (a QEMU or PC node) runs the script it names. iPXE must not get the
	// Pi's option 43: its boot menu makes iPXE try a PXE menu boot instead
	// of the boot file. A plain PXE ROM gets no boot file: we do not ship a
	// chain-loadable iPXE.
	if client.Model == "" && client.IPXE {
		reply.BootFileName = IPXEScript
		reply.UpdateOption(dhcpv4.OptBootFileName(IPXEScript))
	} else {
		reply.UpdateOption(dhcpv4.OptGeneric(dhcpv4.OptionVendorSpecificInformation, PXEOption43))
	}
	if len(client.GUID) > 0 {
		reply.UpdateOption(dhcpv4.OptGeneric(dhcpv4.OptionClientMachineIdentifier, client.GUID))
	}
}

// destination follows RFC 2131 4.1, except that replies to clients without
// an address are broadcast even when the broadcast flag is clear.
func (s *Server) destination(req, reply *dhcpv4.DHCPv4) *net.UDPAddr {
	if gi := addrFrom(req.GatewayIPAddr); gi.IsValid() {
		return &net.UDPAddr{IP: gi.AsSlice(), Port: ServerPort}
	}
	if reply.MessageType() != dhcpv4.MessageTypeNak {
		if ci := addrFrom(req.ClientIPAddr); ci.IsValid() {
			return &net.UDPAddr{IP: ci.AsSlice(), Port: ClientPort}
		}
	}
	return &net.UDPAddr{IP: net.IPv4bcast, Port: ClientPort}
}

func (s *Server) handleFull(req *dhcpv4.DHCPv4, mt dhcpv4.MessageType, client Client, key string, now time.Time) (*dhcpv4.DHCPv4, *net.UDPAddr) {
	if gi := addrFrom(req.GatewayIPAddr); gi.IsValid() && !s.cfg.Subnet.Contains(gi) {
		s.m.drops.WithLabelValues("foreign_subnet").Inc()
		return nil, nil
	}
	serial := s.nodes.serialOf(client)
	s.mu.Lock()
	defer s.mu.Unlock()
	if now.Sub(s.offersSwept) >= time.Second {
		s.pool.expireOffers(now)
		s.offersSwept = now
	}
	mac := client.MAC
	switch mt {
	case dhcpv4.MessageTypeDiscover:
		ip, ok := s.pool.choose(mac, serial, addrFrom(req.RequestedIPAddress()), now)
		if !ok {
			s.m.drops.WithLabelValues("pool_exhausted").Inc()
			s.log.Warn("address pool exhausted; no offer", "mac", mac.String(), "range", s.cfg.Raw.Range)
			return nil, nil
		}
		s.pool.hold(mac, ip, now)
		if client.Netboot && s.nodes.seen(client, key, netip.Addr{}, true, now) == enrolmentFull {
			// An address like any machine's, but no boot options.
			s.m.drops.WithLabelValues("enrolment_full").Inc()
			client.Netboot = false
		}
		return s.leaseReply(req, dhcpv4.MessageTypeOffer, client, ip)

	case dhcpv4.MessageTypeRequest:
		sid := addrFrom(req.ServerIdentifier())
		if sid.IsValid() && sid != s.serverIP {
			// SELECTING another server's offer.
			s.pool.dropOffer(mac)
			s.m.drops.WithLabelValues("other_server_selected").Inc()
			return nil, nil
		}
		want := addrFrom(req.RequestedIPAddress())
		if !want.IsValid() {
			want = addrFrom(req.ClientIPAddr) // RENEWING / REBINDING
		}
		if !want.IsValid() {
			s.m.drops.WithLabelValues("request_without_address").Inc()
			return nil, nil
		}
		ip, ok := s.pool.choose(mac, serial, want, now)
		if !ok || ip != want {
			s.log.Info("NAK", "mac", mac.String(), "requested", want.String(), "allowed", ip.String())
			return s.nak(req, fmt.Sprintf("requested address %s is not yours; start over with DISCOVER", want))
		}
		var hostname string
		if h := req.HostName(); h != "" {
			hostname = h
		}
		renewal := s.onDisk[mac.String()] == ip
		s.pool.commit(mac, ip, now.Add(s.cfg.Lease), hostname, key)
		s.saved = false
		if err := s.saveLocked(); err != nil {
			if !renewal {
				s.m.drops.WithLabelValues("store_error").Inc()
				s.log.Error("not ACKing a new lease: it could not be saved; free space on the store (/perm) or fix its file system", "mac", mac.String(), "ip", ip.String(), "path", LeasesPath(s.st), "err", err)
				return nil, nil
			}
			// leases.json already binds ip to this MAC, so no other
			// client can be given it after a restart; only the longer
			// expiry is lost. Refusing would take a running node off
			// the network because the disk is full (issue: /perm full
			// made dhcpd refuse every renewal).
			s.m.unsaved.WithLabelValues("renewal").Inc()
			s.log.Error("ACKing renewal although the lease could not be saved: the new expiry is only in memory until a save succeeds; free space on the store (/perm)", "mac", mac.String(), "ip", ip.String(), "expiry", now.Add(s.cfg.Lease).Format(time.RFC3339), "path", LeasesPath(s.st), "err", err)
		}
		s.m.leases.Set(float64(s.pool.active(now)))
		if key != "" && s.nodes.seen(client, key, ip, true, now) == enrolmentFull {
			client.Netboot = false
		}
		return s.leaseReply(req, dhcpv4.MessageTypeAck, client, ip)

	case dhcpv4.MessageTypeRelease:
		if sid := addrFrom(req.ServerIdentifier()); sid.IsValid() && sid != s.serverIP {
			return nil, nil
		}
		if s.pool.release(mac, addrFrom(req.ClientIPAddr), now) {
			s.saved = false
			if err := s.saveLocked(); err != nil {
				s.log.Error("saving released lease failed", "mac", mac.String(), "err", err)
			}
			s.m.leases.Set(float64(s.pool.active(now)))
		}
		return nil, nil

	case dhcpv4.MessageTypeDecline:
		if sid := addrFrom(req.ServerIdentifier()); sid.IsValid() && sid != s.serverIP {
			return nil, nil
		}
		ip := addrFrom(req.RequestedIPAddress())
		if !s.pool.decline(mac, ip, now) {
			s.m.drops.WithLabelValues("decline_not_holder").Inc()
			s.log.Debug("ignoring DECLINE from a MAC that does not hold the address", "mac", mac.String(), "ip", ip.String())
			return nil, nil
		}
		s.log.Warn("client declined address: another host uses it", "mac", mac.String(), "ip", ip.String())
		s.saved = false
		if err := s.saveLocked(); err != nil {
			s.log.Error("saving declined address failed", "ip", ip.String(), "err", err)
		}
		s.m.leases.Set(float64(s.pool.active(now)))
		return nil, nil

	case dhcpv4.MessageTypeInform:
		reply, err := dhcpv4.NewReplyFromRequest(req, dhcpv4.WithMessageType(dhcpv4.MessageTypeAck))
		if err != nil {
			return nil, nil
		}
		s.addNetworkOptions(reply, false)
		s.addBootOptions(reply, client)
		return reply, s.destination(req, reply)
	}
	s.m.drops.WithLabelValues("unhandled_" + msgName(mt)).Inc()
	return nil, nil
}

func (s *Server) leaseReply(req *dhcpv4.DHCPv4, mt dhcpv4.MessageType, client Client, ip netip.Addr) (*dhcpv4.DHCPv4, *net.UDPAddr) {
	reply, err := dhcpv4.NewReplyFromRequest(req,
		dhcpv4.WithMessageType(mt),
		dhcpv4.WithYourIP(ip.AsSlice()))
	if err != nil {
		return nil, nil
	}
	s.addNetworkOptions(reply, true)
	s.addBootOptions(reply, client)
	return reply, s.destination(req, reply)
}

func (s *Server) addNetworkOptions(reply *dhcpv4.DHCPv4, lease bool) {
	reply.UpdateOption(dhcpv4.OptSubnetMask(net.CIDRMask(s.cfg.Subnet.Bits(), 32)))
	if s.cfg.Router.IsValid() {
		reply.UpdateOption(dhcpv4.OptRouter(s.cfg.Router.AsSlice()))
	}
	if len(s.cfg.DNS) > 0 {
		var ips []net.IP
		for _, a := range s.cfg.DNS {
			ips = append(ips, a.AsSlice())
		}
		reply.UpdateOption(dhcpv4.OptDNS(ips...))
	}
	if lease {
		reply.UpdateOption(dhcpv4.OptIPAddressLeaseTime(s.cfg.Lease))
		reply.UpdateOption(dhcpv4.OptRenewTimeValue(s.cfg.Lease / 2))
		reply.UpdateOption(dhcpv4.OptRebindingTimeValue(s.cfg.Lease * 7 / 8))
	}
}

func (s *Server) nak(req *dhcpv4.DHCPv4, msg string) (*dhcpv4.DHCPv4, *net.UDPAddr) {
	reply, err := dhcpv4.NewReplyFromRequest(req,
		dhcpv4.WithMessageType(dhcpv4.MessageTypeNak),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(s.serverIP.AsSlice())),
		dhcpv4.WithOption(dhcpv4.OptMessage(msg)))
	if err != nil {
		return nil, nil
	}
	return reply, s.destination(req, reply)
}

// saveLocked writes leases.json; the caller holds s.mu. An ACK is only sent
// after this returns nil (RFC 2131 4.3.2: commit before replying).
func (s *Server) saveLocked() error {
	if s.saved {
		return nil
	}
	snap := s.pool.snapshot()
	if err := s.writeLeases(LeasesPath(s.st), snap); err != nil {
		s.m.saveFailures.Inc()
		s.saveErr, s.saveErrTime = err.Error(), s.now().UTC()
		return fmt.Errorf("dhcpd: saving leases: %w", err)
	}
	s.saved = true
	s.saveErr = ""
	s.setOnDisk(snap)
	return nil
}

func (s *Server) setOnDisk(f leaseFile) {
	clear(s.onDisk)
	for _, l := range f.Leases {
		s.onDisk[l.MAC] = l.IP
	}
}

// Leases returns a copy of the lease table, sorted by address.
func (s *Server) Leases() []Lease {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.pool.snapshot().Leases
}

// Status is the JSON of /status.
type Status struct {
	Service        string
	Mode           string
	Interface      string
	ServerIP       string
	Enroll         string
	Leases         []Lease         `json:",omitempty"`
	Nodes          []NodeStatus    `json:",omitempty"`
	Requests       map[string]int  `json:",omitempty"`
	Replies        map[string]int  `json:",omitempty"`
	Drops          map[string]int  `json:",omitempty"`
	ForeignServers []ForeignServer `json:",omitempty"`
	// LeaseSaveError is set while leases.json cannot be written (disk
	// full): renewals are ACKed from memory, new leases are refused.
	LeaseSaveError     string    `json:",omitempty"`
	LeaseSaveErrorTime time.Time `json:",omitzero"`
}

// ForeignServer is another DHCP server seen answering on the segment.
type ForeignServer struct {
	IP       string
	LastSeen time.Time
}

// Status reports leases, nodes seen and counters.
func (s *Server) Status() Status {
	st := Status{
		Service:   "dhcpd",
		Mode:      s.cfg.Mode,
		Interface: s.cfg.Interface,
		ServerIP:  s.serverIP.String(),
		Enroll:    s.cfg.Enroll,
		Requests:  s.m.requests.values(),
		Replies:   s.m.replies.values(),
		Drops:     s.m.drops.values(),
		Nodes:     s.nodes.status(),
	}
	if s.full() {
		st.Leases = s.Leases()
	}
	s.mu.Lock()
	st.LeaseSaveError, st.LeaseSaveErrorTime = s.saveErr, s.saveErrTime
	s.mu.Unlock()
	s.fmu.Lock()
	for ip, t := range s.foreign {
		st.ForeignServers = append(st.ForeignServers, ForeignServer{IP: ip.String(), LastSeen: t})
	}
	s.fmu.Unlock()
	sort.Slice(st.ForeignServers, func(i, j int) bool { return st.ForeignServers[i].IP < st.ForeignServers[j].IP })
	return st
}

// FlushNodes writes pending node records now (tests, shutdown).
func (s *Server) FlushNodes() { s.nodes.flush() }

func addrFrom(ip net.IP) netip.Addr {
	a, ok := netip.AddrFromSlice(ip.To4())
	if !ok || a.IsUnspecified() {
		return netip.Addr{}
	}
	return a
}

func isZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

func msgName(mt dhcpv4.MessageType) string {
	switch mt {
	case dhcpv4.MessageTypeDiscover:
		return "discover"
	case dhcpv4.MessageTypeOffer:
		return "offer"
	case dhcpv4.MessageTypeRequest:
		return "request"
	case dhcpv4.MessageTypeDecline:
		return "decline"
	case dhcpv4.MessageTypeAck:
		return "ack"
	case dhcpv4.MessageTypeNak:
		return "nak"
	case dhcpv4.MessageTypeRelease:
		return "release"
	case dhcpv4.MessageTypeInform:
		return "inform"
	case dhcpv4.MessageTypeNone:
		return "bootp"
	}
	return "other"
}
