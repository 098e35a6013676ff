package tests

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ociboot/ociboot/appliance/testenv"
	"github.com/ociboot/ociboot/tests/lab"
)

// TestLiveConfig edits config.json under a running status service: a
// valid change is applied (the service starts over in place, same pid),
// an invalid one is refused with the reason on the page while the service
// keeps running with the config it has.
func TestLiveConfig(t *testing.T) {
	testenv.Short(t, "starts the status service")
	dir := t.TempDir()
	cfg := filepath.Join(dir, "config.json")
	os.WriteFile(cfg, []byte(`{"Netboot": {"Nodes": [{"Name": "first", "Serial": "abcd0001"}]}}`), 0o644)
	ln := lab.ListenTCP(t)
	p := lab.Cmd{Name: "status", Files: ln.Files(), Args: []string{lab.Binary(t, "status"), "-config", cfg, "-store", filepath.Join(dir, "store"), "-allow_tmpfs",
		"-status", ln.Addr, "-dhcpd", "http://127.0.0.1:1", "-tftpd", "http://127.0.0.1:1", "-ocicache", "http://127.0.0.1:1", "-nfsd", "http://127.0.0.1:1", "-nbdd", "http://127.0.0.1:1"}}.Start(t)
	p.WaitFor(t, "status listening", 10*time.Second)
	pid := p.Pid()
	overview := func() (names []string, problems string) {
		resp, err := (&http.Client{Timeout: 3 * time.Second}).Get(fmt.Sprintf("http://%s/api/status", ln.Addr))
		if err != nil {
			return nil, err.Error()
		}
		defer resp.Body.Close()
		var ov struct {
			Nodes    []struct{ Name string }
			Services []struct{ ConfigError string }
		}
		json.NewDecoder(resp.Body).Decode(&ov)
		for _, n := range ov.Nodes {
			names = append(names, n.Name)
		}
		return names, ""
	}
	waitFor := func(what string, ok func() bool) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for !ok() {
			if time.Now().After(deadline) {
				t.Fatalf("%s: not within 30 s\n%s", what, p.Tail(3000))
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	os.WriteFile(cfg, []byte(`{"Netboot": {"Nodes": [{"Name": "first", "Serial": "abcd0001"}, {"Name": "second", "Serial": "abcd0002"}]}}`), 0o644)
	waitFor("the new node on the page", func() bool {
		names, _ := overview()
		return strings.Join(names, ",") == "first,second"
	})
	if p.Pid() != pid || p.Exited() {
		t.Errorf("the service was not restarted in place (pid %d, was %d, exited %v)", p.Pid(), pid, p.Exited())
	}
	if !strings.Contains(p.Output(), "config.json changed: restarting to apply it") {
		t.Errorf("no restart logged:\n%s", p.Tail(2000))
	}
	os.WriteFile(cfg, []byte(`{"Netboot": {"Mode": "fulll"}}`), 0o644)
	statePath := filepath.Join(dir, "store", "services", "status.json")
	waitFor("the refusal recorded", func() bool {
		b, _ := os.ReadFile(statePath)
		var st struct{ ConfigError string }
		json.Unmarshal(b, &st)
		return strings.Contains(st.ConfigError, `"fulll" is not a mode`)
	})
	names, _ := overview()
	if strings.Join(names, ",") != "first,second" || p.Exited() {
		t.Errorf("after an invalid change: nodes %v, exited %v; want the previous config still served", names, p.Exited())
	}
	resp, err := http.Get(fmt.Sprintf("http://%s/", ln.Addr))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	page := string(b)
	if !strings.Contains(page, "config.json changed but is not valid; still running with the previous one") {
		t.Error("the page does not show the refused config")
	}
}
