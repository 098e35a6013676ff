// Package dhcpd_test runs the real dhcpd binary in network namespaces
// against real DHCP peers: busybox udhcpc and ISC dhclient as clients,
// dnsmasq as the LAN's own DHCP server, and the Pi 4 emulator (tests/piemu).
// Every namespace hangs off a bridge in a per-test "hub" namespace, so a
// segment behaves like the Super6C's switch. Needs root.
package dhcpd_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
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

// Names: every namespace is obdt<pid>-<n>-<role>, so a run's leftovers are
// recognised (and removed) by a later run once that pid is gone.
const nsPrefix = "obdt"

var (
	dhcpdBin string
	segments atomic.Int32
)

func TestMain(m *testing.M) {
	if os.Geteuid() == 0 {
		removeStale(nsPrefix)
		dir, err := os.MkdirTemp("", "obd-bin-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		dhcpdBin = filepath.Join(dir, "dhcpd")
		out, err := exec.Command("go", "build", "-o", dhcpdBin, "github.com/ociboot/ociboot/services/dhcpd").CombinedOutput()
		if err != nil {
			fmt.Fprintf(os.Stderr, "go build services/dhcpd: %v\n%s", err, out)
			os.Exit(1)
		}
		code := m.Run()
		os.RemoveAll(dir)
		os.Exit(code)
	}
	os.Exit(m.Run())
}

// removeStale deletes namespaces of earlier runs whose process is gone.
func removeStale(prefix string) {
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

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces and veth pairs (run the tests as root, as CI does)")
	}
}

func needTool(t *testing.T, name, pkg string) {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		t.Fatalf("%s not found: install the Debian package %s", name, pkg)
	}
}

func run(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%v: %v\n%s", args, err, out)
	}
	return string(out)
}

// segment is one L2 network: a bridge in a hub namespace and one namespace
// per participant, each with an interface obd0 plugged into the bridge.
type segment struct {
	t      *testing.T
	id     string
	hub    string
	net    int // third octet: 10.67.<net>.0/24
	ports  int
	closed []func()
}

func newSegment(t *testing.T) *segment {
	needRoot(t)
	n := int(segments.Add(1))
	s := &segment{t: t, id: fmt.Sprintf("%s%d-%d", nsPrefix, os.Getpid(), n), net: 10 + n%200}
	s.hub = s.id + "-hub"
	s.addNS(s.hub)
	run(t, "ip", "-n", s.hub, "link", "add", "br0", "type", "bridge")
	run(t, "ip", "-n", s.hub, "link", "set", "br0", "up")
	return s
}

func (s *segment) addNS(name string) {
	exec.Command("ip", "netns", "delete", name).Run()
	run(s.t, "ip", "netns", "add", name)
	s.t.Cleanup(func() { exec.Command("ip", "netns", "delete", name).Run() })
	run(s.t, "ip", "-n", name, "link", "set", "lo", "up")
}

// addr returns 10.67.<net>.host.
func (s *segment) addr(host int) string { return fmt.Sprintf("10.67.%d.%d", s.net, host) }

// attach adds a namespace for role with obd0 on the bridge; host > 0 gives
// it 10.67.<net>.host/24, mac (if set) its MAC.
func (s *segment) attach(role string, host int, mac string) string {
	ns := s.id + "-" + role
	s.addNS(ns)
	s.ports++
	port := fmt.Sprintf("p%d", s.ports)
	args := []string{"ip", "link", "add", "obd0", "netns", ns}
	if mac != "" {
		args = append(args, "address", mac)
	}
	args = append(args, "type", "veth", "peer", "name", port, "netns", s.hub)
	run(s.t, args...)
	run(s.t, "ip", "-n", s.hub, "link", "set", port, "master", "br0", "up")
	run(s.t, "ip", "-n", ns, "link", "set", "obd0", "up")
	if host > 0 {
		run(s.t, "ip", "-n", ns, "addr", "add", s.addr(host)+"/24", "dev", "obd0")
	}
	return ns
}

// inNS runs f on an OS thread switched into namespace ns. The thread is
// thrown away afterwards instead of being switched back.
func inNS(t *testing.T, ns string, f func()) {
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

// proc is a peer process started in a namespace.
type proc struct {
	cmd  *exec.Cmd
	mu   sync.Mutex
	out  bytes.Buffer
	done chan struct{}
	err  error
}

func (p *proc) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.Write(b)
}

func (p *proc) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

func start(t *testing.T, ns string, env []string, args ...string) *proc {
	t.Helper()
	p := &proc{done: make(chan struct{})}
	p.cmd = exec.Command("ip", append([]string{"netns", "exec", ns}, args...)...)
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.Stdout, p.cmd.Stderr = p, p
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("%v: %v", args, err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.kill(syscall.SIGKILL)
		<-p.done
		if t.Failed() {
			t.Logf("output of %v:\n%s", args, p.output())
		}
	})
	return p
}

// kill signals the process group (ip netns exec execs the peer, so the
// group is just the peer and its children).
func (p *proc) kill(sig syscall.Signal) {
	select {
	case <-p.done:
	default:
		syscall.Kill(-p.cmd.Process.Pid, sig)
	}
}

func (p *proc) waitFor(t *testing.T, substr string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if strings.Contains(p.output(), substr) {
			return
		}
		select {
		case <-p.done:
			if strings.Contains(p.output(), substr) {
				return
			}
			t.Fatalf("process exited (%v) before logging %q:\n%s", p.err, substr, p.output())
		case <-time.After(50 * time.Millisecond):
		}
	}
	t.Fatalf("no %q after %v:\n%s", substr, timeout, p.output())
}

