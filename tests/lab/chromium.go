package lab

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"image"
	"image/png"
	"os"
	"os/exec"
	"sync"
	"testing"
	"time"

	"github.com/ociboot/ociboot/appliance/testenv"
)

// Browser is Debian's headless Chromium driven over the DevTools protocol
// on a pipe (--remote-debugging-pipe: fd 3 in, fd 4 out, NUL-terminated
// JSON), so a test can load a page, click, answer the password prompt and
// confirm dialogs, read the DOM and take screenshots. It never opens a
// network port of its own, and background networking is off: the only
// traffic is to the pages the test loads.
type Browser struct {
	t       testing.TB
	cmd     *exec.Cmd
	in      *os.File // to Chromium
	mu      sync.Mutex
	next    int
	pending map[int]chan cdpReply
	session string
	events  chan cdpEvent
	// Credentials answer HTTP auth prompts; nil cancels them (the user
	// pressed Cancel).
	credMu      sync.Mutex
	credentials *[2]string
	done        chan struct{}
}

type cdpReply struct {
	Result json.RawMessage
	Error  *struct{ Message string }
}

type cdpEvent struct {
	Method string
	Params json.RawMessage
}

// NewBrowser starts Chromium with a window of w×h pixels; it is stopped
// when the test ends.
func NewBrowser(t testing.TB, w, h int) *Browser {
	t.Helper()
	bin := testenv.NeedTool(t, "chromium", "chromium")
	toChrome, chromeIn, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	chromeOut, fromChrome, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-extensions",
		"--remote-debugging-pipe", "--user-data-dir="+t.TempDir(), fmt.Sprintf("--window-size=%d,%d", w, h), "about:blank")
	cmd.ExtraFiles = []*os.File{toChrome, fromChrome}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("%v: %v", cmd.Args, err)
	}
	toChrome.Close()
	fromChrome.Close()
	b := &Browser{t: t, cmd: cmd, in: chromeIn, pending: map[int]chan cdpReply{}, events: make(chan cdpEvent, 256), done: make(chan struct{})}
	t.Cleanup(func() {
		chromeIn.Close()
		cmd.Process.Kill()
		cmd.Wait()
		<-b.done
	})
	go b.read(chromeOut)
	var target struct{ TargetID string }
	if err := b.call("", "Target.createTarget", map[string]any{"url": "about:blank"}, &target); err != nil {
		t.Fatalf("chromium: %v\n%s", err, Tail(stderr.String(), 2000))
	}
	var att struct{ SessionID string }
	if err := b.call("", "Target.attachToTarget", map[string]any{"targetId": target.TargetID, "flatten": true}, &att); err != nil {
		t.Fatal(err)
	}
	b.session = att.SessionID
	for _, m := range []string{"Page.enable", "Runtime.enable"} {
		if err := b.call(b.session, m, nil, nil); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.call(b.session, "Emulation.setDeviceMetricsOverride", map[string]any{"width": w, "height": h, "deviceScaleFactor": 1, "mobile": w < 600}, nil); err != nil {
		t.Fatal(err)
	}
	if err := b.call(b.session, "Fetch.enable", map[string]any{"handleAuthRequests": true, "patterns": []map[string]string{{"urlPattern": "*"}}}, nil); err != nil {
		t.Fatal(err)
	}
	return b
}

func (b *Browser) read(out *os.File) {
	defer close(b.done)
	r := bufio.NewReader(out)
	for {
		msg, err := r.ReadBytes(0)
		if err != nil {
			return
		}
		var m struct {
			ID     int
			Method string
			Params json.RawMessage
			cdpReply
		}
		if json.Unmarshal(msg[:len(msg)-1], &m) != nil {
			continue
		}
		if m.ID != 0 {
			b.mu.Lock()
			ch := b.pending[m.ID]
			delete(b.pending, m.ID)
			b.mu.Unlock()
			if ch != nil {
				ch <- m.cdpReply
			}
			continue
		}
		b.handle(cdpEvent{m.Method, m.Params})
	}
}

// handle answers what would wait for a user: paused requests continue,
// auth prompts get Credentials, confirm dialogs are accepted.
func (b *Browser) handle(ev cdpEvent) {
	var p struct{ RequestID string }
	json.Unmarshal(ev.Params, &p)
	switch ev.Method {
	case "Fetch.requestPaused":
		go b.call(b.session, "Fetch.continueRequest", map[string]any{"requestId": p.RequestID}, nil)
	case "Fetch.authRequired":
		b.credMu.Lock()
		resp := map[string]any{"response": "CancelAuth"}
		if c := b.credentials; c != nil {
			resp = map[string]any{"response": "ProvideCredentials", "username": c[0], "password": c[1]}
		}
		b.credMu.Unlock()
		go b.call(b.session, "Fetch.continueWithAuth", map[string]any{"requestId": p.RequestID, "authChallengeResponse": resp}, nil)
	case "Page.javascriptDialogOpening":
		go b.call(b.session, "Page.handleJavaScriptDialog", map[string]any{"accept": true}, nil)
	}
	select {
	case b.events <- ev:
	default:
	}
}

