package lab

import (
	"os"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestProcOutputAndWait(t *testing.T) {
	// Without Cmd.Stdin the process reads /dev/null, so it waits in
	// sleep, not read, for the Kill below.
	p := Start(t, "", "sh", "-c", "echo one; printf 'two\\r\\n'; sleep 0.2; echo three >&2; sleep 60")
	p.WaitFor(t, "one\ntwo\n", 5*time.Second)
	line, err := p.WaitLine(5*time.Second, "thr", "nothing")
	if err != nil || line != "three" {
		t.Errorf("WaitLine: got %q, %v; want three", line, err)
	}
	if p.Exited() {
		t.Errorf("exited before the kill")
	}
	if err := p.Type("x\n"); err == nil {
		t.Errorf("Type without Cmd.Stdin: no error")
	}
	p.Kill(syscall.SIGKILL)
	// WaitLine returns as soon as the process is gone; the long timeout
	// only matters on a loaded machine, where reaping can take a while.
	if _, err := p.WaitLine(30*time.Second, "never"); err == nil || !strings.Contains(err.Error(), "exited") {
		t.Errorf("WaitLine after the end: %v, want an error saying it exited", err)
	}

	q := Cmd{Name: "reader", Args: []string{"sh", "-c", "read x; echo got $x; exit 3"}, Stdin: true}.Start(t)
	if err := q.Type("hello\n"); err != nil {
		t.Fatal(err)
	}
	q.WaitFor(t, "got hello", 5*time.Second)
	<-q.Done()
	if q.Err() == nil {
		t.Errorf("exit status 3 reported as success")
	}
}

// TestListenerHandedDown: a shell inherits the test's TCP socket as fd 3
// and the environment says so.
func TestListenerHandedDown(t *testing.T) {
	l := ListenTCP(t)
	p := Cmd{Args: []string{"sh", "-c", "echo fds=$OCIBOOT_LISTEN_FDS; ls -l /proc/$$/fd/3"}, Files: l.Files()}.Start(t)
	p.WaitFor(t, "fds=1", 5*time.Second)
	p.WaitFor(t, "socket:", 5*time.Second)
}

// TestSegment: two namespaces on one segment reach each other and nothing
// is left after the test.
func TestSegment(t *testing.T) {
	var names []string
	t.Run("ping", func(t *testing.T) {
		s := NewSegment(t)
		a := s.NewNS("a", 1)
		b := s.Attach("b", 2, "52:54:00:12:34:56")
		names = append(names, s.Hub, a, b)
		Run(t, "ip", "netns", "exec", a, "busybox", "ping", "-c", "1", "-W", "5", s.Addr(2))
		if out := Run(t, "ip", "-n", b, "link", "show", "eth0"); !strings.Contains(out, "52:54:00:12:34:56") {
			t.Errorf("b's eth0 lacks its MAC:\n%s", out)
		}
		for _, n := range names {
			if !strings.HasPrefix(n, "ob") || !strings.Contains(n, "-") {
				t.Errorf("namespace %q is not ob<pid>-<n>-<role>", n)
			}
		}
	})
	for _, n := range names {
		if _, err := os.Stat("/run/netns/" + n); err == nil {
			t.Errorf("namespace %s left after the test", n)
		}
	}
}
