// Package netlab builds throw-away L2 segments out of network namespaces for
// dhcpd's end-to-end tests and benchmarks: a bridge in a hub namespace and
// one namespace per participant, each with an interface obd0 plugged into
// the bridge, the way the Super6C's switch joins the nodes. It runs peers
// (the built dhcpd, dnsmasq, clients) inside them. Needs root.
//
// Names: namespaces are <prefix><pid>-<n>-<role> with a prefix starting
// with "obd"; a later run deletes those whose pid is gone. Addresses are
// 10.67.<n>.0/24, one /24 per segment.
package netlab

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ociboot/ociboot/appliance/dhcpd"
)

var segments atomic.Int32

// RemoveStale deletes namespaces named prefix<pid>-... whose process is gone.
func RemoveStale(prefix string) {
	out, _ := exec.Command("ip", "netns", "list").Output()
	for _, line := range strings.Split(string(out), "\n") {
		name, _, _ := strings.Cut(strings.TrimSpace(line), " ")
		rest, ok := strings.CutPrefix(name, prefix)
		if !ok {
			continue
		}
		pidStr, _, _ := strings.Cut(rest, "-")
		pid, err := strconv.Atoi(pidStr)
		if err != nil || pid == os.Getpid() {
			continue
		}
		if err := syscall.Kill(pid, 0); err == nil {
			continue // still running
		}
		exec.Command("ip", "netns", "delete", name).Run()
	}
}

// BuildDHCPD builds services/dhcpd into dir and returns the binary's path.
func BuildDHCPD(dir string) (string, error) {
	bin := filepath.Join(dir, "dhcpd")
	out, err := exec.Command("go", "build", "-o", bin, "github.com/ociboot/ociboot/services/dhcpd").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build services/dhcpd: %v\n%s", err, out)
	}
	return bin, nil
}

// NeedRoot skips t unless it runs as root.
func NeedRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces and veth pairs (run the tests as root, as CI does)")
	}
}

// NeedTool fails t with the Debian package to install when name is missing.
func NeedTool(t testing.TB, name, pkg string) {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		t.Fatalf("%s not found: install the Debian package %s", name, pkg)
	}
}

// Run runs a command and fails t if it fails.
func Run(t testing.TB, args ...string) string {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%v: %v\n%s", args, err, out)
	}
	return string(out)
}

// Segment is one L2 network.
type Segment struct {
	t     testing.TB
	id    string
	hub   string
	Net   int // third octet: 10.67.<Net>.0/24
	ports int
}

// NewSegment creates the hub namespace and its bridge; everything is removed
// when t ends.
func NewSegment(t testing.TB, prefix string) *Segment {
	NeedRoot(t)
	n := int(segments.Add(1))
	s := &Segment{t: t, id: fmt.Sprintf("%s%d-%d", prefix, os.Getpid(), n), Net: 10 + n%200}
	s.hub = s.id + "-hub"
	s.addNS(s.hub)
	Run(t, "ip", "-n", s.hub, "link", "add", "br0", "type", "bridge")
	Run(t, "ip", "-n", s.hub, "link", "set", "br0", "up")
	return s
}

func (s *Segment) addNS(name string) {
	exec.Command("ip", "netns", "delete", name).Run()
	Run(s.t, "ip", "netns", "add", name)
	s.t.Cleanup(func() { exec.Command("ip", "netns", "delete", name).Run() })
	Run(s.t, "ip", "-n", name, "link", "set", "lo", "up")
}

// Addr returns 10.67.<Net>.host.
func (s *Segment) Addr(host int) string { return fmt.Sprintf("10.67.%d.%d", s.Net, host) }

// Prefix returns "10.67.<Net>".
func (s *Segment) Prefix() string { return fmt.Sprintf("10.67.%d", s.Net) }

// Attach adds a namespace for role with obd0 on the bridge; host > 0 gives
// it 10.67.<Net>.host/24, mac (if set) its MAC. It returns the namespace.
func (s *Segment) Attach(role string, host int, mac string) string {
	ns := s.id + "-" + role
	s.addNS(ns)
	s.ports++
	port := fmt.Sprintf("p%d", s.ports)
	args := []string{"ip", "link", "add", "obd0", "netns", ns}
	if mac != "" {
		args = append(args, "address", mac)
	}
	args = append(args, "type", "veth", "peer", "name", port, "netns", s.hub)
	Run(s.t, args...)
	Run(s.t, "ip", "-n", s.hub, "link", "set", port, "master", "br0", "up")
	Run(s.t, "ip", "-n", ns, "link", "set", "obd0", "up")
	if host > 0 {
		Run(s.t, "ip", "-n", ns, "addr", "add", s.Addr(host)+"/24", "dev", "obd0")
	}
	return ns
}

// Plug adds interface ifname in the existing namespace ns (attached to
// another segment) to this segment's bridge, with 10.67.<Net>.host/24 if
// host > 0: a router or relay between two segments.
func (s *Segment) Plug(ns, ifname string, host int) {
	s.ports++
	port := fmt.Sprintf("p%d", s.ports)
	Run(s.t, "ip", "link", "add", ifname, "netns", ns, "type", "veth", "peer", "name", port, "netns", s.hub)
	Run(s.t, "ip", "-n", s.hub, "link", "set", port, "master", "br0", "up")
	Run(s.t, "ip", "-n", ns, "link", "set", ifname, "up")
	if host > 0 {
		Run(s.t, "ip", "-n", ns, "addr", "add", s.Addr(host)+"/24", "dev", ifname)
	}
}

