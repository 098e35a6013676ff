package metrics

import (
	"bytes"
	"errors"
	"io"
	"math"
	"net/http/httptest"
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// parse reads an exposition with Prometheus's own text parser, which a
// scraper uses: what it accepts, Prometheus accepts.
func parse(t *testing.T, r io.Reader) map[string]*dto.MetricFamily {
	t.Helper()
	p := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := p.TextToMetricFamilies(r)
	if err != nil {
		t.Fatalf("Prometheus's text parser: %v", err)
	}
	return fams
}

func labelsOf(m *dto.Metric) map[string]string {
	out := map[string]string{}
	for _, l := range m.GetLabel() {
		out[l.GetName()] = l.GetValue()
	}
	return out
}

type constCollector struct{ d *Desc }

func (c constCollector) Describe(ch chan<- *Desc) { ch <- c.d }
func (c constCollector) Collect(ch chan<- Metric) {
	ch <- MustNewConstMetric(c.d, GaugeValue, 42, "a\"b\\c\nd")
}

func TestExposition(t *testing.T) {
	reg := NewRegistry()
	r := WrapRegistererWithPrefix("ociboot_test_", reg)
	c := NewCounter(CounterOpts{Name: "answers_total", Help: "Answers.\nSecond line with \\ backslash."})
	g := NewGauge(GaugeOpts{Name: "open", Help: "Open things."})
	cv := NewCounterVec(CounterOpts{Name: "requests_total", Help: "Requests."}, []string{"prog", "proc"})
	h := NewHistogramVec(HistogramOpts{Name: "transfer_seconds", Help: "Durations.", Buckets: ExponentialBuckets(0.001, 4, 3)}, []string{"node"})
	r.MustRegister(c, g, cv, h, constCollector{NewDesc("odd", "Odd label values.", []string{"v"}, nil)},
		NewGaugeFunc(GaugeOpts{Name: "fn", Help: "From a function."}, func() float64 { return 7.5 }))
	reg.MustRegister(NewRuntimeCollector())

	c.Add(3)
	c.Inc()
	g.Set(10)
	g.Dec()
	cv.WithLabelValues("nfs", "READ").Add(2)
	cv.WithLabelValues("nfs", "GETATTR").Inc()
	cv.WithLabelValues("mount", "MNT").Inc()
	obs := h.WithLabelValues("cm4-1")
	for _, x := range []float64{0.0005, 0.001, 0.003, 0.02, 5} {
		obs.Observe(x)
	}

	rec := httptest.NewRecorder()
	Handler(reg).ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if got, want := rec.Header().Get("Content-Type"), "text/plain; version=0.0.4; charset=utf-8"; got != want {
		t.Errorf("Content-Type: got %q, want %q", got, want)
	}
	body := rec.Body.String()
	fams := parse(t, strings.NewReader(body))

	value := func(name string, labels map[string]string) float64 {
		t.Helper()
		f := fams[name]
		if f == nil {
			t.Fatalf("no family %s in\n%s", name, body)
		}
		for _, m := range f.GetMetric() {
			got := labelsOf(m)
			match := len(got) == len(labels)
			for k, v := range labels {
				match = match && got[k] == v
			}
			if !match {
				continue
			}
			switch f.GetType() {
			case dto.MetricType_COUNTER:
				return m.GetCounter().GetValue()
			case dto.MetricType_GAUGE:
				return m.GetGauge().GetValue()
			}
		}
		t.Fatalf("%s%v: no such series in\n%s", name, labels, body)
		return 0
	}
	for _, c := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"ociboot_test_answers_total", nil, 4},
		{"ociboot_test_open", nil, 9},
		{"ociboot_test_requests_total", map[string]string{"prog": "nfs", "proc": "READ"}, 2},
		{"ociboot_test_requests_total", map[string]string{"prog": "nfs", "proc": "GETATTR"}, 1},
		{"ociboot_test_requests_total", map[string]string{"prog": "mount", "proc": "MNT"}, 1},
		{"ociboot_test_odd", map[string]string{"v": "a\"b\\c\nd"}, 42},
		{"ociboot_test_fn", nil, 7.5},
	} {
		if got := value(c.name, c.labels); got != c.want {
			t.Errorf("%s%v: got %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	if got, want := fams["ociboot_test_answers_total"].GetHelp(), "Answers.\nSecond line with \\ backslash."; got != want {
		t.Errorf("help: got %q, want %q", got, want)
	}
	if got, want := fams["ociboot_test_answers_total"].GetType(), dto.MetricType_COUNTER; got != want {
		t.Errorf("type: got %v, want %v", got, want)
	}

	hf := fams["ociboot_test_transfer_seconds"]
	if hf == nil || hf.GetType() != dto.MetricType_HISTOGRAM || len(hf.GetMetric()) != 1 {
		t.Fatalf("histogram family: %v\n%s", hf, body)
	}
	hm := hf.GetMetric()[0].GetHistogram()
	if got, want := hm.GetSampleCount(), uint64(5); got != want {
		t.Errorf("histogram count: got %d, want %d", got, want)
	}
	if got, want := hm.GetSampleSum(), 0.0005+0.001+0.003+0.02+5; math.Abs(got-want) > 1e-12 {
		t.Errorf("histogram sum: got %v, want %v", got, want)
	}
	// le is inclusive: 0.001 falls in the first bucket.
	var bounds []float64
	var counts []uint64
	for _, b := range hm.GetBucket() {
		bounds = append(bounds, b.GetUpperBound())
		counts = append(counts, b.GetCumulativeCount())
	}
	wantBounds, wantCounts := []float64{0.001, 0.004, 0.016, math.Inf(1)}, []uint64{2, 3, 3, 5}
	if len(bounds) != len(wantBounds) {
		t.Fatalf("buckets: got %v %v, want %v %v", bounds, counts, wantBounds, wantCounts)
	}
	for i := range bounds {
		if bounds[i] != wantBounds[i] || counts[i] != wantCounts[i] {
			t.Errorf("bucket %d: got le=%v %d, want le=%v %d", i, bounds[i], counts[i], wantBounds[i], wantCounts[i])
		}
	}

	for _, name := range []string{"go_goroutines", "process_resident_memory_bytes", "process_cpu_seconds_total", "process_open_fds", "process_start_time_seconds"} {
		if v := value(name, nil); v <= 0 {
			t.Errorf("%s: got %v, want > 0", name, v)
		}
	}
}

func TestRegisterErrors(t *testing.T) {
	reg := NewRegistry()
	reg.MustRegister(NewCounter(CounterOpts{Name: "a_total", Help: "A."}))
	for _, c := range []struct {
		what string
		c    Collector
		dup  bool
	}{
		{"same name", NewGauge(GaugeOpts{Name: "a_total", Help: "Again."}), true},
		{"bad name", NewCounter(CounterOpts{Name: "1bad", Help: "x"}), false},
		{"dash", NewCounter(CounterOpts{Name: "a-b", Help: "x"}), false},
		{"bad label", NewCounterVec(CounterOpts{Name: "b_total", Help: "x"}, []string{"a:b"}), false},
		{"reserved label", NewCounterVec(CounterOpts{Name: "c_total", Help: "x"}, []string{"__x"}), false},
		{"le on a counter", NewCounterVec(CounterOpts{Name: "d_total", Help: "x"}, []string{"le"}), false},
		{"label twice", NewCounterVec(CounterOpts{Name: "e_total", Help: "x"}, []string{"n", "n"}), false},
		{"const labels", constCollector{NewDesc("f", "x", []string{"v"}, map[string]string{"k": "v"})}, false},
		{"buckets unsorted", NewHistogramVec(HistogramOpts{Name: "g", Help: "x", Buckets: []float64{2, 1}}, nil), false},
	} {
		err := reg.Register(c.c)
		if err == nil {
			t.Errorf("%s: registered, want an error", c.what)
			continue
		}
		if got := errors.Is(err, ErrDuplicate); got != c.dup {
			t.Errorf("%s: %v: duplicate %v, want %v", c.what, err, got, c.dup)
		}
	}
	// The failed registrations left nothing behind.
	fams, err := reg.Gather()
	if err != nil || len(fams) != 1 || fams[0].Name != "a_total" {
		t.Errorf("after failed registrations: %v %v, want only a_total", fams, err)
	}
}

// unregistered yields a metric of a description it never described.
type unregistered struct{ d, other *Desc }

func (u unregistered) Describe(ch chan<- *Desc) { ch <- u.d }
func (u unregistered) Collect(ch chan<- Metric) {
	ch <- MustNewConstMetric(u.d, GaugeValue, 1)
	ch <- MustNewConstMetric(u.other, GaugeValue, 2)
}

func TestGatherUnregistered(t *testing.T) {
	reg := NewRegistry()
	reg.MustRegister(unregistered{NewDesc("known", "K.", nil, nil), NewDesc("stray", "S.", nil, nil)})
	fams, err := reg.Gather()
	if err == nil || !strings.Contains(err.Error(), "stray: not registered") {
		t.Errorf("Gather: err %v, want stray: not registered", err)
	}
	if len(fams) != 1 || fams[0].Name != "known" {
		t.Errorf("Gather: %v, want the known family", fams)
	}
	rec := httptest.NewRecorder()
	Handler(reg).ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if rec.Code != 500 {
		t.Errorf("GET /metrics with a broken collector: %d, want 500", rec.Code)
	}
}

func TestCounterCannotGoDown(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Error("Add(-1) on a counter did not panic")
		}
	}()
	NewCounter(CounterOpts{Name: "x_total", Help: "x"}).Add(-1)
}

