package statuspage

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ociboot/ociboot/appliance/config"
	"github.com/ociboot/ociboot/appliance/images"
	"github.com/ociboot/ociboot/appliance/nodes"
	"github.com/ociboot/ociboot/appliance/service"
	"github.com/ociboot/ociboot/appliance/store"
	"github.com/ociboot/ociboot/appliance/webauth"
)

func TestNodeStates(t *testing.T) {
	st, err := store.Open(t.TempDir(), store.Options{AllowTmpfs: true})
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Parse([]byte(`{"Netboot": {"DefaultImage": "localhost:5000/node:v1", "Nodes": [
		{"Name": "broken", "Serial": "abcd0001", "Image": "localhost:5000/nope:v1"},
		{"Name": "stuck", "Serial": "abcd0002"},
		{"Name": "up", "Serial": "abcd0003"}]}}`))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)
	images.SaveIndex(st, images.Index{Entries: []images.Entry{
		{Ref: "localhost:5000/node:v1", Platform: "linux/arm64", Digest: "sha256:" + strings.Repeat("1f", 32), Pulled: now},
		{Ref: "localhost:5000/nope:v1", Platform: "linux/arm64", LastAttempt: now.Add(-time.Minute), LastError: "NAME_UNKNOWN"}}})
	nodes.SaveStage(st, "abcd0001", "dhcpd", nodes.Stage{Stage: nodes.StageDHCP, Time: now})
	old := now.Add(-time.Hour)
	nodes.SaveStage(st, "abcd0002", "dhcpd", nodes.Stage{Stage: nodes.StageDHCP, Time: old})
	nodes.SaveStage(st, "abcd0002", "tftpd", nodes.Stage{Stage: nodes.StageFirmware, Time: old.Add(time.Second)})
	nodes.SaveStage(st, "abcd0003", "dhcpd", nodes.Stage{Stage: nodes.StageDHCP, Time: now.Add(-30 * time.Second)})
	nodes.SaveStage(st, "abcd0003", "nfsd", nodes.Stage{Stage: nodes.StageRoot, Time: now.Add(-10 * time.Second)})
	nfsd := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, `{"Exports": [{"Node": "abcd0003", "Used": 12345}]}`)
	}))
	defer nfsd.Close()
	service.SaveState(st, service.State{Service: "tftpd", Time: now.Add(-time.Minute), Error: "tftpd: listen on UDP 69: address already in use"})
	p := &Page{Config: cfg, Store: st, Now: func() time.Time { return now }, Services: []Service{{Name: "tftpd", URL: "http://127.0.0.1:1"}, {Name: "nfsd", URL: nfsd.URL}}}
	ov := p.Collect(context.Background(), "")
	by := map[string]Node{}
	for _, n := range ov.Nodes {
		by[n.Name] = n
	}
	for _, c := range []struct {
		node, liveness, stage, problem string
	}{
		{"broken", Booting, nodes.StageDHCP, "Its image localhost:5000/nope:v1 could not be pulled (1m0s ago): NAME_UNKNOWN. What to do"},
		{"stuck", Offline, nodes.StageFirmware, "Its last boot stopped after firmware (59m59s ago); it fetched its firmware but no kernel"},
		{"up", Online, nodes.StageRoot, ""},
	} {
		n := by[c.node]
		if n.Liveness != c.liveness || n.Stage != c.stage || !strings.HasPrefix(n.Problem, c.problem) || (c.problem == "") != (n.Problem == "") {
			t.Errorf("%s: got liveness %q stage %q problem %q; want %q %q %q", c.node, n.Liveness, n.Stage, n.Problem, c.liveness, c.stage, c.problem)
		}
	}
	if got, want := by["up"].DiskBytes, int64(12345); got != want {
		t.Errorf("up's disk: got %d, want %d", got, want)
	}
	if got, want := by["stuck"].DiskBytes, int64(-1); got != want {
		t.Errorf("stuck's disk (not measured): got %d, want %d", got, want)
	}
	if s := ov.Services[0]; s.Up || !strings.Contains(s.Error, "address already in use") {
		t.Errorf("tftpd: got %+v, want down with the reason it recorded", s)
	}
}

