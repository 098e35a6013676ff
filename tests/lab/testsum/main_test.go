package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestSummaryOfRealRun runs go test -json on a module written here (one
// passing, one failing, one skipped test with a subtest, a package
// without tests) and checks what the summary says about it.
func TestSummaryOfRealRun(t *testing.T) {
	dir := t.TempDir()
	files := map[string]string{
		"go.mod": "module example.test/m\n\ngo 1.22\n",
		"a/a_test.go": `package a
import "testing"
func TestPass(t *testing.T) { t.Run("sub", func(t *testing.T) {}) }
func TestFail(t *testing.T) { t.Log("the reason it failed"); t.Fail() }
func TestSkip(t *testing.T) { t.Skip("needs a peer: install pkg") }
`,
		"b/b.go": "package b\n",
	}
	for name, body := range files {
		p := filepath.Join(dir, name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command("go", "test", "-json", "./...")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOFLAGS=", "GOWORK=off")
	stream, _ := cmd.Output() // exits 1: a test fails
	var out strings.Builder
	s := newSummary(&out)
	for _, l := range strings.Split(string(stream), "\n") {
		if l != "" {
			s.line(l)
		}
	}
	s.table()
	got := out.String()
	if s.failures != 1 {
		t.Errorf("failures: got %d, want 1", s.failures)
	}
	c := s.pkgs["example.test/m/a"]
	if c == nil {
		t.Fatalf("no package a in the summary:\n%s", got)
	}
	if c.run != 3 || c.passed != 1 || c.failed != 1 || c.skipped != 1 {
		t.Errorf("package a: got %d run, %d passed, %d failed, %d skipped; want 3, 1, 1, 1", c.run, c.passed, c.failed, c.skipped)
	}
	for _, want := range []string{
		"--- FAIL: example.test/m/a.TestFail",
		"the reason it failed",
		"example.test/m/a.TestSkip: ", "needs a peer: install pkg",
		"FAIL example.test/m/a",
		"total",
		"slowest tests:", "s example.test/m/a.TestPass",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("summary lacks %q:\n%s", want, got)
		}
	}
	if strings.Contains(got, "example.test/m/b ") && strings.Contains(got, "m/b                       ") {
		t.Errorf("a package without tests is in the table:\n%s", got)
	}
}
