package nfsd

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Proc is a child process whose output (stdout and stderr, carriage
// returns dropped) is collected line by line and copied to an optional log
// file.
type Proc struct {
	Name  string
	cmd   *exec.Cmd
	stdin io.WriteCloser
	mu    sync.Mutex
	out   strings.Builder
	done  chan struct{}
}

// StartProc starts args in its own process group. logPath, if set, gets a
// copy of the output.
func StartProc(name, logPath string, args ...string) (*Proc, error) {
	p := &Proc{Name: name, done: make(chan struct{})}
	p.cmd = exec.Command(args[0], args[1:]...)
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	stdin, err := p.cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	p.stdin = stdin
	pr, pw := io.Pipe()
	p.cmd.Stdout, p.cmd.Stderr = pw, pw
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("%s: %v", name, err)
	}
	var logf *os.File
	if logPath != "" {
		logf, _ = os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	}
	copied := make(chan struct{})
	go func() {
		defer close(copied)
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := strings.ReplaceAll(sc.Text(), "\r", "") + "\n"
			p.mu.Lock()
			p.out.WriteString(line)
			p.mu.Unlock()
			if logf != nil {
				logf.WriteString(line)
			}
		}
		io.Copy(io.Discard, pr)
		if logf != nil {
			logf.Close()
		}
	}()
	go func() {
		p.cmd.Wait()
		pw.Close()
		<-copied
		close(p.done)
	}()
	return p, nil
}

// Kill sends sig to the process group and, for SIGKILL, waits for the end.
func (p *Proc) Kill(sig syscall.Signal) {
	if p.cmd.Process == nil {
		return
	}
	syscall.Kill(-p.cmd.Process.Pid, sig)
	if sig == syscall.SIGKILL {
		<-p.done
	}
}

// Type writes s to the process's standard input.
func (p *Proc) Type(s string) error {
	_, err := io.WriteString(p.stdin, s)
	return err
}

// Output is everything the process printed so far.
func (p *Proc) Output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

// Tail is the last n bytes of the output.
func (p *Proc) Tail(n int) string {
	s := p.Output()
	if len(s) > n {
		s = s[len(s)-n:]
		if i := strings.IndexByte(s, '\n'); i >= 0 {
			s = s[i+1:]
		}
	}
	return s
}

// Done is closed when the process has ended and its output is read.
func (p *Proc) Done() <-chan struct{} { return p.done }

// WaitFor waits until a line of the output contains one of substrs and
// returns that line. It fails when the process ends first or timeout passes.
func (p *Proc) WaitFor(timeout time.Duration, substrs ...string) (string, error) {
	deadline := time.Now().Add(timeout)
	for {
		exited := false
		select {
		case <-p.done:
			exited = true
		default:
		}
		for _, line := range strings.Split(p.Output(), "\n") {
			for _, s := range substrs {
				if strings.Contains(line, s) {
					return line, nil
				}
			}
		}
		if exited {
			return "", fmt.Errorf("%s exited before printing %q", p.Name, substrs)
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("%s did not print %q within %v", p.Name, substrs, timeout)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// FreeTCPPort returns a TCP port on 127.0.0.1 that nothing listens on.
func FreeTCPPort() (int, error) {
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
