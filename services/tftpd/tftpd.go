// Binary tftpd serves each node's firmware, kernel and generated boot config over TFTP,
// and receives the nodes' boot logs (bootloader NETCONSOLE, kernel netconsole=) on UDP 6666.
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"runtime"

	"github.com/ociboot/ociboot/appliance/netconsole"
	"github.com/ociboot/ociboot/appliance/service"
	"github.com/ociboot/ociboot/appliance/tftpd"
)

var (
	port    = flag.Int("port", 69, "UDP port to serve TFTP on (all addresses)")
	logAddr = flag.String("netconsole", fmt.Sprintf(":%d", netconsole.Port), "UDP address receiving the nodes' boot logs (empty: none)")
)

func main() {
	// One P: pin/tftp's single-port mode hands every ACK from the socket's
	// reader goroutine to the transfer's; with more Ps the runtime wakes a
	// second thread for that goroutine on every block, and lock-step
	// throughput halves (README, tftpd benchmark).
	if os.Getenv("GOMAXPROCS") == "" {
		runtime.GOMAXPROCS(1)
	}
	service.Main("tftpd", ":9069", func(ctx context.Context, env *service.Env) error {
		// All addresses: the generated cmdline.txt names the address each
		// request arrived on, read from IP_PKTINFO.
		pc, err := service.ListenPacket("udp4", fmt.Sprintf(":%d", *port))
		if err != nil {
			return fmt.Errorf("tftpd: listen on UDP %d: %v; is another TFTP server (tftpd-hpa, dnsmasq) running?", *port, err)
		}
		conn, ok := pc.(*net.UDPConn)
		if !ok {
			return fmt.Errorf("tftpd: UDP port %d: got a %T, want a UDP socket", *port, pc)
		}
		if err := tftpd.EnablePacketInfo(conn); err != nil {
			return err
		}
		srv := tftpd.New(tftpd.Options{Config: env.Config, Store: env.Store, Log: env.Log, Metrics: env.Metrics})
		rcv := netconsole.New(netconsole.Options{Config: env.Config, Store: env.Store, Log: env.Log})
		env.SetStatus(func() any {
			return struct {
				tftpd.Status
				Netconsole netconsole.Status
			}{srv.Status(), rcv.Status()}
		})
		done := make(chan struct{})
		defer close(done)
		if *logAddr != "" {
			if err := serveLogs(env, rcv, done); err != nil {
				return err
			}
		}
		errc := make(chan error, 1)
		go func() { errc <- srv.Serve(conn) }()
		env.Log.Info("serving TFTP", "addr", conn.LocalAddr().String())
		select {
		case <-ctx.Done():
			srv.Shutdown()
			return ctx.Err()
		case err := <-errc:
			return err
		}
	})
}

// serveLogs receives boot logs: through a packet socket on the cluster
// interface, which sees the sender's MAC (the bootloader logs from a fixed
// address, the same on every Pi), with the UDP socket only holding the port;
// without CAP_NET_RAW through the UDP socket alone, by sender address.
func serveLogs(env *service.Env, rcv *netconsole.Receiver, done chan struct{}) error {
	lc, err := service.ListenPacket("udp4", *logAddr)
	if err != nil {
		return fmt.Errorf("tftpd: listen on UDP %s for boot logs: %v (set -netconsole, empty to disable)", *logAddr, err)
	}
	u, ok := lc.(*net.UDPConn)
	if !ok {
		return fmt.Errorf("tftpd: -netconsole %s: got a %T, want a UDP socket", *logAddr, lc)
	}
	byMAC := false
	if pc, err := netconsole.ListenPacket(env.Config.Interface); err != nil {
		env.Log.Warn("boot logs are filed by sender address only", "err", err)
	} else {
		byMAC = true
		go rcv.ServePacket(pc)
		go func() { <-done; pc.Close() }()
	}
	go rcv.ServeUDP(u, !byMAC)
	go func() { <-done; u.Close() }()
	go rcv.Flusher(done)
	env.Log.Info("receiving boot logs", "addr", u.LocalAddr().String(), "by_mac", byMAC, "interface", env.Config.Interface)
	return nil
}
