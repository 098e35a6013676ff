package lab

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ociboot/ociboot/appliance/service"
)

// LogsEnv names a directory that receives a copy of every process's
// output, <test>-<process>.log, for looking at a run afterwards.
const LogsEnv = "OCIBOOT_TEST_LOGS"

// Cmd describes a process to start.
type Cmd struct {
	Name  string   // in messages and log names; default Args[0]
	NS    string   // network namespace to run in; "" for this one
	Args  []string // program and arguments
	Env   []string // added to this process's environment
	Dir   string   // working directory; "" for this one
	Log   string   // file that gets a copy of the output, if set
	Stdin bool     // keep a pipe to its standard input (Proc.Type)
	// Files are passed down as file descriptors 3, 4, ... with
	// OCIBOOT_LISTEN_FDS set: listening sockets for the services (see
	// Listener), which take them instead of binding their address.
	Files []*os.File
}

// Proc is a started process. Its output (stdout and stderr, carriage
// returns dropped) is kept in memory; it is killed when the test ends and
// its output's tail logged if the test failed.
type Proc struct {
	Name string

	cmd     *exec.Cmd
	stdin   io.WriteCloser
	mu      sync.Mutex
	out     strings.Builder
	changed chan struct{} // closed and replaced on each line
	done    chan struct{}
	err     error
}

// Start runs args in namespace ns ("" for this one).
func Start(t testing.TB, ns string, args ...string) *Proc {
	t.Helper()
	return Cmd{NS: ns, Args: args}.Start(t)
}

// Start starts c; it fails t if the program cannot be started.
func (c Cmd) Start(t testing.TB) *Proc {
	t.Helper()
	p, err := c.start(t.Name())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		p.Kill(syscall.SIGKILL)
		// Binaries built with GOFLAGS=-race report here.
		if strings.Contains(p.Output(), "WARNING: DATA RACE") {
			t.Errorf("%s reported a data race:\n%s", p.Name, Tail(p.Output(), 8000))
		} else if t.Failed() {
			t.Logf("output of %s (%v), tail:\n%s", p.Name, c.Args, Tail(p.Output(), 6000))
		}
	})
	return p
}

func (c Cmd) start(test string) (*Proc, error) {
	if len(c.Args) == 0 {
		return nil, fmt.Errorf("lab: a command without a program")
	}
	p := &Proc{Name: c.Name, changed: make(chan struct{}), done: make(chan struct{})}
	if p.Name == "" {
		p.Name = filepath.Base(c.Args[0])
	}
	args := c.Args
	if c.NS != "" {
		args = append([]string{"ip", "netns", "exec", c.NS}, args...)
	}
	p.cmd = exec.Command(args[0], args[1:]...)
	p.cmd.Dir = c.Dir
	// Its own process group: Kill reaches its children (QEMU's helpers,
	// rpcbind beside ganesha) too.
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	p.cmd.Env = append(os.Environ(), c.Env...)
	if len(c.Files) > 0 {
		p.cmd.ExtraFiles = c.Files
		p.cmd.Env = append(p.cmd.Env, fmt.Sprintf("%s=%d", service.ListenFDsEnv, len(c.Files)))
	}
	if c.Stdin {
		w, err := p.cmd.StdinPipe()
		if err != nil {
			return nil, err
		}
		p.stdin = w
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	p.cmd.Stdout, p.cmd.Stderr = pw, pw
	if err := p.cmd.Start(); err != nil {
		pr.Close()
		pw.Close()
		return nil, fmt.Errorf("%s: %v: %v", p.Name, args, err)
	}
	pw.Close()
	var logs []io.Writer
	if c.Log != "" {
		if f, err := os.OpenFile(c.Log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644); err == nil {
			logs = append(logs, f)
		}
	}
	if dir := os.Getenv(LogsEnv); dir != "" {
		name := strings.NewReplacer("/", "_", " ", "_", ":", "-").Replace(test + "-" + p.Name)
		if f, err := os.OpenFile(filepath.Join(dir, name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644); err == nil {
			logs = append(logs, f)
		}
	}
	copied := make(chan struct{})
	go func() {
		defer close(copied)
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := strings.ReplaceAll(sc.Text(), "\r", "") + "\n"
			for _, w := range logs {
				io.WriteString(w, line)
			}
			p.mu.Lock()
			p.out.WriteString(line)
			close(p.changed)
			p.changed = make(chan struct{})
			p.mu.Unlock()
		}
		io.Copy(io.Discard, pr)
		pr.Close()
		for _, w := range logs {
			w.(io.Closer).Close()
		}
	}()
	go func() {
		err := p.cmd.Wait()
		// A child that outlives the process (rpcbind) may hold the pipe:
		// the output is complete when it closes, or shortly after.
		select {
		case <-copied:
		case <-time.After(2 * time.Second):
		}
		p.mu.Lock()
		p.err = err
		p.mu.Unlock()
		close(p.done)
	}()
	return p, nil
}

// Output is everything the process printed so far.
func (p *Proc) Output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

// Tail is the last n bytes of the output.
func (p *Proc) Tail(n int) string { return Tail(p.Output(), n) }

// Done is closed when the process has ended and its output is read.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Exited reports whether the process has ended.
func (p *Proc) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Err is how the process ended (nil for exit status 0); valid once Done.
func (p *Proc) Err() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.err
}

