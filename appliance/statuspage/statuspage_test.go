package statuspage

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/ociboot/ociboot/appliance/config"
	"github.com/ociboot/ociboot/appliance/images"
	"github.com/ociboot/ociboot/appliance/nodes"
	"github.com/ociboot/ociboot/appliance/store"
)

func fixture(t *testing.T) (*Page, *httptest.Server) {
	t.Helper()
	st, err := store.Open(t.TempDir(), store.Options{AllowTmpfs: true})
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Parse([]byte(`{"Netboot": {"DefaultImage": "localhost:5000/node:v1", "Nodes": [
		{"Name": "node2", "Serial": "abcd0002", "IP": "10.42.0.12"},
		{"Name": "typo", "Serial": "abcd0009"}]}}`))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)
	digest := "sha256:" + strings.Repeat("1f", 32)
	nodes.Save(st, nodes.Record{Serial: "abcd0002", MAC: "dc:a6:32:00:00:02", IP: "10.42.0.12", Image: "localhost:5000/node:v1", LastSeen: now.Add(-3 * time.Second)})
	nodes.Save(st, nodes.Record{Serial: "abcd0003", MAC: "dc:a6:32:00:00:03", IP: "10.42.0.13", Image: "localhost:5000/node:v1", LastSeen: now})
	nodes.SaveStage(st, "abcd0002", "nfsd", nodes.Stage{Stage: nodes.StageRoot, Time: now})
	nodes.SaveStage(st, "abcd0003", "tftpd", nodes.Stage{Stage: nodes.StageFirmware, Time: now, Detail: "start4.elf",
		LastError: "kernel8.img: not in image", ErrorTime: now})
	nodes.SaveConsole(st, "abcd0003", []nodes.ConsoleLine{
		{Time: now.Add(-2 * time.Second), From: "169.254.1.1:6665", Text: "RPi: BOOTLOADER release VERSION:2c4b2a9c"},
		{Time: now.Add(-time.Second), From: "169.254.1.1:6665", Text: "TFTP_GET: <abcd0003/start4.elf>"}})
	nodes.SaveEEPROMUpdate(st, "abcd0002", nodes.EEPROMUpdate{File: "abcd0002/pieeprom.upd", Size: 524288, SHA256: strings.Repeat("ab", 32), Time: now.Add(-time.Minute)})
	images.SaveIndex(st, images.Index{Entries: []images.Entry{{Ref: "localhost:5000/node:v1", Platform: "linux/arm64", Digest: digest, BootDir: "boot/firmware", Kernel: "kernel8.img", Pulled: now}}})
	// abcd0003's root was made from an older image than the one its
	// reference means now.
	dir, _ := st.NodeDir("abcd0003")
	store.WriteJSON(dir+"/"+nodes.ViewFile, map[string]string{"Digest": "sha256:" + strings.Repeat("0e", 32)})
	os.MkdirAll(dir+"/root/boot/firmware", 0o755)

	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/status" {
			http.NotFound(w, r)
			return
		}
		io.WriteString(w, `{"pulls": [{"ref": "localhost:5000/node:v2", "bytes": 1234}]}`)
	}))
	t.Cleanup(up.Close)
	p := &Page{Config: cfg, Store: st, Now: func() time.Time { return now },
		Services: []Service{{Name: "ocicache", URL: up.URL}, {Name: "nfsd", URL: "http://127.0.0.1:1"}}}
	srv := httptest.NewServer(p)
	t.Cleanup(srv.Close)
	return p, srv
}

