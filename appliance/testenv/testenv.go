// Package testenv decides what a test does when this machine lacks
// something it needs (root, a program, a kernel): on a developer's machine
// it skips, saying what is missing; where every test must run (CI) it
// fails. Every test in the repository that depends on its environment
// asks here, so that a machine missing a peer never prints a column of
// "ok" for tests that did not run.
//
// The decision: OCIBOOT_REQUIRE_ALL=1 fails, OCIBOOT_REQUIRE_ALL=0 skips;
// unset, CI=true fails (.ci/run sets OCIBOOT_REQUIRE_ALL=1). Under
// `go test -short` (make unit) tests skip whatever the environment says:
// that mode is for machines without root.
package testenv

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// RequireEnv is the variable that turns missing prerequisites into
// failures.
const RequireEnv = "OCIBOOT_REQUIRE_ALL"

// Required reports whether a missing prerequisite fails the test.
func Required() bool {
	switch os.Getenv(RequireEnv) {
	case "1":
		return true
	case "0":
		return false
	}
	return os.Getenv("CI") == "true"
}

// Need stops t because this machine lacks what the message says: t.Fatalf
// when Required (and not -short), else t.Skip. The message should name
// what to install or change.
func Need(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if Required() && !testing.Short() {
		t.Fatalf("%s (%s=1 or CI=true: a test that cannot run fails)", msg, RequireEnv)
	}
	t.Skip(msg)
}

// NeedRoot stops t unless it runs as root; why says what root is for.
func NeedRoot(t testing.TB, why string) {
	t.Helper()
	if os.Geteuid() != 0 {
		Need(t, "needs root: %s (run the tests as root, as `make test` in CI does)", why)
	}
}

// NeedTool returns the path of program name, or stops t naming the Debian
// package pkg that provides it.
func NeedTool(t testing.TB, name, pkg string) string {
	t.Helper()
	p, err := LookPath(name)
	if err != nil {
		Need(t, "%s not found: install the Debian package %s (`make deps` installs every test peer)", name, pkg)
	}
	return p
}

// LookPath is exec.LookPath that also searches the sbin directories, which
// a non-login root shell may lack in PATH.
func LookPath(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, dir := range []string{"/usr/sbin", "/sbin", "/usr/bin", "/bin"} {
		p := filepath.Join(dir, name)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s: %w", name, exec.ErrNotFound)
}

// Short skips t under `go test -short` (make unit); what says what the
// test does that the short mode leaves out.
func Short(t testing.TB, what string) {
	t.Helper()
	if testing.Short() {
		t.Skipf("-short: %s", what)
	}
}

// OptIn skips t unless the environment variable env is "1": for runs a
// person asks for (benchmarks, the demo, rewriting seed corpora), which
// are never part of `make test`.
func OptIn(t testing.TB, env, what string) {
	t.Helper()
	if os.Getenv(env) != "1" {
		t.Skipf("%s: set %s=1", what, env)
	}
}
