package ocicache

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/ociboot/ociboot/appliance/images"
	"github.com/ociboot/ociboot/appliance/nodes"
	"github.com/ociboot/ociboot/appliance/ocicache/ocitest"
)

// mirrorDigest asks the /v2/ mirror which digest repo:tag is.
func mirrorDigest(t *testing.T, c *Cache, repo, tag string) string {
	t.Helper()
	srv := httptest.NewServer(c.RegistryHandler())
	defer srv.Close()
	req, _ := http.NewRequest(http.MethodHead, srv.URL+"/v2/"+repo+"/manifests/"+tag, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		return fmt.Sprintf("HTTP %d", resp.StatusCode)
	}
	return resp.Header.Get("Docker-Content-Digest")
}

func treeExists(t *testing.T, f *fixture, digest string) bool {
	t.Helper()
	root, err := images.Root(f.st, digest)
	if err != nil {
		t.Fatal(err)
	}
	_, err = os.Stat(root)
	return err == nil
}

// A typo in DefaultImage (the new reference 404s) leaves nodes on the
// image the slot served: the typo'd reference stands in with the old
// tree, GC keeps it and its blobs, the mirror keeps serving it, across a
// restart, until a reference that works is pulled.
func TestTypoInDefaultImageKeepsLastGood(t *testing.T) {
	f := newFixture(t, nil)
	imgA := ocitest.Image(t, "linux/arm64", ocitest.PiBoot(t), ocitest.Layer(t, ocitest.File("a", 0o644, "a")))
	refA := f.push(t, "rpi/node:v1", imgA)
	dA := digestOf(t, imgA).String()
	good := f.config(t, fmt.Sprintf(`{"DefaultImage":%q,"Enroll":"auto"}`, refA))
	if err := f.cache.Sync(context.Background(), good); err != nil {
		t.Fatal(err)
	}
	typo := f.host + "/rpi/nodee:v1"
	bad := f.config(t, fmt.Sprintf(`{"DefaultImage":%q,"Enroll":"auto"}`, typo))
	for round := range 2 {
		if round == 1 {
			f.cache = f.open(t, nil) // restart: the slot is on disk
		}
		if err := f.cache.Sync(context.Background(), bad); err == nil {
			t.Fatalf("round %d: sync with a typo succeeded", round)
		}
		img, err := nodes.ImageOf(bad, f.st, "1234abcd")
		if err != nil {
			t.Fatalf("round %d: node image after the typo: %v", round, err)
		}
		if got, want := img.Entry.Digest, dA; got != want {
			t.Errorf("round %d: node boots %s, want the last good %s", round, got, want)
		}
		if !treeExists(t, f, dA) {
			t.Fatalf("round %d: GC removed the last good tree", round)
		}
		layers, _ := imgA.Layers()
		for _, l := range layers {
			if !f.cache.Blobs().Has(digestOf(t, l), -1) {
				t.Errorf("round %d: GC removed layer %s of the last good image", round, digestOf(t, l))
			}
		}
		if got := mirrorDigest(t, f.cache, "rpi/node", "v1"); got != dA {
			t.Errorf("round %d: mirror serves rpi/node:v1 as %s, want %s", round, got, dA)
		}
		var e images.Entry
		for _, r := range f.cache.Status().References {
			if r.Ref == typo {
				e = r
			}
		}
		if e.Digest != dA || e.StandIn != refA || !strings.Contains(e.LastError, "check the repository and tag") || e.LastAttempt.IsZero() {
			t.Errorf("round %d: status of %s: %+v", round, typo, e)
		}
	}

	// Another typo on top: the slot still serves the last good tree.
	typo2 := f.host + "/rpi/nod:v1"
	bad2 := f.config(t, fmt.Sprintf(`{"DefaultImage":%q,"Enroll":"auto"}`, typo2))
	if err := f.cache.Sync(context.Background(), bad2); err == nil {
		t.Fatal("sync with a second typo succeeded")
	}
	if img, err := nodes.ImageOf(bad2, f.st, "1234abcd"); err != nil || img.Entry.Digest != dA || img.Entry.StandIn != refA {
		t.Errorf("after a second typo: %+v, %v", img.Entry, err)
	}
	if !treeExists(t, f, dA) {
		t.Fatal("GC removed the last good tree after a second typo")
	}

	// The typo fixed to a new image: it replaces the stand-in, and GC
	// frees the old tree.
	imgB := ocitest.Image(t, "linux/arm64", ocitest.PiBoot(t), ocitest.Layer(t, ocitest.File("b", 0o644, "b")))
	refB := f.push(t, "rpi/node:v2", imgB)
	fixed := f.config(t, fmt.Sprintf(`{"DefaultImage":%q,"Enroll":"auto"}`, refB))
	if err := f.cache.Sync(context.Background(), fixed); err != nil {
		t.Fatal(err)
	}
	img, err := nodes.ImageOf(fixed, f.st, "1234abcd")
	if err != nil || img.Entry.Digest != digestOf(t, imgB).String() || img.Entry.StandIn != "" {
		t.Errorf("after the fix: %+v, %v", img.Entry, err)
	}
	if treeExists(t, f, dA) {
		t.Error("old tree survived once a newer one was ready")
	}
}

