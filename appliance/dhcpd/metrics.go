package dhcpd

import (
	"sync"

	"github.com/ociboot/ociboot/appliance/metrics"
)

// counter is a Prometheus counter vector with one label whose values are
// also kept for /status.
type counter struct {
	vec *metrics.CounterVec
	mu  sync.Mutex
	m   map[string]int
}

func newCounter(name, help, label string) *counter {
	return &counter{
		vec: metrics.NewCounterVec(metrics.CounterOpts{Name: name, Help: help}, []string{label}),
		m:   map[string]int{},
	}
}

type inc struct {
	c *counter
	l string
}

func (c *counter) WithLabelValues(l string) inc { return inc{c, l} }

func (i inc) Inc() {
	i.c.vec.WithLabelValues(i.l).Inc()
	i.c.mu.Lock()
	i.c.m[i.l]++
	i.c.mu.Unlock()
}

func (c *counter) values() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[string]int, len(c.m))
	for k, v := range c.m {
		out[k] = v
	}
	return out
}

func (c *counter) get(l string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.m[l]
}

type instruments struct {
	requests *counter
	replies  *counter
	drops    *counter
	foreign  *counter
	leases   metrics.Gauge
	// saveFailures counts failed writes of leases.json; unsaved counts
	// replies sent for a lease change that is only in memory.
	saveFailures metrics.Counter
	unsaved      *counter
}

func newMetrics() *instruments {
	return &instruments{
		requests: newCounter("requests_total", "DHCP requests received, by message type.", "type"),
		replies:  newCounter("replies_total", "DHCP replies sent, by message type.", "type"),
		drops:    newCounter("drops_total", "Requests not answered, by reason.", "reason"),
		foreign:  newCounter("foreign_replies_total", "Replies from other DHCP servers seen on the segment, by message type.", "type"),
		leases: metrics.NewGauge(metrics.GaugeOpts{Name: "active_leases",
			Help: "Unexpired leases (full mode)."}),
		saveFailures: metrics.NewCounter(metrics.CounterOpts{Name: "lease_save_failures_total",
			Help: "Failed writes of leases.json (disk full or failing)."}),
		unsaved: newCounter("unsaved_acks_total", "ACKs sent for lease changes that could not be saved, by kind.", "kind"),
	}
}

func (m *instruments) register(r metrics.Registerer) error {
	for _, c := range []metrics.Collector{m.requests.vec, m.replies.vec, m.drops.vec, m.foreign.vec, m.leases, m.saveFailures, m.unsaved.vec} {
		if err := r.Register(c); err != nil {
			return err
		}
	}
	return nil
}
