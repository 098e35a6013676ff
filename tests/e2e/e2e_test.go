package e2e

import (
	"encoding/json"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ociboot/ociboot/appliance/testenv"
	"github.com/ociboot/ociboot/tests/guest"
	testlab "github.com/ociboot/ociboot/tests/lab"
)

// TestHeadPullsNodeImage: the node image goes registry → ocicache → an
// unpacked tree with its boot directory found.
func TestHeadPullsNodeImage(t *testing.T) {
	testenv.Short(t, "end-to-end")
	lab := NewLab(t)
	h := NewHead(t, lab, map[string]any{"Interface": "eth0", "ServerIP": lab.Addr(1)})
	h.StartService(t, "ocicache")
	h.WaitImage(t, 2*time.Minute)
	var ix struct {
		Entries []struct{ Ref, Platform, Digest, BootDir, Kernel string }
	}
	b, _ := os.ReadFile(filepath.Join(h.Store, "images", "index.json"))
	if err := json.Unmarshal(b, &ix); err != nil {
		t.Fatal(err)
	}
	if got, want := len(ix.Entries), 1; got != want {
		t.Fatalf("index entries: got %d, want %d", got, want)
	}
	e := ix.Entries[0]
	if e.BootDir != "boot" || e.Platform != "linux/amd64" {
		t.Errorf("entry: got %+v, want boot dir boot on linux/amd64", e)
	}
	t.Logf("pulled %+v", e)
}

// fullModeHead is a lab whose head node runs every service in full mode
// and has pulled the node image.
func fullModeHead(t *testing.T) (*Lab, *Head) {
	lab := NewLab(t)
	h := NewHead(t, lab, FullMode(lab))
	h.Start(t)
	h.WaitImage(t, 2*time.Minute)
	return lab, h
}

func macFor(i int) string { return fmt.Sprintf("52:54:00:0b:00:%02x", i) }

// bootNodes starts n QEMU machines at once and waits for each node's init.
func bootNodes(t *testing.T, lab *Lab, n int) []*Node {
	_, slow := testlab.Accel()
	var ns []*Node
	for i := 1; i <= n; i++ {
		ns = append(ns, lab.BootNode(t, macFor(i)))
	}
	for _, node := range ns {
		line := node.WaitUp(t, slow*90*time.Second+time.Duration(n)*30*time.Second)
		t.Logf("%s: %s", node.MAC, line)
		checkRootLine(t, lab, node, line)
	}
	return ns
}

// checkRootLine: the node's / is its own export on the head node.
func checkRootLine(t *testing.T, lab *Lab, n *Node, line string) {
	t.Helper()
	want := "root=" + lab.Addr(1) + ":/nodes/" + strings.ReplaceAll(n.MAC, ":", "-")
	if !strings.Contains(line, want) {
		t.Errorf("%s: init reports %q, want %s", n.MAC, line, want)
	}
}

// heartbeat returns the last heartbeat number the node printed as ok and
// how many failed.
func heartbeat(out string) (last, fails int) {
	for _, l := range strings.Split(out, "\n") {
		var n int
		var st string
		if i := strings.Index(l, guest.AliveMarker+" "); i >= 0 {
			if _, err := fmt.Sscanf(l[i+len(guest.AliveMarker)+1:], "%d %s", &n, &st); err == nil {
				if st == "ok" {
					last = n
				} else {
					fails++
				}
			}
		}
	}
	return last, fails
}

// waitHeartbeats waits until every node has printed more ok heartbeats
// than it had at before[i] (+3: the root worked for a while).
func waitHeartbeats(t *testing.T, nodes []*Node, before []int, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for i, n := range nodes {
		for {
			last, fails := heartbeat(n.Proc.Output())
			if fails > 0 {
				t.Fatalf("%s: its root failed:\n%s", n.MAC, tail(n.Proc.Output()))
			}
			if last >= before[i]+3 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: heartbeat stuck at %d (was %d):\n%s", n.MAC, last, before[i], tail(n.Proc.Output()))
			}
			time.Sleep(time.Second)
		}
	}
}

