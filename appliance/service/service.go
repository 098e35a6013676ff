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
	"net/netip"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/ociboot/ociboot/appliance/metrics"

	"github.com/ociboot/ociboot/appliance/config"
	"github.com/ociboot/ociboot/appliance/store"
	"github.com/ociboot/ociboot/appliance/webauth"
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
	Metrics metrics.Registerer
	// Mux serves the status listener; services may add handlers.
	Mux *http.ServeMux
	// StatusAddr is the address the status listener is bound to.
	StatusAddr net.Addr
	// Guard is the password and cross-site check every state-changing
	// request on Mux passes before its handler runs (see package
	// webauth); handlers use it only to pass on credentials.
	Guard *webauth.Guard
	// nodeMux routes node endpoints (HandleNode) past the guard and
	// everything else to it.
	nodeMux *http.ServeMux

	mu     sync.Mutex
	status func() any
	live   chan *config.Config // nil until LiveConfig
	// configRaw is the config.json Config was parsed from.
	configRaw []byte
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

// HandleNode serves h on the status listener for requests that nodes
// send themselves (they have no password): webauth.NodeOnly with
// identify decides who is a node, instead of the password guard. pattern
// is a ServeMux pattern with a method, e.g. "POST /install".
func (e *Env) HandleNode(pattern string, identify func(netip.Addr) (string, bool), h http.Handler) {
	e.nodeMux.Handle(pattern, webauth.NodeOnly(identify, h))
}

// Flags are the flags every service has.
type Flags struct {
	Config     *string
	Store      *string
	Status     *string
	AllowTmpfs *bool
	// PasswordFile replaces gokrazy's password files (make run, tests).
	PasswordFile *string
}

// RegisterFlags adds the common flags to fs with defaultStatus as the
// default status listen address.
func RegisterFlags(fs *flag.FlagSet, defaultStatus string) Flags {
	return Flags{
		Config:       fs.String("config", config.DefaultPath, "path of config.json (the gokrazy instance config with its Netboot section)"),
		Store:        fs.String("store", store.DefaultRoot, "directory of the persistent store"),
		Status:       fs.String("status", defaultStatus, "listen address for /status and /metrics (empty: off)"),
		AllowTmpfs:   fs.Bool("allow_tmpfs", false, "accept a store on tmpfs (throw-away runs only)"),
		PasswordFile: fs.String("password_file", "", "file with the password state-changing HTTP requests need (empty: gokrazy's gokr-pw.txt in /perm, /etc or /)"),
	}
}

