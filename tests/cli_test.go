package tests

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ociboot/ociboot/appliance/testenv"
	"github.com/ociboot/ociboot/tests/lab"
)

// TestBadConfigOneLinePerProblem runs each real service binary against a
// config.json with several mistakes: each must refuse to start and name every
// problem on its own line.
func TestBadConfigOneLinePerProblem(t *testing.T) {
	testenv.Short(t, "builds the service binaries")
	bins := lab.Binaries(t, "dhcpd", "tftpd", "ocicache", "nfsd", "nbdd")
	dir := t.TempDir()
	cfg := filepath.Join(dir, "config.json")
	os.WriteFile(cfg, []byte(`{
  "Hostname": "ociboot",
  "Netboot": {
    "Mode": "fulll",
    "LeaseSeconds": "3600",
    "Nodes": [
      {"Serial": "abcd1234", "MAC": "dc:a6:32:00:00:01"},
      {"Serial": "abcd1235", "MAC": "zz:.."},
      {"Name": "n3", "Serail": "abcd1236"}
    ]
  }
}`), 0o644)
	want := []string{
		`Netboot.LeaseSeconds: want a whole number, got "3600"`,
		`Netboot.Mode: "fulll" is not a mode; use "proxy" or "full"`,
		`Netboot.Nodes[1].MAC: "zz:.." is not a MAC address`,
		`Netboot.Nodes[2].Serail: unknown key`,
		`Netboot.Nodes[2]: needs a Serial or a MAC to recognise the node`,
	}
	for _, svc := range []string{"dhcpd", "tftpd", "ocicache", "nfsd", "nbdd"} {
		cmd := exec.Command(filepath.Join(bins, svc), "-config", cfg, "-store", filepath.Join(dir, "store"), "-allow_tmpfs", "-status", "")
		var stderr strings.Builder
		cmd.Stderr = &stderr
		err := cmd.Run()
		out := stderr.String() // what gokrazy's UI shows of a crashing service
		if err == nil {
			t.Errorf("%s started with a bad config", svc)
			continue
		}
		// The reason is also where the status page reads it.
		var state struct{ Error string }
		if b, err := os.ReadFile(filepath.Join(dir, "store", "services", svc+".json")); err != nil || json.Unmarshal(b, &state) != nil || !strings.Contains(state.Error, `"fulll" is not a mode`) {
			t.Errorf("%s recorded no reason for the status page: %s, %v", svc, b, err)
		}
		for _, w := range want {
			found := false
			for _, line := range strings.Split(string(out), "\n") {
				if strings.HasPrefix(line, w) {
					found = true
				}
			}
			if !found {
				t.Errorf("%s output lacks a line starting %q:\n%s", svc, w, out)
			}
		}
	}
}
