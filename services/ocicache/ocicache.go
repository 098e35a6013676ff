// Binary ocicache pulls, caches and unpacks the OCI images nodes boot, and serves them as a registry.
//
// It pulls every image the config names at start, again on SIGHUP, when
// the config file changes (service.WatchConfig) and on POST /pull,
// revalidates the tags every -revalidate and retries failed images every
// -retry. Garbage collection follows each pass.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"time"

	"github.com/ociboot/ociboot/appliance/metrics"

	"github.com/ociboot/ociboot/appliance/config"
	"github.com/ociboot/ociboot/appliance/ocicache"
	"github.com/ociboot/ociboot/appliance/service"
	"github.com/ociboot/ociboot/appliance/webauth"
)

var (
	registryAddr = flag.String("registry", ":5000", "listen address of the read-only registry (/v2/); empty: off")
	minFreeMiB   = flag.Int64("min_free_mib", 256, "MiB that must stay free on the store: layers that would not fit are not fetched, downloads and unpacking stop before it")
	retryEvery   = flag.Duration("retry", time.Minute, "how often images that failed to pull are retried")
	revalidate   = flag.Duration("revalidate", 5*time.Minute, "how often configured tags are re-resolved (HEAD) and new content pulled")
	ptCapMiB     = flag.Int64("pull_through_cap_mib", 2048, "MiB of pull-through content (fetched for /v2/ clients) kept; least recently used dropped first")
	ptTTL        = flag.Duration("pull_through_ttl", 10*time.Minute, "how long a pull-through tag is served before the upstream is asked again")
)

func main() {
	service.Main("ocicache", ":9050", func(ctx context.Context, env *service.Env) error {
		c, err := ocicache.New(env.Store, ocicache.Options{Log: env.Log, MinFree: *minFreeMiB << 20,
			PullThroughCap: *ptCapMiB << 20, PullThroughTTL: *ptTTL})
		if err != nil {
			return err
		}
		env.Metrics.MustRegister(metrics.NewCounterFunc(metrics.CounterOpts{
			Name: "fetched_bytes_total", Help: "Blob bytes fetched from registries since start.",
		}, func() float64 { return float64(c.FetchedBytes()) }))
		env.Metrics.MustRegister(metrics.NewGaugeFunc(metrics.GaugeOpts{
			Name: "pulls_running", Help: "Blob downloads in progress.",
		}, func() float64 { return float64(len(c.Progress())) }))
		env.SetStatus(func() any {
			return map[string]any{"service": "ocicache", "registry": *registryAddr, "cache": c.Status()}
		})
		if *registryAddr != "" {
			ln, err := service.Listen("tcp", *registryAddr)
			if err != nil {
				return err
			}
			env.Log.Info("registry listening", "addr", ln.Addr().String())
			srv := webauth.Server(c.RegistryHandler(), webauth.RegistryLimits)
			go func() {
				if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
					env.Log.Error("registry listener failed", "err", err)
				}
			}()
			defer srv.Close()
		}
		// A new config.json arrives through the services' one watcher
		// (service.WatchConfig) and starts a pass at once, as does
		// POST /pull ("re-pull now" on the status page).
		live := env.LiveConfig()
		reload := make(chan *config.Config)
		current := env.Config
		pullNow := make(chan struct{}, 1)
		env.Mux.HandleFunc("POST /pull", func(w http.ResponseWriter, r *http.Request) {
			select {
			case pullNow <- struct{}{}:
			default:
			}
			fmt.Fprintln(w, "pull pass started: every configured image is resolved again and new content fetched")
		})
		go func() {
			for {
				select {
				case <-ctx.Done():
					return
				case next := <-live:
					current = next
				case <-pullNow:
				}
				select {
				case reload <- current:
				case <-ctx.Done():
					return
				}
			}
		}()
		return c.Run(ctx, env.Config, ocicache.RunOptions{Revalidate: *revalidate, Retry: *retryEvery, Reload: reload})
	})
}
