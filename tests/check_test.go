package tests

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ociboot/ociboot/appliance/testenv"
	"github.com/ociboot/ociboot/tests/lab"
)

// TestMakeCheck runs `make check` on configs a user could write: a bad one
// stops with every problem named, the warnings (mis-cased Netboot key, no
// DefaultImage, an image no registry answers for) do not stop it, and
// make image, root and update run it before gok.
func TestMakeCheck(t *testing.T) {
	testenv.Short(t, "runs make and go run")
	root := lab.RepoRoot()
	dir := t.TempDir()
	for _, c := range []struct {
		name, config string
		ok           bool
		want         []string
	}{
		{"bad", `{"Netboot": {"Mode": "fulll", "Nodes": [{"Serial": "abcd1235", "MAC": "zz:.."}]}}`, false,
			[]string{`Netboot.Mode: "fulll" is not a mode; use "proxy" or "full"`, `Netboot.Nodes[0].MAC: "zz:.." is not a MAC address`, "check: config.json is not valid"}},
		{"syntax", "{\"Netboot\": {\n\"Mode\": \"full\",}}", false, []string{"line 2"}},
		{"mis-cased", `{"netboot": {"DefaultImage": "127.0.0.1:1/node:v1"}}`, true,
			[]string{`warning: config.json: key "netboot" is not "Netboot": it is ignored`, "warning: Netboot.DefaultImage is empty"}},
		{"unreachable", `{"Netboot": {"DefaultImage": "127.0.0.1:1/node:v1"}}`, true,
			[]string{"warning: image 127.0.0.1:1/node:v1 is not reachable from here", "1 warnings"}},
		{"good offline", `{"Netboot": {"DefaultImage": "127.0.0.1:1/node:v1", "Enroll": "known-only"}}`, true, []string{"valid (proxy mode on eth0"}},
	} {
		cfg := filepath.Join(dir, strings.ReplaceAll(c.name, " ", "-")+".json")
		os.WriteFile(cfg, []byte(c.config), 0o644)
		flags := ""
		if c.name == "good offline" {
			flags = "-online=false"
		}
		cmd := exec.Command("make", "-s", "-C", root, "check", "CHECK_CONFIG="+cfg, "CHECKFLAGS="+flags)
		out, err := cmd.CombinedOutput()
		if got := err == nil; got != c.ok {
			t.Errorf("%s: make check succeeded %v, want %v:\n%s", c.name, got, c.ok, out)
		}
		for _, w := range c.want {
			if !strings.Contains(string(out), w) {
				t.Errorf("%s: make check output lacks %q:\n%s", c.name, w, out)
			}
		}
	}
	// The build targets check first: with a bad config gok never runs.
	for _, target := range []string{"image", "root", "update"} {
		bad := filepath.Join(dir, "bad.json")
		out, err := exec.Command("make", "-s", "-C", root, target, "CHECK_CONFIG="+bad, "CHECKFLAGS=-online=false").CombinedOutput()
		if err == nil || !strings.Contains(string(out), `"fulll" is not a mode`) || strings.Contains(string(out), "gok") && strings.Contains(string(out), "overwrite") {
			t.Errorf("make %s with a bad config: err %v, want it stopped by check:\n%s", target, err, lab.Tail(string(out), 2000))
		}
	}
}