func TestVecDelete(t *testing.T) {
	reg := NewRegistry()
	v := NewCounterVec(CounterOpts{Name: "n_total", Help: "N."}, []string{"node"})
	reg.MustRegister(v)
	v.WithLabelValues("a").Inc()
	v.WithLabelValues("b").Inc()
	if !v.DeleteLabelValues("a") || v.DeleteLabelValues("a") {
		t.Error("DeleteLabelValues: want true once, then false")
	}
	var buf bytes.Buffer
	fams, _ := reg.Gather()
	Write(&buf, fams)
	f := parse(t, &buf)["n_total"]
	if f == nil || len(f.GetMetric()) != 1 || labelsOf(f.GetMetric()[0])["node"] != "b" {
		t.Errorf("after delete: %v, want only node b", f)
	}
	v.Reset()
	fams, _ = reg.Gather()
	if len(fams) != 0 {
		t.Errorf("after Reset: %v, want no series", fams)
	}
}

func TestProcStart(t *testing.T) {
	// A command name with spaces and a parenthesis, as /proc allows.
	stat := "1234 (a b) c) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 12345 1000 10"
	if got := procStart(stat); got <= 123.45 {
		t.Errorf("procStart: got %v, want boot time + 123.45 s", got)
	}
	if got := procStart("garbage"); got != 0 {
		t.Errorf("procStart(garbage): got %v, want 0", got)
	}
}

// The counter of an existing series is found without allocating: nfsd
// counts every call this way.
func TestWithLabelValuesAllocs(t *testing.T) {
	v := NewCounterVec(CounterOpts{Name: "r_total", Help: "R."}, []string{"prog", "proc"})
	v.WithLabelValues("nfs", "GETATTR").Inc()
	if n := testing.AllocsPerRun(100, func() { v.WithLabelValues("nfs", "GETATTR").Inc() }); n != 0 {
		t.Errorf("WithLabelValues of an existing series: %v allocations, want 0", n)
	}
}

func BenchmarkWithLabelValues(b *testing.B) {
	v := NewCounterVec(CounterOpts{Name: "r_total", Help: "R."}, []string{"prog", "proc"})
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			v.WithLabelValues("nfs", "GETATTR").Inc()
		}
	})
}
