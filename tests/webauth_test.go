package tests

import (
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ociboot/ociboot/appliance/nodes"
	"github.com/ociboot/ociboot/appliance/store"
	"github.com/ociboot/ociboot/appliance/testenv"
	"github.com/ociboot/ociboot/tests/lab"
)

// TestHTTPFromTheLAN attacks the head node's HTTP listeners from another
// host on the segment (a second namespace) with curl: state changes need
// the gokrazy password and are refused cross-site, GET changes nothing,
// profiles are for loopback only, a reset of an unknown node is an error,
// and every listener (nfsd's status port, ocicache's :5000 registry)
// caps headers and drops a client that sends its header too slowly.
func TestHTTPFromTheLAN(t *testing.T) {
	testenv.Short(t, "network namespaces")
	lab.NeedNetns(t)
	dir := t.TempDir()
	st, err := store.Open(filepath.Join(dir, "store"), store.Options{AllowTmpfs: true})
	if err != nil {
		t.Fatal(err)
	}
	nodes.Save(st, nodes.Record{Serial: "aabbccdd", MAC: "dc:a6:32:00:00:0d", LastSeen: time.Now()})
	nd, _ := st.NodeDir("aabbccdd")
	root := filepath.Join(nd, nodes.RootDir)
	os.MkdirAll(filepath.Join(root, "etc"), 0o755)
	pw := filepath.Join(dir, "gokr-pw.txt")
	os.WriteFile(pw, []byte("hunter2\n"), 0o600)
	cfg := filepath.Join(dir, "config.json")
	os.WriteFile(cfg, []byte(`{"Netboot": {"Interface": "eth0"}}`), 0o644)

	seg := lab.NewSegment(t)
	head := seg.NewNS("head", 1)
	lan := seg.NewNS("lan", 2)
	common := []string{"-config", cfg, "-store", st.Root, "-allow_tmpfs", "-password_file", pw}
	nfsd := lab.Cmd{Name: "nfsd", NS: head, Args: append(append([]string{lab.Binary(t, "nfsd")}, common...),
		"-status", ":9049", "-nfs_addr", "127.0.0.1:2049", "-portmap_addr", "")}.Start(t)
	nfsd.WaitFor(t, "status listening", 20*time.Second)
	cache := lab.Cmd{Name: "ocicache", NS: head, Args: append(append([]string{lab.Binary(t, "ocicache")}, common...),
		"-status", "127.0.0.1:9050", "-registry", ":5000")}.Start(t)
	cache.WaitFor(t, "registry listening", 20*time.Second)
	base := "http://" + seg.Addr(1) + ":9049"

	curl := func(ns string, args ...string) string {
		t.Helper()
		out, err := exec.Command("ip", append([]string{"netns", "exec", ns, "curl", "-s", "--max-time", "10", "-o", "/dev/null", "-w", "%{http_code}"}, args...)...).Output()
		if err != nil && len(out) == 0 {
			t.Fatalf("curl %v in %s: %v", args, ns, err)
		}
		return string(out)
	}
	for _, c := range []struct {
		what string
		args []string
		want string
	}{
		{"reset without password", []string{"-X", "POST", base + "/reset?node=aabbccdd&force=1"}, "401"},
		{"reset with a wrong password", []string{"-u", "gokrazy:guess", "-X", "POST", base + "/reset?node=aabbccdd&force=1"}, "401"},
		{"reset from another site's page (Origin)", []string{"-u", "gokrazy:hunter2", "-H", "Origin: http://evil.example", "-X", "POST", base + "/reset?node=aabbccdd&force=1"}, "403"},
		{"reset from another site's page (Sec-Fetch-Site)", []string{"-u", "gokrazy:hunter2", "-H", "Sec-Fetch-Site: cross-site", "-X", "POST", base + "/reset?node=aabbccdd&force=1"}, "403"},
		{"reset by GET", []string{"-u", "gokrazy:hunter2", base + "/reset?node=aabbccdd&force=1"}, "405"},
		{"forget without password", []string{"-X", "POST", base + "/forget?node=aabbccdd&force=1"}, "401"},
		{"reset of an unknown node", []string{"-u", "gokrazy:hunter2", "-X", "POST", base + "/reset?node=0badc0de"}, "404"},
		{"pprof from the LAN", []string{base + "/debug/pprof/goroutine?debug=1"}, "403"},
		{"a 100 KiB header", []string{"-H", "X-Pad: " + strings.Repeat("a", 100<<10), base + "/status"}, "431"},
		{"registry: a 100 KiB header", []string{"-H", "X-Pad: " + strings.Repeat("a", 100<<10), "http://" + seg.Addr(1) + ":5000/v2/"}, "431"},
		{"status still readable", []string{base + "/status"}, "200"},
	} {
		if got := curl(lan, c.args...); got != c.want {
			t.Errorf("%s: got HTTP %s, want %s", c.what, got, c.want)
		}
	}
	if _, err := os.Stat(root); err != nil {
		t.Fatalf("the attacks dropped the node's root: %v", err)
	}
	// Profiles stay available on the head node itself.
	if got := curl(head, "http://127.0.0.1:9049/debug/pprof/goroutine?debug=1"); got != "200" {
		t.Errorf("pprof on loopback: got HTTP %s, want 200", got)
	}
	// The admin with the password resets it.
	if got := curl(lan, "-u", "gokrazy:hunter2", "-X", "POST", base+"/reset?node=aabbccdd"); got != "200" {
		t.Errorf("reset with the password: got HTTP %s, want 200", got)
	}
	if _, err := os.Stat(root); err == nil {
		t.Error("reset with the password left the root")
	}

	// A client that sends its header slowly is dropped after the
	// header deadline, on both listeners.
	for _, addr := range []string{seg.Addr(1) + ":9049", seg.Addr(1) + ":5000"} {
		lab.InNS(t, lan, func() {
			c, err := net.DialTimeout("tcp", addr, 5*time.Second)
			if err != nil {
				t.Errorf("dial %s: %v", addr, err)
				return
			}
			defer c.Close()
			fmt.Fprintf(c, "GET /status HTTP/1.1\r\nHost: x\r\n")
			start := time.Now()
			c.SetDeadline(time.Now().Add(40 * time.Second))
			_, err = io.Copy(io.Discard, c) // until the server closes
			if took := time.Since(start); err != nil || took > 20*time.Second {
				t.Errorf("%s: a half-sent header held the connection %v (err %v), want it closed after the 10 s header deadline", addr, took.Round(time.Second), err)
			}
		})
	}
}
