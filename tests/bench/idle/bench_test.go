// Package idle_bench measures what the head node's services hold in
// memory when idle: each built service in a head namespace with a real
// registry, once ocicache has the node image unpacked and a quiet period
// has passed, VmRSS (and its anonymous part) of each from /proc, summed.
//
//	OCIBOOT_BENCH=1 go test -count=1 -v -run TestBenchIdleRSS ./tests/bench/idle/
package idle_bench

import (
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ociboot/ociboot/appliance/testenv"
	"github.com/ociboot/ociboot/tests/e2e"
)

// goal is the bound on all services together (set when there were five;
// nbdd, the sixth, is counted too).
const goal = 64 << 20

// rss reads VmRSS and RssAnon of pid, in bytes.
func rss(t *testing.T, pid int) (total, anon int64) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		n, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
		switch k {
		case "VmRSS":
			total = n << 10
		case "RssAnon":
			anon = n << 10
		}
	}
	if total == 0 {
		t.Fatalf("no VmRSS in /proc/%d/status", pid)
	}
	return total, anon
}

func TestBenchIdleRSS(t *testing.T) {
	testenv.OptIn(t, "OCIBOOT_BENCH", "benchmark")
	lab := e2e.NewLab(t)
	h := e2e.NewHead(t, lab, e2e.FullMode(lab))
	h.Start(t)
	h.WaitImage(t, 3*time.Minute)
	// One MOUNT EXPORT call, so that nfsd has served
	// (the head checks every reply it sent).
	if out, err := exec.Command("ip", "netns", "exec", lab.Head, "showmount", "-e", lab.Addr(1)).CombinedOutput(); err != nil {
		t.Fatalf("showmount -e %s: %v\n%s", lab.Addr(1), err, out)
	}
	// Idle: past the pull, the first status scrapes and a GC cycle (the
	// runtime forces one every two minutes; 30 s lets the heap settle
	// after the pull's garbage without waiting for it).
	time.Sleep(30 * time.Second)
	var sum, sumAnon int64
	var parts []string
	for _, name := range e2e.Services {
		p := h.Procs[name]
		tot, anon := rss(t, p.Pid())
		sum += tot
		sumAnon += anon
		parts = append(parts, fmt.Sprintf("%s %.1f (anon %.1f)", name, float64(tot)/(1<<20), float64(anon)/(1<<20)))
	}
	fmt.Printf("idle RSS of the %d services (static builds, as gok makes them), MiB: %s; total %.1f MiB (anon %.1f), goal <= %d MiB\n",
		len(e2e.Services), strings.Join(parts, ", "), float64(sum)/(1<<20), float64(sumAnon)/(1<<20), goal>>20)
	if sum > goal {
		t.Errorf("idle RSS of the %d services: got %.1f MiB, want <= %d MiB", len(e2e.Services), float64(sum)/(1<<20), goal>>20)
	}
}