// An update that downloads but fails the boot check keeps the old tree
// serving; the refused manifest is remembered (across a restart) and not
// fetched again until the config changes or the tag moves.
func TestRefusedUpdateKeepsServingAndIsNotRefetched(t *testing.T) {
	f := newFixture(t, nil)
	good := ocitest.Image(t, "linux/arm64", ocitest.PiBoot(t), ocitest.Layer(t, ocitest.File("v", 0o644, "1")))
	ref := f.push(t, "rpi/node:stable", good)
	dGood := digestOf(t, good).String()
	cfg := f.config(t, fmt.Sprintf(`{"DefaultImage":%q}`, ref))
	if err := f.cache.Sync(context.Background(), cfg); err != nil {
		t.Fatal(err)
	}
	broken := ocitest.Image(t, "linux/arm64", ocitest.Layer(t, ocitest.File("data", 0o644, string(ocitest.Random(4, 64<<10)))))
	f.push(t, "rpi/node:stable", broken)
	dBroken := digestOf(t, broken).String()

	if err := f.cache.Sync(context.Background(), cfg); err == nil || !strings.Contains(err.Error(), "no boot directory") {
		t.Fatalf("sync of the broken update: got %v, want the boot check's error", err)
	}
	ix, _ := images.LoadIndex(f.st)
	e, _ := ix.Lookup(ref, "linux/arm64")
	if e.Digest != dGood || !strings.Contains(e.LastError, "no boot directory") {
		t.Errorf("entry after the refused update: %+v", e)
	}
	if !treeExists(t, f, dGood) {
		t.Error("the serving tree was removed")
	}
	if got := mirrorDigest(t, f.cache, "rpi/node", "stable"); got != dGood {
		t.Errorf("mirror: got %s, want %s", got, dGood)
	}
	st := f.cache.Status()
	if len(st.Rejected) != 1 || st.Rejected[0].Digest != dBroken {
		t.Errorf("Status.Rejected: %+v", st.Rejected)
	}

	for round := range 2 {
		if round == 1 {
			f.cache = f.open(t, nil)
		}
		before := f.hits.Load()
		err := f.cache.Sync(context.Background(), cfg)
		if err == nil || !strings.Contains(err.Error(), "not fetching "+dBroken+" again") {
			t.Errorf("round %d: sync: got %v, want the remembered refusal", round, err)
		}
		if got := f.hits.Load() - before; got != 0 {
			t.Errorf("round %d: blob GETs for a refused manifest: got %d, want 0", round, got)
		}
	}

	// A changed config tries again (and refuses again, fetching).
	cfg2 := f.config(t, fmt.Sprintf(`{"DefaultImage":%q,"BootDir":"boot"}`, ref))
	before := f.hits.Load()
	if err := f.cache.Sync(context.Background(), cfg2); err == nil || strings.Contains(err.Error(), "not fetching") {
		t.Errorf("sync under a changed config: got %v, want a fresh attempt", err)
	}
	if f.hits.Load() == before {
		t.Error("changed config did not try the refused manifest again")
	}

	// The tag moves to a fixed image: pulled.
	fixed := ocitest.Image(t, "linux/arm64", ocitest.PiBoot(t), ocitest.Layer(t, ocitest.File("v", 0o644, "2")))
	f.push(t, "rpi/node:stable", fixed)
	if err := f.cache.Sync(context.Background(), cfg); err != nil {
		t.Fatalf("sync after the tag moved: %v", err)
	}
	ix, _ = images.LoadIndex(f.st)
	if e, _ := ix.Lookup(ref, "linux/arm64"); e.Digest != digestOf(t, fixed).String() || e.LastError != "" {
		t.Errorf("entry after the fix: %+v", e)
	}
}

// breaker makes registry requests fail the way the mode says.
type breaker struct {
	mu   sync.Mutex
	mode string // "", "404", "403", "down"
}

func (b *breaker) set(m string) { b.mu.Lock(); b.mode = m; b.mu.Unlock() }

