package ocicache

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/ociboot/ociboot/appliance/ocicache/ocitest"
)

type testClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *testClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *testClock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// pullVia pulls repoTag through the mirror srv, reading every layer, and
// returns the image's digest.
func pullVia(t *testing.T, srv *httptest.Server, repoTag string) v1.Hash {
	t.Helper()
	ref, err := name.ParseReference(strings.TrimPrefix(srv.URL, "http://")+"/"+repoTag, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	img, err := remote.Image(ref)
	if err != nil {
		t.Fatalf("pull %s through the mirror: %v", repoTag, err)
	}
	layers, _ := img.Layers()
	for _, l := range layers {
		rc, err := l.Compressed()
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, rc)
		rc.Close()
	}
	return digestOf(t, img)
}

// Pull-through content survives GC while it fits in the cap; beyond it
// the least recently used tag goes first.
func TestPullThroughLRUCap(t *testing.T) {
	f := newFixture(t, nil)
	clk := &testClock{t: time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)}
	c := f.reopen(t, nil, func(o *Options) { o.Now = clk.Now; o.PullThroughCap = 250 << 10 })
	big := map[string]v1.Layer{}
	for i, n := range []string{"a", "b", "c"} {
		big[n] = ocitest.Layer(t, ocitest.File("data", 0o644, string(ocitest.Random(uint64(20+i), 100<<10))))
		f.push(t, "up/"+n+":v1", ocitest.Image(t, "linux/arm64", ocitest.PiBoot(t), big[n]))
	}
	cfg := f.config(t, fmt.Sprintf(`{"Upstreams":[%q],"InsecureRegistries":[%q]}`, f.host+"/up", f.host))
	c.setConfig(cfg)
	srv := httptest.NewServer(c.RegistryHandler())
	defer srv.Close()
	for _, n := range []string{"a", "b"} {
		clk.Add(time.Second)
		pullVia(t, srv, "up/"+n+":v1")
	}
	c.GC(cfg)
	for _, n := range []string{"a", "b"} {
		if !c.Blobs().Has(digestOf(t, big[n]), -1) {
			t.Errorf("GC under the cap dropped pull-through layer of %s", n)
		}
	}
	clk.Add(time.Second)
	pullVia(t, srv, "up/c:v1")
	clk.Add(time.Second)
	pullVia(t, srv, "up/a:v1") // a is used again: b is now the oldest
	res := c.GC(cfg)
	for n, want := range map[string]bool{"a": true, "b": false, "c": true} {
		if got := c.Blobs().Has(digestOf(t, big[n]), -1); got != want {
			t.Errorf("layer of %s after GC over the cap: present %v, want %v", n, got, want)
		}
	}
	if got, want := res.PullThroughDropped, 1; got != want {
		t.Errorf("PullThroughDropped: got %d, want %d", got, want)
	}
}

// A pull-through tag is asked again once older than the TTL; with the
// upstream gone the cached manifest keeps serving.
func TestPullThroughTagRevalidatedAfterTTL(t *testing.T) {
	f := newFixture(t, nil)
	clk := &testClock{t: time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)}
	c := f.reopen(t, nil, func(o *Options) { o.Now = clk.Now; o.PullThroughTTL = time.Hour })
	imgX := ocitest.Image(t, "linux/arm64", ocitest.PiBoot(t), ocitest.Layer(t, ocitest.File("v", 0o644, "x")))
	imgY := ocitest.Image(t, "linux/arm64", ocitest.PiBoot(t), ocitest.Layer(t, ocitest.File("v", 0o644, "y")))
	f.push(t, "up/t:v1", imgX)
	c.setConfig(f.config(t, fmt.Sprintf(`{"Upstreams":[%q],"InsecureRegistries":[%q]}`, f.host+"/up", f.host)))
	srv := httptest.NewServer(c.RegistryHandler())
	defer srv.Close()
	if got, want := pullVia(t, srv, "up/t:v1"), digestOf(t, imgX); got != want {
		t.Fatalf("first pull: got %s, want %s", got, want)
	}
	f.push(t, "up/t:v1", imgY)
	clk.Add(time.Minute)
	if got, want := pullVia(t, srv, "up/t:v1"), digestOf(t, imgX); got != want {
		t.Errorf("within the TTL: got %s, want the cached %s", got, want)
	}
	clk.Add(time.Hour)
	if got, want := pullVia(t, srv, "up/t:v1"), digestOf(t, imgY); got != want {
		t.Errorf("after the TTL: got %s, want the new %s", got, want)
	}
	f.reg.Close()
	clk.Add(2 * time.Hour)
	if got, want := pullVia(t, srv, "up/t:v1"), digestOf(t, imgY); got != want {
		t.Errorf("after the TTL with the upstream down: got %s, want the cached %s", got, want)
	}
}

// With the upstream known down, a blob or manifest that is not held fails
// at once with a 503 that says so.
func TestUpstreamKnownDownFailsFast(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close() // connection refused from now on
	f := newFixture(t, nil)
	c := f.reopen(t, nil, func(o *Options) { o.Attempts = 3; o.Backoff = 200 * time.Millisecond })
	c.setConfig(f.config(t, fmt.Sprintf(`{"Upstreams":[%q],"InsecureRegistries":[%q]}`, dead+"/up", dead)))
	srv := httptest.NewServer(c.RegistryHandler())
	defer srv.Close()
	blob := srv.URL + "/v2/up/x/blobs/sha256:" + strings.Repeat("ab", 32)
	get := func(u string) (int, string, time.Duration) {
		start := time.Now()
		resp, err := http.Get(u)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp.StatusCode, string(b), time.Since(start)
	}
	manifest := srv.URL + "/v2/up/x/manifests/v1"
	if code, body, _ := get(manifest); code != http.StatusServiceUnavailable || !strings.Contains(body, "unreachable") {
		t.Errorf("first manifest GET: got %d %s, want 503 naming the unreachable upstream", code, body)
	}
	// A blob no held manifest names is not relayed at all.
	if code, body, took := get(blob); code != http.StatusNotFound || took > 150*time.Millisecond {
		t.Errorf("blob no manifest names: got %d %s after %v, want 404 at once", code, body, took)
	}
	for _, u := range []string{manifest} {
		code, body, took := get(u)
		if code != http.StatusServiceUnavailable || !strings.Contains(body, "unreachable since") || !strings.Contains(body, dead) {
			t.Errorf("GET %s with the upstream known down: got %d %s", u, code, body)
		}
		if took > 150*time.Millisecond {
			t.Errorf("GET %s with the upstream known down took %v, want at once", u, took)
		}
	}
}
