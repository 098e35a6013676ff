// Package nbdd_bench compares ociboot's NBD server (appliance/nbd serving
// an nbd.File) with Debian's nbd-server on this machine, through the same
// client: fio's nbd engine (libnbd), one connection per run. Both servers
// listen on the loopback of one network namespace made for the test and
// serve a sparse file of 512 MiB each, side by side on the same file
// system. Four workloads:
//
//   - seqwrite: 1 MiB writes over the whole file, iodepth 4, fsync at
//     the end (NBD_CMD_FLUSH);
//   - seqread: 1 MiB reads over the whole file, iodepth 4;
//   - randwrite, randread: 4 KiB at random offsets, iodepth 16, for a
//     fixed time.
//
// Each file is written once in full first (untimed), so that every timed
// run finds its blocks allocated and in the page cache: the numbers are
// the servers' overhead over a warm cache, not the disk's. Besides MiB/s
// and IOPS each run measures the CPU time the server spent per request
// (ours: this process's rusage; nbd-server: its /proc stat with the
// children it forks per connection), which a machine busy with other work
// disturbs less than the throughput. Then each
// workload runs OCIBOOT_BENCH_RUNS times (default 5) per server,
// alternating which goes first, each run after a sync. The output has the
// medians with [min-max] and the ratio ociboot/nbd-server.
//
//	OCIBOOT_BENCH=1 go test -count=1 -v -run TestBench ./tests/bench/nbdd/
//
// OCIBOOT_BENCH_PROFILE=file writes a CPU profile of the test process
// (where ociboot's server runs) over the timed runs;
// OCIBOOT_BENCH_ONLY=seqread,randread runs only the workloads named.
//
// Needs root (the namespace), fio and nbd-server.
package nbdd_bench

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ociboot/ociboot/appliance/nbd"
	"github.com/ociboot/ociboot/appliance/testenv"
	"github.com/ociboot/ociboot/tests/lab"
)

const (
	fileSize   = 512 << 20
	randomTime = 8 // seconds per random run
	oursPort   = 10810
	peerPort   = 10809
)

type workload struct {
	name string
	args []string
	read bool // which side of fio's result counts
}

var workloads = []workload{
	{"seqwrite", []string{"--rw=write", "--bs=1M", "--iodepth=4", "--end_fsync=1"}, false},
	{"seqread", []string{"--rw=read", "--bs=1M", "--iodepth=4"}, true},
	{"randwrite", []string{"--rw=randwrite", "--bs=4k", "--iodepth=16", "--norandommap", "--time_based", "--runtime=" + strconv.Itoa(randomTime)}, false},
	{"randread", []string{"--rw=randread", "--bs=4k", "--iodepth=16", "--norandommap", "--time_based", "--runtime=" + strconv.Itoa(randomTime)}, true},
}

type server struct {
	name string
	uri  string
	err  error
	cpu  func() (time.Duration, error) // CPU time used so far
}

type result struct {
	mibs, iops float64
	ios        float64       // requests completed
	cpu        time.Duration // the server's CPU time over the run
}

// fio runs one fio job against uri in namespace ns and returns its
// throughput and IOPS.
func fio(ns, uri string, w workload) (result, error) {
	args := append([]string{"netns", "exec", ns, "fio", "--name=" + w.name, "--ioengine=nbd", "--uri=" + uri,
		"--size=" + strconv.Itoa(fileSize), "--output-format=json"}, w.args...)
	cmd := exec.Command("ip", args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return result{}, fmt.Errorf("fio %s: %v\n%s%s", strings.Join(args[3:], " "), err, out, stderr.String())
	}
	// fio's nbd engine prints "fio: connected to NBD server" first.
	i := strings.IndexByte(string(out), '{')
	if i < 0 {
		return result{}, fmt.Errorf("fio %s: no JSON in %q", w.name, out)
	}
	var r struct {
		Jobs []struct {
			Error       int `json:"error"`
			Read, Write struct {
				BW   float64 `json:"bw_bytes"`
				IOPS float64 `json:"iops"`
				IOs  float64 `json:"total_ios"`
			}
		} `json:"jobs"`
	}
	if err := json.Unmarshal(out[i:], &r); err != nil {
		return result{}, fmt.Errorf("fio %s: %v", w.name, err)
	}
	if len(r.Jobs) != 1 || r.Jobs[0].Error != 0 {
		return result{}, fmt.Errorf("fio %s: jobs %+v", w.name, r.Jobs)
	}
	side := r.Jobs[0].Write
	if w.read {
		side = r.Jobs[0].Read
	}
	if side.BW == 0 {
		return result{}, fmt.Errorf("fio %s: no bytes moved", w.name)
	}
	return result{mibs: side.BW / (1 << 20), iops: side.IOPS, ios: side.IOs}, nil
}