func TestOverview(t *testing.T) {
	_, srv := fixture(t)
	resp, err := http.Get(srv.URL + "/api/status")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var ov Overview
	if err := json.NewDecoder(resp.Body).Decode(&ov); err != nil {
		t.Fatal(err)
	}
	if got, want := len(ov.Nodes), 3; got != want {
		t.Fatalf("nodes: got %d, want %d: %+v", got, want, ov.Nodes)
	}
	byName := map[string]Node{}
	for _, n := range ov.Nodes {
		byName[n.Name] = n
	}
	if n := byName["node2"]; n.Stage != nodes.StageRoot || !n.Known || !strings.HasPrefix(n.Digest, "sha256:1f1f") {
		t.Errorf("node2: got %+v", n)
	}
	if n := byName["abcd0003"]; n.Known || n.LastError != "kernel8.img: not in image" || n.Stage != nodes.StageFirmware || !strings.HasPrefix(n.RootDigest, "sha256:0e0e") {
		t.Errorf("enrolled node: got %+v", n)
	}
	if n := byName["typo"]; n.Seen || n.Stage != "" {
		t.Errorf("configured but unseen node: got %+v", n)
	}
	if got, want := len(ov.Services), 2; got != want {
		t.Fatalf("services: got %d, want %d", got, want)
	}
	if !ov.Services[0].Up || ov.Services[1].Up || !strings.Contains(ov.Services[1].Error, "not answering") {
		t.Errorf("service states: %+v", ov.Services)
	}
}

func TestHTML(t *testing.T) {
	_, srv := fixture(t)
	resp, err := http.Get(srv.URL + "/")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	html := string(b)
	for _, want := range []string{
		`<h3>node2 <span class="badge online liveness">online since 12:00:00</span>`,
		`<h3>typo <span class="badge notseen liveness">not seen</span>`,
		"Last error: kernel8.img: not in image. What to do: the file is not in the image&#39;s boot directory",
		"<code>sha256:1f1f1f1f1f1f</code>",
		`<span class="badge down">down</span>`,
		"image changed: the root was made from sha256:0e0e0e0e0e0e; reimage the node",
		"boots from its own root (nodes/abcd0003/root/boot/firmware)",
		"boots from image localhost:5000/node:v1",
		"boot log: 2 lines, the last 1s ago",
		"11:59:59 TFTP_GET: &lt;abcd0003/start4.elf&gt;\n",
		"bootloader update abcd0002/pieeprom.upd (524288 bytes, sha256 abababababababababa) fetched 1m0s ago",
		`<li>root-mounted at 12:00:00</li>`,
		`<form method="post" action="/api/reset" class="reset"`,
		`http://127.0.0.1:1/status`,
	} {
		if !strings.Contains(html, want) {
			t.Errorf("page lacks %q", want)
		}
	}
	resp, _ = http.Get(srv.URL + "/nope")
	if got, want := resp.StatusCode, http.StatusNotFound; got != want {
		t.Errorf("/nope: got %d, want %d", got, want)
	}
}

func TestPendingReimage(t *testing.T) {
	p, _ := fixture(t)
	cfg, err := config.Parse([]byte(`{"Netboot": {"DefaultImage": "localhost:5000/node:v1", "Reimage": "on-boot"}}`))
	if err != nil {
		t.Fatal(err)
	}
	p.Config = cfg
	for _, n := range p.Collect(context.Background(), "").Nodes {
		if n.Serial != "abcd0003" {
			continue
		}
		if !strings.HasPrefix(n.ImageChange, "image changed, pending reimage") {
			t.Errorf("ImageChange: got %q, want \"image changed, pending reimage...\"", n.ImageChange)
		}
		if got, want := n.BootsFrom, "image localhost:5000/node:v1 (reimage at next mount)"; got != want {
			t.Errorf("BootsFrom: got %q, want %q", got, want)
		}
		return
	}
	t.Error("node abcd0003 not listed")
}

func TestMetricsLink(t *testing.T) {
	for _, tt := range []struct{ svc, host, want string }{
		{"http://127.0.0.1:9067", "ociboot:8080", "http://ociboot:9067/metrics"},
		{"http://0.0.0.0:9069", "10.0.0.1:8080", "http://10.0.0.1:9069/metrics"},
		{"http://10.0.0.5:9049", "ociboot:8080", "http://10.0.0.5:9049/metrics"},
	} {
		if got := metricsLink(tt.svc, tt.host); got != tt.want {
			t.Errorf("metricsLink(%q, %q) = %q, want %q", tt.svc, tt.host, got, tt.want)
		}
	}
}
