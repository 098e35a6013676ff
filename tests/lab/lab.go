// Package lab is the scaffolding every test of this repository builds on:
// network namespaces joined into L2 segments by a bridge (veth pairs for
// namespaces, tap devices for QEMU machines), processes whose output is
// kept and waited on, the service binaries built once per test binary,
// listening sockets handed to services as file descriptors, the
// repository root, and QEMU command lines for x86 and arm64 guests.
//
// Names: every namespace is ob<pid>-<n>-<role>, unique on this machine
// because of the pid; the first namespace a test binary creates removes
// those of earlier runs whose process is gone. A segment's addresses are
// 10.8.<n>.0/24, one /24 per segment (namespaces keep segments of
// different test binaries apart). Needs root; what is missing is reported
// through package testenv (skip, or fail in CI).
package lab

import (
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
)

// RepoRoot is the module root: the directory of go.mod and config.json,
// the gokrazy instance.
func RepoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Dir(filepath.Dir(filepath.Dir(file)))
}

// Run runs a command and fails t with its output if it fails.
func Run(t testing.TB, args ...string) string {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%v: %v\n%s", args, err, out)
	}
	return string(out)
}

// Tail is the end of s, at most n bytes, starting at a line.
func Tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	s = s[len(s)-n:]
	for i := 0; i < len(s) && i < 200; i++ {
		if s[i] == '\n' {
			return s[i+1:]
		}
	}
	return s
}
