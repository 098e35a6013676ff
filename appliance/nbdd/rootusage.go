package nbdd

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"
)

// RootUsage follows what nfsd counts for each node's root (its /status,
// nfs.Status.Exports[].Used): a node's quota bounds its root and its disk
// together, and nfsd is the one that counts the root. The count is the
// one of the last poll, so a disk write is checked against the root as it
// was a few seconds ago. When nfsd does not answer, the last count stays
// (a root nobody serves does not grow); before the first answer it is 0.
type RootUsage struct {
	// URL is nfsd's status listener, e.g. "http://127.0.0.1:9049".
	URL    string
	Client *http.Client
	Log    *slog.Logger

	mu      sync.Mutex
	used    map[string]int64
	fetched time.Time
	err     error
	failing bool
}

// RootCounts is how fresh RootUsage's counts are, for nbdd's status.
type RootCounts struct {
	URL     string
	Fetched time.Time // the last answer; zero: none yet
	Error   string    `json:",omitempty"` // why the last poll failed
}

// State is the counts' freshness.
func (r *RootUsage) State() RootCounts {
	r.mu.Lock()
	defer r.mu.Unlock()
	st := RootCounts{URL: r.URL, Fetched: r.fetched}
	if r.err != nil {
		st.Error = r.err.Error()
	}
	return st
}

// Used is node key's root's use as last counted.
func (r *RootUsage) Used(key string) int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.used[key]
}

// Run polls every interval until ctx is done.
func (r *RootUsage) Run(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		r.Poll(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Poll asks nfsd once.
func (r *RootUsage) Poll(ctx context.Context) error {
	used, err := r.fetch(ctx)
	r.mu.Lock()
	defer r.mu.Unlock()
	if err != nil {
		if !r.failing && r.Log != nil {
			r.Log.Warn("nfsd's root counts unavailable; disk writes are checked against the last ones (pass -nfsd with nfsd's status address)", "url", r.URL, "err", err)
		}
		r.failing, r.err = true, err
		return err
	}
	if r.failing && r.Log != nil {
		r.Log.Info("nfsd's root counts available again", "url", r.URL)
	}
	r.used, r.fetched, r.failing, r.err = used, time.Now(), false, nil
	return nil
}

func (r *RootUsage) fetch(ctx context.Context) (map[string]int64, error) {
	c := r.Client
	if c == nil {
		c = &http.Client{Timeout: 5 * time.Second}
	}
	req, err := http.NewRequestWithContext(ctx, "GET", strings.TrimSuffix(r.URL, "/")+"/status", nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", req.URL, resp.Status)
	}
	var st struct {
		Exports []struct {
			Node string
			Used int64
		}
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 8<<20)).Decode(&st); err != nil {
		return nil, fmt.Errorf("GET %s: %v", req.URL, err)
	}
	used := make(map[string]int64, len(st.Exports))
	for _, e := range st.Exports {
		used[e.Node] = e.Used
	}
	return used, nil
}
