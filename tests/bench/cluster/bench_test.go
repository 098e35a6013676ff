// Package cluster_bench boots the node OS image (`make node-image`,
// OCIBOOT_NODE_IMAGE names a prebuilt layout) on arm64 QEMU nodes (TCG)
// and times each from its power-on (the Pi emulator's first DHCP packet)
// to systemd's multi-user.target, over ociboot and over a peer set up
// the way people netboot Pis without it: dnsmasq for DHCP and TFTP, and
// nfs-ganesha (FSAL VFS) exporting one copy of the root per node.
//
// Both serve the same files: the five nodes boot first over ociboot
// (nfsd makes and personalizes their roots; those times are printed as
// first boots), and the peer gets a copy of each node's root as nfsd
// made it and of every file its bootloader fetched, generated config.txt
// and cmdline.txt included, so the kernel command line is the same
// (`nfsroot=<head>:/nodes/<serial>`, served by ganesha's Mount_Path_Pseudo).
// Then one node alone and five at once boot again, OCIBOOT_BENCH_ROUNDS
// times each (default 2), alternating ociboot and the peer (ABBA, so that
// neither always goes first), with the same head namespace and address:
// the services of one are stopped while the other serves, and nfsd runs
// without the tests' reply recorder. OCIBOOT_BENCH_SIZES picks the cluster
// sizes (default 1,5). It prints every time, the medians, the ratios, the
// servers' CPU time per boot, and nfsd's calls by procedure and READ and
// WRITE bytes per boot from its /metrics (the boot's NFS profile).
//
// It takes both cores for about 70 minutes (OCIBOOT_BENCH_SIZES=5
// OCIBOOT_BENCH_ROUNDS=1: 30): run it on a quiet machine. It is not part
// of `make bench` (which stops after 60 minutes): it asks for
// OCIBOOT_BENCH_CLUSTER=1 too.
//
//	OCIBOOT_NODE_IMAGE=/path/to/layout OCIBOOT_BENCH=1 OCIBOOT_BENCH_CLUSTER=1 go test -count=1 -v -timeout 180m ./tests/bench/cluster/
package cluster_bench

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ociboot/ociboot/appliance/testenv"
	"github.com/ociboot/ociboot/tests/e2e"
	"github.com/ociboot/ociboot/tests/ganesha"
	testlab "github.com/ociboot/ociboot/tests/lab"
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

// netboot is one way of serving the nodes' boots from the head namespace.
type netboot interface {
	name() string
	start(t *testing.T)
	stop(t *testing.T)
	// pids are the server processes, whose CPU time a boot costs.
	pids() []int
}

// cpuTime is the CPU time (user and system) pids have used.
func cpuTime(t *testing.T, pids []int) time.Duration {
	var ticks int64
	for _, pid := range pids {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			t.Fatalf("CPU time of pid %d: %v", pid, err)
		}
		s := string(b)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		// utime and stime, fields 14 and 15, in USER_HZ (100) ticks.
		u, _ := strconv.ParseInt(f[11], 10, 64)
		st, _ := strconv.ParseInt(f[12], 10, 64)
		ticks += u + st
	}
	return time.Duration(ticks) * 10 * time.Millisecond
}

// ours is ociboot's dhcpd, tftpd and nfsd (ocicache, nbdd and the status
// page keep running throughout: they take no part in a boot).
type ours struct{ h *e2e.Head }

var bootServices = []string{"dhcpd", "tftpd", "nfsd"}

func (o ours) name() string { return "ociboot" }

func (o ours) start(t *testing.T) {
	for _, s := range bootServices {
		o.h.StartService(t, s)
	}
}

func (o ours) pids() []int {
	var out []int
	for _, s := range bootServices {
		out = append(out, o.h.Procs[s].Pid())
	}
	return out
}

func (o ours) stop(t *testing.T) {
	for _, s := range bootServices {
		o.h.Procs[s].Stop(10 * time.Second)
	}
}

// peer is dnsmasq (DHCP with each node's reservation and the Pi's PXE
// boot menu entry, TFTP from a directory per serial) and nfs-ganesha
// (NFSv3 on 2049, MOUNT found through its rpcbind on 111, as klibc's
// nfsmount asks) exporting one root per node as /nodes/<serial>.
type peer struct {
	lab      *e2e.Lab
	pis      []*e2e.PiNode
	tftpRoot string
	roots    []string
	mounts   []string
	dnsmasq  *testlab.Proc
	ganesha  *ganesha.Server
}

func (p *peer) name() string { return "dnsmasq+ganesha" }

