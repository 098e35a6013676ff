package service

import (
	"encoding/json"
	"net/http"
	"regexp"
	"sort"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// names is a Registerer that remembers the name of every metric
// registered through it, also those without a sample yet (a counter
// vector no label value has reached): GET /metrics/names lists them, so
// a dashboard can be checked against what the services can export.
type names struct {
	prometheus.Registerer
	mu  sync.Mutex
	set map[string]bool
}

var fqName = regexp.MustCompile(`fqName: "([^"]+)"`)

func (n *names) Register(c prometheus.Collector) error {
	if err := n.Registerer.Register(c); err != nil {
		return err
	}
	ch := make(chan *prometheus.Desc)
	go func() { c.Describe(ch); close(ch) }()
	n.mu.Lock()
	defer n.mu.Unlock()
	for d := range ch {
		if m := fqName.FindStringSubmatch(d.String()); m != nil {
			n.set[m[1]] = true
		}
	}
	return nil
}

func (n *names) MustRegister(cs ...prometheus.Collector) {
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