func (b *breaker) RoundTrip(r *http.Request) (*http.Response, error) {
	b.mu.Lock()
	mode := b.mode
	b.mu.Unlock()
	status := map[string]int{"404": 404, "403": 403}[mode]
	switch {
	case mode == "down":
		return nil, &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}
	case status != 0 && r.URL.Path != "/v2/":
		return &http.Response{StatusCode: status, Status: http.StatusText(status), Header: http.Header{"Content-Type": {"application/json"}},
			Body: io.NopCloser(strings.NewReader(`{"errors":[{"code":"DENIED","message":"no"}]}`)), Request: r}, nil
	}
	return http.DefaultTransport.RoundTrip(r)
}

// Whatever makes an update fail, the tree that served keeps serving, GC
// included.
func TestFailedUpdateKeepsServing(t *testing.T) {
	for _, tt := range []struct {
		name string
		fail func(f *fixture, b *breaker)
		want string
	}{
		{"tag gone (404)", func(f *fixture, b *breaker) { b.set("404") }, "check the repository and tag"},
		{"auth (403)", func(f *fixture, b *breaker) { b.set("403") }, "docker login"},
		{"network", func(f *fixture, b *breaker) { b.set("down") }, "connection refused"},
		{"too big", func(f *fixture, b *breaker) {
			f.push(t, "rpi/node:v1", ocitest.Image(t, "linux/arm64", ocitest.PiBoot(t), ocitest.Layer(t, ocitest.File("big", 0o644, string(ocitest.Random(5, 1<<20))))))
			f.reopen(t, b, func(o *Options) {
				o.MinFree = 64 << 20
				o.FreeSpace = func(string) (int64, error) { return 64<<20 + 512<<10, nil }
			})
		}, "-min_free_mib"},
		{"boot check", func(f *fixture, b *breaker) {
			f.push(t, "rpi/node:v1", ocitest.Image(t, "linux/arm64", ocitest.Layer(t, ocitest.File("etc/hostname", 0o644, "x"))))
		}, "no boot directory"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			b := &breaker{}
			f := newFixture(t, b)
			good := ocitest.Image(t, "linux/arm64", ocitest.PiBoot(t), ocitest.Layer(t, ocitest.File("g", 0o644, "g")))
			ref := f.push(t, "rpi/node:v1", good)
			dGood := digestOf(t, good).String()
			cfg := f.config(t, fmt.Sprintf(`{"DefaultImage":%q,"Enroll":"auto"}`, ref))
			if err := f.cache.Sync(context.Background(), cfg); err != nil {
				t.Fatal(err)
			}
			tt.fail(f, b)
			err := f.cache.Sync(context.Background(), cfg)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("sync: got %v, want an error containing %q", err, tt.want)
			}
			img, ierr := nodes.ImageOf(cfg, f.st, "1234abcd")
			if ierr != nil || img.Entry.Digest != dGood || !strings.Contains(img.Entry.LastError, tt.want) {
				t.Errorf("node image: %+v, %v", img.Entry, ierr)
			}
			if !treeExists(t, f, dGood) {
				t.Error("serving tree removed")
			}
			layers, _ := good.Layers()
			for _, l := range layers {
				if !f.cache.Blobs().Has(digestOf(t, l), -1) {
					t.Errorf("serving layer %s removed", digestOf(t, l))
				}
			}
			if got := mirrorDigest(t, f.cache, "rpi/node", "v1"); got != dGood {
				t.Errorf("mirror: got %s, want %s", got, dGood)
			}
		})
	}
}

// A node moved from DefaultImage to an Image of its own that fails keeps
// booting what it booted.
func TestNodeMovedToFailingImageKeepsDefault(t *testing.T) {
	f := newFixture(t, nil)
	imgA := ocitest.Image(t, "linux/arm64", ocitest.PiBoot(t), ocitest.Layer(t, ocitest.File("a", 0o644, "a")))
	refA := f.push(t, "rpi/node:v1", imgA)
	if err := f.cache.Sync(context.Background(), f.config(t, fmt.Sprintf(`{"DefaultImage":%q}`, refA))); err != nil {
		t.Fatal(err)
	}
	moved := f.config(t, fmt.Sprintf(`{"DefaultImage":%q,"Nodes":[{"Serial":"1234abcd","Image":%q}]}`, refA, f.host+"/rpi/special:v1"))
	if err := f.cache.Sync(context.Background(), moved); err == nil {
		t.Fatal("sync with a missing node image succeeded")
	}
	img, err := nodes.ImageOf(moved, f.st, "1234abcd")
	if err != nil || img.Entry.Digest != digestOf(t, imgA).String() {
		t.Errorf("node image: %+v, %v", img.Entry, err)
	}
}