// TestFullModeFiveNodes: ociboot is the only DHCP server on an isolated
// segment; five diskless QEMU machines power on at once, netboot through
// iPXE and run from their own NFS roots.
func TestFullModeFiveNodes(t *testing.T) {
	testenv.Short(t, "end-to-end")
	lab, h := fullModeHead(t)
	nodes := bootNodes(t, lab, 5)
	for _, n := range nodes {
		if !strings.Contains(n.Proc.Output(), "boots=1 ") {
			t.Errorf("%s: want its first boot from its own root", n.MAC)
		}
	}
	checkStatus(t, h, 5)
	// Each node wrote its own files; the image and the other nodes never
	// see them.
	for _, n := range nodes {
		key := strings.ReplaceAll(n.MAC, ":", "-")
		b, err := os.ReadFile(filepath.Join(h.Store, "nodes", key, "root", "var", "boot-count"))
		if err != nil || strings.TrimSpace(string(b)) != "1" {
			t.Errorf("%s: var/boot-count in its root: %q, %v", n.MAC, b, err)
		}
	}
	if m, _ := filepath.Glob(filepath.Join(h.Store, "images", "sha256-*", "var", "boot-count")); len(m) != 0 {
		t.Errorf("a node's write reached the image tree: %v", m)
	}
}

// faultSeedEnv replays a fault schedule: the seed a run logged.
const faultSeedEnv = "OCIBOOT_FAULT_SEED"

// TestFaultsDuringFiveNodeBoot kills a random head-node service with
// SIGKILL every few seconds while five nodes boot, each service at least
// once (else the test fails), on a schedule drawn from a seed that is
// logged and replayed with OCIBOOT_FAULT_SEED: every node still boots, and no lease, enrolment or node root is
// lost. Then nfsd is killed and restarted under the running nodes, whose
// roots keep working.
func TestFaultsDuringFiveNodeBoot(t *testing.T) {
	testenv.Short(t, "end-to-end")
	lab, h := fullModeHead(t)
	_, slow := testlab.Accel()
	seed := time.Now().UnixNano()
	if env := os.Getenv(faultSeedEnv); env != "" {
		var err error
		if seed, err = strconv.ParseInt(env, 10, 64); err != nil {
			t.Fatalf("%s=%q: want a number (a seed an earlier run logged)", faultSeedEnv, env)
		}
	}
	rng := rand.New(rand.NewSource(seed))
	t.Logf("fault schedule seed %d (replay with %s=%d)", seed, faultSeedEnv, seed)
	var nodes []*Node
	for i := 1; i <= 5; i++ {
		nodes = append(nodes, lab.BootNode(t, macFor(10+i)))
	}
	allUp := func() bool {
		for _, n := range nodes {
			if !strings.Contains(n.Proc.Output(), guest.Marker) {
				return false
			}
		}
		return true
	}
	// The first round kills every service once, in an order of the seed's,
	// with short gaps so that it falls inside the boot; then random
	// services at random moments until every node is up.
	victims := []string{"dhcpd", "tftpd", "ocicache", "nfsd"}
	order := rng.Perm(len(victims))
	var kills []string
	deadline := time.Now().Add(slow*120*time.Second + 150*time.Second)
	for !allUp() {
		if time.Now().After(deadline) {
			for _, n := range nodes {
				t.Logf("%s:\n%s", n.MAC, tail(n.Proc.Output()))
			}
			t.Fatalf("not every node booted; killed %v (seed %d)", kills, seed)
		}
		var v string
		if len(kills) < len(order) {
			time.Sleep(time.Duration(1000+rng.Intn(2000)) * time.Millisecond)
			v = victims[order[len(kills)]]
		} else {
			time.Sleep(time.Duration(1000+rng.Intn(5000)) * time.Millisecond)
			v = victims[rng.Intn(len(victims))]
		}
		if len(kills) < len(victims) && allUp() {
			break
		}
		h.Restart(t, v)
		kills = append(kills, v)
	}
	t.Logf("killed during the boot: %v", kills)
	for _, v := range victims {
		if !slices.Contains(kills, v) {
			t.Fatalf("the nodes were up before %s was killed (kills %v, seed %d): the run did not test what it claims", v, kills, seed)
		}
	}
	for _, n := range nodes {
		line := n.WaitUp(t, time.Second)
		checkRootLine(t, lab, n, line)
	}
	leases, _ := os.ReadFile(filepath.Join(h.Store, "dhcp", "leases.json"))
	for _, n := range nodes {
		key := strings.ReplaceAll(n.MAC, ":", "-")
		if !strings.Contains(string(leases), n.MAC) {
			t.Errorf("%s: no lease in leases.json", n.MAC)
		}
		for _, f := range []string{"node.json", "view.json", "root/var/boot-count"} {
			if _, err := os.Stat(filepath.Join(h.Store, "nodes", key, f)); err != nil {
				t.Errorf("%s: %v", n.MAC, err)
			}
		}
	}

	// nfsd under running nodes: kill -9, stay down a while, start again.
	before := make([]int, len(nodes))
	for i, n := range nodes {
		before[i], _ = heartbeat(n.Proc.Output())
	}
	h.Procs["nfsd"].Kill(syscall.SIGKILL)
	// The fault itself: nfsd stays down for more than one heartbeat period
	// (3 s), so every node's root blocks and must recover.
	time.Sleep(5 * time.Second)
	h.StartService(t, "nfsd")
	waitHeartbeats(t, nodes, before, slow*60*time.Second)
	t.Logf("heartbeats after the nfsd restart: %v → ok", before)
	checkStatus(t, h, 5)
}

