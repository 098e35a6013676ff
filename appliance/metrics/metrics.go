// Package metrics is the services' Prometheus instrumentation: counters,
// gauges and histograms, alone or by label values, collectors computed at
// scrape time, a registry with name prefixes, and the text exposition
// format (version 0.0.4) on /metrics.
//
// It replaces the Prometheus Go client, whose package initialisation
// (protobuf descriptors, its Go and process collectors, the registry's
// machinery) cost the six services 8.4 MiB of resident memory together
// when idle (67.1 against 58.7 MiB), and they are measured against 64 MiB. The
// API keeps the client's shape (NewCounterVec(CounterOpts{...}, labels),
// Collector with Describe and Collect over channels, MustNewConstMetric),
// so instrumentation reads as it did; what the services never used
// (summaries, exemplars, protobuf and OpenMetrics output, pedantic
// checks) is not here. Names and label names are checked when a
// collector is registered, and a name registered twice is an error.
package metrics

import (
	"errors"
	"fmt"
	"math"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
)

// ValueType is what a sample is: the family's TYPE in the exposition.
type ValueType int

const (
	CounterValue ValueType = iota
	GaugeValue
	histogramValue
)

func (v ValueType) String() string {
	switch v {
	case CounterValue:
		return "counter"
	case GaugeValue:
		return "gauge"
	default:
		return "histogram"
	}
}

// Desc names a metric: its name, help text and label names.
type Desc struct {
	name   string
	help   string
	labels []string
	err    error
}

// NewDesc describes a metric with variable labels. Constant labels are
// not supported (constLabels must be nil); they are kept in the
// signature so that collectors read as with the Prometheus client.
func NewDesc(name, help string, labels []string, constLabels map[string]string) *Desc {
	d := &Desc{name: name, help: help, labels: labels}
	if len(constLabels) > 0 {
		d.err = fmt.Errorf("metrics: %s: constant labels are not supported", name)
	}
	return d
}

// Name is the metric's full name.
func (d *Desc) Name() string { return d.name }

func (d *Desc) check() error {
	if d.err != nil {
		return d.err
	}
	if !validName(d.name, true) {
		return fmt.Errorf("metrics: %q is not a valid metric name", d.name)
	}
	seen := map[string]bool{}
	for _, l := range d.labels {
		if !validName(l, false) || strings.HasPrefix(l, "__") || l == "le" {
			return fmt.Errorf("metrics: %s: %q is not a valid label name", d.name, l)
		}
		if seen[l] {
			return fmt.Errorf("metrics: %s: label %q twice", d.name, l)
		}
		seen[l] = true
	}
	return nil
}

// validName: [a-zA-Z_:][a-zA-Z0-9_:]* for metrics, no colons in labels.
func validName(s string, colon bool) bool {
	if s == "" {
		return false
	}
	for i, r := range s {
		ok := r == '_' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || (i > 0 && r >= '0' && r <= '9') || (colon && r == ':')
		if !ok {
			return false
		}
	}
	return true
}

// Metric is one sample (or a histogram's buckets) of a described metric.
type Metric interface {
	Desc() *Desc
	sample() sample
}

// sample is what a Metric holds at collection time.
type sample struct {
	typ    ValueType
	labels []string // values, in the Desc's label order
	value  float64
	// histograms
	bounds  []float64
	buckets []uint64 // cumulative counts per bound
	count   uint64
	sum     float64
}

// Collector yields descriptions when registered and metrics when scraped.
type Collector interface {
	Describe(chan<- *Desc)
	Collect(chan<- Metric)
}

type constMetric struct {
	d *Desc
	s sample
}

func (m constMetric) Desc() *Desc    { return m.d }
func (m constMetric) sample() sample { return m.s }

// NewConstMetric is a sample computed at scrape time by a Collector.
func NewConstMetric(d *Desc, t ValueType, v float64, labels ...string) (Metric, error) {
	if len(labels) != len(d.labels) {
		return nil, fmt.Errorf("metrics: %s: %d label values for %d labels", d.name, len(labels), len(d.labels))
	}
	return constMetric{d, sample{typ: t, labels: labels, value: v}}, nil
}

// MustNewConstMetric is NewConstMetric; a wrong number of label values is
// a programming error and panics.
func MustNewConstMetric(d *Desc, t ValueType, v float64, labels ...string) Metric {
	m, err := NewConstMetric(d, t, v, labels...)
	if err != nil {
		panic(err)
	}
	return m
}

// Opts name a counter, gauge or histogram.
type Opts struct {
	Name string
	Help string
	// Buckets are a histogram's upper bounds, ascending (+Inf is
	// implied).
	Buckets []float64
}

type (
	CounterOpts   = Opts
	GaugeOpts     = Opts
	HistogramOpts = Opts
)

// value is a float64 updated atomically.
type value struct{ bits atomic.Uint64 }

func (v *value) add(d float64) {
	for {
		old := v.bits.Load()
		if v.bits.CompareAndSwap(old, math.Float64bits(math.Float64frombits(old)+d)) {
			return
		}
	}
}
func (v *value) set(x float64) { v.bits.Store(math.Float64bits(x)) }
func (v *value) get() float64  { return math.Float64frombits(v.bits.Load()) }