// InNS runs f on an OS thread switched into namespace ns. The thread is
// thrown away afterwards instead of being switched back.
func InNS(t testing.TB, ns string, f func()) {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
		fd, err := unix.Open("/run/netns/"+ns, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			errc <- err
			return
		}
		defer unix.Close(fd)
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("setns %s: %v", ns, err)
			return
		}
		f()
		errc <- nil
	}()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}

// Proc is a peer process started in a namespace.
type Proc struct {
	cmd  *exec.Cmd
	mu   sync.Mutex
	out  bytes.Buffer
	Done chan struct{}
	Err  error // valid after Done is closed
}

func (p *Proc) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.Write(b)
}

// Output is what the process wrote so far (stdout and stderr).
func (p *Proc) Output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

// Start runs args in ns; the process is killed when t ends and its output
// logged if t failed.
func Start(t testing.TB, ns string, args ...string) *Proc {
	t.Helper()
	p := &Proc{Done: make(chan struct{})}
	p.cmd = exec.Command("ip", append([]string{"netns", "exec", ns}, args...)...)
	p.cmd.Stdout, p.cmd.Stderr = p, p
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("%v: %v", args, err)
	}
	go func() { p.Err = p.cmd.Wait(); close(p.Done) }()
	t.Cleanup(func() {
		p.Kill(syscall.SIGKILL)
		<-p.Done
		// Binaries built with GOFLAGS=-race report here.
		if strings.Contains(p.Output(), "WARNING: DATA RACE") {
			t.Errorf("%v reported a data race", args)
		}
		if t.Failed() {
			t.Logf("output of %v:\n%s", args, p.Output())
		}
	})
	return p
}

// Kill signals the process group (ip netns exec execs the peer, so the
// group is the peer and its children).
func (p *Proc) Kill(sig syscall.Signal) {
	select {
	case <-p.Done:
	default:
		syscall.Kill(-p.cmd.Process.Pid, sig)
	}
}

// WaitFor waits until the output contains substr.
func (p *Proc) WaitFor(t testing.TB, substr string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if strings.Contains(p.Output(), substr) {
			return
		}
		select {
		case <-p.Done:
			if strings.Contains(p.Output(), substr) {
				return
			}
			t.Fatalf("process exited (%v) before logging %q:\n%s", p.Err, substr, p.Output())
		case <-time.After(50 * time.Millisecond):
		}
	}
	t.Fatalf("no %q after %v:\n%s", substr, timeout, p.Output())
}

// DHCPD is the built service running in a namespace.
type DHCPD struct {
	*Proc
	NS    string
	Store string
}

// StartDHCPD runs bin in ns with a config.json holding netboot as its
// Netboot section, on store (a new temp dir if empty), status on
// 127.0.0.1:9067 inside the namespace.
func StartDHCPD(t testing.TB, bin, ns, netboot, store string, extra ...string) *DHCPD {
	t.Helper()
	dir := t.TempDir()
	if store == "" {
		store = filepath.Join(dir, "store")
	}
	cfgPath := filepath.Join(dir, "config.json")
	if err := os.WriteFile(cfgPath, []byte(`{"Hostname": "head", "Netboot": `+netboot+`}`), 0o644); err != nil {
		t.Fatal(err)
	}
	args := append([]string{bin, "-config", cfgPath, "-store", store, "-allow_tmpfs", "-status", "127.0.0.1:9067"}, extra...)
	return &DHCPD{Proc: Start(t, ns, args...), NS: ns, Store: store}
}

// Status fetches /status with curl inside the namespace.
func (d *DHCPD) Status(t testing.TB) dhcpd.Status {
	t.Helper()
	out, err := exec.Command("ip", "netns", "exec", d.NS, "curl", "-sf", "http://127.0.0.1:9067/status").Output()
	if err != nil {
		t.Fatalf("curl /status in %s: %v", d.NS, err)
	}
	var st dhcpd.Status
	if err := json.Unmarshal(out, &st); err != nil {
		t.Fatalf("/status: %v\n%s", err, out)
	}
	return st
}

// Metrics fetches /metrics.
func (d *DHCPD) Metrics(t testing.TB) string {
	t.Helper()
	out, err := exec.Command("ip", "netns", "exec", d.NS, "curl", "-sf", "http://127.0.0.1:9067/metrics").Output()
	if err != nil {
		t.Fatalf("curl /metrics in %s: %v", d.NS, err)
	}
	return string(out)
}

// StartDnsmasq runs dnsmasq in ns on obd0 with DNS off, leases in a temp
// dir, and the extra arguments (ranges, PXE services), and waits until it
// serves DHCP.
func StartDnsmasq(t testing.TB, ns string, extra ...string) *Proc {
	t.Helper()
	NeedTool(t, "dnsmasq", "dnsmasq")
	dir := t.TempDir()
	args := append([]string{"dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--port=0", "--user=root",
		"--interface=obd0", "--bind-interfaces", "--log-facility=-",
		"--dhcp-leasefile=" + filepath.Join(dir, "leases"), "--pid-file=" + filepath.Join(dir, "pid")}, extra...)
	p := Start(t, ns, args...)
	p.WaitFor(t, "DHCP, ", 5*time.Second)
	return p
}
