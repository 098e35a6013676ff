package testenv

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

func TestRequired(t *testing.T) {
	for _, tc := range []struct {
		require, ci string
		want        bool
	}{
		{"", "", false},
		{"1", "", true},
		{"0", "true", false},
		{"", "true", true},
		{"", "1", false},
		{"1", "false", true},
	} {
		t.Setenv(RequireEnv, tc.require)
		t.Setenv("CI", tc.ci)
		if got := Required(); got != tc.want {
			t.Errorf("%s=%q CI=%q: got %v, want %v", RequireEnv, tc.require, tc.ci, got, tc.want)
		}
	}
}

// TestNeedFailsWhenRequired runs this test binary again on a test that
// needs a program nobody has: it must skip by default and fail with
// OCIBOOT_REQUIRE_ALL=1.
func TestNeedFailsWhenRequired(t *testing.T) {
	if os.Getenv("OCIBOOT_TESTENV_CHILD") == "1" {
		NeedTool(t, "ociboot-no-such-program", "ociboot-no-such-package")
		return
	}
	for _, tc := range []struct {
		require string
		fails   bool
		want    string
	}{
		{"0", false, "--- SKIP"},
		{"1", true, "--- FAIL"},
	} {
		cmd := exec.Command(os.Args[0], "-test.run", "^TestNeedFailsWhenRequired$", "-test.v")
		cmd.Env = append(os.Environ(), "OCIBOOT_TESTENV_CHILD=1", RequireEnv+"="+tc.require)
		out, err := cmd.CombinedOutput()
		if got := err != nil; got != tc.fails {
			t.Errorf("%s=%s: failed %v, want %v\n%s", RequireEnv, tc.require, got, tc.fails, out)
		}
		if !strings.Contains(string(out), tc.want) || !strings.Contains(string(out), "install the Debian package ociboot-no-such-package") {
			t.Errorf("%s=%s: output lacks %q and the package:\n%s", RequireEnv, tc.require, tc.want, out)
		}
	}
}