// Counter only goes up.
type Counter interface {
	Collector
	Inc()
	// Add adds d, which must not be negative (a negative d panics, as a
	// counter going down is a programming error).
	Add(d float64)
}

// Gauge goes up and down.
type Gauge interface {
	Collector
	Set(float64)
	Inc()
	Dec()
	Add(float64)
}

// scalar is a counter or gauge, alone or one series of a vector.
type scalar struct {
	d      *Desc
	typ    ValueType
	labels []string
	v      value
}

func (s *scalar) Desc() *Desc { return s.d }
func (s *scalar) sample() sample {
	return sample{typ: s.typ, labels: s.labels, value: s.v.get()}
}
func (s *scalar) Describe(ch chan<- *Desc) { ch <- s.d }
func (s *scalar) Collect(ch chan<- Metric) { ch <- s }
func (s *scalar) Inc()                     { s.v.add(1) }
func (s *scalar) Dec()                     { s.v.add(-1) }
func (s *scalar) Set(x float64)            { s.v.set(x) }
func (s *scalar) Add(d float64) {
	if s.typ == CounterValue && d < 0 {
		panic(fmt.Sprintf("metrics: counter %s cannot go down (Add %v)", s.d.name, d))
	}
	s.v.add(d)
}

// NewCounter is a counter without labels.
func NewCounter(o CounterOpts) Counter {
	return &scalar{d: NewDesc(o.Name, o.Help, nil, nil), typ: CounterValue}
}

// NewGauge is a gauge without labels.
func NewGauge(o GaugeOpts) Gauge {
	return &scalar{d: NewDesc(o.Name, o.Help, nil, nil), typ: GaugeValue}
}

// funcMetric is a value read at scrape time.
type funcMetric struct {
	d   *Desc
	typ ValueType
	f   func() float64
}

func (m *funcMetric) Desc() *Desc              { return m.d }
func (m *funcMetric) sample() sample           { return sample{typ: m.typ, value: m.f()} }
func (m *funcMetric) Describe(ch chan<- *Desc) { ch <- m.d }
func (m *funcMetric) Collect(ch chan<- Metric) { ch <- m }

// NewCounterFunc is a counter whose value f returns at each scrape.
func NewCounterFunc(o CounterOpts, f func() float64) Collector {
	return &funcMetric{d: NewDesc(o.Name, o.Help, nil, nil), typ: CounterValue, f: f}
}

// NewGaugeFunc is a gauge whose value f returns at each scrape.
func NewGaugeFunc(o GaugeOpts, f func() float64) Collector {
	return &funcMetric{d: NewDesc(o.Name, o.Help, nil, nil), typ: GaugeValue, f: f}
}

// vec holds one series per combination of label values.
type vec[T Metric] struct {
	d   *Desc
	mu  sync.RWMutex
	m   map[string]T
	new func(labels []string) T
}