// sparse creates a sparse file of fileSize bytes.
func sparse(t *testing.T, path string) {
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(fileSize); err != nil {
		t.Fatal(err)
	}
}

// startOurs serves file as export "disk" on 127.0.0.1:oursPort in ns.
func startOurs(t *testing.T, ns, file string) *server {
	var ln net.Listener
	var err error
	lab.InNS(t, ns, func() { ln, err = net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", oursPort)) })
	if err != nil {
		t.Fatal(err)
	}
	s := &nbd.Server{
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
		Lookup: func(ctx context.Context, name string, remote netip.AddrPort) (nbd.Export, error) {
			if name != "disk" {
				return nil, fmt.Errorf("%q: %w", name, nbd.ErrUnknownExport)
			}
			f, err := os.OpenFile(file, os.O_RDWR, 0)
			if err != nil {
				return nil, err
			}
			return nbd.NewFile(f)
		},
	}
	served := make(chan error, 1)
	go func() { served <- s.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		s.Shutdown(ctx)
		<-served
	})
	return &server{name: "ociboot", uri: fmt.Sprintf("nbd://127.0.0.1:%d/disk", oursPort), cpu: selfCPU}
}

// startNbdServer runs Debian's nbd-server in ns on file, with flush, FUA
// and trim as ours announces them. nbd-server daemonizes; its pid file
// says which process to stop.
func startNbdServer(t *testing.T, ns, file string) *server {
	dir := t.TempDir()
	conf, pidFile := filepath.Join(dir, "config"), filepath.Join(dir, "pid")
	cfg := fmt.Sprintf("[generic]\n\tlistenaddr = 127.0.0.1\n\tport = %d\n\tallowlist = false\n[disk]\n\texportname = %s\n\tflush = true\n\tfua = true\n\ttrim = true\n", peerPort, file)
	if err := os.WriteFile(conf, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	lab.Run(t, "ip", "netns", "exec", ns, "nbd-server", "-C", conf, "-p", pidFile)
	var pid int
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		b, _ := os.ReadFile(pidFile)
		if pid, _ = strconv.Atoi(strings.TrimSpace(string(b))); pid > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("nbd-server wrote no pid file %s", pidFile)
		}
	}
	t.Cleanup(func() {
		syscall.Kill(pid, syscall.SIGTERM)
		for i := 0; i < 100 && syscall.Kill(pid, 0) == nil; i++ {
			time.Sleep(20 * time.Millisecond)
		}
	})
	return &server{name: "nbd-server", uri: fmt.Sprintf("nbd://127.0.0.1:%d/disk", peerPort), cpu: func() (time.Duration, error) { return procCPU(pid) }}
}

// selfCPU is this process's CPU time: ociboot's server runs here, and
// the rest of the test only waits for fio.
func selfCPU() (time.Duration, error) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, err
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), nil
}

// procCPU is the CPU time of process pid and of its children that ended
// (nbd-server forks one per connection and reaps it when it ends). It
// waits until pid has no child left, so that the last run's is counted.
func procCPU(pid int) (time.Duration, error) {
	for i := 0; i < 200; i++ {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
		if err != nil {
			return 0, err
		}
		if len(strings.TrimSpace(string(b))) == 0 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// Fields after the command name in parentheses: utime, stime,
	// cutime and cstime are the 14th to 17th fields of the line.
	rest := string(b[strings.LastIndexByte(string(b), ')')+2:])
	f := strings.Fields(rest)
	var ticks int64
	for _, s := range f[11:15] {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/%d/stat: %q: %v", pid, b, err)
		}
		ticks += n
	}
	return time.Duration(ticks) * time.Second / 100, nil // USER_HZ is 100 on Linux
}

func runs() int {
	if n, err := strconv.Atoi(os.Getenv("OCIBOOT_BENCH_RUNS")); err == nil && n > 0 {
		return n
	}
	return 5
}