// The page forwards actions to the owner with the caller's password;
// without it, or from another site, nothing is forwarded.
func TestActionsForwarded(t *testing.T) {
	st, _ := store.Open(t.TempDir(), store.Options{AllowTmpfs: true})
	cfg, _ := config.Parse([]byte(`{}`))
	var got []string
	nfsd := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u, pw, _ := r.BasicAuth()
		r.ParseForm()
		got = append(got, r.Method+" "+r.URL.Path+" "+r.Form.Encode()+" "+u+":"+pw)
		io.WriteString(w, "node abcd0002: root dropped\n")
	}))
	defer nfsd.Close()
	pwFile := filepath.Join(t.TempDir(), "pw")
	os.WriteFile(pwFile, []byte("s3cret"), 0o600)
	p := &Page{Config: cfg, Store: st, Guard: &webauth.Guard{Files: []string{pwFile}}, Services: []Service{{Name: "nfsd", URL: nfsd.URL}}}
	srv := httptest.NewServer(p)
	defer srv.Close()
	post := func(path string, hdr map[string]string, auth bool) int {
		req, _ := http.NewRequest("POST", srv.URL+path, strings.NewReader("node=abcd0002&force=1"))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		if auth {
			req.SetBasicAuth("gokrazy", "s3cret")
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := post("/api/reset", nil, false); code != 401 {
		t.Errorf("without password: got %d, want 401", code)
	}
	if code := post("/api/reset", map[string]string{"Origin": "http://evil.example"}, true); code != 403 {
		t.Errorf("cross-site: got %d, want 403", code)
	}
	if len(got) != 0 {
		t.Errorf("refused actions reached nfsd: %q", got)
	}
	if code := post("/api/reset", nil, true); code != 200 {
		t.Errorf("with password: got %d, want 200", code)
	}
	if want := []string{"POST /reset force=1&node=abcd0002 gokrazy:s3cret"}; len(got) != 1 || got[0] != want[0] {
		t.Errorf("forwarded: got %q, want %q", got, want)
	}
	resp, _ := http.Get(srv.URL + "/api/reset?node=abcd0002")
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed || len(got) != 1 {
		t.Errorf("GET /api/reset: got %d and %d forwards, want 405 and none", resp.StatusCode, len(got)-1)
	}
}

// A node whose root nfsd sees in use gets a reset button that says so,
// a confirmation that warns, and force.
func TestResetWarnsWhenInUse(t *testing.T) {
	st, _ := store.Open(t.TempDir(), store.Options{AllowTmpfs: true})
	cfg, _ := config.Parse([]byte(`{"Netboot": {"DefaultImage": "localhost:5000/node:v1", "Nodes": [{"Name": "n1", "Serial": "abcd0001", "IP": "10.0.0.11"}]}}`))
	now := time.Now().UTC()
	nodes.SaveStage(st, "abcd0001", "nfsd", nodes.Stage{Stage: nodes.StageRoot, Time: now.Add(-time.Minute)})
	nfsd := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, `{"Mounts": [{"Client": "10.0.0.11", "Path": "/nodes/abcd0001"}], "Activity": [{"Client": "10.0.0.11", "Time": %q}]}`, now.Add(-5*time.Second).Format(time.RFC3339Nano))
	}))
	defer nfsd.Close()
	srv := httptest.NewServer(&Page{Config: cfg, Store: st, Services: []Service{{Name: "nfsd", URL: nfsd.URL}}})
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{"is running from its root right now", `<input type="hidden" name="force" value="1">`, "Reset (in use!)", `<span class="badge online liveness">online`} {
		if !strings.Contains(string(b), want) {
			t.Errorf("page lacks %q", want)
		}
	}
}
