package ocicache

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/ociboot/ociboot/appliance/ocicache/ocitest"
)

// A host on the LAN asks the mirror for repositories the config does not
// name (issue 14: the mirror relayed any repository of an upstream with
// the head node's credentials, of any size). Only the configured images'
// repositories and those under an Upstreams prefix are fetched, and no
// blob larger than the pull-through cap.
func TestMirrorRelaysOnlyConfiguredRepositories(t *testing.T) {
	f := newFixture(t, nil)
	c := f.reopen(t, nil, func(o *Options) { o.PullThroughCap = 200 << 10 })
	small := ocitest.Image(t, "linux/arm64", ocitest.PiBoot(t), ocitest.Layer(t, ocitest.File("x", 0o644, "x")))
	big := ocitest.Image(t, "linux/arm64", ocitest.PiBoot(t), ocitest.Layer(t, ocitest.File("big", 0o644, string(ocitest.Random(7, 400<<10)))))
	for _, repo := range []string{"pi/node:v1", "mirror/a:v1", "private/secret:v1", "mirrorx/b:v1"} {
		f.push(t, repo, small)
	}
	f.push(t, "mirror/big:v1", big)
	c.setConfig(f.config(t, fmt.Sprintf(`{"DefaultImage": %q, "Upstreams":[%q, %q],"InsecureRegistries":[%q]}`,
		f.host+"/pi/node:v1", f.host, f.host+"/mirror", f.host)))
	srv := httptest.NewServer(c.RegistryHandler())
	defer srv.Close()

	for _, tc := range []struct {
		repo string
		want int
	}{
		{"pi/node", http.StatusOK},  // the configured image's repository
		{"mirror/a", http.StatusOK}, // under the Upstreams prefix
		{"private/secret", http.StatusNotFound},
		{"mirrorx/b", http.StatusNotFound}, // a prefix is a path, not a string prefix
	} {
		resp, err := http.Get(srv.URL + "/v2/" + tc.repo + "/manifests/v1")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tc.want {
			t.Errorf("GET %s:v1 through the mirror: %d, want %d", tc.repo, resp.StatusCode, tc.want)
		}
	}
	if ix, _ := c.Blobs().Index(); len(ix.Manifests) != 2 {
		t.Errorf("mirror holds %d manifests, want the 2 it may relay", len(ix.Manifests))
	}

	// The big image's manifest is relayed, its 400 KiB layer is not:
	// refused before a byte is fetched, saying why.
	resp, err := http.Get(srv.URL + "/v2/mirror/big/manifests/v1")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	layers, _ := big.Layers()
	d, _ := layers[len(layers)-1].Digest()
	resp, err = http.Get(srv.URL + "/v2/mirror/big/blobs/" + d.String())
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden || !strings.Contains(string(body), "pull-through cap") {
		t.Errorf("blob over the cap: %d (%d bytes), want 403 naming the cap", resp.StatusCode, len(body))
	}
	if c.Blobs().Has(d, -1) {
		t.Errorf("blob over the cap was stored")
	}
	// A blob no relayed manifest names is not fetched, even from an
	// allowed repository.
	undeclared := "sha256:" + strings.Repeat("cd", 32)
	resp, err = http.Get(srv.URL + "/v2/mirror/a/blobs/" + undeclared)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("blob no manifest names: %d, want 404", resp.StatusCode)
	}
}
