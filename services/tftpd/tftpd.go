// Binary tftpd serves each node's firmware, kernel and generated boot config over TFTP.
package main

import (
	"context"
	"flag"
	"fmt"

	"github.com/ociboot/ociboot/appliance/service"
	"github.com/ociboot/ociboot/appliance/tftpd"
)

var port = flag.Int("port", 69, "UDP port to serve TFTP on (all addresses)")

func main() {
	service.Main("tftpd", ":9069", func(ctx context.Context, env *service.Env) error {
		// All addresses: the generated cmdline.txt names the address each
		// request arrived on, read from IP_PKTINFO.
		conn, err := tftpd.Listen(fmt.Sprintf(":%d", *port))
		if err != nil {
			return fmt.Errorf("tftpd: listen on UDP %d: %v; is another TFTP server (tftpd-hpa, dnsmasq) running?", *port, err)
		}
		srv := tftpd.New(tftpd.Options{Config: env.Config, Store: env.Store, Log: env.Log, Metrics: env.Metrics})
		env.SetStatus(func() any { return srv.Status() })
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
