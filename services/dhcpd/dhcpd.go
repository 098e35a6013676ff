// Binary dhcpd answers DHCP for netbooting nodes (proxy or full mode).
package main

import (
	"context"
	"flag"
	"net"
	"net/netip"
	"time"

	"github.com/ociboot/ociboot/appliance/config"
	"github.com/ociboot/ociboot/appliance/dhcpd"
	"github.com/ociboot/ociboot/appliance/service"
)

var (
	// dnsmasq pings an address for up to 3 s before offering it to a new
	// client, so a shorter wait would miss the most common other server.
	probeWait = flag.Duration("probe_wait", 5*time.Second, "full mode: how long to listen for offers of other DHCP servers before serving")
	port      = flag.Int("port", dhcpd.ServerPort, "UDP port to serve on")
	maxAuto   = flag.Int("max_auto_nodes", dhcpd.DefaultMaxAutoNodes, "how many nodes not listed in Netboot.Nodes are enrolled (recorded and given boot options); more are ignored")
	ifaceWait = flag.Duration("interface_wait", 2*time.Minute, "proxy mode without Netboot.ServerIP: how long to wait for the interface's IPv4 address")
)

func main() {
	service.Main("dhcpd", ":9067", run)
}

func run(ctx context.Context, env *service.Env) error {
	cfg := env.Config
	var mac net.HardwareAddr
	serverIP := cfg.ServerIP
	if serverIP.IsValid() {
		if ifi, err := net.InterfaceByName(cfg.Interface); err == nil {
			mac = ifi.HardwareAddr
		}
	} else {
		ip, m, err := dhcpd.WaitIPv4(ctx, cfg.Interface, *ifaceWait, env.Log)
		if err != nil {
			return err
		}
		mac = m
		serverIP, _ = netip.AddrFromSlice(ip)
	}
	conn, err := dhcpd.ListenUDP(cfg.Interface, *port)
	if err != nil {
		return err
	}
	defer conn.Close()
	srv, err := dhcpd.New(dhcpd.Options{
		Config:       cfg,
		Store:        env.Store,
		Conn:         conn,
		ServerIP:     serverIP,
		OwnMAC:       mac,
		Log:          env.Log,
		MaxAutoNodes: *maxAuto,
		Metrics:      env.Metrics,
	})
	if err != nil {
		return err
	}
	env.SetStatus(func() any { return srv.Status() })

	if cfg.Mode == config.ModeFull {
		sn, err := dhcpd.ListenSniffer(cfg.Interface)
		if err != nil {
			return err
		}
		defer sn.Close()
		env.Log.Info("probing for other DHCP servers", "interface", cfg.Interface, "wait", probeWait.String())
		if err := srv.Probe(ctx, sn, *probeWait); err != nil {
			if !cfg.ForceDHCP {
				return err
			}
			env.Log.Warn("serving anyway because Netboot.ForceDHCP is set", "err", err)
		}
		go srv.Watch(ctx, sn)
	}
	env.Log.Info("serving DHCP", "mode", cfg.Mode, "interface", cfg.Interface, "server_ip", serverIP.String(), "enroll", cfg.Enroll)
	return srv.Serve(ctx)
}
