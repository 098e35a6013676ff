// Package cluster_bench boots the node OS image (`make node-image`,
// OCIBOOT_NODE_IMAGE names a prebuilt layout) on arm64 QEMU nodes (TCG)
// through the head node's services: one node alone, then five powered on
// one after the other without waiting, each timed from its power-on (the
// Pi emulator's first DHCP packet) to systemd's multi-user.target. It
// prints the times, their median, and nfsd's calls by procedure and READ
// and WRITE bytes per boot from its /metrics, so that the boot's NFS
// profile is visible. It takes both cores for several minutes: run it on
// a quiet machine. It is not part of `make bench` (which stops after 60
// minutes): it asks for OCIBOOT_BENCH_CLUSTER=1 too.
//
//	OCIBOOT_NODE_IMAGE=/path/to/layout OCIBOOT_BENCH=1 OCIBOOT_BENCH_CLUSTER=1 go test -count=1 -v -timeout 90m ./tests/bench/cluster/
package cluster_bench

import (
	"bufio"
	"fmt"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ociboot/ociboot/appliance/testenv"
	"github.com/ociboot/ociboot/tests/e2e"
)

// nfsdMetrics reads nfsd's counters of interest: calls by "prog proc",
// and the READ and WRITE bytes.
func nfsdMetrics(t *testing.T, lab *e2e.Lab) map[string]float64 {
	out, err := exec.Command("ip", "netns", "exec", lab.Head, "curl", "-sf", "--max-time", "5", "http://127.0.0.1:9049/metrics").Output()
	if err != nil {
		t.Fatalf("nfsd /metrics: %v", err)
	}
	m := map[string]float64{}
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		line := sc.Text()
		name, rest, ok := strings.Cut(line, " ")
		if !ok || strings.HasPrefix(line, "#") {
			continue
		}
		v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64)
		if err != nil {
			continue
		}
		switch {
		case strings.HasPrefix(name, "ociboot_nfsd_requests_total{"):
			labels := map[string]string{}
			for _, kv := range strings.Split(strings.Trim(strings.TrimPrefix(name, "ociboot_nfsd_requests_total"), "{}"), ",") {
				k, v, _ := strings.Cut(kv, "=")
				labels[k] = strings.Trim(v, `"`)
			}
			m[labels["prog"]+" "+labels["proc"]] += v
		case name == "ociboot_nfsd_read_bytes_total", name == "ociboot_nfsd_write_bytes_total":
			m[name] = v
		}
	}
	return m
}

// profile prints what the boots between before and after cost nfsd, per
// boot.
func profile(what string, boots int, before, after map[string]float64) {
	type kv struct {
		k string
		v float64
	}
	var calls []kv
	total := 0.0
	for k, v := range after {
		if strings.HasPrefix(k, "ociboot_") {
			continue
		}
		if d := v - before[k]; d > 0 {
			calls = append(calls, kv{k, d / float64(boots)})
			total += d / float64(boots)
		}
	}
	sort.Slice(calls, func(i, j int) bool { return calls[i].v > calls[j].v })
	var parts []string
	for _, c := range calls {
		parts = append(parts, fmt.Sprintf("%s %.0f", c.k, c.v))
	}
	rd := (after["ociboot_nfsd_read_bytes_total"] - before["ociboot_nfsd_read_bytes_total"]) / float64(boots)
	wr := (after["ociboot_nfsd_write_bytes_total"] - before["ociboot_nfsd_write_bytes_total"]) / float64(boots)
	fmt.Printf("nfsd per boot (%s): %.0f calls: %s; READ %.1f MiB, WRITE %.1f MiB\n", what, total, strings.Join(parts, ", "), rd/(1<<20), wr/(1<<20))
}

func TestBenchClusterBoot(t *testing.T) {
	testenv.OptIn(t, "OCIBOOT_BENCH", "benchmark")
	testenv.OptIn(t, "OCIBOOT_BENCH_CLUSTER", "the cluster boot benchmark (five arm64 QEMU nodes, 20 minutes and more of both cores)")
	ociDir := e2e.NodeOSImage(t)
	var pis []*e2e.PiNode
	for i := 0; i < 6; i++ {
		pis = append(pis, &e2e.PiNode{Name: fmt.Sprintf("cm4-%d", i+1), Serial: 0x6a200001 + uint32(i), MAC: fmt.Sprintf("dc:a6:32:20:00:%02x", i+1)})
	}
	key, pub := e2e.SSHKey(t, t.TempDir())
	lab, h, _ := e2e.NodeOSHead(t, ociDir, "rpi/node:bookworm", pis, pub)

	// One node alone, on its first boot (nfsd makes its root then).
	before := nfsdMetrics(t, lab)
	pis[0].PowerOn(t, lab, h)
	pis[0].WaitMultiUser(t, lab, key, 20*time.Minute)
	after := nfsdMetrics(t, lab)
	fmt.Printf("cluster boot, 1 node: power-on to multi-user.target %v\n", pis[0].Up.Round(100*time.Millisecond))
	profile("1 node", 1, before, after)
	pis[0].Proc.Stop(30 * time.Second)

	// Five at once, each on its first boot.
	five := pis[1:]
	before = nfsdMetrics(t, lab)
	for _, p := range five {
		p.PowerOn(t, lab, h)
	}
	for _, p := range five {
		p.WaitMultiUser(t, lab, key, 40*time.Minute)
	}
	after = nfsdMetrics(t, lab)
	var ups []time.Duration
	var parts []string
	for _, p := range five {
		ups = append(ups, p.Up)
		parts = append(parts, fmt.Sprintf("%s %v", p.Name, p.Up.Round(100*time.Millisecond)))
	}
	sort.Slice(ups, func(i, j int) bool { return ups[i] < ups[j] })
	fmt.Printf("cluster boot, 5 nodes at once: power-on to multi-user.target %s; median %v, last %v\n",
		strings.Join(parts, ", "), ups[2].Round(100*time.Millisecond), ups[4].Round(100*time.Millisecond))
	profile("5 nodes at once", 5, before, after)
}
