// Package e2e runs the whole chain as users run it: the ociboot services
// built from this repository in a "head node" network namespace, a real
// registry holding a node image, and QEMU machines on the same L2 segment
// that netboot from them (DHCP → TFTP → kernel → NFS root → a marker from
// the node's init on its serial console). The namespaces, processes and
// QEMU command lines come from tests/lab.
package e2e

import (
	"os/exec"
	"testing"

	testlab "github.com/ociboot/ociboot/tests/lab"
)

// Lab is one L2 segment (a bridge in a hub namespace) with the head
// node's namespace plugged into it as eth0 = <prefix>.1/24, and tap
// devices for QEMU machines.
type Lab struct {
	*testlab.Segment
	t    testing.TB
	Head string // the head node's namespace
	Dir  string // scratch space for the test
}

// Proc is a process started in a namespace; its output is kept.
type Proc = testlab.Proc

// NewLab makes the segment and the head namespace.
func NewLab(t testing.TB) *Lab {
	t.Helper()
	testlab.NeedNetns(t)
	testlab.NeedQEMU(t, "x86_64")
	l := &Lab{Segment: testlab.NewSegment(t), t: t, Dir: t.TempDir()}
	l.Head = l.NewNS("head", 1)
	return l
}

// Start runs args in ns; it is killed when the test ends.
func (l *Lab) Start(name, ns string, args ...string) *Proc {
	l.t.Helper()
	return testlab.Cmd{Name: name, NS: ns, Args: args}.Start(l.t)
}

// Binaries builds every service once per test binary, from the same source
// the image contains, and returns the directory holding them.
func Binaries(t testing.TB) string {
	t.Helper()
	return testlab.Binaries(t)
}

func run(t testing.TB, args ...string) string {
	t.Helper()
	return testlab.Run(t, args...)
}

func tail(s string) string { return testlab.Tail(s, 5000) }

func repoRoot() string { return testlab.RepoRoot() }

// execIn runs a command on the calling thread's network namespace.
func execIn(args ...string) ([]byte, error) {
	return exec.Command(args[0], args[1:]...).CombinedOutput()
}
