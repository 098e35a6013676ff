// Binary nbdd serves each node's disk for its container runtime over NBD
// (a sparse file per node on the store, Netboot.NodeDisk and
// Nodes[].Disk), and takes the nodes' reports of their install to a disk
// of their own (POST /install on its status port).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"time"

	"github.com/ociboot/ociboot/appliance/budget"
	"github.com/ociboot/ociboot/appliance/nbdd"
	"github.com/ociboot/ociboot/appliance/service"
)

var (
	nbdAddr    = flag.String("nbd_addr", ":10809", "address for NBD (TCP; 10809 is NBD's port, nodes attach nbd://<head>:10809/<key>)")
	reserveMiB = flag.Int64("reserve_mib", budget.DefaultReserve>>20, "MiB of free space on the store that disk writes never take (they fail with \"No space left on device\" below it); keep it equal to nfsd's -reserve_mib")
	nfsdURL    = flag.String("nfsd", "http://127.0.0.1:9049", "nfsd's status listener: what each node's root uses, which shares the node's Quota with its disk")
)

func main() {
	service.Main("nbdd", ":9809", func(ctx context.Context, env *service.Env) error {
		if *reserveMiB < 0 {
			return fmt.Errorf("nbdd: -reserve_mib %d: want 0 (no reserve) or more", *reserveMiB)
		}
		// The config is applied while running: restarting would close
		// every node's disk under its file system.
		live := env.LiveConfig()
		roots := &nbdd.RootUsage{URL: *nfsdURL, Log: env.Log}
		go roots.Run(ctx, 5*time.Second)
		srv := nbdd.New(env.Config, nbdd.Options{Store: env.Store, Log: env.Log, Reserve: *reserveMiB << 20, RootUsed: roots.Used, Metrics: env.Metrics})
		env.SetStatus(func() any {
			return struct {
				nbdd.Status
				// RootCounts: nfsd's counts the quota checks use.
				RootCounts nbdd.RootCounts
			}{srv.Status(), roots.State()}
		})
		// A node has no password: its report is accepted from its own
		// address only.
		env.HandleNode("POST /install", srv.Identify, nbdd.InstallHandler(srv.Config, env.Store, env.Log))

		ln, err := service.Listen("tcp", *nbdAddr)
		if err != nil {
			return fmt.Errorf("nbdd: listen on TCP %s for NBD: %v; is nbd-server running? (set -nbd_addr)", *nbdAddr, err)
		}
		env.Log.Info("nbd listening", "addr", ln.Addr().String())
		go srv.Watch(ctx, time.Second)
		errc := make(chan error, 1)
		go func() { errc <- srv.NBD.Serve(ln) }()
		for {
			select {
			case cfg := <-live:
				srv.SetConfig(cfg)
				env.Log.Info("config applied; connections already served keep going")
			case err := <-errc:
				if err == nil || errors.Is(err, net.ErrClosed) {
					return nil
				}
				return fmt.Errorf("nbdd: %v", err)
			case <-ctx.Done():
				// Requests in flight are answered; then the
				// connections close (the nodes' nbd-client reconnects
				// to the next nbdd).
				sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				srv.NBD.Shutdown(sctx)
				cancel()
				return ctx.Err()
			}
		}
	})
}
