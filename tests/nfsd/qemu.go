package nfsd

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ociboot/ociboot/tests/guest"
	"github.com/ociboot/ociboot/tests/lab"
)

// Server is an NFS server the kernel test can kill and start again on the
// same ports and state.
type Server interface {
	Start(timeout time.Duration) error
	Kill()
	Log() string
}

// KernelRun boots the host's kernel in QEMU with its NFS root on a server
// listening on the host's loopback, which the guest reaches as 10.0.2.2
// through QEMU's user-mode network.
type KernelRun struct {
	Server    Server
	NFSPort   int
	MountPort int
	Export    string // e.g. /nodes/aabbccdd
	Dir       string // scratch: initrd, console log
	Logf      func(format string, args ...any)
	Wrap      []string // prefix of the QEMU command, e.g. ip netns exec <ns>
	View      string   // the node's view on the host, where the guest's writes land
	// Steps, if set, replace the server restart halfway: the guest's
	// init (the image's /sbin/init) prints each step's Line, the host
	// runs Do and types Input on the console.
	Steps []Step

	// Filled in by Run.
	Console string   // the whole console output
	Bad     []string // "NFSTEST bad ..." lines
	BigMD5  string   // md5 of the large file the guest wrote
}

// Cmdline is the kernel command line of the run.
func (r *KernelRun) Cmdline(wait time.Duration) string {
	return fmt.Sprintf("console=ttyS0 loglevel=6 panic=-1 root=/dev/nfs nfsroot=10.0.2.2:%s,vers=3,tcp,port=%d,mountport=%d nfstest_wait=%d",
		r.Export, r.NFSPort, r.MountPort, int(wait/time.Second))
}

var (
	badLine   = regexp.MustCompile(`NFSTEST bad .*`)
	md5Line   = regexp.MustCompile(`NFSTEST bigmd5 ([0-9a-f]{32})`)
	loopsLine = regexp.MustCompile(`restart-loops .*`)
)

// Run boots the guest, restarts the server when the guest asks for it and
// waits for the verdict. An error means no verdict (boot failure, timeout);
// failed checks are in r.Bad.
func (r *KernelRun) Run(t testing.TB) error {
	logf := r.Logf
	if logf == nil {
		logf = func(string, ...any) {}
	}
	k, err := guest.HostKernel()
	if err != nil {
		return err
	}
	initrd, err := guest.Initramfs(k)
	if err != nil {
		return err
	}
	ip := filepath.Join(r.Dir, "initrd.img")
	if err := os.WriteFile(ip, initrd, 0o644); err != nil {
		return err
	}
	acc, slow := lab.Accel()
	cmdline := r.Cmdline(30*slow*time.Second + 40*time.Second)
	logf("qemu %s, kernel %s, cmdline %q", strings.Join(acc, " "), k.Release, cmdline)
	args := append(append([]string{}, r.Wrap...), lab.X86(768)...)
	args = append(args, "-smp", "1",
		"-kernel", k.Path, "-initrd", ip, "-append", cmdline,
		// User-mode networking: 10.0.2.2 is the host's 127.0.0.1 and
		// nothing else is reached (the guest resolves no names and talks
		// only to QEMU's DHCP and 10.0.2.2). restrict=on cannot be used:
		// slirp then drops the guest's connections to 10.0.2.2 too.
		"-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0")
	consoleLog := filepath.Join(r.Dir, "console.log")
	q := lab.Cmd{Name: "qemu", Log: consoleLog, Args: args, Stdin: true}.Start(t)
	defer func() {
		select {
		case <-q.Done():
		case <-time.After(10 * time.Second):
		}
		q.Kill(syscall.SIGKILL)
		r.Console = q.Output()
		r.Bad = badLine.FindAllString(r.Console, -1)
		if m := md5Line.FindStringSubmatch(r.Console); m != nil {
			r.BigMD5 = m[1]
		}
	}()
	start := time.Now()
	if r.Steps != nil {
		return r.steps(q, slow, start, consoleLog)
	}
	line, err := q.WaitLine(60*slow*time.Second, RestartLine, PassLine, FailLine)
	if err != nil {
		return fmt.Errorf("guest: %v; console log %s, tail:\n%s", err, consoleLog, q.Tail(6000))
	}
	if !strings.Contains(line, RestartLine) {
		return fmt.Errorf("guest printed %q before the restart; console tail:\n%s", line, q.Tail(6000))
	}
	logf("guest reached the restart after %v", time.Since(start).Round(time.Second))
	// Kill the server in the middle of the guest's loop: once the loop's
	// second file is in the node's view, the guest's writes are going on.
	if err := waitFile(filepath.Join(r.View, "t", "r", "loop2"), 30*slow*time.Second); err != nil {
		return fmt.Errorf("guest's restart loop: %v; console tail:\n%s", err, q.Tail(6000))
	}
	r.Server.Kill()
	// The fault itself: the server stays down while the guest's calls
	// queue up and its reconnects back off.
	time.Sleep(2 * time.Second)
	if err := r.Server.Start(30 * time.Second); err != nil {
		return fmt.Errorf("restart: %v", err)
	}
	logf("server restarted")
	if err := q.Type(RestartedInput + "\n"); err != nil {
		return err
	}
	line, err = q.WaitLine(30*slow*time.Second+60*time.Second, PassLine, FailLine)
	if err != nil {
		return fmt.Errorf("guest after the restart: %v; console log %s, tail:\n%s\nserver log tail:\n%s", err, consoleLog, q.Tail(6000), r.Server.Log())
	}
	if m := loopsLine.FindString(q.Output()); m != "" {
		logf("guest: %s", m)
	}
	logf("guest: %s after %v", strings.TrimSpace(line), time.Since(start).Round(time.Second))
	return nil
}

// waitFile waits until path exists.
func waitFile(path string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		if _, err := os.Stat(path); err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no %s after %v", path, timeout)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Step is a handshake between the guest's init and the host.
type Step struct {
	Line  string // printed by the guest, e.g. "NFSTEST FILL-NOW"
	Do    func() error
	Input string // typed on the guest's console after Do
}

// steps runs r.Steps in order, then waits for the verdict.
func (r *KernelRun) steps(q *lab.Proc, slow time.Duration, start time.Time, consoleLog string) error {
	for _, st := range r.Steps {
		line, err := q.WaitLine(60*slow*time.Second, st.Line, PassLine, FailLine)
		if err != nil {
			return fmt.Errorf("guest: %v waiting for %q; console log %s, tail:\n%s", err, st.Line, consoleLog, q.Tail(6000))
		}
		if !strings.Contains(line, st.Line) {
			return fmt.Errorf("guest printed %q before %q; console tail:\n%s", line, st.Line, q.Tail(6000))
		}
		if err := st.Do(); err != nil {
			return fmt.Errorf("step %q: %v", st.Line, err)
		}
		if err := q.Type(st.Input + "\n"); err != nil {
			return err
		}
	}
	line, err := q.WaitLine(30*slow*time.Second+60*time.Second, PassLine, FailLine)
	if err != nil {
		return fmt.Errorf("guest after its steps: %v; console log %s, tail:\n%s\nserver log tail:\n%s", err, consoleLog, q.Tail(6000), r.Server.Log())
	}
	if r.Logf != nil {
		r.Logf("guest: %s after %v", strings.TrimSpace(line), time.Since(start).Round(time.Second))
	}
	return nil
}