// Setup loads the config, opens the store and starts the status listener.
// The listener stops when ctx is done. A config that does not load is also
// recorded in the store (services/<name>.json) when the store opens, so
// the status page can say why the service is down.
func Setup(ctx context.Context, name string, f Flags, logOut *os.File) (*Env, error) {
	log := slog.New(slog.NewTextHandler(logOut, nil)).With("service", name)
	st, stErr := store.Open(*f.Store, store.Options{AllowTmpfs: *f.AllowTmpfs})
	cfg, raw, err := config.LoadBytes(*f.Config)
	if err != nil {
		if stErr == nil {
			SaveState(st, State{Service: name, Pid: os.Getpid(), Time: time.Now().UTC(), Error: err.Error()})
		}
		return nil, err
	}
	if stErr != nil {
		return nil, stErr
	}
	reg := metrics.NewRegistry()
	reg.MustRegister(metrics.NewRuntimeCollector())
	metricNames := &names{Registerer: reg, set: map[string]bool{}}
	guard := &webauth.Guard{}
	if *f.PasswordFile != "" {
		guard.Files = []string{*f.PasswordFile}
	}
	env := &Env{
		Name:       name,
		ConfigPath: *f.Config,
		Config:     cfg,
		Store:      st,
		Log:        log,
		Metrics:    metrics.WrapRegistererWithPrefix(MetricPrefix(name), metricNames),
		Mux:        http.NewServeMux(),
		Guard:      guard,
		nodeMux:    http.NewServeMux(),
		configRaw:  raw,
	}
	env.Mux.HandleFunc("/status", env.serveStatus)
	// Profiles show memory and cost CPU: for the head node itself only
	// (an SSH tunnel from a laptop).
	env.Mux.Handle("/debug/pprof/", webauth.LoopbackOnly(http.HandlerFunc(pprof.Index)))
	env.Mux.Handle("/debug/pprof/profile", webauth.LoopbackOnly(http.HandlerFunc(pprof.Profile)))
	env.Mux.Handle("/metrics", metrics.Handler(reg))
	env.Mux.HandleFunc("/metrics/names", metricNames.serve)
	if *f.Status != "" {
		ln, err := Listen("tcp", *f.Status)
		if err != nil {
			return nil, fmt.Errorf("%s: status listener: %v; pass another -status address", name, err)
		}
		env.StatusAddr = ln.Addr()
		// Every handler a service adds to Mux is behind the guard: no
		// state-changing request reaches one without the password. Only
		// node endpoints (HandleNode) are matched before it.
		env.nodeMux.Handle("/", guard.Protect(env.Mux))
		srv := webauth.Server(env.nodeMux, webauth.StatusLimits)
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
//
// It also watches config.json (see WatchConfig): a service that called
// LiveConfig gets each new valid config; any other service stops and
// executes itself again, so it starts over with the new config.
func Main(name, defaultStatus string, run func(ctx context.Context, env *Env) error) {
	f := RegisterFlags(flag.CommandLine, defaultStatus)
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	env, err := Setup(ctx, name, f, os.Stdout)
	if err != nil {
		// gokrazy's UI shows a service's last stderr lines: plain lines,
		// one per problem, are easier to read there than one escaped
		// slog attribute.
		fmt.Fprintf(os.Stderr, "%s cannot start:\n%v\n", name, err)
		slog.New(slog.NewTextHandler(os.Stdout, nil)).Error("start failed; the reason is on stderr", "service", name)
		os.Exit(1)
	}
	SaveState(env.Store, State{Service: name, Pid: os.Getpid(), Time: time.Now().UTC(), Running: true})
	for _, w := range env.Config.Warnings {
		env.Log.Warn("config.json: "+w, "config", env.ConfigPath)
	}
	env.Log.Info("started", "config", env.ConfigPath, "store", env.Store.Root, "mode", env.Config.Mode, "interface", env.Config.Interface)
	runCtx, cancelRun := context.WithCancel(ctx)
	defer cancelRun()
	restart := make(chan struct{}, 1)
	go WatchConfig(runCtx, env.ConfigPath, env.configRaw, ConfigPoll, env.Log, func(next *config.Config, err error) {
		if err != nil {
			SaveState(env.Store, State{Service: name, Pid: os.Getpid(), Time: time.Now().UTC(), Running: true,
				ConfigError: "config.json changed but is not valid; still running with the previous one: " + err.Error()})
			return
		}
		SaveState(env.Store, State{Service: name, Pid: os.Getpid(), Time: time.Now().UTC(), Running: true})
		if env.deliver(runCtx, next) {
			return
		}
		env.Log.Info("config.json changed: restarting to apply it")
		select {
		case restart <- struct{}{}:
		default:
		}
		cancelRun()
	})
	err = run(runCtx, env)
	select {
	case <-restart:
		stop()
		reexec(env)
	default:
	}
	if err != nil && !errors.Is(err, context.Canceled) {
		fmt.Fprintf(os.Stderr, "%s failed: %v\n", name, err)
		SaveState(env.Store, State{Service: name, Pid: os.Getpid(), Time: time.Now().UTC(), Error: err.Error()})
		env.Log.Error("failed", "err", err)
		os.Exit(1)
	}
	SaveState(env.Store, State{Service: name, Pid: os.Getpid(), Time: time.Now().UTC()})
	env.Log.Info("stopped")
}