// dhcpdInstance is the built service running in a namespace.
type dhcpdInstance struct {
	*proc
	ns    string
	store string
}

func startDHCPD(t *testing.T, ns, netboot, store string, extra ...string) *dhcpdInstance {
	t.Helper()
	dir := t.TempDir()
	if store == "" {
		store = filepath.Join(dir, "store")
	}
	cfgPath := filepath.Join(dir, "config.json")
	if err := os.WriteFile(cfgPath, []byte(`{"Hostname": "head", "Netboot": `+netboot+`}`), 0o644); err != nil {
		t.Fatal(err)
	}
	args := append([]string{dhcpdBin, "-config", cfgPath, "-store", store, "-allow_tmpfs", "-status", "127.0.0.1:9067"}, extra...)
	return &dhcpdInstance{proc: start(t, ns, nil, args...), ns: ns, store: store}
}

func (d *dhcpdInstance) status(t *testing.T) dhcpd.Status {
	t.Helper()
	out, err := exec.Command("ip", "netns", "exec", d.ns, "curl", "-sf", "http://127.0.0.1:9067/status").Output()
	if err != nil {
		t.Fatalf("curl /status in %s: %v", d.ns, err)
	}
	var st dhcpd.Status
	if err := json.Unmarshal(out, &st); err != nil {
		t.Fatalf("/status: %v\n%s", err, out)
	}
	return st
}

func (d *dhcpdInstance) metrics(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("ip", "netns", "exec", d.ns, "curl", "-sf", "http://127.0.0.1:9067/metrics").Output()
	if err != nil {
		t.Fatalf("curl /metrics in %s: %v", d.ns, err)
	}
	return string(out)
}

// startDnsmasq runs dnsmasq as the LAN's ordinary DHCP server (no PXE).
func startDnsmasq(t *testing.T, s *segment, ns string, extra ...string) *proc {
	t.Helper()
	needTool(t, "dnsmasq", "dnsmasq")
	dir := t.TempDir()
	args := append([]string{"dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--port=0", "--user=root",
		"--interface=obd0", "--bind-interfaces", "--log-dhcp", "--log-facility=-",
		"--dhcp-leasefile=" + filepath.Join(dir, "leases"), "--pid-file=" + filepath.Join(dir, "pid"),
		fmt.Sprintf("--dhcp-range=%s,%s,255.255.255.0,1h", s.addr(150), s.addr(199)),
		"--dhcp-option=option:router," + s.addr(254)}, extra...)
	p := start(t, ns, nil, args...)
	p.waitFor(t, "DHCP, IP range", 5*time.Second)
	return p
}

// udhcpcScript records the environment busybox udhcpc hands its script on
// "bound" in the file %[1]s.
const udhcpcScript = `#!/bin/sh
[ "$1" = bound ] || exit 0
env > '%[1]s.tmp' && mv '%[1]s.tmp' '%[1]s'
`

// dhclientScript does the same for ISC dhclient's BOUND (dhclient clears
// the environment, so the path is written into the script).
const dhclientScript = `#!/bin/sh
case "$reason" in BOUND|RENEW|REBOOT) env > '%[1]s.tmp' && mv '%[1]s.tmp' '%[1]s';; esac
exit 0
`

// writeScript writes a client script that records its environment in out.
func writeScript(t *testing.T, body, out string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "script")
	if err := os.WriteFile(p, []byte(fmt.Sprintf(body, out)), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func readEnv(t *testing.T, path string, timeout time.Duration) map[string]string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		b, err := os.ReadFile(path)
		if err == nil {
			env := map[string]string{}
			sc := bufio.NewScanner(bytes.NewReader(b))
			for sc.Scan() {
				k, v, _ := strings.Cut(sc.Text(), "=")
				env[k] = v
			}
			return env
		}
		if time.Now().After(deadline) {
			t.Fatalf("client recorded no lease in %v", timeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// udhcpc runs busybox udhcpc once in ns and returns what it was given.
func udhcpc(t *testing.T, ns string, extra ...string) map[string]string {
	t.Helper()
	needTool(t, "busybox", "busybox")
	out := filepath.Join(t.TempDir(), "env")
	args := append([]string{"busybox", "udhcpc", "-f", "-q", "-n", "-i", "obd0", "-t", "6", "-T", "1", "-A", "1",
		"-s", writeScript(t, udhcpcScript, out)}, extra...)
	p := start(t, ns, nil, args...)
	select {
	case <-p.done:
	case <-time.After(15 * time.Second):
		t.Fatalf("udhcpc did not finish:\n%s", p.output())
	}
	return readEnv(t, out, time.Second)
}

// dhclient runs ISC dhclient in ns until it is bound.
func dhclient(t *testing.T, ns string) map[string]string {
	t.Helper()
	needTool(t, "dhclient", "isc-dhcp-client")
	dir := t.TempDir()
	out := filepath.Join(dir, "env")
	p := start(t, ns, nil, "dhclient", "-4", "-d", "-1", "-cf", "/dev/null",
		"-sf", writeScript(t, dhclientScript, out), "-lf", filepath.Join(dir, "leases"), "-pf", filepath.Join(dir, "pid"), "obd0")
	env := readEnv(t, out, 20*time.Second)
	p.kill(syscall.SIGKILL)
	return env
}

func check(t *testing.T, what, got, want string) {
	t.Helper()
	if got != want {
		t.Errorf("%s = %q, want %q", what, got, want)
	}
}

var _ = net.ParseIP
var _ = context.Background
