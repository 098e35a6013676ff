package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"

	"github.com/ociboot/ociboot/appliance/nfs/nfscheck"
	"github.com/ociboot/ociboot/appliance/testenv"
	"github.com/ociboot/ociboot/tests/guest"
	testlab "github.com/ociboot/ociboot/tests/lab"
)

// Head is the head node: its namespace, store, config and services.
type Head struct {
	lab      *Lab
	Store    string
	Config   string
	Registry string // host:port of the upstream registry, inside the head namespace
	Procs    map[string]*Proc
	bin      string
	nfsdRuns int // runs of nfsd, each with its own reply log
	// NoReplyLog starts nfsd without -reply_log from then on: for
	// benchmarks, as the recorder writes every reply (READ data
	// included) to a file and costs nfsd CPU and I/O on each call.
	NoReplyLog bool
}

// Service names in start order: the cache first, so that images are in
// place when nodes ask for them.
var Services = testlab.Services

// NewHead starts a docker-registry in the head namespace, pushes a node
// image built by package guest with skopeo, and writes config.json with
// netboot as its Netboot section (DefaultImage is filled in).
func NewHead(t testing.TB, lab *Lab, netboot map[string]any) *Head {
	t.Helper()
	for _, tool := range []string{"docker-registry", "skopeo", "curl"} {
		testenv.NeedTool(t, tool, tool)
	}
	h := &Head{lab: lab, Store: filepath.Join(lab.Dir, "store"), Config: filepath.Join(lab.Dir, "config.json"),
		Procs: map[string]*Proc{}, bin: Binaries(t), Registry: "127.0.0.1:5001"}
	t.Cleanup(func() { h.checkReplies(t) })

	ref := StartRegistry(t, lab, lab.Head, h.Registry)
	netboot["DefaultImage"] = ref
	netboot["Platform"] = "linux/amd64"
	netboot["InsecureRegistries"] = []string{h.Registry}
	cfg := map[string]any{"Hostname": "ociboot-e2e", "Netboot": netboot}
	b, _ := json.MarshalIndent(cfg, "", "  ")
	if err := os.WriteFile(h.Config, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return h
}

// StartRegistry runs docker-registry in namespace ns on addr and pushes the
// node image of package guest to it with skopeo; it returns the image's
// reference.
func StartRegistry(t testing.TB, lab *Lab, ns, addr string) string {
	t.Helper()
	testlab.DockerRegistry(t, ns, addr)
	k, err := guest.HostKernel()
	if err != nil {
		testenv.Need(t, "%v", err)
	}
	img, err := guest.Image(k, "node-v1")
	if err != nil {
		t.Fatal(err)
	}
	ociDir := filepath.Join(lab.Dir, "node-oci")
	p, err := layout.Write(ociDir, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.AppendImage(img); err != nil {
		t.Fatal(err)
	}
	ref := addr + "/ociboot/node:v1"
	push(t, ns, ociDir, ref)
	return ref
}

// push copies the OCI layout dir to ref with skopeo, inside ns.
func push(t testing.TB, ns, dir, ref string) {
	t.Helper()
	run(t, "ip", "netns", "exec", ns, "skopeo", "copy", "--dest-tls-verify=false", "oci:"+dir, "docker://"+ref)
}

func (h *Head) push(t testing.TB, dir, ref string) { push(t, h.lab.Head, dir, ref) }

// PushImage pushes img to the head's registry as repo:tag and returns the
// reference.
func (h *Head) PushImage(t testing.TB, img v1.Image, repoTag string) string {
	t.Helper()
	dir := filepath.Join(h.lab.Dir, strings.NewReplacer("/", "_", ":", "_").Replace(repoTag))
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.AppendImage(img); err != nil {
		t.Fatal(err)
	}
	ref := h.Registry + "/" + repoTag
	h.push(t, dir, ref)
	return ref
}

// FullMode is the Netboot section of a head node that is the segment's
// only DHCP server: it is 10.8.n.1 and leases .100 to .150; nodes' kernels
// log to the serial console and reboot on panic (QEMU exits).
func FullMode(lab *Lab) map[string]any {
	return map[string]any{
		"Interface": "eth0", "Mode": "full", "ServerIP": lab.Addr(1),
		"Subnet": lab.Addr(0) + "/24", "Range": lab.Addr(100) + "-" + lab.Addr(150),
		"KernelArgs": []string{"console=ttyS0", "panic=-1"},
	}
}

// checkReplies decodes every reply nfsd sent to the nodes, if nfsd ran.
// Each run of nfsd records its replies in its own file (-reply_log).
func (h *Head) checkReplies(t testing.TB) {
	if h.nfsdRuns == 0 {
		return
	}
	logs, _ := filepath.Glob(filepath.Join(h.lab.Dir, "nfsd-replies-*.bin"))
	sum, err := nfscheck.CheckFiles(logs...)
	if err != nil {
		t.Error(err)
	}
	t.Logf("nfscheck: %v", sum)
}

// StartService starts one service in the head namespace.
func (h *Head) StartService(t testing.TB, name string) *Proc {
	t.Helper()
	// nbdd's status port also takes the nodes' install reports: on the
	// head's segment address too.
	status := map[string]string{"dhcpd": "127.0.0.1:9067", "tftpd": "127.0.0.1:9069", "ocicache": "127.0.0.1:9050", "nfsd": "127.0.0.1:9049", "nbdd": ":9809", "status": "127.0.0.1:8080"}[name]
	args := []string{filepath.Join(h.bin, name), "-config", h.Config, "-store", h.Store, "-status", status}
	if name == "ocicache" {
		// The mirror, for the nodes' container runtimes too.
		args = append(args, "-registry", ":5000")
	}
	if name == "nfsd" && !h.NoReplyLog {
		h.nfsdRuns++
		args = append(args, "-reply_log", filepath.Join(h.lab.Dir, fmt.Sprintf("nfsd-replies-%d.bin", h.nfsdRuns)))
	}
	p := h.lab.Start(name, h.lab.Head, args...)
	h.Procs[name] = p
	p.WaitFor(t, "status listening", 30*time.Second)
	return p
}

// Start starts every service.
func (h *Head) Start(t testing.TB) {
	for _, s := range Services {
		h.StartService(t, s)
	}
}

// Restart kills a service with SIGKILL and starts it again.
func (h *Head) Restart(t testing.TB, name string) {
	h.Procs[name].Kill(syscall.SIGKILL)
	h.StartService(t, name)
}

// Status fetches a service's /status from inside the head namespace.
func (h *Head) Status(t testing.TB, url string, v any) error {
	out, err := exec.Command("ip", "netns", "exec", h.lab.Head, "curl", "-sf", "--max-time", "5", url).Output()
	if err != nil {
		return err
	}
	return json.Unmarshal(out, v)
}

// WaitImage waits until ocicache has the node image unpacked.
func (h *Head) WaitImage(t testing.TB, timeout time.Duration) {
	t.Helper()
	h.WaitFor(t, "ociboot/node:v1", timeout)
}

// WaitFor waits until images/index.json names ref.
func (h *Head) WaitFor(t testing.TB, ref string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		b, err := os.ReadFile(filepath.Join(h.Store, "images", "index.json"))
		if err == nil && strings.Contains(string(b), ref) {
			return
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Fatalf("ocicache did not unpack %s within %v:\n%s", ref, timeout, tail(h.Procs["ocicache"].Output()))
}

// Node is a QEMU machine that netboots through iPXE (the PXE ROM QEMU
// loads for its NIC).
type Node struct {
	MAC  string
	Proc *Proc
}

// BootNode starts a diskless QEMU machine on the lab's segment.
func (l *Lab) BootNode(t testing.TB, mac string) *Node {
	t.Helper()
	args := append(testlab.X86(384), "-boot", "n")
	args = append(args, testlab.TapNIC(l.Tap(), mac)...)
	p := l.Start("node "+mac, l.Hub, args...)
	return &Node{MAC: mac, Proc: p}
}

// WaitUp waits for the node's init marker.
func (n *Node) WaitUp(t testing.TB, timeout time.Duration) string {
	t.Helper()
	n.Proc.WaitFor(t, guest.Marker, timeout)
	out := n.Proc.Output()
	i := strings.LastIndex(out, guest.Marker)
	line, _, _ := strings.Cut(out[i:], "\n")
	return line
}
