package statuspage

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/ociboot/ociboot/appliance/config"
	"github.com/ociboot/ociboot/appliance/images"
	"github.com/ociboot/ociboot/appliance/store"
)

// A reference whose last pull failed shows both what it serves and why
// the attempt failed.
func TestImageServingAndLastFailure(t *testing.T) {
	st, err := store.Open(t.TempDir(), store.Options{AllowTmpfs: true})
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Parse([]byte(`{"Netboot": {"DefaultImage": "localhost:5000/nodee:v1"}}`))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)
	digest := "sha256:" + strings.Repeat("2e", 32)
	images.SaveIndex(st, images.Index{Entries: []images.Entry{{Ref: "localhost:5000/nodee:v1", Platform: "linux/arm64",
		Digest: digest, BootDir: "boot/firmware", Pulled: now.Add(-72 * time.Hour), StandIn: "localhost:5000/node:v1",
		LastAttempt: now.Add(-time.Minute), LastError: "resolving localhost:5000/nodee:v1: NAME_UNKNOWN (check the repository and tag)"}}})
	srv := httptest.NewServer(&Page{Config: cfg, Store: st, Now: func() time.Time { return now }})
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	page := string(b)
	for _, want := range []string{`<span class="badge stale">stale</span>`, "<code>sha256:2e2e", "the tree of localhost:5000/node:v1", "72h0m0s ago",
		"last attempt 1m0s ago: resolving localhost:5000/nodee:v1: NAME_UNKNOWN (check the repository and tag) — the last good tree keeps serving"} {
		if !strings.Contains(page, want) {
			t.Errorf("page lacks %q", want)
		}
	}
}