// TestProxyModeBehindDnsmasq: a separate DHCP server (dnsmasq) hands out
// addresses; ociboot only adds the boot options.
func TestProxyModeBehindDnsmasq(t *testing.T) {
	testenv.Short(t, "end-to-end")
	lab := NewLab(t)
	startDnsmasq(t, lab)
	h := NewHead(t, lab, map[string]any{
		"Interface": "eth0", "ServerIP": lab.Addr(1),
		"KernelArgs": []string{"console=ttyS0", "panic=-1"},
	})
	h.Start(t)
	h.WaitImage(t, 2*time.Minute)
	nodes := bootNodes(t, lab, 2)
	for _, n := range nodes {
		if !strings.Contains(n.Proc.Output(), "initramfs: eth0 "+lab.Addr(0)[:len(lab.Addr(0))-1]) {
			t.Errorf("%s: no address from the segment", n.MAC)
		}
	}
	checkStatus(t, h, 2)
}

// checkStatus asks the status page what it knows: every node reached its
// root.
func checkStatus(t *testing.T, h *Head, want int) {
	t.Helper()
	var ov struct {
		Nodes []struct{ Name, Serial, MAC, IP, Digest, Stage, LastError string }
	}
	if err := h.Status(t, "http://127.0.0.1:8080/api/status", &ov); err != nil {
		t.Fatalf("status page: %v", err)
	}
	got := 0
	for _, n := range ov.Nodes {
		if n.Stage == "root-mounted" && n.Digest != "" {
			got++
		}
	}
	if got < want {
		t.Errorf("status page: %d nodes with root mounted and an image digest, want %d: %+v", got, want, ov.Nodes)
	}
}

// startDnsmasq runs a plain DHCP server (no PXE) in its own namespace: the
// home router of proxy mode.
func startDnsmasq(t *testing.T, lab *Lab) {
	router := lab.NewNS("router", 254)
	testlab.Dnsmasq(t, router, "--dhcp-authoritative", "--dhcp-range="+lab.Addr(50)+","+lab.Addr(99)+",255.255.255.0,1h")
}

// TestKillDuringBoot kills dhcpd, tftpd and ocicache with SIGKILL while a
// node boots and starts them again: the node still reaches its root mount
// with the address it was first given, and no lease or node record is lost.
func TestKillDuringBoot(t *testing.T) {
	testenv.Short(t, "end-to-end")
	lab, h := fullModeHead(t)
	_, slow := testlab.Accel()
	n := lab.BootNode(t, macFor(7))
	key := strings.ReplaceAll(macFor(7), ":", "-")

	// After iPXE's lease: dhcpd dies before the kernel asks again.
	n.Proc.WaitFor(t, "net0: "+lab.Addr(100)+"/", slow*30*time.Second)
	h.Restart(t, "dhcpd")
	h.Restart(t, "ocicache")
	// While the kernel and initramfs are on the wire or just loaded.
	n.Proc.WaitFor(t, "Linux version", slow*30*time.Second)
	h.Restart(t, "tftpd")
	n.Proc.WaitFor(t, "initramfs: mounting "+lab.Addr(1)+":/nodes/"+key, slow*45*time.Second)
	// The root is mounted once the node's init runs from it.
	checkRootLine(t, lab, n, n.WaitUp(t, slow*60*time.Second))
	if !strings.Contains(n.Proc.Output(), "initramfs: eth0 "+lab.Addr(100)+"/") {
		t.Errorf("after dhcpd's restart the node did not get its address %s again", lab.Addr(100))
	}
	leases, err := os.ReadFile(filepath.Join(h.Store, "dhcp", "leases.json"))
	if err != nil || !strings.Contains(string(leases), lab.Addr(100)) {
		t.Errorf("leases.json after kill -9: %v\n%s", err, leases)
	}
	var rec struct{ Serial, MAC, IP string }
	b, err := os.ReadFile(filepath.Join(h.Store, "nodes", key, "node.json"))
	if err != nil || json.Unmarshal(b, &rec) != nil || rec.IP != lab.Addr(100) {
		t.Errorf("node record after kill -9: %+v, %v\n%s", rec, err, b)
	}
	h.WaitImage(t, time.Minute)
}
