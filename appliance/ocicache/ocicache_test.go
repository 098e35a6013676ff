package ocicache

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/ociboot/ociboot/appliance/config"
	"github.com/ociboot/ociboot/appliance/images"
	"github.com/ociboot/ociboot/appliance/nodes"
	"github.com/ociboot/ociboot/appliance/ocicache/ocitest"
	"github.com/ociboot/ociboot/appliance/store"
)

// fixture is an in-process registry on loopback and a cache in a temp store.
type fixture struct {
	reg   *httptest.Server
	host  string
	st    *store.Store
	cache *Cache
	hits  atomic.Int64 // blob GETs seen by the registry
}

func newFixture(t *testing.T, transport http.RoundTripper) *fixture {
	t.Helper()
	f := &fixture{}
	h := registry.New(registry.Logger(nilLogger()))
	f.reg = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/") {
			f.hits.Add(1)
		}
		h.ServeHTTP(w, r)
	}))
	t.Cleanup(f.reg.Close)
	u, _ := url.Parse(f.reg.URL)
	f.host = u.Host
	st, err := store.Open(t.TempDir(), store.Options{AllowTmpfs: true})
	if err != nil {
		t.Fatal(err)
	}
	f.st = st
	f.cache = f.open(t, transport)
	return f
}

func (f *fixture) open(t *testing.T, transport http.RoundTripper) *Cache {
	t.Helper()
	c, err := New(f.st, Options{Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Keychain: authn.NewMultiKeychain(),
		Transport: transport, MinFree: 1, Backoff: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func (f *fixture) push(t *testing.T, repoTag string, v remote.Taggable) string {
	t.Helper()
	ref, err := name.ParseReference(f.host+"/"+repoTag, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	var err2 error
	switch v := v.(type) {
	case v1.ImageIndex:
		err2 = remote.WriteIndex(ref, v)
	case v1.Image:
		err2 = remote.Write(ref, v)
	}
	if err := err2; err != nil {
		t.Fatalf("push %s: %v", ref, err)
	}
	return ref.String()
}

func (f *fixture) config(t *testing.T, netboot string) *config.Config {
	t.Helper()
	cfg, err := config.Parse([]byte(`{"Netboot":` + netboot + `}`))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func digestOf(t *testing.T, v interface{ Digest() (v1.Hash, error) }) v1.Hash {
	t.Helper()
	d, err := v.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func TestSyncMultiPlatformDedupAndServe(t *testing.T) {
	f := newFixture(t, nil)
	base := ocitest.Layer(t, ocitest.Dir("etc/", 0o755), ocitest.File("etc/os-release", 0o644, "ID=test\n"))
	arm := ocitest.Image(t, "linux/arm64", base, ocitest.PiBoot(t))
	amd := ocitest.Image(t, "linux/amd64", base, ocitest.Layer(t, ocitest.Dir("boot/", 0o755), ocitest.File("boot/vmlinuz-6.1.0", 0o644, "bzImage"), ocitest.File("boot/initrd.img-6.1.0", 0o644, "initrd")))
	idx := ocitest.Index(t, map[string]v1.Image{"linux/arm64": arm, "linux/amd64": amd})
	ref := f.push(t, "rpi/node:v1", idx)
	cfg := f.config(t, fmt.Sprintf(`{"DefaultImage":%q,"InsecureRegistries":[%q],"Nodes":[{"Serial":"1234abcd","Platform":"linux/amd64"}]}`, ref, f.host))

	if err := f.cache.Sync(context.Background(), cfg); err != nil {
		t.Fatalf("Sync: %v", err)
	}
	ix, err := images.LoadIndex(f.st)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		plat, digest, bootDir, kernel, file string
	}{
		{"linux/arm64", digestOf(t, arm).String(), "boot/firmware", "kernel8.img", "boot/firmware/start4.elf"},
		{"linux/amd64", digestOf(t, amd).String(), "boot", "vmlinuz-6.1.0", "boot/initrd.img-6.1.0"},
	} {
		e, ok := ix.Lookup(ref, tt.plat)
		if !ok {
			t.Errorf("index has no entry for %s %s: %+v", ref, tt.plat, ix)
			continue
		}
		if e.Digest != tt.digest || e.BootDir != tt.bootDir || e.Kernel != tt.kernel {
			t.Errorf("%s: got digest %s boot %q kernel %q; want %s %q %q", tt.plat, e.Digest, e.BootDir, e.Kernel, tt.digest, tt.bootDir, tt.kernel)
		}
		root, _ := images.Root(f.st, e.Digest)
		if got, err := os.ReadFile(filepath.Join(root, "etc/os-release")); string(got) != "ID=test\n" {
			t.Errorf("%s: etc/os-release: got %q, %v", tt.plat, got, err)
		}
		if _, err := os.Stat(filepath.Join(root, tt.file)); err != nil {
			t.Errorf("%s: %v", tt.plat, err)
		}
	}
	// The shared base layer is stored and fetched once.
	baseDigest := digestOf(t, base)
	if !f.cache.Blobs().Has(baseDigest, -1) {
		t.Errorf("base layer %s not stored", baseDigest)
	}
	if got, want := f.hits.Load(), int64(5); got != want {
		// 2 configs + base + Pi boot + amd64 boot: the base only once.
		t.Errorf("blob GETs: got %d, want %d", got, want)
	}

	// A second Sync fetches nothing.
	before := f.hits.Load()
	if err := f.cache.Sync(context.Background(), cfg); err != nil {
		t.Fatal(err)
	}
	if got := f.hits.Load() - before; got != 0 {
		t.Errorf("second Sync fetched %d blobs, want 0", got)
	}

	// Our /v2/ serves the index, and ggcr pulls both platforms from it.
	srv := httptest.NewServer(f.cache.RegistryHandler())
	defer srv.Close()
	mirror := strings.TrimPrefix(srv.URL, "http://")
	mref, _ := name.ParseReference(mirror+"/rpi/node:v1", name.Insecure)
	desc, err := remote.Get(mref)
	if err != nil {
		t.Fatalf("GET from our registry: %v", err)
	}
	if got, want := desc.Digest, digestOf(t, idx); got != want {
		t.Errorf("served index digest: got %s, want %s", got, want)
	}
	for plat, img := range map[string]v1.Image{"linux/arm64": arm, "linux/amd64": amd} {
		p, _ := v1.ParsePlatform(plat)
		got, err := remote.Image(mref, remote.WithPlatform(*p))
		if err != nil {
			t.Fatalf("%s from our registry: %v", plat, err)
		}
		layers, _ := got.Layers()
		for _, l := range layers {
			rc, err := l.Compressed()
			if err != nil {
				t.Fatal(err)
			}
			if _, err := io.Copy(io.Discard, rc); err != nil {
				t.Errorf("%s: layer from our registry: %v", plat, err)
			}
			rc.Close()
		}
		if digestOf(t, got) != digestOf(t, img) {
			t.Errorf("%s: digest mismatch", plat)
		}
	}
}

func TestRegistryProtocol(t *testing.T) {
	f := newFixture(t, nil)
	img := ocitest.Image(t, "linux/arm64", ocitest.PiBoot(t))
	ref := f.push(t, "pi/os:latest", img)
	cfg := f.config(t, fmt.Sprintf(`{"DefaultImage":%q}`, ref))
	if err := f.cache.Sync(context.Background(), cfg); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(f.cache.RegistryHandler())
	defer srv.Close()
	md := digestOf(t, img)
	layers, _ := img.Layers()
	ld := digestOf(t, layers[0])
	for _, tt := range []struct {
		method, path string
		status       int
		ctype        string
		digest       string
	}{
		{"GET", "/v2/", 200, "application/json", ""},
		{"GET", "/v2/pi/os/manifests/latest", 200, "application/vnd.oci.image.manifest.v1+json", md.String()},
		{"HEAD", "/v2/pi/os/manifests/latest", 200, "application/vnd.oci.image.manifest.v1+json", md.String()},
		{"GET", "/v2/pi/os/manifests/" + md.String(), 200, "application/vnd.oci.image.manifest.v1+json", md.String()},
		{"GET", "/v2/pi/os/manifests/latest?ns=" + f.host, 200, "application/vnd.oci.image.manifest.v1+json", md.String()},
		{"GET", "/v2/pi/os/manifests/latest?ns=other.example", 404, "application/json", ""},
		{"GET", "/v2/pi/os/manifests/nope", 404, "application/json", ""},
		{"GET", "/v2/pi/os/manifests/" + ld.String(), 404, "application/json", ""},
		{"GET", "/v2/pi/os/blobs/" + ld.String(), 200, "application/octet-stream", ld.String()},
		{"HEAD", "/v2/pi/os/blobs/" + ld.String(), 200, "application/octet-stream", ld.String()},
		{"GET", "/v2/pi/os/blobs/sha256:" + strings.Repeat("0", 64), 404, "application/json", ""},
		{"GET", "/v2/pi/os/tags/list", 200, "application/json", ""},
		{"GET", "/v2/../etc/passwd/blobs/x", 404, "application/json", ""},
		{"PUT", "/v2/pi/os/manifests/latest", 405, "application/json", ""},
		{"POST", "/v2/pi/os/blobs/uploads/", 405, "application/json", ""},
		{"DELETE", "/v2/pi/os/manifests/" + md.String(), 405, "application/json", ""},
	} {
		req, _ := http.NewRequest(tt.method, srv.URL+tt.path, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tt.status {
			t.Errorf("%s %s: status %d, want %d (%s)", tt.method, tt.path, resp.StatusCode, tt.status, body)
		}
		if got := resp.Header.Get("Content-Type"); got != tt.ctype {
			t.Errorf("%s %s: Content-Type %q, want %q", tt.method, tt.path, got, tt.ctype)
		}
		if got := resp.Header.Get("Docker-Content-Digest"); got != tt.digest {
			t.Errorf("%s %s: Docker-Content-Digest %q, want %q", tt.method, tt.path, got, tt.digest)
		}
		if tt.status == 405 && !bytes.Contains(body, []byte("UNSUPPORTED")) {
			t.Errorf("%s %s: body %s lacks UNSUPPORTED", tt.method, tt.path, body)
		}
		if tt.method == "HEAD" && len(body) != 0 {
			t.Errorf("HEAD %s returned a body", tt.path)
		}
	}
	resp, err := http.Get(srv.URL + "/v2/pi/os/tags/list")
	if err != nil {
		t.Fatal(err)
	}
	var tl struct{ Tags []string }
	json.NewDecoder(resp.Body).Decode(&tl)
	resp.Body.Close()
	if len(tl.Tags) != 1 || tl.Tags[0] != "latest" {
		t.Errorf("tags: got %v, want [latest]", tl.Tags)
	}
}

func TestRefusals(t *testing.T) {
	f := newFixture(t, nil)
	amdOnly := f.push(t, "x/amd:v1", ocitest.Image(t, "linux/amd64", ocitest.PiBoot(t)))
	noBoot := f.push(t, "x/noboot:v1", ocitest.Image(t, "linux/arm64", ocitest.Layer(t, ocitest.File("etc/hostname", 0o644, "x"))))
	noFirmware := f.push(t, "x/nofw:v1", ocitest.Image(t, "linux/arm64", ocitest.Layer(t, ocitest.Dir("boot/", 0o755), ocitest.File("boot/vmlinuz", 0o644, "k"))))
	amdNoFirmware := f.push(t, "x/amdnofw:v1", ocitest.Image(t, "linux/amd64", ocitest.Layer(t, ocitest.Dir("boot/", 0o755), ocitest.File("boot/vmlinuz", 0o644, "k"))))
	hostile := f.push(t, "x/evil:v1", ocitest.Image(t, "linux/arm64", ocitest.PiBoot(t), ocitest.Layer(t, ocitest.File("../escape", 0o644, "x"))))
	for _, tt := range []struct {
		ref, plat, want string
	}{
		{amdOnly, "linux/arm64", "is an image for linux/amd64, but the config wants linux/arm64"},
		{noBoot, "linux/arm64", "no boot directory with a kernel"},
		{noFirmware, "linux/arm64", "a Pi 4/CM4 needs start4.elf"},
		{amdNoFirmware, "linux/amd64", ""},
		{hostile, "linux/arm64", `refusing tar entry "../escape"`},
		{f.host + "/x/missing:v1", "linux/arm64", "check the repository and tag"},
	} {
		_, _, err := f.cache.Pull(context.Background(), f.config(t, "{}"), tt.ref, tt.plat)
		if tt.want == "" {
			if err != nil {
				t.Errorf("%s: %v", tt.ref, err)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s (%s): got %v, want an error containing %q", tt.ref, tt.plat, err, tt.want)
		}
	}
	if _, err := os.Stat(filepath.Join(filepath.Dir(f.st.Root), "escape")); err == nil {
		t.Errorf("hostile layer wrote outside")
	}
	left, _ := filepath.Glob(f.st.Path(store.ImagesDir, ".*tmp-*"))
	if len(left) != 0 {
		t.Errorf("refused images left temp trees: %v", left)
	}
}

// flaky fails the first blob download mid-body and corrupts the second,
// then behaves.
type flaky struct {
	n atomic.Int64
}

func (fl *flaky) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := http.DefaultTransport.RoundTrip(r)
	if err != nil || r.Method != http.MethodGet || !strings.Contains(r.URL.Path, "/blobs/") || resp.StatusCode != 200 {
		return resp, err
	}
	switch fl.n.Add(1) {
	case 1:
		resp.Body = io.NopCloser(io.MultiReader(io.LimitReader(resp.Body, 3), errReader{}))
	case 2:
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if len(b) > 0 {
			b[len(b)/2] ^= 0xff
		}
		resp.Body = io.NopCloser(bytes.NewReader(b))
	}
	return resp, nil
}

type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, io.ErrUnexpectedEOF }

func TestRetryAndNoCorruptBlob(t *testing.T) {
	fl := &flaky{}
	f := newFixture(t, fl)
	big := ocitest.Layer(t, ocitest.File("data", 0o644, string(ocitest.Random(1, 1<<20))))
	img := ocitest.Image(t, "linux/arm64", ocitest.PiBoot(t), big)
	ref := f.push(t, "x/flaky:v1", img)
	f.cache.opts.Jobs = 1
	e, _, err := f.cache.Pull(context.Background(), f.config(t, "{}"), ref, "linux/arm64")
	if err != nil {
		t.Fatalf("pull through a flaky transport: %v", err)
	}
	if e.Digest != digestOf(t, img).String() {
		t.Errorf("digest %s, want %s", e.Digest, digestOf(t, img))
	}
	if fl.n.Load() < 3 {
		t.Errorf("transport saw %d blob GETs; the faults were not exercised", fl.n.Load())
	}
	layers, _ := img.Layers()
	for _, l := range layers {
		d := digestOf(t, l)
		rc, _ := f.cache.Blobs().Open(d)
		got, _, err := v1.SHA256(rc)
		rc.Close()
		if err != nil || got != d {
			t.Errorf("stored blob %s hashes to %s (%v)", d, got, err)
		}
	}
}

func TestResumeCleansPartialsAndReusesBlobs(t *testing.T) {
	f := newFixture(t, nil)
	img := ocitest.Image(t, "linux/arm64", ocitest.PiBoot(t), ocitest.Layer(t, ocitest.File("a", 0o644, "a")))
	ref := f.push(t, "x/resume:v1", img)
	layers, _ := img.Layers()
	// A complete blob from the crashed run, a partial one and a half-built tree.
	d0 := digestOf(t, layers[0])
	rc, _ := layers[0].Compressed()
	if err := f.cache.Blobs().Put(d0, -1, rc, nil); err != nil {
		t.Fatal(err)
	}
	partial := filepath.Join(f.st.Path(store.OCIDir, "blobs", "sha256"), "."+digestOf(t, layers[1]).Hex+".tmp-123")
	os.WriteFile(partial, []byte("half"), 0o644)
	halfTree := f.st.Path(store.ImagesDir, ".sha256-"+digestOf(t, img).Hex+".tmp-99")
	os.MkdirAll(filepath.Join(halfTree, "etc"), 0o755)

	c := f.open(t, nil) // the restart
	if _, err := os.Stat(partial); err == nil {
		t.Errorf("partial blob survived the restart")
	}
	if _, err := os.Stat(halfTree); err == nil {
		t.Errorf("half-unpacked tree survived the restart")
	}
	before := f.hits.Load()
	if _, _, err := c.Pull(context.Background(), f.config(t, "{}"), ref, "linux/arm64"); err != nil {
		t.Fatal(err)
	}
	// config + the second layer; the complete first layer is reused.
	if got, want := f.hits.Load()-before, int64(2); got != want {
		t.Errorf("blob GETs after restart: got %d, want %d", got, want)
	}
}

func TestGCRemovesUnreferenced(t *testing.T) {
	f := newFixture(t, nil)
	shared := ocitest.Layer(t, ocitest.File("shared", 0o644, "s"))
	imgA := ocitest.Image(t, "linux/arm64", shared, ocitest.PiBoot(t), ocitest.Layer(t, ocitest.File("a", 0o644, "a")))
	imgB := ocitest.Image(t, "linux/arm64", shared, ocitest.PiBoot(t), ocitest.Layer(t, ocitest.File("b", 0o644, "b")))
	refA, refB := f.push(t, "x/a:v1", imgA), f.push(t, "x/b:v1", imgB)
	both := f.config(t, fmt.Sprintf(`{"DefaultImage":%q,"Nodes":[{"Serial":"00000001","Image":%q}]}`, refA, refB))
	if err := f.cache.Sync(context.Background(), both); err != nil {
		t.Fatal(err)
	}
	onlyA := f.config(t, fmt.Sprintf(`{"DefaultImage":%q}`, refA))
	if err := f.cache.Sync(context.Background(), onlyA); err != nil {
		t.Fatal(err)
	}
	rootA, _ := images.Root(f.st, digestOf(t, imgA).String())
	rootB, _ := images.Root(f.st, digestOf(t, imgB).String())
	if _, err := os.Stat(rootA); err != nil {
		t.Errorf("tree of the kept image: %v", err)
	}
	if _, err := os.Stat(rootB); err == nil {
		t.Errorf("tree of the dropped image survived GC")
	}
	lb, _ := imgB.Layers()
	if !f.cache.Blobs().Has(digestOf(t, shared), -1) {
		t.Errorf("shared layer was collected")
	}
	if f.cache.Blobs().Has(digestOf(t, lb[2]), -1) {
		t.Errorf("layer only B used survived GC")
	}
	if f.cache.Blobs().Has(digestOf(t, imgB), -1) {
		t.Errorf("manifest of B survived GC")
	}
	ix, _ := images.LoadIndex(f.st)
	if got, want := len(ix.Entries), 1; got != want {
		t.Errorf("index entries: got %d, want %d", got, want)
	}
	if got := f.cache.Status().LastGC; len(got.TreesFreed) != 1 || got.BlobBytes == 0 {
		t.Errorf("LastGC: %+v", got)
	}
}

// A tree a node's root was made from stays until the node is reset, even
// when the config moved the node to another image.
func TestGCKeepsTreesOfNodeRoots(t *testing.T) {
	f := newFixture(t, nil)
	imgA := ocitest.Image(t, "linux/arm64", ocitest.PiBoot(t), ocitest.Layer(t, ocitest.File("a", 0o644, "a")))
	imgB := ocitest.Image(t, "linux/arm64", ocitest.PiBoot(t), ocitest.Layer(t, ocitest.File("b", 0o644, "b")))
	refA, refB := f.push(t, "x/a:v1", imgA), f.push(t, "x/b:v1", imgB)
	if err := f.cache.Sync(context.Background(), f.config(t, fmt.Sprintf(`{"DefaultImage":%q}`, refA))); err != nil {
		t.Fatal(err)
	}
	dir, _ := f.st.NodeDir("00000001")
	os.MkdirAll(dir, 0o755)
	if err := store.WriteJSON(filepath.Join(dir, nodes.ViewFile), map[string]string{"Digest": digestOf(t, imgA).String()}); err != nil {
		t.Fatal(err)
	}
	if err := f.cache.Sync(context.Background(), f.config(t, fmt.Sprintf(`{"DefaultImage":%q}`, refB))); err != nil {
		t.Fatal(err)
	}
	rootA, _ := images.Root(f.st, digestOf(t, imgA).String())
	if _, err := os.Stat(rootA); err != nil {
		t.Errorf("GC removed the tree a node's root was made from: %v", err)
	}
	os.Remove(filepath.Join(dir, nodes.ViewFile))
	f.cache.GC(f.config(t, fmt.Sprintf(`{"DefaultImage":%q}`, refB)))
	if _, err := os.Stat(rootA); err == nil {
		t.Error("tree survived GC after the node's root was reset")
	}
}

func TestPullThrough(t *testing.T) {
	f := newFixture(t, nil)
	img := ocitest.Image(t, "linux/arm64", ocitest.PiBoot(t), ocitest.Layer(t, ocitest.File("x", 0o644, "x")))
	f.push(t, "up/stream:v2", img)
	cfg := f.config(t, fmt.Sprintf(`{"Upstreams":[%q],"InsecureRegistries":[%q]}`, f.host+"/up", f.host))
	f.cache.setConfig(cfg)
	srv := httptest.NewServer(f.cache.RegistryHandler())
	defer srv.Close()
	mref, _ := name.ParseReference(strings.TrimPrefix(srv.URL, "http://")+"/up/stream:v2", name.Insecure)
	got, err := remote.Image(mref)
	if err != nil {
		t.Fatalf("pull-through: %v", err)
	}
	if digestOf(t, got) != digestOf(t, img) {
		t.Errorf("pull-through digest mismatch")
	}
	layers, _ := got.Layers()
	for _, l := range layers {
		rc, err := l.Compressed()
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, rc)
		rc.Close()
		if !f.cache.Blobs().Has(digestOf(t, l), -1) {
			t.Errorf("layer %s not cached after pull-through", digestOf(t, l))
		}
	}
	// Now cached: served even when the upstream is gone.
	f.reg.Close()
	if _, err := remote.Image(mref); err != nil {
		t.Errorf("cached pull-through with upstream down: %v", err)
	}
	resp, err := http.Get(srv.URL + "/v2/up/other/manifests/v1")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode == 200 {
		t.Errorf("missing repo with upstream down: status 200")
	}
}

func TestProgressAndStatus(t *testing.T) {
	f := newFixture(t, nil)
	img := ocitest.Image(t, "linux/arm64", ocitest.PiBoot(t))
	ref := f.push(t, "x/st:v1", img)
	if err := f.cache.Sync(context.Background(), f.config(t, fmt.Sprintf(`{"DefaultImage":%q}`, ref))); err != nil {
		t.Fatal(err)
	}
	s := f.cache.Status()
	if len(s.Images) != 1 || s.Images[0].State != "ready" || s.Images[0].Digest != digestOf(t, img).String() {
		t.Errorf("status: %+v", s.Images)
	}
	if s.FetchedBytes == 0 || len(s.Pulling) != 0 {
		t.Errorf("FetchedBytes %d, Pulling %v", s.FetchedBytes, s.Pulling)
	}
}

func nilLogger() *log.Logger { return log.New(io.Discard, "", 0) }

// TestDockerConfigAuth pulls from a registry that wants basic auth, with
// credentials only in $DOCKER_CONFIG/config.json "auths" (plain, as
// `docker login` without a credential helper writes them).
func TestDockerConfigAuth(t *testing.T) {
	h := registry.New(registry.Logger(nilLogger()))
	var denied atomic.Int64
	reg := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u, p, ok := r.BasicAuth()
		if r.Method == http.MethodGet && (!ok || u != "pi" || p != "s3cret") {
			denied.Add(1)
			w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
			http.Error(w, "auth required", http.StatusUnauthorized)
			return
		}
		h.ServeHTTP(w, r)
	}))
	defer reg.Close()
	host := strings.TrimPrefix(reg.URL, "http://")
	img := ocitest.Image(t, "linux/arm64", ocitest.PiBoot(t))
	ref := ocitest.Push(t, host, "private/os:v1", img)

	st, err := store.Open(t.TempDir(), store.Options{AllowTmpfs: true})
	if err != nil {
		t.Fatal(err)
	}
	c, err := New(st, Options{Log: slog.New(slog.NewTextHandler(io.Discard, nil)), MinFree: 1, Attempts: 1, Backoff: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	cfg, _ := config.Parse([]byte(fmt.Sprintf(`{"Netboot":{"InsecureRegistries":[%q]}}`, host)))

	t.Setenv("DOCKER_CONFIG", t.TempDir())
	_, _, err = c.Pull(context.Background(), cfg, ref, "linux/arm64")
	if err == nil || !strings.Contains(err.Error(), "docker login") {
		t.Errorf("without credentials: got %v, want a hint to log in", err)
	}

	dir := t.TempDir()
	auth := base64.StdEncoding.EncodeToString([]byte("pi:s3cret"))
	os.WriteFile(filepath.Join(dir, "config.json"), []byte(fmt.Sprintf(`{"auths":{%q:{"auth":%q}}}`, host, auth)), 0o600)
	t.Setenv("DOCKER_CONFIG", dir)
	e, _, err := c.Pull(context.Background(), cfg, ref, "linux/arm64")
	if err != nil {
		t.Fatalf("with credentials in config.json: %v", err)
	}
	if e.Digest != digestOf(t, img).String() {
		t.Errorf("digest %s, want %s", e.Digest, digestOf(t, img))
	}
	if denied.Load() == 0 {
		t.Errorf("the registry never asked for credentials; the test proves nothing")
	}
}
