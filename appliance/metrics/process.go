package metrics

import (
	"os"
	"runtime"
	rtm "runtime/metrics"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// runtimeCollector exports the Go runtime's and the process's figures
// under the names the Prometheus client uses (go_*, process_*), read at
// scrape time: runtime/metrics (no stop of the world) and /proc/self.
type runtimeCollector struct {
	start   float64
	samples []rtm.Sample
	descs   []*Desc
	types   []ValueType
	proc    []*Desc
}

var runtimeNames = []struct {
	runtime, name, help string
	typ                 ValueType
}{
	{"/sched/goroutines:goroutines", "go_goroutines", "Number of goroutines that currently exist.", GaugeValue},
	{"/sched/gomaxprocs:threads", "go_sched_gomaxprocs_threads", "The current runtime.GOMAXPROCS setting.", GaugeValue},
	{"/memory/classes/heap/objects:bytes", "go_memstats_heap_alloc_bytes", "Bytes of allocated heap objects.", GaugeValue},
	{"/memory/classes/total:bytes", "go_memstats_sys_bytes", "Bytes of memory obtained from the OS.", GaugeValue},
	{"/gc/cycles/total:gc-cycles", "go_gc_cycles_total", "Completed GC cycles.", CounterValue},
	{"/gc/heap/allocs:bytes", "go_memstats_alloc_bytes_total", "Bytes allocated in the heap since start.", CounterValue},
}

// NewRuntimeCollector is the Go runtime and process collector every
// service registers unprefixed.
func NewRuntimeCollector() Collector {
	c := &runtimeCollector{start: float64(time.Now().UnixNano()) / 1e9}
	if b, err := os.ReadFile("/proc/self/stat"); err == nil {
		if st := procStart(string(b)); st > 0 {
			c.start = st
		}
	}
	for _, n := range runtimeNames {
		c.samples = append(c.samples, rtm.Sample{Name: n.runtime})
		c.descs = append(c.descs, NewDesc(n.name, n.help, nil, nil))
		c.types = append(c.types, n.typ)
	}
	c.descs = append(c.descs, NewDesc("go_info", "Information about the Go environment.", []string{"version"}, nil))
	c.proc = []*Desc{
		NewDesc("process_resident_memory_bytes", "Resident memory size in bytes.", nil, nil),
		NewDesc("process_virtual_memory_bytes", "Virtual memory size in bytes.", nil, nil),
		NewDesc("process_cpu_seconds_total", "Total user and system CPU time spent in seconds.", nil, nil),
		NewDesc("process_open_fds", "Number of open file descriptors.", nil, nil),
		NewDesc("process_max_fds", "Maximum number of open file descriptors.", nil, nil),
		NewDesc("process_start_time_seconds", "Start time of the process since unix epoch in seconds.", nil, nil),
	}
	return c
}

// procStart is the process's start time from /proc/self/stat: field 22,
// in clock ticks since boot (USER_HZ, 100 on Linux), plus the boot time.
func procStart(stat string) float64 {
	// The command name may hold spaces and parentheses: fields start
	// after the last ")".
	i := strings.LastIndexByte(stat, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(stat[i+1:])
	if len(f) < 20 {
		return 0
	}
	ticks, err := strconv.ParseFloat(f[19], 64)
	if err != nil {
		return 0
	}
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "btime "); ok {
			bt, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err == nil {
				return bt + ticks/100
			}
		}
	}
	return 0
}

func (c *runtimeCollector) Describe(ch chan<- *Desc) {
	for _, d := range c.descs {
		ch <- d
	}
	for _, d := range c.proc {
		ch <- d
	}
}

func (c *runtimeCollector) Collect(ch chan<- Metric) {
	s := append([]rtm.Sample(nil), c.samples...)
	rtm.Read(s)
	for i, x := range s {
		var v float64
		switch x.Value.Kind() {
		case rtm.KindUint64:
			v = float64(x.Value.Uint64())
		case rtm.KindFloat64:
			v = x.Value.Float64()
		default:
			continue // not in this Go version
		}
		ch <- MustNewConstMetric(c.descs[i], c.types[i], v)
	}
	ch <- MustNewConstMetric(c.descs[len(c.samples)], GaugeValue, 1, runtime.Version())

	page := float64(os.Getpagesize())
	if b, err := os.ReadFile("/proc/self/statm"); err == nil {
		if f := strings.Fields(string(b)); len(f) >= 2 {
			vsz, _ := strconv.ParseFloat(f[0], 64)
			rss, _ := strconv.ParseFloat(f[1], 64)
			ch <- MustNewConstMetric(c.proc[0], GaugeValue, rss*page)
			ch <- MustNewConstMetric(c.proc[1], GaugeValue, vsz*page)
		}
	}
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) == nil {
		cpu := float64(ru.Utime.Sec+ru.Stime.Sec) + float64(ru.Utime.Usec+ru.Stime.Usec)/1e6
		ch <- MustNewConstMetric(c.proc[2], CounterValue, cpu)
	}
	if fds, err := os.ReadDir("/proc/self/fd"); err == nil {
		ch <- MustNewConstMetric(c.proc[3], GaugeValue, float64(len(fds)-1)) // without ReadDir's own
	}
	var lim syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim) == nil {
		ch <- MustNewConstMetric(c.proc[4], GaugeValue, float64(lim.Cur))
	}
	ch <- MustNewConstMetric(c.proc[5], GaugeValue, c.start)
}
