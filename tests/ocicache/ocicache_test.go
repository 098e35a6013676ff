// Package ocicache_test runs the ocicache service binary against Debian's
// docker-registry and checks what it stores and serves with skopeo and
// umoci.
package ocicache_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/ociboot/ociboot/appliance/images"
	"github.com/ociboot/ociboot/appliance/ocicache"
	"github.com/ociboot/ociboot/appliance/ocicache/ocitest"
	"github.com/ociboot/ociboot/appliance/store"
	"github.com/ociboot/ociboot/appliance/testenv"
	"github.com/ociboot/ociboot/tests/lab"
)

// svc is one run of the service binary.
type svc struct {
	proc     *lab.Proc
	status   string // http://addr/status
	cfgPath  string
	registry string // host:port of /v2/
}

// startService runs the built ocicache on storeDir with netboot as the
// Netboot section; its status and registry listeners are sockets the test
// binds and hands down.
func startService(t *testing.T, storeDir, netboot string) *svc {
	t.Helper()
	cfgPath := filepath.Join(t.TempDir(), "config.json")
	if err := os.WriteFile(cfgPath, []byte(`{"Hostname":"head","Netboot":`+netboot+`}`), 0o644); err != nil {
		t.Fatal(err)
	}
	status, reg := lab.ListenTCP(t), lab.ListenTCP(t)
	s := &svc{cfgPath: cfgPath, status: "http://" + status.Addr + "/status", registry: reg.Addr}
	s.proc = lab.Cmd{Name: "ocicache", Env: []string{"DOCKER_CONFIG=" + t.TempDir()}, Files: append(status.Files(), reg.Files()...),
		Args: []string{lab.Binary(t, "ocicache"), "-config", cfgPath, "-store", storeDir, "-allow_tmpfs",
			"-status", status.Addr, "-registry", reg.Addr, "-min_free_mib", "64"}}.Start(t)
	s.proc.WaitFor(t, "registry listening", 10*time.Second)
	return s
}

type status struct {
	Cache ocicache.Status `json:"cache"`
}

func (s *svc) get(t *testing.T) status {
	t.Helper()
	resp, err := http.Get(s.status)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var st status
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatal(err)
	}
	return st
}

