package tests

import (
	"fmt"
	"image/png"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ociboot/ociboot/appliance/nodes"
	"github.com/ociboot/ociboot/appliance/ocicache/ocitest"
	"github.com/ociboot/ociboot/appliance/store"
	"github.com/ociboot/ociboot/appliance/testenv"
	"github.com/ociboot/ociboot/tests/lab"
)

// TestStatusPageStates runs the real status, nfsd and ocicache services
// against Debian's docker-registry (behind a throttled proxy, so a pull is
// in progress) and drives the page in headless Chromium: a node whose
// image failed to pull says so in its own card, an offline node is grey
// with the time it went quiet, the pull shows a progress bar that the page
// updates without reloading, and its actions need the password (cancelled
// prompt: refused; given: done) and refuse a cross-site form even after
// the browser has the password. Regions of the screenshot are checked for
// the colours of each state.
func TestStatusPageStates(t *testing.T) {
	testenv.Short(t, "starts three services, a registry and Chromium")
	testenv.NeedRoot(t, "nfsd sets owners")
	need(t, "chromium")
	dir := t.TempDir()
	st, err := store.Open(filepath.Join(dir, "store"), store.Options{AllowTmpfs: true})
	if err != nil {
		t.Fatal(err)
	}
	reg := lab.DockerRegistry(t, "", "")
	big := ocitest.Image(t, "linux/arm64", ocitest.PiBoot(t), ocitest.Layer(t, ocitest.File("big.bin", 0o644, string(ocitest.Random(7, 12<<20)))))
	ocitest.Push(t, reg, "node:big", big)
	proxy := ocitest.NewProxy(t, reg)
	proxy.Throttle(256 << 10)

	pw := filepath.Join(dir, "gokr-pw.txt")
	os.WriteFile(pw, []byte("hunter2\n"), 0o600)
	cfg := filepath.Join(dir, "config.json")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`{"Netboot": {"DefaultImage": "%s/node:big", "Nodes": [
		{"Name": "broken", "Serial": "abcd0001", "Image": "127.0.0.1:1/nope:v1"},
		{"Name": "sleepy", "Serial": "abcd0002"},
		{"Name": "busy", "Serial": "abcd0003"}]}}`, proxy.Addr)), 0o644)

	now := time.Now().UTC()
	nodes.Save(st, nodes.Record{Serial: "abcd0001", MAC: "dc:a6:32:00:00:01", IP: "10.42.0.11", LastSeen: now})
	nodes.SaveStage(st, "abcd0001", "dhcpd", nodes.Stage{Stage: nodes.StageDHCP, Time: now})
	old := now.Add(-10 * time.Minute)
	nodes.Save(st, nodes.Record{Serial: "abcd0002", MAC: "dc:a6:32:00:00:02", IP: "10.42.0.12", LastSeen: old})
	nodes.SaveStage(st, "abcd0002", "dhcpd", nodes.Stage{Stage: nodes.StageDHCP, Time: old})
	nodes.SaveStage(st, "abcd0002", "tftpd", nodes.Stage{Stage: nodes.StageFirmware, Time: old.Add(2 * time.Second), Detail: "start4.elf"})
	nodes.Save(st, nodes.Record{Serial: "abcd0003", MAC: "dc:a6:32:00:00:03", IP: "10.42.0.13", LastSeen: now})
	nodes.SaveStage(st, "abcd0003", "dhcpd", nodes.Stage{Stage: nodes.StageDHCP, Time: now.Add(-20 * time.Second)})
	nodes.SaveStage(st, "abcd0003", "tftpd", nodes.Stage{Stage: nodes.StageKernel, Time: now.Add(-15 * time.Second)})
	nodes.SaveStage(st, "abcd0003", "nfsd", nodes.Stage{Stage: nodes.StageRoot, Time: now.Add(-5 * time.Second)})
	roots := map[string]string{}
	for _, k := range []string{"abcd0002", "abcd0003"} {
		d, _ := st.NodeDir(k)
		roots[k] = filepath.Join(d, nodes.RootDir)
		os.MkdirAll(filepath.Join(roots[k], "etc"), 0o755)
	}

	common := []string{"-config", cfg, "-store", st.Root, "-allow_tmpfs", "-password_file", pw}
	start := func(name string, args ...string) string {
		ln := lab.ListenTCP(t)
		p := lab.Cmd{Name: name, Files: ln.Files(), Args: append(append([]string{lab.Binary(t, name)}, common...), append([]string{"-status", ln.Addr}, args...)...)}.Start(t)
		p.WaitFor(t, "status listening", 20*time.Second)
		return "http://" + ln.Addr
	}
	nfsd := start("nfsd", "-nfs_addr", "127.0.0.1:0", "-portmap_addr", "")
	cache := start("ocicache", "-registry", "", "-retry", "5s")
	page := start("status", "-dhcpd", "http://127.0.0.1:1", "-tftpd", "http://127.0.0.1:1", "-ocicache", cache, "-nfsd", nfsd, "-nbdd", "http://127.0.0.1:1")

	b := lab.NewBrowser(t, 1280, 1600)
	b.Navigate(page + "/")
	// The page updates itself: a marker set now survives until the
	// progress bar appears, so that was no reload.
	b.Eval(`window.marker = 42`, nil)
	deadline := time.Now().Add(40 * time.Second)
	for {
		var state struct{ Pulling, Failed bool }
		// Wait for at least a megabyte: at the first few hundred kilobytes
		// the bar's fill is a few pixels wide, too narrow to measure its
		// colour past the anti-aliased edges.
		b.Eval(`({Pulling: !!document.querySelector('tr.image[data-state=pulling] .bar > div') && /M of /.test(document.querySelector('tr.image[data-state=pulling]').innerText), Failed: /could not be pulled/.test((document.querySelector('#node-abcd0001 .problem') || {}).textContent || '')})`, &state)
		if state.Pulling && state.Failed {
			break
		}
		if time.Now().After(deadline) {
			var html string
			b.Eval(`document.getElementById('main').innerText`, &html)
			t.Fatalf("no pull in progress and failed pull on the page within 40 s:\n%s", html)
		}
		time.Sleep(500 * time.Millisecond)
	}
	var marker int
	b.Eval(`window.marker`, &marker)
	if marker != 42 {
		t.Error("the page reloaded instead of updating its data")
	}

	var texts map[string]string
	b.Eval(`Object.fromEntries([
		['broken', '#node-abcd0001 .problem'], ['sleepy', '#node-abcd0002 .liveness'], ['busy', '#node-abcd0003 .liveness'],
		['busyBoot', '#node-abcd0003 ol.boot'], ['pull', 'tr.image[data-state=pulling]'], ['disk', '#disk'],
		['services', '#services']].map(([k, s]) => [k, (document.querySelector(s) || {}).innerText || '']))`, &texts)
	for _, c := range []struct{ key, want string }{
		{"broken", "Its image 127.0.0.1:1/nope:v1 could not be pulled"},
		{"broken", "What to do"},
		{"sleepy", "offline since"},
		{"busy", "online since"},
		{"busyBoot", "root-mounted at"},
		{"busyBoot", "(+10s)"},
		{"pull", "node:big"},
		{"pull", "M of "},
		{"disk", "free of"},
		{"services", "dhcpd"},
	} {
		if !strings.Contains(texts[c.key], c.want) {
			t.Errorf("%s: got %q, want it to contain %q", c.key, texts[c.key], c.want)
		}
	}

	shot := b.Screenshot()
	for _, c := range []struct {
		what     string
		selector string
		colour   uint32
		minShare float64
	}{
		{"failed pull box of broken", "#node-abcd0001 .problem", 0xfde8e8, 0.5},
		{"offline badge of sleepy", "#node-abcd0002 .liveness", 0x777777, 0.3},
		{"online badge of busy", "#node-abcd0003 .liveness", 0x208040, 0.3},
		{"progress bar fill", "tr.image[data-state=pulling] .bar > div", 0x2060a0, 0.8},
		{"progress bar rest", "tr.image[data-state=pulling] .bar", 0xdddddd, 0.05},
	} {
		r := b.Box(c.selector)
		area := r.Width * r.Height
		if area < 4 {
			t.Errorf("%s (%s): no box on the page", c.what, c.selector)
			continue
		}
		if got := float64(lab.CountColour(shot, r, c.colour)) / area; got < c.minShare {
			t.Errorf("%s: %.0f%% of its %.0f×%.0f box is #%06x, want ≥ %.0f%%", c.what, got*100, r.Width, r.Height, c.colour, c.minShare*100)
		}
	}
	if p := os.Getenv("OCIBOOT_KEEP_SCREENSHOT"); p != "" {
		f, _ := os.Create(p)
		png.Encode(f, shot)
		f.Close()
	}

	// Reset without the password (the prompt is cancelled): refused.
	b.SetCredentials("", "")
	b.Click("#node-abcd0002 form.reset button")
	var body string
	b.Eval(`document.body.innerText`, &body)
	if !strings.Contains(body, "gokrazy password") {
		t.Errorf("reset without password: page says %q, want the password demand", body)
	}
	if _, err := os.Stat(roots["abcd0002"]); err != nil {
		t.Errorf("a reset without password dropped the root: %v", err)
	}
	// With the password: done, the root is gone.
	b.SetCredentials("gokrazy", "hunter2")
	b.Navigate(page + "/")
	b.Click("#node-abcd0002 form.reset button")
	b.Eval(`document.body.innerText`, &body)
	if !strings.Contains(body, "root dropped") {
		t.Errorf("reset with password: page says %q, want \"root dropped\"", body)
	}
	if _, err := os.Stat(roots["abcd0002"]); err == nil {
		t.Error("reset with password: the root is still there")
	}

	// Re-pull now, with the password: ocicache starts a pass.
	b.Navigate(page + "/")
	b.Click("form.pull button")
	b.Eval(`document.body.innerText`, &body)
	if !strings.Contains(body, "pull pass started") {
		t.Errorf("re-pull: page says %q, want \"pull pass started\"", body)
	}

	// Another site's page posts a reset of busy, with force, while the
	// browser holds the password: refused, the root stays.
	evil := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, `<!DOCTYPE html><html><body><form id="f" method="post" action="%s/api/reset"><input name="node" value="abcd0003"><input name="force" value="1"></form>
<script>onload = () => setTimeout(() => document.getElementById('f').submit(), 100)</script></body></html>`, page)
	}))
	defer evil.Close()
	b.Navigate(evil.URL)
	b.WaitLoad()
	b.Eval(`document.body.innerText`, &body)
	if !strings.Contains(body, "refused") {
		t.Errorf("cross-site reset: page says %q, want a refusal", body)
	}
	if _, err := os.Stat(roots["abcd0003"]); err != nil {
		t.Errorf("a cross-site reset dropped busy's root: %v", err)
	}

	// A phone: one column, nothing wider than the screen.
	phone := lab.NewBrowser(t, 390, 844)
	phone.Navigate(page + "/")
	var width int
	phone.Eval(`document.documentElement.scrollWidth`, &width)
	if width > 392 {
		var wide []string
		phone.Eval(`[...document.querySelectorAll('body *')].filter(e => e.getBoundingClientRect().right > 392).slice(0, 8).map(e => e.tagName + '.' + e.className + ': ' + Math.round(e.getBoundingClientRect().right))`, &wide)
		t.Errorf("on a 390 px wide phone the page is %d px wide; too wide: %q", width, wide)
	}
	c1, c2 := phone.Box("#node-abcd0001"), phone.Box("#node-abcd0002")
	if c1.Width < 300 || c2.Y <= c1.Y {
		t.Errorf("on a phone the node cards are not one column: %+v %+v", c1, c2)
	}
}
