package tests

import (
	"fmt"
	"image/png"
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

// chromium runs Debian's headless Chromium with the flags that keep it off
// the network except for the page under test.
func chromium(t *testing.T, args ...string) []byte {
	t.Helper()
	base := []string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--user-data-dir=" + t.TempDir(), "--window-size=1280,900"}
	cmd := exec.Command("chromium", append(base, args...)...)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%v: %v", cmd.Args, err)
	}
	return out
}

// TestStatusPageInChromium starts the real status service on a store with
// two nodes, renders its page in headless Chromium and checks both the DOM
// and the pixels of a screenshot (the boot-stage badges are coloured).
func TestStatusPageInChromium(t *testing.T) {
	testenv.Short(t, "starts the status service and Chromium")
	need(t, "chromium")
	dir := t.TempDir()
	st, err := store.Open(filepath.Join(dir, "store"), store.Options{AllowTmpfs: true})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	nodes.Save(st, nodes.Record{Serial: "abcd0002", MAC: "dc:a6:32:00:00:02", IP: "10.42.0.12", Image: "localhost:5000/node:v1", LastSeen: now})
	nodes.SaveStage(st, "abcd0002", "nfsd", nodes.Stage{Stage: nodes.StageRoot, Time: now})
	nodes.Save(st, nodes.Record{Serial: "abcd0003", MAC: "dc:a6:32:00:00:03", IP: "10.42.0.13", Image: "localhost:5000/node:v1", LastSeen: now})
	nodes.SaveStage(st, "abcd0003", "tftpd", nodes.Stage{Stage: nodes.StageKernel, Time: now, Detail: "kernel8.img"})
	cfg := filepath.Join(dir, "config.json")
	os.WriteFile(cfg, []byte(`{"Netboot": {"Nodes": [{"Name": "node2", "Serial": "abcd0002"}]}}`), 0o644)

	ln := lab.ListenTCP(t)
	addr := ln.Addr
	// The other services are not running: the page must say so, not hang.
	svc := lab.Cmd{Name: "status", Files: ln.Files(), Args: []string{lab.Binary(t, "status"), "-config", cfg, "-store", st.Root, "-allow_tmpfs", "-status", addr,
		"-dhcpd", "http://127.0.0.1:1", "-tftpd", "http://127.0.0.1:1", "-ocicache", "http://127.0.0.1:1", "-nfsd", "http://127.0.0.1:1", "-nbdd", "http://127.0.0.1:1"}}.Start(t)
	svc.WaitFor(t, "status listening", 10*time.Second)
	url := fmt.Sprintf("http://%s/", addr)

	dom := string(chromium(t, "--dump-dom", url))
	for _, want := range []string{"node2", "abcd0003", "root-mounted", "kernel8.img", "dc:a6:32:00:00:03", "http://127.0.0.1:1/metrics"} {
		if !strings.Contains(dom, want) {
			t.Errorf("rendered page lacks %q", want)
		}
	}

	shot := filepath.Join(dir, "status.png")
	chromium(t, "--screenshot="+shot, url)
	f, err := os.Open(shot)
	if err != nil {
		t.Fatalf("no screenshot: %v", err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := img.Bounds().Dx(), 1280; got != want {
		t.Errorf("screenshot width: got %d, want %d", got, want)
	}
	// The root-mounted badge is green (#208040), the kernel badge blue
	// (#2060a0): both must be visible.
	var green, blue int
	b := img.Bounds()
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			r, g, bl, _ := img.At(x, y).RGBA()
			r, g, bl = r>>8, g>>8, bl>>8
			if near(r, 0x20) && near(g, 0x80) && near(bl, 0x40) {
				green++
			}
			if near(r, 0x20) && near(g, 0x60) && near(bl, 0xa0) {
				blue++
			}
		}
	}
	if green < 50 || blue < 50 {
		t.Errorf("screenshot lacks the stage badges: %d green and %d blue pixels, want ≥ 50 each (saved at %s)", green, blue, shot)
	}
	if os.Getenv("OCIBOOT_KEEP_SCREENSHOT") != "" {
		data, _ := os.ReadFile(shot)
		os.WriteFile(os.Getenv("OCIBOOT_KEEP_SCREENSHOT"), data, 0o644)
	}
}

func near(v, want uint32) bool { return v+8 >= want && v <= want+8 }
