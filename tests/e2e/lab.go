// Package e2e runs the whole chain as users run it: the ociboot services
// built from this repository in a "head node" network namespace, a real
// registry holding a node image, and QEMU machines on the same L2 segment
// that netboot from them (DHCP → TFTP → kernel → NFS root → a marker from
// the node's init on its serial console).
//
// Names start with "obe" and addresses are 10.8.<n>.0/24, so the package
// runs beside the other packages' network tests.
package e2e

import (
	"bufio"
	"fmt"
	"io"
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
)

var labs atomic.Int32

// Lab is one L2 segment: a bridge in a hub namespace, the head node's
// namespace plugged into it, and tap devices for QEMU machines.
type Lab struct {
	t    testing.TB
	id   string
	Hub  string
	Head string
	Net  int
	taps int
	Dir  string
}

func run(t testing.TB, args ...string) string {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%v: %v\n%s", args, err, out)
	}
	return string(out)
}

// removeStale deletes namespaces of earlier runs whose process is gone.
func removeStale() {
	out, _ := exec.Command("ip", "netns", "list").Output()
	for _, line := range strings.Split(string(out), "\n") {
		name, _, _ := strings.Cut(strings.TrimSpace(line), " ")
		rest, ok := strings.CutPrefix(name, "obe")
		if !ok {
			continue
		}
		pid, err := strconv.Atoi(strings.SplitN(rest, "-", 2)[0])
		if err != nil || pid == os.Getpid() || syscall.Kill(pid, 0) == nil {
			continue
		}
		exec.Command("ip", "netns", "delete", name).Run()
	}
}

// NewLab makes the segment and the head namespace with eth0 = 10.8.n.1/24.
func NewLab(t testing.TB) *Lab {
	if os.Geteuid() != 0 {
		t.Skip("needs root: network namespaces, bridges and tap devices")
	}
	for _, tool := range []string{"ip", "qemu-system-x86_64"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed (see .ci/run)", tool)
		}
	}
	removeStale()
	n := int(labs.Add(1))
	l := &Lab{t: t, id: fmt.Sprintf("obe%d-%d", os.Getpid(), n), Net: 10 + n%200, Dir: t.TempDir()}
	l.Hub = l.id + "-hub"
	l.Head = l.id + "-head"
	for _, ns := range []string{l.Hub, l.Head} {
		exec.Command("ip", "netns", "delete", ns).Run()
		run(t, "ip", "netns", "add", ns)
		ns := ns
		t.Cleanup(func() { exec.Command("ip", "netns", "delete", ns).Run() })
		run(t, "ip", "-n", ns, "link", "set", "lo", "up")
	}
	run(t, "ip", "-n", l.Hub, "link", "add", "br0", "type", "bridge")
	run(t, "ip", "-n", l.Hub, "link", "set", "br0", "up")
	l.Plug(l.Head, "eth0", 1)
	return l
}

// Addr is 10.8.<Net>.host.
func (l *Lab) Addr(host int) string { return fmt.Sprintf("10.8.%d.%d", l.Net, host) }

// Plug adds ifname in ns to the bridge, with 10.8.<Net>.host/24 if host > 0.
func (l *Lab) Plug(ns, ifname string, host int) {
	l.taps++
	port := fmt.Sprintf("p%d", l.taps)
	run(l.t, "ip", "link", "add", ifname, "netns", ns, "type", "veth", "peer", "name", port, "netns", l.Hub)
	run(l.t, "ip", "-n", l.Hub, "link", "set", port, "master", "br0", "up")
	run(l.t, "ip", "-n", ns, "link", "set", ifname, "up")
	if host > 0 {
		run(l.t, "ip", "-n", ns, "addr", "add", l.Addr(host)+"/24", "dev", ifname)
	}
}