func (p *peer) start(t *testing.T) {
	args := []string{"--dhcp-authoritative", "--dhcp-range=" + p.lab.Addr(0) + ",static,255.255.255.0,1h",
		"--pxe-service=0,Raspberry Pi Boot", "--enable-tftp", "--tftp-root=" + p.tftpRoot}
	for _, pi := range p.pis {
		args = append(args, "--dhcp-host="+pi.MAC+","+pi.IP)
	}
	p.dnsmasq = testlab.Dnsmasq(t, p.lab.Head, args...)
	p.ganesha = ganesha.StartWith(t, ganesha.Options{NS: p.lab.Head, NFSPort: 2049, MountPort: 20048, MountPaths: p.mounts, UDP: true}, p.roots...)
}

func (p *peer) pids() []int { return []int{p.dnsmasq.Pid(), p.ganesha.Pid()} }

func (p *peer) stop(t *testing.T) {
	p.dnsmasq.Stop(5 * time.Second)
	p.ganesha.Stop()
}

// newPeer copies what the nodes' last boots over ociboot served into dir:
// each node's root (cp -a: the peer's roots are plain directories, not
// nfsd's views that share the image's files) and the files its bootloader
// fetched.
func newPeer(t *testing.T, lab *e2e.Lab, h *e2e.Head, pis []*e2e.PiNode, dir string) *peer {
	p := &peer{lab: lab, pis: pis, tftpRoot: filepath.Join(dir, "tftp")}
	for _, pi := range pis {
		serial := fmt.Sprintf("%08x", pi.Serial)
		if len(pi.Fetched) == 0 {
			t.Fatalf("%s: no files fetched over TFTP to give the peer", pi.Name)
		}
		for name, data := range pi.Fetched {
			f := filepath.Join(p.tftpRoot, serial, filepath.FromSlash(name))
			if err := os.MkdirAll(filepath.Dir(f), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(f, data, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		root := filepath.Join(dir, "roots", serial)
		os.MkdirAll(filepath.Dir(root), 0o755)
		if out, err := exec.Command("cp", "-a", filepath.Join(h.Store, "nodes", serial, "root"), root).CombinedOutput(); err != nil {
			t.Fatalf("copy %s's root for the peer: %v\n%s", pi.Name, err, out)
		}
		p.roots = append(p.roots, root)
		p.mounts = append(p.mounts, "/nodes/"+serial)
	}
	return p
}

// boot powers nodes on together, waits for multi-user.target on each and
// powers them off; it returns the times.
func boot(t *testing.T, lab *e2e.Lab, h *e2e.Head, key string, nodes []*e2e.PiNode) []time.Duration {
	for _, p := range nodes {
		p.PowerOn(t, lab, h)
	}
	var ups []time.Duration
	for _, p := range nodes {
		p.WaitMultiUser(t, lab, key, 40*time.Minute)
		ups = append(ups, p.Up)
	}
	for _, p := range nodes {
		p.PowerOff(t, lab, key, 2*time.Minute)
	}
	return ups
}

func median(d []time.Duration) time.Duration {
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func spread(d []time.Duration) string {
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return fmt.Sprintf("median %v [%v-%v]", median(s).Round(100*time.Millisecond), s[0].Round(100*time.Millisecond), s[len(s)-1].Round(100*time.Millisecond))
}

func secs(d []time.Duration) string {
	var parts []string
	for _, x := range d {
		parts = append(parts, fmt.Sprintf("%.1f", x.Seconds()))
	}
	return strings.Join(parts, " ")
}

func TestBenchClusterBoot(t *testing.T) {
	testenv.OptIn(t, "OCIBOOT_BENCH", "benchmark")
	testenv.OptIn(t, "OCIBOOT_BENCH_CLUSTER", "the cluster boot benchmark (five arm64 QEMU nodes, 45 minutes of both cores)")
	if err := ganesha.Available(); err != nil {
		testenv.Need(t, "%v", err)
	}
	testenv.NeedTool(t, "dnsmasq", "dnsmasq")
	sizes := []int{1, 5}
	if s := os.Getenv("OCIBOOT_BENCH_SIZES"); s != "" {
		sizes = nil
		for _, f := range strings.Split(s, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil || n < 1 || n > 5 {
				t.Fatalf("OCIBOOT_BENCH_SIZES=%q: want numbers of nodes from 1 to 5, such as 1,5", s)
			}
			sizes = append(sizes, n)
		}
	}
	rounds := 2
	if s := os.Getenv("OCIBOOT_BENCH_ROUNDS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			t.Fatalf("OCIBOOT_BENCH_ROUNDS=%q: want a number of rounds, 1 or more", s)
		}
		rounds = n
	}
	ociDir := e2e.NodeOSImage(t)
	var pis []*e2e.PiNode
	for i := 0; i < 5; i++ {
		pis = append(pis, &e2e.PiNode{Name: fmt.Sprintf("cm4-%d", i+1), Serial: 0x6a200001 + uint32(i), MAC: fmt.Sprintf("dc:a6:32:20:00:%02x", i+1)})
	}
	key, pub := e2e.SSHKey(t, t.TempDir())
	lab, h, _ := e2e.NodeOSHead(t, ociDir, "rpi/node:bookworm", pis, pub)

	// First boots over ociboot: nfsd makes each root as it is first
	// mounted. Not compared (the peer's roots are copies of these).
	before := nfsdMetrics(t, lab)
	first := boot(t, lab, h, key, pis)
	profile("5 first boots at once", len(pis), before, nfsdMetrics(t, lab))
	fmt.Printf("cluster boot, 5 first boots at once over ociboot: %s (s: %s)\n", spread(first), secs(first))

	// The compared boots run nfsd as a head node does, without the
	// tests' reply recorder (it writes every reply to a file).
	h.NoReplyLog = true
	o := ours{h}
	pr := newPeer(t, lab, h, pis, filepath.Join(lab.Dir, "peer"))
	o.stop(t)
	running := netboot(nil)
	use := func(n netboot) {
		if running == n {
			return
		}
		if running != nil {
			running.stop(t)
		}
		n.start(t)
		running = n
	}
	for _, size := range sizes {
		c := struct {
			what  string
			nodes []*e2e.PiNode
		}{"1 node", pis[:1]}
		if size > 1 {
			c.what, c.nodes = fmt.Sprintf("%d nodes at once", size), pis[:size]
		}
		times := map[string][]time.Duration{}
		cpu := map[string]time.Duration{} // the servers' CPU time, summed over the boots
		boots := map[string]int{}
		lasts := map[string][]time.Duration{}
		var nfsdBoots int
		nfsdCost := map[string]float64{} // summed over ociboot's boots
		for r := 0; r < rounds; r++ {
			order := []netboot{pr, o}
			if r%2 == 1 {
				order = []netboot{o, pr}
			}
			for _, n := range order {
				use(n)
				var before map[string]float64
				if n == netboot(o) {
					before = nfsdMetrics(t, lab)
				}
				cpu0 := cpuTime(t, n.pids())
				ups := boot(t, lab, h, key, c.nodes)
				cpu[n.name()] += cpuTime(t, n.pids()) - cpu0
				boots[n.name()] += len(c.nodes)
				if n == netboot(o) {
					for k, v := range nfsdMetrics(t, lab) {
						nfsdCost[k] += v - before[k]
					}
					nfsdBoots += len(c.nodes)
				}
				times[n.name()] = append(times[n.name()], ups...)
				sort.Slice(ups, func(i, j int) bool { return ups[i] < ups[j] })
				lasts[n.name()] = append(lasts[n.name()], ups[len(ups)-1])
				fmt.Printf("cluster boot, %s, round %d, %s: power-on to multi-user.target (s) %s\n", c.what, r+1, n.name(), secs(ups))
			}
		}
		a, b := times[o.name()], times[pr.name()]
		fmt.Printf("cluster boot, %s, %d rounds: ociboot %s, dnsmasq+ganesha %s; ociboot/peer time %.2fx\n",
			c.what, rounds, spread(a), spread(b), median(a).Seconds()/median(b).Seconds())
		if len(c.nodes) > 1 {
			fmt.Printf("cluster boot, %s, last node up: ociboot %s, dnsmasq+ganesha %s; ratio %.2fx\n",
				c.what, spread(lasts[o.name()]), spread(lasts[pr.name()]), median(lasts[o.name()]).Seconds()/median(lasts[pr.name()]).Seconds())
		}
		perBoot := func(name string) time.Duration { return cpu[name] / time.Duration(boots[name]) }
		fmt.Printf("cluster boot, %s: CPU time of the servers per boot: ociboot (dhcpd, tftpd, nfsd) %v, dnsmasq+ganesha %v; ratio %.2fx\n",
			c.what, perBoot(o.name()).Round(10*time.Millisecond), perBoot(pr.name()).Round(10*time.Millisecond), perBoot(o.name()).Seconds()/perBoot(pr.name()).Seconds())
		profile(c.what, nfsdBoots, nil, nfsdCost)
	}
	if running != nil {
		running.stop(t)
	}
	// The head's cleanup expects its services: leave ociboot's running.
	o.start(t)
}