func median(xs []float64) float64 {
	s := slices.Sorted(slices.Values(xs))
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// spread is "median [min-max]" with prec decimals.
func spread(xs []float64, prec int) string {
	return fmt.Sprintf("%.*f [%.*f-%.*f]", prec, median(xs), prec, slices.Min(xs), prec, slices.Max(xs))
}

func TestBenchNBD(t *testing.T) {
	testenv.OptIn(t, "OCIBOOT_BENCH", "benchmark")
	lab.NeedNetns(t)
	testenv.NeedTool(t, "fio", "fio")
	testenv.NeedTool(t, "nbd-server", "nbd-server")
	if out, err := exec.Command("fio", "--enghelp=nbd").CombinedOutput(); err != nil {
		testenv.Need(t, "fio has no nbd engine (fio --enghelp=nbd: %v: %s)", err, out)
	}
	ns := lab.NewNS(t, "nbd")
	dir := t.TempDir()
	oursFile, peerFile := filepath.Join(dir, "ours.img"), filepath.Join(dir, "nbd-server.img")
	sparse(t, oursFile)
	sparse(t, peerFile)
	servers := []*server{startOurs(t, ns, oursFile), startNbdServer(t, ns, peerFile)}

	// Warm-up: a full sequential write of each file, untimed, and a check
	// that both files then hold fio's data (allocated, not sparse).
	for _, s := range servers {
		if _, err := fio(ns, s.uri, workloads[0]); err != nil {
			t.Fatalf("%s warm-up: %v", s.name, err)
		}
	}
	for _, f := range []string{oursFile, peerFile} {
		var st syscall.Stat_t
		if err := syscall.Stat(f, &st); err != nil || st.Blocks*512 < fileSize {
			t.Fatalf("%s after the warm-up: %d bytes allocated (%v), want %d", f, st.Blocks*512, err, fileSize)
		}
	}

	if p := os.Getenv("OCIBOOT_BENCH_PROFILE"); p != "" {
		f, err := os.Create(p)
		if err != nil {
			t.Fatal(err)
		}
		pprof.StartCPUProfile(f)
		defer func() { pprof.StopCPUProfile(); f.Close(); t.Logf("CPU profile in %s", p) }()
	}

	n := runs()
	only := os.Getenv("OCIBOOT_BENCH_ONLY")
	for _, w := range workloads {
		if only != "" && !slices.Contains(strings.Split(only, ","), w.name) {
			continue
		}
		got := map[*server][]result{}
		for i := 0; i < n; i++ {
			order := slices.Clone(servers)
			if i%2 == 1 {
				slices.Reverse(order)
			}
			for _, s := range order {
				if s.err != nil {
					continue
				}
				syscall.Sync()
				before, err := s.cpu()
				if err != nil {
					t.Fatalf("%s: CPU time: %v", s.name, err)
				}
				r, err := fio(ns, s.uri, w)
				if err == nil {
					var after time.Duration
					after, err = s.cpu()
					r.cpu = after - before
				}
				if err != nil {
					s.err = err
					t.Errorf("%s %s: %v", w.name, s.name, err)
					continue
				}
				got[s] = append(got[s], r)
			}
		}
		line := fmt.Sprintf("nbd %s (%s), fio nbd engine, median [min-max] of %d:", w.name, strings.Join(w.args[:3], " "), n)
		med, medCPU := map[string]float64{}, map[string]float64{}
		for _, s := range servers {
			if len(got[s]) == 0 {
				line += fmt.Sprintf(" %s FAILED;", s.name)
				continue
			}
			var mibs, iops, cpu []float64
			for _, r := range got[s] {
				mibs = append(mibs, r.mibs)
				iops = append(iops, r.iops)
				cpu = append(cpu, float64(r.cpu.Microseconds())/r.ios)
			}
			med[s.name] = median(mibs)
			medCPU[s.name] = median(cpu)
			line += fmt.Sprintf(" %s %s MiB/s, %s IOPS, %s µs CPU/request;", s.name, spread(mibs, 1), spread(iops, 0), spread(cpu, 1))
		}
		if o, p := med["ociboot"], med["nbd-server"]; o > 0 && p > 0 {
			line += fmt.Sprintf(" throughput ratio ociboot/nbd-server %.2fx (goal >= 1.0x), CPU per request ratio %.2fx (goal <= 1.0x)", o/p, medCPU["ociboot"]/medCPU["nbd-server"])
		}
		fmt.Println(strings.TrimSuffix(line, ";"))
	}
}