// NewNS makes another namespace (e.g. for a separate DHCP server) with
// eth0 on the segment.
func (l *Lab) NewNS(role string, host int) string {
	ns := l.id + "-" + role
	exec.Command("ip", "netns", "delete", ns).Run()
	run(l.t, "ip", "netns", "add", ns)
	l.t.Cleanup(func() { exec.Command("ip", "netns", "delete", ns).Run() })
	run(l.t, "ip", "-n", ns, "link", "set", "lo", "up")
	l.Plug(ns, "eth0", host)
	return ns
}

// Tap makes a tap device on the bridge for a QEMU machine started in the
// hub namespace.
func (l *Lab) Tap() string {
	l.taps++
	tap := fmt.Sprintf("tap%d", l.taps)
	run(l.t, "ip", "-n", l.Hub, "tuntap", "add", tap, "mode", "tap")
	run(l.t, "ip", "-n", l.Hub, "link", "set", tap, "master", "br0", "up")
	return tap
}

// Proc is a process started in a namespace; its output is kept.
type Proc struct {
	Name string
	cmd  *exec.Cmd
	mu   sync.Mutex
	out  strings.Builder
	done chan struct{}
}

// Start runs args in ns; it is killed when the test ends.
func (l *Lab) Start(name, ns string, args ...string) *Proc {
	l.t.Helper()
	p := &Proc{Name: name, done: make(chan struct{})}
	p.cmd = exec.Command("ip", append([]string{"netns", "exec", ns}, args...)...)
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	pr, pw := io.Pipe()
	p.cmd.Stdout, p.cmd.Stderr = pw, pw
	if err := p.cmd.Start(); err != nil {
		l.t.Fatalf("%v: %v", p.cmd.Args, err)
	}
	go func() {
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		var logf *os.File
		if dir := os.Getenv("OCIBOOT_E2E_LOGS"); dir != "" {
			logf, _ = os.Create(filepath.Join(dir, strings.NewReplacer(" ", "_", ":", "-").Replace(name)+".log"))
		}
		for sc.Scan() {
			p.mu.Lock()
			p.out.WriteString(sc.Text() + "\n")
			p.mu.Unlock()
			if logf != nil {
				logf.WriteString(sc.Text() + "\n")
			}
		}
	}()
	go func() {
		p.cmd.Wait()
		pw.Close()
		close(p.done)
	}()
	l.t.Cleanup(func() { p.Kill(syscall.SIGKILL) })
	return p
}

// Kill signals the whole process group.
func (p *Proc) Kill(sig syscall.Signal) {
	if p.cmd.Process != nil {
		syscall.Kill(-p.cmd.Process.Pid, sig)
		if sig == syscall.SIGKILL {
			<-p.done
		}
	}
}

// Output is everything the process printed so far.
func (p *Proc) Output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

// Exited reports whether the process has ended.
func (p *Proc) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
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
		if p.Exited() && !strings.Contains(p.Output(), substr) {
			t.Fatalf("%s exited before printing %q:\n%s", p.Name, substr, tail(p.Output()))
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("%s did not print %q within %v:\n%s", p.Name, substr, timeout, tail(p.Output()))
}

func tail(s string) string {
	if len(s) > 5000 {
		return s[len(s)-5000:]
	}
	return s
}

// repoRoot is the module root (the gokrazy instance).
func repoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Dir(filepath.Dir(filepath.Dir(file)))
}

var buildOnce sync.Once
var buildDir string
var buildErr error

// Binaries builds every service once per test binary, from the same source
// the image contains, and returns the directory holding them.
func Binaries(t testing.TB) string {
	buildOnce.Do(func() {
		buildDir, buildErr = os.MkdirTemp("", "ociboot-e2e-bin-")
		if buildErr != nil {
			return
		}
		out, err := exec.Command("go", "build", "-C", repoRoot(), "-o", buildDir+"/",
			"./services/dhcpd", "./services/tftpd", "./services/ocicache", "./services/nfsd", "./services/status").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build services: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return buildDir
}

// execIn runs a command on the calling thread's network namespace.
func execIn(args ...string) ([]byte, error) {
	return exec.Command(args[0], args[1:]...).CombinedOutput()
}