func (b *Browser) call(session, method string, params any, result any) error {
	b.mu.Lock()
	b.next++
	id := b.next
	ch := make(chan cdpReply, 1)
	b.pending[id] = ch
	b.mu.Unlock()
	msg := map[string]any{"id": id, "method": method}
	if params != nil {
		msg["params"] = params
	}
	if session != "" {
		msg["sessionId"] = session
	}
	data, _ := json.Marshal(msg)
	if _, err := b.in.Write(append(data, 0)); err != nil {
		return fmt.Errorf("chromium %s: %v", method, err)
	}
	select {
	case r := <-ch:
		if r.Error != nil {
			return fmt.Errorf("chromium %s: %s", method, r.Error.Message)
		}
		if result != nil {
			return json.Unmarshal(r.Result, result)
		}
		return nil
	case <-time.After(30 * time.Second):
		return fmt.Errorf("chromium %s: no answer in 30 s", method)
	case <-b.done:
		return fmt.Errorf("chromium %s: chromium exited", method)
	}
}

// SetCredentials makes the browser answer HTTP auth prompts with user and
// password; with user "" it cancels them.
func (b *Browser) SetCredentials(user, password string) {
	b.credMu.Lock()
	defer b.credMu.Unlock()
	if user == "" {
		b.credentials = nil
		return
	}
	b.credentials = &[2]string{user, password}
}

// Navigate loads url and waits for its load event.
func (b *Browser) Navigate(url string) {
	b.t.Helper()
	b.drain()
	if err := b.call(b.session, "Page.navigate", map[string]any{"url": url}, nil); err != nil {
		b.t.Fatal(err)
	}
	b.WaitLoad()
}

func (b *Browser) drain() {
	for {
		select {
		case <-b.events:
		default:
			return
		}
	}
}

// WaitLoad waits for the next page load to finish.
func (b *Browser) WaitLoad() {
	b.t.Helper()
	deadline := time.After(30 * time.Second)
	for {
		select {
		case ev := <-b.events:
			if ev.Method == "Page.loadEventFired" {
				return
			}
		case <-deadline:
			b.t.Fatal("chromium: page did not load in 30 s")
		}
	}
}

// Eval evaluates a JavaScript expression in the page and stores its
// (JSON) value in result.
func (b *Browser) Eval(expr string, result any) {
	b.t.Helper()
	var r struct {
		Result struct {
			Value json.RawMessage
		}
		ExceptionDetails *struct{ Text string }
	}
	if err := b.call(b.session, "Runtime.evaluate", map[string]any{"expression": expr, "returnByValue": true, "awaitPromise": true}, &r); err != nil {
		b.t.Fatal(err)
	}
	if r.ExceptionDetails != nil {
		b.t.Fatalf("chromium: %s: %s", expr, r.ExceptionDetails.Text)
	}
	if result != nil {
		if err := json.Unmarshal(r.Result.Value, result); err != nil {
			b.t.Fatalf("chromium: %s: %v (%s)", expr, err, r.Result.Value)
		}
	}
}

// Click clicks the element selector names, as a user would (a submit
// button's form runs its onsubmit), and waits for the page that loads.
func (b *Browser) Click(selector string) {
	b.t.Helper()
	b.drain()
	var ok bool
	b.Eval(fmt.Sprintf(`(() => { const e = document.querySelector(%q); if (!e) return false; e.click(); return true })()`, selector), &ok)
	if !ok {
		b.t.Fatalf("chromium: no element %s", selector)
	}
	b.WaitLoad()
}

// Rect is an element's box in CSS pixels.
type Rect struct{ X, Y, Width, Height float64 }

// Box returns the box of the element selector names (zero if none).
func (b *Browser) Box(selector string) Rect {
	b.t.Helper()
	var r Rect
	b.Eval(fmt.Sprintf(`(() => { const e = document.querySelector(%q); if (!e) return {}; const r = e.getBoundingClientRect(); return {X: r.x + scrollX, Y: r.y + scrollY, Width: r.width, Height: r.height} })()`, selector), &r)
	return r
}

// Screenshot returns the whole page as an image.
func (b *Browser) Screenshot() image.Image {
	b.t.Helper()
	var r struct{ Data string }
	if err := b.call(b.session, "Page.captureScreenshot", map[string]any{"format": "png", "captureBeyondViewport": true}, &r); err != nil {
		b.t.Fatal(err)
	}
	data, err := base64.StdEncoding.DecodeString(r.Data)
	if err != nil {
		b.t.Fatal(err)
	}
	img, err := png.Decode(bytes.NewReader(data))
	if err != nil {
		b.t.Fatal(err)
	}
	return img
}

// CountColour counts the pixels of img inside r that are within 8 of
// the colour rgb (0xRRGGBB) in each channel.
func CountColour(img image.Image, r Rect, rgb uint32) int {
	want := [3]uint32{rgb >> 16 & 0xff, rgb >> 8 & 0xff, rgb & 0xff}
	n := 0
	for y := int(r.Y); y < int(r.Y+r.Height); y++ {
		for x := int(r.X); x < int(r.X+r.Width); x++ {
			cr, cg, cb, _ := img.At(x, y).RGBA()
			c := [3]uint32{cr >> 8, cg >> 8, cb >> 8}
			match := true
			for i := range c {
				if c[i]+8 < want[i] || c[i] > want[i]+8 {
					match = false
				}
			}
			if match {
				n++
			}
		}
	}
	return n
}
