package metrics

import (
	"bufio"
	"fmt"
	"io"
	"math"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
)

// Registry holds collectors; it is a Registerer and serves /metrics.
type Registry struct {
	mu    sync.Mutex
	cs    []Collector
	names map[string]*Desc
}

// NewRegistry is an empty registry.
func NewRegistry() *Registry { return &Registry{names: map[string]*Desc{}} }

// Register adds c after checking its descriptions: valid names and label
// names, and no name another collector (or c itself) has.
func (r *Registry) Register(c Collector) error {
	ds := describe(c)
	r.mu.Lock()
	defer r.mu.Unlock()
	seen := map[string]bool{}
	for _, d := range ds {
		if err := d.check(); err != nil {
			return err
		}
		if _, dup := r.names[d.name]; dup || seen[d.name] {
			return fmt.Errorf("%w: %s", ErrDuplicate, d.name)
		}
		seen[d.name] = true
	}
	for _, d := range ds {
		r.names[d.name] = d
	}
	r.cs = append(r.cs, c)
	return nil
}

// MustRegister is Register; an error is a programming error and panics.
func (r *Registry) MustRegister(cs ...Collector) {
	for _, c := range cs {
		if err := r.Register(c); err != nil {
			panic(err)
		}
	}
}

// Family is one metric name's samples, as scraped.
type Family struct {
	Name, Help string
	Type       ValueType
	Samples    []Sample
}

// Sample is one series: its labels and value (for a histogram, Value is
// the sum, and Count and Buckets are set).
type Sample struct {
	Labels  map[string]string
	Value   float64
	Count   uint64
	Buckets []Bucket
}

// Bucket is a histogram's cumulative count of observations <= UpperBound.
type Bucket struct {
	UpperBound float64
	Count      uint64
}

// Gather collects every registered collector now: families sorted by
// name, series by label values. Metrics whose description was not
// registered, or whose label values do not fit it, are errors (the rest
// is still returned).
func (r *Registry) Gather() ([]Family, error) {
	r.mu.Lock()
	cs := append([]Collector(nil), r.cs...)
	r.mu.Unlock()
	type fam struct {
		f    Family
		keys []string
	}
	byName := map[string]*fam{}
	var errs []string
	for _, c := range cs {
		for _, m := range collect(c) {
			d := m.Desc()
			r.mu.Lock()
			reg := r.names[d.name]
			r.mu.Unlock()
			s := m.sample()
			switch {
			case reg == nil:
				errs = append(errs, fmt.Sprintf("%s: not registered", d.name))
				continue
			case len(s.labels) != len(d.labels):
				errs = append(errs, fmt.Sprintf("%s: %d label values for %d labels", d.name, len(s.labels), len(d.labels)))
				continue
			}
			f := byName[d.name]
			if f == nil {
				f = &fam{f: Family{Name: d.name, Help: d.help, Type: s.typ}}
				byName[d.name] = f
			} else if f.f.Type != s.typ {
				errs = append(errs, fmt.Sprintf("%s: a %v and a %v", d.name, f.f.Type, s.typ))
				continue
			}
			out := Sample{Value: s.value}
			if len(d.labels) > 0 {
				out.Labels = make(map[string]string, len(d.labels))
				for i, l := range d.labels {
					out.Labels[l] = s.labels[i]
				}
			}
			if s.typ == histogramValue {
				out.Value, out.Count = s.sum, s.count
				for i, b := range s.bounds {
					out.Buckets = append(out.Buckets, Bucket{b, s.buckets[i]})
				}
			}
			f.f.Samples = append(f.f.Samples, out)
			f.keys = append(f.keys, strings.Join(s.labels, "\xff"))
		}
	}
	out := make([]Family, 0, len(byName))
	for _, f := range byName {
		idx := make([]int, len(f.keys))
		for i := range idx {
			idx[i] = i
		}
		sort.Slice(idx, func(a, b int) bool { return f.keys[idx[a]] < f.keys[idx[b]] })
		sorted := make([]Sample, len(idx))
		for i, j := range idx {
			sorted[i] = f.f.Samples[j]
		}
		f.f.Samples = sorted
		out = append(out, f.f)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	if errs != nil {
		return out, fmt.Errorf("metrics: %s", strings.Join(errs, "; "))
	}
	return out, nil
}

// Write writes the families in the text exposition format 0.0.4.
func Write(w io.Writer, fams []Family) error {
	bw := bufio.NewWriter(w)
	for _, f := range fams {
		fmt.Fprintf(bw, "# HELP %s %s\n# TYPE %s %s\n", f.Name, escapeHelp(f.Help), f.Name, f.Type)
		for _, s := range f.Samples {
			names := make([]string, 0, len(s.Labels))
			for k := range s.Labels {
				names = append(names, k)
			}
			sort.Strings(names)
			labels := func(extra ...string) string {
				if len(names) == 0 && len(extra) == 0 {
					return ""
				}
				var b strings.Builder
				b.WriteByte('{')
				for i, k := range names {
					if i > 0 {
						b.WriteByte(',')
					}
					fmt.Fprintf(&b, "%s=\"%s\"", k, escapeLabel(s.Labels[k]))
				}
				for i := 0; i+1 < len(extra); i += 2 {
					if len(names) > 0 || i > 0 {
						b.WriteByte(',')
					}
					fmt.Fprintf(&b, "%s=\"%s\"", extra[i], extra[i+1])
				}
				b.WriteByte('}')
				return b.String()
			}
			if f.Type != histogramValue {
				fmt.Fprintf(bw, "%s%s %s\n", f.Name, labels(), formatFloat(s.Value))
				continue
			}
			for _, b := range s.Buckets {
				fmt.Fprintf(bw, "%s_bucket%s %d\n", f.Name, labels("le", formatFloat(b.UpperBound)), b.Count)
			}
			fmt.Fprintf(bw, "%s_bucket%s %d\n", f.Name, labels("le", "+Inf"), s.Count)
			fmt.Fprintf(bw, "%s_sum%s %s\n", f.Name, labels(), formatFloat(s.Value))
			fmt.Fprintf(bw, "%s_count%s %d\n", f.Name, labels(), s.Count)
		}
	}
	return bw.Flush()
}

func formatFloat(v float64) string {
	switch {
	case math.IsInf(v, 1):
		return "+Inf"
	case math.IsInf(v, -1):
		return "-Inf"
	case math.IsNaN(v):
		return "NaN"
	}
	return strconv.FormatFloat(v, 'g', -1, 64)
}

var (
	helpEscaper  = strings.NewReplacer(`\`, `\\`, "\n", `\n`)
	labelEscaper = strings.NewReplacer(`\`, `\\`, "\n", `\n`, `"`, `\"`)
)

func escapeHelp(s string) string  { return helpEscaper.Replace(s) }
func escapeLabel(s string) string { return labelEscaper.Replace(s) }

// Handler serves r's metrics in the text format. A collection error is
// logged by the scraper as a 500 with the reason; the families gathered
// are not served then, so a broken collector is seen, not hidden.
func Handler(r *Registry) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		fams, err := r.Gather()
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
		Write(w, fams)
	})
}
