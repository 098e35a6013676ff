// Command testsum reads `go test -json` on stdin and prints what a person
// needs from a long run: each package's result as it finishes, the output
// of every failed test (and of a package that failed to build), why each
// skipped test skipped, and at the end a table of tests run, passed,
// failed and skipped per package. It exits 1 if anything failed, so that
//
//	go test -json ./... 2>&1 | go run ./tests/lab/testsum
//
// fails like go test itself. Lines that are not JSON (go vet, go build
// errors on stderr) are passed through.
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"time"
)

// event is one line of `go test -json` (cmd/test2json).
type event struct {
	Action      string
	Package     string
	Test        string
	Output      string
	Elapsed     float64
	ImportPath  string // build-output, build-fail
	FailedBuild string
}

type counts struct {
	run, passed, failed, skipped int
	elapsed                      float64
	result                       string // ok, FAIL, no tests
}

type summary struct {
	out      io.Writer
	pkgs     map[string]*counts
	order    []string
	output   map[string]*strings.Builder // package + "\x00" + test
	build    map[string]*strings.Builder // import path → build output
	skips    []string
	failures int
	tests    []timed // top-level tests that ended, for the slowest list
}

// timed is one test's time.
type timed struct {
	name    string
	elapsed float64
}

func newSummary(out io.Writer) *summary {
	return &summary{out: out, pkgs: map[string]*counts{}, output: map[string]*strings.Builder{}, build: map[string]*strings.Builder{}}
}

func (s *summary) pkg(name string) *counts {
	c, ok := s.pkgs[name]
	if !ok {
		c = &counts{}
		s.pkgs[name] = c
		s.order = append(s.order, name)
	}
	return c
}

func (s *summary) buf(m map[string]*strings.Builder, key string) *strings.Builder {
	b, ok := m[key]
	if !ok {
		b = &strings.Builder{}
		m[key] = b
	}
	return b
}

// skipReason is the message of a skipped test's t.Skip: its output without
// the "=== RUN" and "--- SKIP" lines.
func skipReason(out string) string {
	var lines []string
	for _, l := range strings.Split(out, "\n") {
		t := strings.TrimSpace(l)
		if t == "" || strings.HasPrefix(t, "=== ") || strings.HasPrefix(t, "--- SKIP") {
			continue
		}
		lines = append(lines, t)
	}
	return strings.Join(lines, " ")
}

func (s *summary) line(l string) {
	var e event
	if !strings.HasPrefix(l, "{") || json.Unmarshal([]byte(l), &e) != nil || e.Action == "" {
		fmt.Fprintln(s.out, l)
		return
	}
	switch e.Action {
	case "build-output":
		s.buf(s.build, e.ImportPath).WriteString(e.Output)
		return
	case "build-fail":
		s.failures++
		fmt.Fprintf(s.out, "%s", s.buf(s.build, e.ImportPath).String())
		return
	}
	key := e.Package + "\x00" + e.Test
	c := s.pkg(e.Package)
	switch e.Action {
	case "output":
		s.buf(s.output, key).WriteString(e.Output)
	case "run":
		if e.Test != "" && !strings.Contains(e.Test, "/") {
			c.run++
		}
	case "pass", "fail", "skip":
		if e.Test == "" {
			c.elapsed = e.Elapsed
			out := s.buf(s.output, key).String()
			switch {
			case e.Action == "fail":
				c.result = "FAIL"
				s.failures++
				if c.failed == 0 || e.FailedBuild != "" {
					// Build errors or a crash outside any test.
					fmt.Fprint(s.out, out)
				}
			case e.Action == "skip" || strings.Contains(out, "[no test files]"):
				c.result = "no tests"
			default:
				c.result = "ok"
			}
			fmt.Fprintf(s.out, "%-4s %s %.1fs (%d run, %d failed, %d skipped)\n",
				map[string]string{"ok": "ok", "FAIL": "FAIL", "no tests": "?"}[c.result], e.Package, e.Elapsed, c.run, c.failed, c.skipped)
			return
		}
		if strings.Contains(e.Test, "/") {
			// Subtests count with their parent, whose failure prints
			// their output.
			return
		}
		s.tests = append(s.tests, timed{strings.TrimPrefix(e.Package, "github.com/ociboot/ociboot/") + "." + e.Test, e.Elapsed})
		switch e.Action {
		case "pass":
			c.passed++
		case "fail":
			c.failed++
			fmt.Fprintf(s.out, "--- FAIL: %s.%s (%.1fs)\n", e.Package, e.Test, e.Elapsed)
			fmt.Fprint(s.out, s.testOutput(e.Package, e.Test))
		case "skip":
			c.skipped++
			s.skips = append(s.skips, fmt.Sprintf("%s.%s: %s", e.Package, e.Test, skipReason(s.buf(s.output, key).String())))
		}
	}
}

// testOutput is the output of test and its subtests, in name order.
func (s *summary) testOutput(pkg, test string) string {
	var keys []string
	for k := range s.output {
		p, t, _ := strings.Cut(k, "\x00")
		if p == pkg && (t == test || strings.HasPrefix(t, test+"/")) {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		b.WriteString(s.output[k].String())
	}
	return b.String()
}

func (s *summary) table() {
	fmt.Fprintf(s.out, "\n%-50s %6s %6s %6s %7s %8s\n", "package", "run", "passed", "failed", "skipped", "time")
	var t counts
	for _, name := range s.order {
		c := s.pkgs[name]
		if c.run == 0 && c.result != "FAIL" {
			continue
		}
		fmt.Fprintf(s.out, "%-50s %6d %6d %6d %7d %7.1fs\n", strings.TrimPrefix(name, "github.com/ociboot/ociboot/"), c.run, c.passed, c.failed, c.skipped, c.elapsed)
		t.run, t.passed, t.failed, t.skipped = t.run+c.run, t.passed+c.passed, t.failed+c.failed, t.skipped+c.skipped
	}
	fmt.Fprintf(s.out, "%-50s %6d %6d %6d %7d\n", "total", t.run, t.passed, t.failed, t.skipped)
	// The slowest tests: where a long run's time goes (CI keeps it
	// under 30 minutes).
	sort.SliceStable(s.tests, func(i, j int) bool { return s.tests[i].elapsed > s.tests[j].elapsed })
	if n := min(len(s.tests), 12); n > 0 {
		fmt.Fprintf(s.out, "\nslowest tests:\n")
		for _, x := range s.tests[:n] {
			fmt.Fprintf(s.out, "  %7.1fs %s\n", x.elapsed, x.name)
		}
	}
	if len(s.skips) > 0 {
		fmt.Fprintf(s.out, "\nskipped (opt-in runs and -short always skip; with OCIBOOT_REQUIRE_ALL=1 a test missing root, a peer or a kernel fails instead):\n")
		for _, l := range s.skips {
			fmt.Fprintf(s.out, "  %s\n", l)
		}
	}
	if s.failures > 0 {
		fmt.Fprintf(s.out, "\nFAIL: %d package(s) or build(s) failed\n", s.failures)
	}
}

func main() {
	start := time.Now()
	s := newSummary(os.Stdout)
	sc := bufio.NewScanner(os.Stdin)
	sc.Buffer(make([]byte, 1<<20), 64<<20)
	for sc.Scan() {
		s.line(sc.Text())
	}
	if err := sc.Err(); err != nil {
		fmt.Fprintf(os.Stderr, "testsum: reading go test -json: %v\n", err)
		os.Exit(1)
	}
	s.table()
	fmt.Printf("(%v)\n", time.Since(start).Round(time.Second))
	if s.failures > 0 {
		os.Exit(1)
	}
}