// Pid is the process id (of ip netns exec, which execs the program).
func (p *Proc) Pid() int { return p.cmd.Process.Pid }

// Kill signals the process group; for SIGKILL it waits for the end.
func (p *Proc) Kill(sig syscall.Signal) {
	if p.Exited() {
		return
	}
	syscall.Kill(-p.cmd.Process.Pid, sig)
	if sig == syscall.SIGKILL {
		<-p.done
	}
}

// Stop sends SIGTERM and waits up to timeout for the end, then kills.
func (p *Proc) Stop(timeout time.Duration) {
	p.Kill(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(timeout):
		p.Kill(syscall.SIGKILL)
	}
	// Children that ignored the group's SIGTERM.
	syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
}

// Type writes s to the process's standard input (Cmd.Stdin).
func (p *Proc) Type(s string) error {
	if p.stdin == nil {
		return fmt.Errorf("%s: started without a stdin pipe", p.Name)
	}
	_, err := io.WriteString(p.stdin, s)
	return err
}

// WaitLine waits until a line of the output contains one of substrs and
// returns that line. It fails when the process ends first or timeout
// passes.
func (p *Proc) WaitLine(timeout time.Duration, substrs ...string) (string, error) {
	return p.wait(timeout, fmt.Sprintf("%q", substrs), func(out string) (string, bool) {
		for _, line := range strings.SplitAfter(out, "\n") {
			for _, s := range substrs {
				if strings.Contains(line, s) {
					return strings.TrimSuffix(line, "\n"), true
				}
			}
		}
		return "", false
	})
}

// WaitFor waits until the output contains substr, or fails t with the
// output's tail when the process ends first or timeout passes.
func (p *Proc) WaitFor(t testing.TB, substr string, timeout time.Duration) {
	t.Helper()
	_, err := p.wait(timeout, fmt.Sprintf("%q", substr), func(out string) (string, bool) {
		return "", strings.Contains(out, substr)
	})
	if err != nil {
		t.Fatalf("%v:\n%s", err, p.Tail(5000))
	}
}

// wait calls match on the output each time it grows until match reports
// true, the process ends with no new output or timeout passes.
func (p *Proc) wait(timeout time.Duration, what string, match func(out string) (string, bool)) (string, error) {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for {
		p.mu.Lock()
		out, changed := p.out.String(), p.changed
		p.mu.Unlock()
		if m, ok := match(out); ok {
			return m, nil
		}
		select {
		case <-changed:
		case <-p.done:
			if out == p.Output() {
				return "", fmt.Errorf("%s exited (%v) before printing %s", p.Name, p.Err(), what)
			}
		case <-timer.C:
			return "", fmt.Errorf("%s did not print %s within %v", p.Name, what, timeout)
		}
	}
}
