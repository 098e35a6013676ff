package service

import (
	"context"
	"encoding/json"
	"flag"
	"io"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/ociboot/ociboot/appliance/metrics"

	"github.com/ociboot/ociboot/appliance/webauth"
)

func TestSetupServesStatusAndMetrics(t *testing.T) {
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "config.json")
	os.WriteFile(cfgPath, []byte(`{"Hostname": "h", "Netboot": {"Interface": "lo"}}`), 0o644)
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	f := RegisterFlags(fs, "127.0.0.1:0")
	if err := fs.Parse([]string{"-config", cfgPath, "-store", filepath.Join(dir, "store"), "-allow_tmpfs"}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	env, err := Setup(ctx, "testd", f, os.Stdout)
	if err != nil {
		t.Fatal(err)
	}
	env.SetStatus(func() any { return map[string]int{"answers": 42} })
	c := metrics.NewCounter(metrics.CounterOpts{Name: "answers_total", Help: "Answers."})
	env.Metrics.MustRegister(c)
	c.Add(3)
	base := "http://" + env.StatusAddr.String()

	resp, err := http.Get(base + "/status")
	if err != nil {
		t.Fatal(err)
	}
	var st map[string]int
	json.NewDecoder(resp.Body).Decode(&st)
	resp.Body.Close()
	if got, want := st["answers"], 42; got != want {
		t.Errorf("/status answers: got %d, want %d", got, want)
	}
	resp, err = http.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(b), "go_goroutines") {
		t.Errorf("/metrics lacks go_goroutines:\n%.300s", b)
	}
	// The service's own metrics carry its prefix, whatever the library
	// called them.
	if !strings.Contains(string(b), "\nociboot_testd_answers_total 3\n") {
		t.Errorf("/metrics lacks ociboot_testd_answers_total 3:\n%s", b)
	}
	resp, err = http.Get(base + "/debug/pprof/goroutine?debug=1")
	if err != nil {
		t.Fatal(err)
	}
	b, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(b), "goroutine profile") {
		t.Errorf("/debug/pprof/goroutine: %s\n%.300s", resp.Status, b)
	}
}

func TestSetupReportsBadConfig(t *testing.T) {
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "config.json")
	os.WriteFile(cfgPath, []byte(`{"Netboot": {"Mode": "both", "Nodes": [{"MAC": "x"}]}}`), 0o644)
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	f := RegisterFlags(fs, "")
	fs.Parse([]string{"-config", cfgPath, "-store", filepath.Join(dir, "store")})
	_, err := Setup(context.Background(), "testd", f, os.Stdout)
	if err == nil {
		t.Fatal("got nil error for a bad config")
	}
	for _, want := range []string{`Netboot.Mode: "both"`, `Netboot.Nodes[0].MAC: "x" is not a MAC address`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
}

func TestMetricNamesWithoutSamples(t *testing.T) {
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "config.json")
	os.WriteFile(cfgPath, []byte(`{"Netboot": {}}`), 0o644)
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	f := RegisterFlags(fs, "127.0.0.1:0")
	fs.Parse([]string{"-config", cfgPath, "-store", filepath.Join(dir, "store"), "-allow_tmpfs"})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	env, err := Setup(ctx, "testd", f, os.Stdout)
	if err != nil {
		t.Fatal(err)
	}
	env.Metrics.MustRegister(metrics.NewCounterVec(metrics.CounterOpts{Name: "errors_total", Help: "Errors."}, []string{"kind"}))
	resp, err := http.Get("http://" + env.StatusAddr.String() + "/metrics/names")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var got []string
	json.NewDecoder(resp.Body).Decode(&got)
	if len(got) != 1 || got[0] != "ociboot_testd_errors_total" {
		t.Errorf("/metrics/names: got %q, want [ociboot_testd_errors_total]", got)
	}
}

// TestHandleNode: a node endpoint is reached without the password, by the
// node's address alone; every other state change still needs it.
func TestHandleNode(t *testing.T) {
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "config.json")
	os.WriteFile(cfgPath, []byte(`{"Netboot": {}}`), 0o644)
	pw := filepath.Join(dir, "gokr-pw.txt")
	os.WriteFile(pw, []byte("s3cret\n"), 0o600)
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	f := RegisterFlags(fs, "127.0.0.1:0")
	fs.Parse([]string{"-config", cfgPath, "-store", filepath.Join(dir, "store"), "-allow_tmpfs", "-password_file", pw})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	env, err := Setup(ctx, "testd", f, os.Stdout)
	if err != nil {
		t.Fatal(err)
	}
	var isNode atomic.Bool
	env.HandleNode("POST /report", func(a netip.Addr) (string, bool) { return "abcd0001", isNode.Load() && a.IsLoopback() },
		http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "report from "+webauth.NodeKey(r)) }))
	env.Mux.HandleFunc("POST /reset", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "reset") })
	base := "http://" + env.StatusAddr.String()
	post := func(path string) (int, string) {
		t.Helper()
		resp, err := http.Post(base+path, "application/json", strings.NewReader("{}"))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := post("/report"); code != 403 {
		t.Errorf("POST /report from an address that is no node's: %d %q, want 403", code, body)
	}
	isNode.Store(true)
	if code, body := post("/report"); code != 200 || body != "report from abcd0001" {
		t.Errorf("POST /report from the node: %d %q, want 200 \"report from abcd0001\"", code, body)
	}
	if code, body := post("/reset"); code != 401 {
		t.Errorf("POST /reset without the password, from the node's address: %d %q, want 401", code, body)
	}
	resp, err := http.Get(base + "/status")
	if err != nil || resp.StatusCode != 200 {
		t.Errorf("GET /status beside a node endpoint: %v %v", resp, err)
	}
	resp.Body.Close()
}