// with finds or makes the series of values. It is on the services' hot
// paths (nfsd counts every call by program and procedure): the lookup
// builds its key in a stack buffer and takes the read lock only.
func (v *vec[T]) with(values []string) T {
	if len(values) != len(v.d.labels) {
		panic(fmt.Sprintf("metrics: %s: %d label values for %d labels", v.d.name, len(values), len(v.d.labels)))
	}
	var buf [128]byte
	key := buf[:0]
	for i, s := range values {
		if i > 0 {
			key = append(key, 0xff)
		}
		key = append(key, s...)
	}
	v.mu.RLock()
	s, ok := v.m[string(key)]
	v.mu.RUnlock()
	if ok {
		return s
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if s, ok := v.m[string(key)]; ok {
		return s
	}
	s = v.new(append([]string(nil), values...))
	v.m[string(key)] = s
	return s
}

func (v *vec[T]) Describe(ch chan<- *Desc) { ch <- v.d }

func (v *vec[T]) Collect(ch chan<- Metric) {
	v.mu.RLock()
	all := make([]T, 0, len(v.m))
	for _, s := range v.m {
		all = append(all, s)
	}
	v.mu.RUnlock()
	for _, s := range all {
		ch <- s
	}
}

// Reset drops every series.
func (v *vec[T]) Reset() {
	v.mu.Lock()
	v.m = map[string]T{}
	v.mu.Unlock()
}

// DeleteLabelValues drops one series; it reports whether there was one.
func (v *vec[T]) DeleteLabelValues(values ...string) bool {
	key := strings.Join(values, "\xff")
	v.mu.Lock()
	defer v.mu.Unlock()
	_, ok := v.m[key]
	delete(v.m, key)
	return ok
}

// CounterVec is a counter per combination of label values.
type CounterVec struct{ vec[*scalar] }

// NewCounterVec is a counter vector with the label names labels.
func NewCounterVec(o CounterOpts, labels []string) *CounterVec {
	d := NewDesc(o.Name, o.Help, labels, nil)
	return &CounterVec{vec[*scalar]{d: d, m: map[string]*scalar{}, new: func(l []string) *scalar {
		return &scalar{d: d, typ: CounterValue, labels: l}
	}}}
}

// WithLabelValues is the counter of those label values, made at first use.
func (v *CounterVec) WithLabelValues(values ...string) Counter { return v.with(values) }

// Observer takes observations: a histogram's series.
type Observer interface{ Observe(float64) }

type histogram struct {
	d      *Desc
	labels []string
	bounds []float64
	mu     sync.Mutex
	counts []uint64 // per bound, not cumulative; the last is +Inf
	sum    float64
}

func (h *histogram) Desc() *Desc { return h.d }

func (h *histogram) Observe(x float64) {
	i := sort.SearchFloat64s(h.bounds, x) // first bound >= x: le is inclusive
	h.mu.Lock()
	h.counts[i]++
	h.sum += x
	h.mu.Unlock()
}

func (h *histogram) sample() sample {
	h.mu.Lock()
	defer h.mu.Unlock()
	s := sample{typ: histogramValue, labels: h.labels, bounds: h.bounds, buckets: make([]uint64, len(h.bounds)), sum: h.sum}
	var c uint64
	for i := range h.bounds {
		c += h.counts[i]
		s.buckets[i] = c
	}
	s.count = c + h.counts[len(h.bounds)]
	return s
}

// HistogramVec is a histogram per combination of label values.
type HistogramVec struct{ vec[*histogram] }

// NewHistogramVec is a histogram vector with o.Buckets and the label
// names labels.
func NewHistogramVec(o HistogramOpts, labels []string) *HistogramVec {
	d := NewDesc(o.Name, o.Help, labels, nil)
	bounds := append([]float64(nil), o.Buckets...)
	if !sort.Float64sAreSorted(bounds) {
		d.err = fmt.Errorf("metrics: %s: buckets %v are not ascending", o.Name, bounds)
	}
	if n := len(bounds); n > 0 && math.IsInf(bounds[n-1], 1) {
		bounds = bounds[:n-1]
	}
	return &HistogramVec{vec[*histogram]{d: d, m: map[string]*histogram{}, new: func(l []string) *histogram {
		return &histogram{d: d, labels: l, bounds: bounds, counts: make([]uint64, len(bounds)+1)}
	}}}
}

// WithLabelValues is the histogram of those label values.
func (v *HistogramVec) WithLabelValues(values ...string) Observer { return v.with(values) }

// ExponentialBuckets is count bounds, start and each factor times the one
// before.
func ExponentialBuckets(start, factor float64, count int) []float64 {
	b := make([]float64, count)
	for i := range b {
		b[i] = start
		start *= factor
	}
	return b
}

// Registerer takes collectors.
type Registerer interface {
	Register(Collector) error
	MustRegister(...Collector)
}

// ErrDuplicate is returned for a metric name registered before.
var ErrDuplicate = errors.New("metrics: name registered twice")

// describe gathers a collector's descriptions.
func describe(c Collector) []*Desc {
	ch := make(chan *Desc, 8)
	go func() { c.Describe(ch); close(ch) }()
	var out []*Desc
	for d := range ch {
		out = append(out, d)
	}
	return out
}

// collect gathers a collector's metrics.
func collect(c Collector) []Metric {
	ch := make(chan Metric, 16)
	go func() { c.Collect(ch); close(ch) }()
	var out []Metric
	for m := range ch {
		out = append(out, m)
	}
	return out
}

// prefixed renames what a collector describes and collects.
type prefixed struct {
	prefix string
	c      Collector
	mu     sync.Mutex
	names  map[*Desc]*Desc
}

func (p *prefixed) desc(d *Desc) *Desc {
	p.mu.Lock()
	defer p.mu.Unlock()
	n, ok := p.names[d]
	if !ok {
		n = &Desc{name: p.prefix + d.name, help: d.help, labels: d.labels, err: d.err}
		p.names[d] = n
	}
	return n
}

func (p *prefixed) Describe(ch chan<- *Desc) {
	for _, d := range describe(p.c) {
		ch <- p.desc(d)
	}
}

type renamed struct {
	Metric
	d *Desc
}

func (r renamed) Desc() *Desc { return r.d }

func (p *prefixed) Collect(ch chan<- Metric) {
	for _, m := range collect(p.c) {
		ch <- renamed{m, p.desc(m.Desc())}
	}
}

type prefixRegisterer struct {
	prefix string
	r      Registerer
}

func (w prefixRegisterer) Register(c Collector) error {
	return w.r.Register(&prefixed{prefix: w.prefix, c: c, names: map[*Desc]*Desc{}})
}

func (w prefixRegisterer) MustRegister(cs ...Collector) {
	for _, c := range cs {
		if err := w.Register(c); err != nil {
			panic(err)
		}
	}
}

// WrapRegistererWithPrefix registers collectors with r under names that
// start with prefix.
func WrapRegistererWithPrefix(prefix string, r Registerer) Registerer {
	return prefixRegisterer{prefix, r}
}