// wait polls /status until every image has left "pulling" and n are listed.
func (s *svc) wait(t *testing.T, n int, d time.Duration) map[string]ocicache.ImageStatus {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		st := s.get(t)
		done := map[string]ocicache.ImageStatus{}
		for _, im := range st.Cache.Images {
			if im.State != "pulling" {
				done[im.Ref+" "+im.Platform] = im
			}
		}
		if len(done) == n && len(st.Cache.Images) == n {
			return done
		}
		if time.Now().After(deadline) {
			t.Fatalf("images not settled after %v: %+v", d, st.Cache.Images)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func skopeo(t *testing.T, args ...string) (string, error) {
	t.Helper()
	testenv.NeedTool(t, "skopeo", "skopeo")
	out, err := exec.Command("skopeo", args...).CombinedOutput()
	return string(out), err
}

func digest(t *testing.T, v interface{ Digest() (v1.Hash, error) }) string {
	t.Helper()
	d, err := v.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d.String()
}

// ociIndexDigest reads the manifest digest skopeo wrote to an oci: layout.
func ociIndexDigest(t *testing.T, dir string) string {
	t.Helper()
	var ix v1.IndexManifest
	b, err := os.ReadFile(filepath.Join(dir, "index.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &ix); err != nil || len(ix.Manifests) != 1 {
		t.Fatalf("skopeo's index.json: %v %s", err, b)
	}
	return ix.Manifests[0].Digest.String()
}

func TestServiceWithDockerRegistryAndSkopeo(t *testing.T) {
	reg := lab.DockerRegistry(t, "", "")
	base := ocitest.Layer(t, ocitest.Dir("etc/", 0o755), ocitest.File("etc/os-release", 0o644, "ID=ociboot-test\n"))
	pi := ocitest.Image(t, "linux/arm64", base, ocitest.PiBoot(t), ocitest.Layer(t, ocitest.File("usr/bin/app", 0o755, "#!/bin/sh\n")))
	piRef := ocitest.Push(t, reg, "pi/os:v1", pi)
	evil := ocitest.Image(t, "linux/arm64", base, ocitest.PiBoot(t), ocitest.Layer(t, ocitest.Symlink("x", "/"), ocitest.File("x/tmp/ociboot-evil", 0o644, "pwned")))
	evilRef := ocitest.Push(t, reg, "pi/evil:v1", evil)
	other := ocitest.Image(t, "linux/arm64", base, ocitest.PiBoot(t))
	otherRef := ocitest.Push(t, reg, "mirror/only:v3", other)

	storeDir := t.TempDir()
	s := startService(t, storeDir, fmt.Sprintf(`{"DefaultImage":%q,"InsecureRegistries":[%q],"Upstreams":[%q],
		"Nodes":[{"Serial":"0000abcd","Image":%q}]}`, piRef, reg, reg+"/mirror", evilRef))
	got := s.wait(t, 2, 60*time.Second)

	if im := got[piRef+" linux/arm64"]; im.State != "ready" || im.Digest != digest(t, pi) || im.BootDir != "boot/firmware" || im.Kernel != "kernel8.img" {
		t.Errorf("good image: %+v; want ready with digest %s", im, digest(t, pi))
	}
	if im := got[evilRef+" linux/arm64"]; im.State != "failed" || !strings.Contains(im.Error, "symlink") {
		t.Errorf("hostile image: %+v; want failed naming the symlink", im)
	}
	if _, err := os.Lstat("/tmp/ociboot-evil"); err == nil {
		os.Remove("/tmp/ociboot-evil")
		t.Errorf("hostile layer wrote /tmp/ociboot-evil")
	}
	st, err := store.Open(storeDir, store.Options{AllowTmpfs: true})
	if err != nil {
		t.Fatal(err)
	}
	ix, err := images.LoadIndex(st)
	if err != nil {
		t.Fatal(err)
	}
	e, ok := ix.Lookup(piRef, "linux/arm64")
	if !ok || e.Digest != digest(t, pi) {
		t.Fatalf("images/index.json: %+v", ix)
	}
	if _, ok := ix.Lookup(evilRef, "linux/arm64"); ok {
		t.Errorf("the refused image is in images/index.json")
	}
	root, _ := images.Root(st, e.Digest)
	if b, err := os.ReadFile(filepath.Join(root, "etc/os-release")); string(b) != "ID=ociboot-test\n" {
		t.Errorf("tree etc/os-release: %q, %v", b, err)
	}

	resp, err := http.Get(strings.TrimSuffix(s.status, "/status") + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !bytes.Contains(metrics, []byte("ociboot_ocicache_fetched_bytes_total ")) || bytes.Contains(metrics, []byte("ociboot_ocicache_fetched_bytes_total 0\n")) {
		t.Errorf("/metrics lacks a non-zero ociboot_ocicache_fetched_bytes_total")
	}

	// skopeo, a client nobody here wrote, pulls from our /v2/ and verifies
	// every blob against its digest.
	for _, tt := range []struct{ repo, want string }{
		{"pi/os:v1", digest(t, pi)},
		{"mirror/only:v3", digest(t, other)}, // not in the config: pull-through
	} {
		dst := filepath.Join(t.TempDir(), "oci")
		out, err := skopeo(t, "copy", "--src-tls-verify=false", "docker://"+s.registry+"/"+tt.repo, "oci:"+dst+":t")
		if err != nil {
			t.Errorf("skopeo copy %s from our registry: %v\n%s", tt.repo, err, out)
			continue
		}
		if got := ociIndexDigest(t, dst); got != tt.want {
			t.Errorf("%s via skopeo: digest %s, want %s", tt.repo, got, tt.want)
		}
	}
	out, err := skopeo(t, "inspect", "--raw", "--tls-verify=false", "docker://"+s.registry+"/pi/os@"+digest(t, pi))
	if err != nil || !strings.Contains(out, `"schemaVersion": 2`) && !strings.Contains(out, `"schemaVersion":2`) {
		t.Errorf("skopeo inspect by digest: %v\n%s", err, out)
	}
	// Pushing is refused.
	src := filepath.Join(t.TempDir(), "oci")
	if out, err := skopeo(t, "copy", "--src-tls-verify=false", "docker://"+reg+"/pi/os:v1", "oci:"+src+":t"); err != nil {
		t.Fatalf("skopeo copy from docker-registry: %v\n%s", err, out)
	}
	if out, err := skopeo(t, "copy", "--dest-tls-verify=false", "oci:"+src+":t", "docker://"+s.registry+"/pi/pushed:v1"); err == nil {
		t.Errorf("skopeo push to our read-only registry succeeded:\n%s", out)
	}

	// SIGHUP with a config that names only another image: it is pulled,
	// and the old tree and index entry are collected.
	prevGC := s.get(t).Cache.LastGC.Time
	os.WriteFile(s.cfgPath, []byte(fmt.Sprintf(`{"Netboot":{"DefaultImage":%q,"InsecureRegistries":[%q]}}`, otherRef, reg)), 0o644)
	s.proc.Kill(syscall.SIGHUP)
	deadline := time.Now().Add(30 * time.Second)
	for {
		st := s.get(t)
		if len(st.Cache.Images) == 1 && st.Cache.Images[0].Ref == otherRef && st.Cache.Images[0].State == "ready" && st.Cache.LastGC.Time.After(prevGC) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after SIGHUP: %+v", st.Cache)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if _, err := os.Stat(root); err == nil {
		t.Errorf("tree of the image no longer configured survived GC")
	}
	ix, _ = images.LoadIndex(st)
	if len(ix.Entries) != 1 || ix.Entries[0].Ref != otherRef || ix.Entries[0].Digest != digest(t, other) {
		t.Errorf("images/index.json after SIGHUP: %+v", ix)
	}
}

// TestKill9MidPullThenRestart kills the service while it downloads through
// a throttled proxy, restarts it and checks the result is complete and
// correct, with nothing half-written left.
func TestKill9MidPullThenRestart(t *testing.T) {
	reg := lab.DockerRegistry(t, "", "")
	proxy := ocitest.NewProxy(t, reg)
	var layers []v1.Layer
	sums := map[string]string{}
	for i, size := range []int{2 << 20, 12 << 20, 12 << 20} {
		data := ocitest.Random(uint64(i+1), size)
		n := fmt.Sprintf("data/blob%d", i)
		sum := sha256.Sum256(data)
		sums[n] = hex.EncodeToString(sum[:])
		layers = append(layers, ocitest.Layer(t, ocitest.File(n, 0o644, string(data))))
	}
	img := ocitest.Image(t, "linux/arm64", append([]v1.Layer{ocitest.PiBoot(t)}, layers...)...)
	ref := ocitest.Push(t, proxy.Addr, "big/img:v1", img)
	proxy.Throttle(4 << 20)

	storeDir := t.TempDir()
	netboot := fmt.Sprintf(`{"DefaultImage":%q,"InsecureRegistries":[%q]}`, ref, proxy.Addr)
	s := startService(t, storeDir, netboot)
	deadline := time.Now().Add(30 * time.Second)
	for {
		st := s.get(t)
		// Kill once the small layer is complete and the big ones are
		// half-way: the restart must reuse the one and redo the others.
		if len(st.Cache.Pulling) == 2 && st.Cache.FetchedBytes > 3<<20 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("pull never got going: %+v", st.Cache)
		}
		time.Sleep(50 * time.Millisecond)
	}
	s.proc.Kill(syscall.SIGKILL)
	temps, _ := filepath.Glob(filepath.Join(storeDir, "oci/blobs/sha256/.*.tmp-*"))
	if len(temps) == 0 {
		t.Errorf("no partial blob at kill time; the kill did not hit mid-download")
	}
	if _, err := os.Stat(filepath.Join(storeDir, "images/index.json")); err == nil {
		t.Errorf("images/index.json exists at kill time; the pull had already finished")
	}

	proxy.Throttle(0)
	before := proxy.Downloaded()
	s2 := startService(t, storeDir, netboot)
	got := s2.wait(t, 1, 60*time.Second)
	if im := got[ref+" linux/arm64"]; im.State != "ready" || im.Digest != digest(t, img) {
		t.Fatalf("after restart: %+v", im)
	}
	refetched := proxy.Downloaded() - before
	t.Logf("bytes fetched after restart: %d of ~%d", refetched, 26<<20)
	if refetched > 25<<20 {
		t.Errorf("restart fetched %d bytes: the complete 2 MiB layer was not reused", refetched)
	}
	st, _ := store.Open(storeDir, store.Options{AllowTmpfs: true})
	root, _ := images.Root(st, digest(t, img))
	for n, want := range sums {
		b, err := os.ReadFile(filepath.Join(root, n))
		sum := sha256.Sum256(b)
		if got := hex.EncodeToString(sum[:]); err != nil || got != want {
			t.Errorf("%s: sha256 %s (%v), want %s", n, got, err, want)
		}
	}
	// Every stored blob matches its name; no temp file or tree is left.
	entries, _ := os.ReadDir(filepath.Join(storeDir, "oci/blobs/sha256"))
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".") {
			t.Errorf("temp file left: %s", e.Name())
			continue
		}
		f, _ := os.Open(filepath.Join(storeDir, "oci/blobs/sha256", e.Name()))
		h := sha256.New()
		io.Copy(h, f)
		f.Close()
		if got := hex.EncodeToString(h.Sum(nil)); got != e.Name() {
			t.Errorf("blob %s has content %s", e.Name(), got)
		}
	}
	if left, _ := filepath.Glob(filepath.Join(storeDir, "images/.*")); len(left) != 0 {
		t.Errorf("temp trees left: %v", left)
	}
}
