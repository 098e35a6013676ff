package service

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/ociboot/ociboot/appliance/config"
	"github.com/ociboot/ociboot/appliance/store"
)

// StatesDir is the store area where each service records whether it runs
// and, when it could not start or stopped on an error, why: one file per
// service (services/<name>.json), written by that service only. The status
// page reads them to say why a service is down, which a dead service
// cannot tell over HTTP.
const StatesDir = "services"

// State is services/<name>.json.
type State struct {
	Service string
	Pid     int
	Time    time.Time
	Running bool
	// Error is why the service could not start or stopped.
	Error string `json:",omitempty"`
	// ConfigError is set while config.json has changed into something
	// invalid: the service keeps the config it has.
	ConfigError string `json:",omitempty"`
}

// SaveState records s; a failure is only logged by the caller's reader
// (the page then shows no reason), it never stops a service.
func SaveState(st *store.Store, s State) error {
	if !store.ValidName(s.Service) {
		return fmt.Errorf("service: %q is not a service name", s.Service)
	}
	dir := st.Path(StatesDir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	return store.WriteJSON(filepath.Join(dir, s.Service+".json"), s)
}

// LoadStates reads every service's state, sorted by name.
func LoadStates(st *store.Store) map[string]State {
	out := map[string]State{}
	files, _ := filepath.Glob(filepath.Join(st.Path(StatesDir), "*.json"))
	sort.Strings(files)
	for _, f := range files {
		var s State
		if store.ReadJSON(f, &s) == nil && s.Service != "" {
			out[s.Service] = s
		}
	}
	return out
}

// ConfigPoll is how often WatchConfig looks at config.json.
var ConfigPoll = 5 * time.Second

// WatchConfig is the one way every service learns of a changed
// config.json: it looks at the file every poll and on SIGHUP, and when its
// bytes differ from seen (what the running config was parsed from) calls
// changed with the newly parsed config, or with the reason it does not
// load (the caller keeps its config then). It returns when ctx is done.
func WatchConfig(ctx context.Context, path string, seen []byte, poll time.Duration, log *slog.Logger, changed func(*config.Config, error)) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	t := time.NewTicker(poll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
			log.Info("SIGHUP: reading config.json again")
		case <-t.C:
		}
		b, err := os.ReadFile(path)
		if err != nil {
			log.Error("config.json unreadable; keeping the previous config", "path", path, "err", err)
			continue
		}
		if bytes.Equal(b, seen) {
			continue
		}
		seen = b
		next, err := config.Parse(b)
		if err != nil {
			log.Error("config.json changed but is not valid; keeping the previous config", "path", path, "err", strings.ReplaceAll(err.Error(), "\n", "; "))
			changed(nil, err)
			continue
		}
		log.Info("config.json changed", "path", path)
		changed(next, nil)
	}
}

// LiveConfig is for services that apply a new config while running: each
// valid change of config.json arrives on the channel, and the service is
// not restarted for it. Services that do not call it are restarted
// instead (see Main).
func (e *Env) LiveConfig() <-chan *config.Config {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.live == nil {
		e.live = make(chan *config.Config, 1)
	}
	return e.live
}

// deliver hands next to a LiveConfig subscriber; false when there is none.
func (e *Env) deliver(ctx context.Context, next *config.Config) bool {
	e.mu.Lock()
	ch := e.live
	e.mu.Unlock()
	if ch == nil {
		return false
	}
	// Only the newest config matters: replace one not yet taken.
	select {
	case <-ch:
	default:
	}
	select {
	case ch <- next:
	case <-ctx.Done():
	}
	return true
}

// reexec starts the service over in the same process (same pid, so the
// gokrazy supervisor and make run keep tracking it), after its run
// function returned and closed its sockets.
func reexec(env *Env) {
	exe, err := os.Executable()
	if err == nil {
		err = passKept()
	}
	if err == nil {
		err = syscall.Exec(exe, os.Args, os.Environ())
	}
	// Exit non-zero: the supervisor starts it again.
	fmt.Fprintf(os.Stderr, "%s: restart for the new config.json failed: %v\n", env.Name, err)
	os.Exit(1)
}
