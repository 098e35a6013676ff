// Package service is the wiring every ociboot service shares: flags, the
// config, the store, structured logs to stdout, and an HTTP listener for
// /status (JSON) and /metrics (Prometheus) on a private port (never 80, which
// is gokrazy's web UI).
package service

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/ociboot/ociboot/appliance/config"
	"github.com/ociboot/ociboot/appliance/store"
)

// MetricPrefix is the prefix of every metric service name exports:
// "ociboot_<service>_". Go runtime and process metrics keep their
// standard go_ and process_ names.
func MetricPrefix(name string) string { return "ociboot_" + name + "_" }

// Env is what a service's run function gets.
type Env struct {
	Name       string
	ConfigPath string
	Config     *config.Config
	Store      *store.Store
	Log        *slog.Logger
	// Metrics registers the service's metrics under the one naming
	// scheme of every ociboot service: MetricPrefix(Name) + the
	// library's own name (ociboot_nfsd_requests_total). Libraries name
	// their metrics without a prefix.
	Metrics prometheus.Registerer
	// Mux serves the status listener; services may add handlers.
	Mux *http.ServeMux
	// StatusAddr is the address the status listener is bound to.
	StatusAddr net.Addr

	mu     sync.Mutex
	status func() any
}

// SetStatus installs the function whose result /status returns as JSON.
func (e *Env) SetStatus(f func() any) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.status = f
}

func (e *Env) serveStatus(w http.ResponseWriter, r *http.Request) {
	e.mu.Lock()
	f := e.status
	e.mu.Unlock()
	var v any = map[string]string{"service": e.Name}
	if f != nil {
		v = f()
	}
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

// Flags are the flags every service has.
type Flags struct {
	Config     *string
	Store      *string
	Status     *string
	AllowTmpfs *bool
}

// RegisterFlags adds the common flags to fs with defaultStatus as the
// default status listen address.
func RegisterFlags(fs *flag.FlagSet, defaultStatus string) Flags {
	return Flags{
		Config:     fs.String("config", config.DefaultPath, "path of config.json (the gokrazy instance config with its Netboot section)"),
		Store:      fs.String("store", store.DefaultRoot, "directory of the persistent store"),
		Status:     fs.String("status", defaultStatus, "listen address for /status and /metrics (empty: off)"),
		AllowTmpfs: fs.Bool("allow_tmpfs", false, "accept a store on tmpfs (throw-away runs only)"),
	}
}

// Setup loads the config, opens the store and starts the status listener.
// The listener stops when ctx is done.
func Setup(ctx context.Context, name string, f Flags, logOut *os.File) (*Env, error) {
	log := slog.New(slog.NewTextHandler(logOut, nil)).With("service", name)
	cfg, err := config.Load(*f.Config)
	if err != nil {
		return nil, err
	}
	st, err := store.Open(*f.Store, store.Options{AllowTmpfs: *f.AllowTmpfs})
	if err != nil {
		return nil, err
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	env := &Env{
		Name:       name,
		ConfigPath: *f.Config,
		Config:     cfg,
		Store:      st,
		Log:        log,
		Metrics:    prometheus.WrapRegistererWithPrefix(MetricPrefix(name), reg),
		Mux:        http.NewServeMux(),
	}
	env.Mux.HandleFunc("/status", env.serveStatus)
	// Profiles of a running service, for the status port's own network.
	env.Mux.HandleFunc("/debug/pprof/", pprof.Index)
	env.Mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	env.Mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	if *f.Status != "" {
		ln, err := Listen("tcp", *f.Status)
		if err != nil {
			return nil, fmt.Errorf("%s: status listener: %v; pass another -status address", name, err)
		}
		env.StatusAddr = ln.Addr()
		srv := &http.Server{Handler: env.Mux, ReadHeaderTimeout: 10 * time.Second}
		go func() {
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error("status listener failed", "err", err)
			}
		}()
		go func() {
			<-ctx.Done()
			srv.Close()
		}()
		log.Info("status listening", "addr", ln.Addr().String())
	}
	return env, nil
}

// Main is the whole main function of a service: it parses flags, sets up,
// runs run until SIGINT/SIGTERM and exits non-zero on error so that the
// gokrazy supervisor restarts the service and shows the reason.
func Main(name, defaultStatus string, run func(ctx context.Context, env *Env) error) {
	f := RegisterFlags(flag.CommandLine, defaultStatus)
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	env, err := Setup(ctx, name, f, os.Stdout)
	if err != nil {
		// Plain lines, one per problem, are easier to read in gokrazy's
		// log view than one escaped slog attribute.
		fmt.Fprintln(os.Stderr, err)
		slog.New(slog.NewTextHandler(os.Stdout, nil)).Error("start failed; the reason is on stderr", "service", name)
		os.Exit(1)
	}
	env.Log.Info("started", "config", env.ConfigPath, "store", env.Store.Root, "mode", env.Config.Mode, "interface", env.Config.Interface)
	if err := run(ctx, env); err != nil && !errors.Is(err, context.Canceled) {
		env.Log.Error("failed", "err", err)
		os.Exit(1)
	}
	env.Log.Info("stopped")
}
