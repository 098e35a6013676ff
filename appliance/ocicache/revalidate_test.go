package ocicache

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ociboot/ociboot/appliance/images"
	"github.com/ociboot/ociboot/appliance/ocicache/ocitest"
)

// manifestCalls counts manifest requests by method.
type manifestCalls struct{ get, head atomic.Int64 }

func (m *manifestCalls) RoundTrip(r *http.Request) (*http.Response, error) {
	if strings.Contains(r.URL.Path, "/manifests/") {
		switch r.Method {
		case http.MethodGet:
			m.get.Add(1)
		case http.MethodHead:
			m.head.Add(1)
		}
	}
	return http.DefaultTransport.RoundTrip(r)
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// New content pushed under a configured tag is pulled by the next
// revalidation, without a restart; unchanged tags cost a HEAD each.
func TestRunRevalidatesTags(t *testing.T) {
	mc := &manifestCalls{}
	f := newFixture(t, mc)
	v1img := ocitest.Image(t, "linux/arm64", ocitest.PiBoot(t), ocitest.Layer(t, ocitest.File("v", 0o644, "1")))
	ref := f.push(t, "rpi/node:latest", v1img)
	cfg := f.config(t, fmt.Sprintf(`{"DefaultImage":%q}`, ref))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.cache.Run(ctx, cfg, RunOptions{Revalidate: 100 * time.Millisecond}) }()
	defer func() { cancel(); <-done }()
	serving := func() string {
		ix, _ := images.LoadIndex(f.st)
		e, _ := ix.Lookup(ref, "linux/arm64")
		return e.Digest
	}
	waitFor(t, "the first pull", func() bool { return serving() == digestOf(t, v1img).String() })
	gets, blobs := mc.get.Load(), f.hits.Load()
	heads := mc.head.Load()
	waitFor(t, "three revalidations", func() bool { return mc.head.Load() >= heads+3 })
	if got := mc.get.Load(); got != gets {
		t.Errorf("manifest GETs while the tag was unchanged: got %d more, want 0", got-gets)
	}
	if got := f.hits.Load(); got != blobs {
		t.Errorf("blob GETs while the tag was unchanged: got %d more, want 0", got-blobs)
	}
	v2img := ocitest.Image(t, "linux/arm64", ocitest.PiBoot(t), ocitest.Layer(t, ocitest.File("v", 0o644, "2")))
	f.push(t, "rpi/node:latest", v2img)
	waitFor(t, "the new content under the tag", func() bool { return serving() == digestOf(t, v2img).String() })
}
