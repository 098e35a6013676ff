package service

import (
	"encoding/json"
	"net/http"
	"sort"
	"sync"

	"github.com/ociboot/ociboot/appliance/metrics"
)

// names is a Registerer that remembers the name of every metric
// registered through it, also those without a sample yet (a counter
// vector no label value has reached): GET /metrics/names lists them, so
// a dashboard can be checked against what the services can export.
type names struct {
	metrics.Registerer
	mu  sync.Mutex
	set map[string]bool
}

func (n *names) Register(c metrics.Collector) error {
	if err := n.Registerer.Register(c); err != nil {
		return err
	}
	ch := make(chan *metrics.Desc)
	go func() { c.Describe(ch); close(ch) }()
	n.mu.Lock()
	defer n.mu.Unlock()
	for d := range ch {
		n.set[d.Name()] = true
	}
	return nil
}

func (n *names) MustRegister(cs ...metrics.Collector) {
	for _, c := range cs {
		if err := n.Register(c); err != nil {
			panic(err)
		}
	}
}

func (n *names) serve(w http.ResponseWriter, r *http.Request) {
	n.mu.Lock()
	out := make([]string, 0, len(n.set))
	for k := range n.set {
		out = append(out, k)
	}
	n.mu.Unlock()
	sort.Strings(out)
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(out)
}
