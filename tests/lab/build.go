package lab

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
)

// Services are the binaries under services/, in the order a head node
// starts them: the cache first, so that images are in place when nodes ask.
var Services = []string{"ocicache", "nfsd", "nbdd", "tftpd", "dhcpd", "status"}

var (
	buildMu  sync.Mutex
	buildDir string
	built    = map[string]error{}
)

// Binaries builds the named services (all of Services if none are named)
// from this checkout, once per test binary, and returns the directory that
// holds them, named as the services. GOFLAGS (e.g. -race) apply.
func Binaries(t testing.TB, names ...string) string {
	t.Helper()
	if len(names) == 0 {
		names = Services
	}
	buildMu.Lock()
	defer buildMu.Unlock()
	if buildDir == "" {
		d, err := os.MkdirTemp("", "ociboot-test-bin-")
		if err != nil {
			t.Fatal(err)
		}
		buildDir = d
	}
	var todo []string
	for _, n := range names {
		if _, ok := built[n]; !ok {
			todo = append(todo, n)
		}
	}
	if len(todo) > 0 {
		// One go build for all of them: they share most packages.
		args := []string{"build", "-o", buildDir + "/"}
		for _, n := range todo {
			args = append(args, "./services/"+n)
		}
		cmd := exec.Command("go", args...)
		cmd.Dir = RepoRoot()
		// Static, as gok builds them for the appliance: what the tests
		// run (and the idle benchmark measures) is what the head node runs.
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		out, err := cmd.CombinedOutput()
		if err != nil {
			err = fmt.Errorf("go %v: %v\n%s", args, err, out)
		}
		for _, n := range todo {
			built[n] = err
		}
	}
	for _, n := range names {
		if err := built[n]; err != nil {
			t.Fatal(err)
		}
	}
	return buildDir
}

// Binary is the path of one service built by Binaries.
func Binary(t testing.TB, name string) string {
	t.Helper()
	return filepath.Join(Binaries(t, name), name)
}
