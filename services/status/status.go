// Binary status serves the cluster status page: nodes, boot stages, image
// cache, node disks and installs, and links to every service's metrics, and the actions (reset,
// forget, re-pull) it forwards to nfsd and ocicache.
package main

import (
	"context"
	"flag"

	"github.com/ociboot/ociboot/appliance/service"
	"github.com/ociboot/ociboot/appliance/statuspage"
)

var (
	dhcpdURL    = flag.String("dhcpd", "http://127.0.0.1:9067", "dhcpd's status listener")
	tftpdURL    = flag.String("tftpd", "http://127.0.0.1:9069", "tftpd's status listener")
	ocicacheURL = flag.String("ocicache", "http://127.0.0.1:9050", "ocicache's status listener")
	nfsdURL     = flag.String("nfsd", "http://127.0.0.1:9049", "nfsd's status listener")
	nbddURL     = flag.String("nbdd", "http://127.0.0.1:9809", "nbdd's status listener")
)

func main() {
	// The page is this service's status listener: never port 80, which is
	// gokrazy's own web interface.
	service.Main("status", ":8080", func(ctx context.Context, env *service.Env) error {
		page := &statuspage.Page{
			Config: env.Config,
			Store:  env.Store,
			Guard:  env.Guard,
			Services: []statuspage.Service{
				{Name: "dhcpd", URL: *dhcpdURL},
				{Name: "tftpd", URL: *tftpdURL},
				{Name: "ocicache", URL: *ocicacheURL},
				{Name: "nfsd", URL: *nfsdURL},
				{Name: "nbdd", URL: *nbddURL},
			},
		}
		env.Mux.Handle("/", page)
		env.Metrics.MustRegister(page.Collector())
		env.SetStatus(func() any { return map[string]any{"service": "status"} })
		<-ctx.Done()
		return ctx.Err()
	})
}
