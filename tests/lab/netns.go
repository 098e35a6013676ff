package lab

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ociboot/ociboot/appliance/testenv"
)

// nsPrefix starts every namespace name, followed by the pid.
const nsPrefix = "ob"

var (
	seq       atomic.Int32
	staleOnce sync.Once
)

// removeStale deletes namespaces ob<pid>-... whose process is gone: the
// leftovers of test binaries that were killed before their cleanup.
func removeStale() {
	out, _ := exec.Command("ip", "netns", "list").Output()
	for _, line := range strings.Split(string(out), "\n") {
		name, _, _ := strings.Cut(strings.TrimSpace(line), " ")
		rest, ok := strings.CutPrefix(name, nsPrefix)
		if !ok {
			continue
		}
		pidStr, _, ok := strings.Cut(rest, "-")
		pid, err := strconv.Atoi(pidStr)
		if !ok || err != nil || pid <= 0 || pid == os.Getpid() {
			continue
		}
		if err := syscall.Kill(pid, 0); err == nil || err == syscall.EPERM {
			continue // still running
		}
		exec.Command("ip", "netns", "delete", name).Run()
	}
}

// NeedNetns stops t (skip, or fail in CI) unless it can create network
// namespaces: root and iproute2.
func NeedNetns(t testing.TB) {
	t.Helper()
	testenv.NeedRoot(t, "creates network namespaces, bridges, veth and tap devices")
	testenv.NeedTool(t, "ip", "iproute2")
}

// NewNS creates a network namespace ob<pid>-<n>-<role> with lo up; it is
// deleted when t ends.
func NewNS(t testing.TB, role string) string {
	t.Helper()
	NeedNetns(t)
	staleOnce.Do(removeStale)
	ns := fmt.Sprintf("%s%d-%d-%s", nsPrefix, os.Getpid(), seq.Add(1), role)
	Run(t, "ip", "netns", "add", ns)
	t.Cleanup(func() { exec.Command("ip", "netns", "delete", ns).Run() })
	Run(t, "ip", "-n", ns, "link", "set", "lo", "up")
	return ns
}

// Segment is one L2 network: a bridge br0 in a hub namespace, as the
// Super6C's switch joins its modules, with namespaces and tap devices
// plugged into it.
type Segment struct {
	t     testing.TB
	Hub   string // namespace holding br0 and the taps
	Net   int    // third octet: 10.8.<Net>.0/24
	Iface string // interface Attach and NewNS create in a namespace: eth0
	ports int
}

var segments atomic.Int32

// NewSegment creates the hub namespace and its bridge; everything is
// removed when t ends.
func NewSegment(t testing.TB) *Segment {
	t.Helper()
	n := int(segments.Add(1))
	s := &Segment{t: t, Hub: NewNS(t, "hub"), Net: 10 + n%200, Iface: "eth0"}
	Run(t, "ip", "-n", s.Hub, "link", "add", "br0", "type", "bridge")
	Run(t, "ip", "-n", s.Hub, "link", "set", "br0", "up")
	return s
}

// Addr is 10.8.<Net>.host.
func (s *Segment) Addr(host int) string { return fmt.Sprintf("%s.%d", s.Prefix(), host) }

// Prefix is "10.8.<Net>", the first three octets of the segment.
func (s *Segment) Prefix() string { return fmt.Sprintf("10.8.%d", s.Net) }

// Attach creates a namespace for role with Iface on the bridge; host > 0
// gives it 10.8.<Net>.host/24, mac (if set) its MAC. It returns the
// namespace.
func (s *Segment) Attach(role string, host int, mac string) string {
	s.t.Helper()
	ns := NewNS(s.t, role)
	s.plug(ns, s.Iface, host, mac)
	return ns
}

// NewNS is Attach without a chosen MAC.
func (s *Segment) NewNS(role string, host int) string {
	s.t.Helper()
	return s.Attach(role, host, "")
}

// Plug adds interface ifname in the existing namespace ns to the bridge,
// with 10.8.<Net>.host/24 if host > 0: e.g. a router or relay between two
// segments.
func (s *Segment) Plug(ns, ifname string, host int) {
	s.t.Helper()
	s.plug(ns, ifname, host, "")
}

func (s *Segment) plug(ns, ifname string, host int, mac string) {
	s.t.Helper()
	s.ports++
	port := fmt.Sprintf("p%d", s.ports)
	args := []string{"ip", "link", "add", ifname, "netns", ns}
	if mac != "" {
		args = append(args, "address", mac)
	}
	Run(s.t, append(args, "type", "veth", "peer", "name", port, "netns", s.Hub)...)
	Run(s.t, "ip", "-n", s.Hub, "link", "set", port, "master", "br0", "up")
	Run(s.t, "ip", "-n", ns, "link", "set", ifname, "up")
	if host > 0 {
		Run(s.t, "ip", "-n", ns, "addr", "add", s.Addr(host)+"/24", "dev", ifname)
	}
}

// Tap makes a tap device on the bridge for a QEMU machine started in the
// hub namespace (see TapNIC).
func (s *Segment) Tap() string {
	s.t.Helper()
	s.ports++
	tap := fmt.Sprintf("tap%d", s.ports)
	Run(s.t, "ip", "-n", s.Hub, "tuntap", "add", tap, "mode", "tap")
	Run(s.t, "ip", "-n", s.Hub, "link", "set", tap, "master", "br0", "up")
	return tap
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
