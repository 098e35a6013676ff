// Package ocicache_bench compares ocicache's pull + unpack of a ~300 MB
// multi-layer image with skopeo copy + umoci unpack from the same
// docker-registry, measures what a second image sharing the base layers
// costs on the wire, and reports the service's peak RSS.
//
//	OCIBOOT_BENCH=1 go test -v -count=1 -timeout 30m ./tests/bench/ocicache/
package ocicache_bench

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/ociboot/ociboot/appliance/ocicache"
	"github.com/ociboot/ociboot/appliance/ocicache/ocitest"
	"github.com/ociboot/ociboot/appliance/testenv"
	"github.com/ociboot/ociboot/tests/lab"
)

// layerTar makes a layer of about size bytes in files of 4 KiB..1 MiB,
// half incompressible (binaries) and half text-like, as root file systems
// are.
func layerTar(t *testing.T, seed uint64, dir string, size int) []byte {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	tw.WriteHeader(&tar.Header{Name: dir + "/", Typeflag: tar.TypeDir, Mode: 0o755, ModTime: time.Unix(1700000000, 0)})
	rnd := ocitest.Random(seed, 8<<20)
	text := bytes.Repeat([]byte("Lorem ipsum dolor sit amet, ociboot netboot cache line.\n"), 20000)
	for i, written := 0, 0; written < size; i++ {
		n := 4096 << (i % 9) // 4 KiB .. 1 MiB
		var body []byte
		if i%2 == 0 {
			off := (i * 7919) % (len(rnd) - n)
			body = rnd[off : off+n]
		} else {
			body = text[:n]
		}
		tw.WriteHeader(&tar.Header{Name: fmt.Sprintf("%s/f%05d", dir, i), Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(n), ModTime: time.Unix(1700000000, 0)})
		tw.Write(body)
		written += n
	}
	tw.Close()
	return buf.Bytes()
}

type run struct {
	proc   *lab.Proc
	status string
	cfg    string
}

func start(t *testing.T, storeDir, netboot string) *run {
	r := &run{cfg: filepath.Join(t.TempDir(), "config.json")}
	os.WriteFile(r.cfg, []byte(`{"Netboot":`+netboot+`}`), 0o644)
	st := lab.ListenTCP(t)
	r.status = "http://" + st.Addr + "/status"
	r.proc = lab.Cmd{Name: "ocicache", Files: st.Files(),
		Args: []string{lab.Binary(t, "ocicache"), "-config", r.cfg, "-store", storeDir, "-allow_tmpfs", "-status", st.Addr, "-registry", "", "-min_free_mib", "64"}}.Start(t)
	return r
}

// waitReady polls until n images are ready; it fails on a failed image.
func (r *run) waitReady(t *testing.T, n int) {
	deadline := time.Now().Add(10 * time.Minute)
	for time.Now().Before(deadline) {
		resp, err := http.Get(r.status)
		if err == nil {
			var st struct{ Cache ocicache.Status }
			json.NewDecoder(resp.Body).Decode(&st)
			resp.Body.Close()
			ready := 0
			for _, im := range st.Cache.Images {
				switch im.State {
				case "ready":
					ready++
				case "failed":
					t.Fatalf("pull failed: %s\n%s", im.Error, r.proc.Tail(5000))
				}
			}
			if ready == n {
				return
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("not ready in time:\n%s", r.proc.Tail(5000))
}

// stop ends the service and returns its peak RSS in bytes: VmHWM of its
// address space, read just before it exits. (wait4's ru_maxrss would not
// do: Linux carries it over exec from the forked copy of this test
// process, which holds the benchmark images in memory.)
func (r *run) stop(t *testing.T) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", r.proc.Pid()))
	if err != nil {
		t.Fatal(err)
	}
	var hwm int64
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			hwm, _ = strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
		}
	}
	r.proc.Kill(syscall.SIGTERM)
	<-r.proc.Done()
	if hwm == 0 {
		t.Fatalf("no VmHWM in /proc/%d/status", r.proc.Pid())
	}
	return hwm << 10
}

// written is what the service has written to storage so far
// (write_bytes of /proc/<pid>/io: page-cache bytes dirtied for the disk).
func (r *run) written(t *testing.T) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/io", r.proc.Pid()))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "write_bytes:"); ok {
			n, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			return n
		}
	}
	t.Fatalf("no write_bytes in /proc/%d/io", r.proc.Pid())
	return 0
}

func median(d []float64) float64 {
	s := append([]float64(nil), d...)
	sort.Float64s(s)
	return s[len(s)/2]
}

func TestBench(t *testing.T) {
	testenv.OptIn(t, "OCIBOOT_BENCH", "the ocicache benchmark")
	for _, tool := range []string{"skopeo", "umoci", "docker-registry"} {
		testenv.NeedTool(t, tool, tool)
	}
	runs := 3
	if n, err := strconv.Atoi(os.Getenv("OCIBOOT_BENCH_RUNS")); err == nil && n > 0 {
		runs = n
	}
	reg := lab.DockerRegistry(t, "", "")
	proxy := ocitest.NewProxy(t, reg)

	// 6 layers of ~50 MB; the second image shares the first 5.
	var layers []v1.Layer
	for i := 0; i < 6; i++ {
		layers = append(layers, ocitest.LayerFromTar(t, layerTar(t, uint64(i+1), fmt.Sprintf("usr/share/l%d", i), 50<<20)))
	}
	boot := ocitest.PiBoot(t)
	img1 := ocitest.Image(t, "linux/arm64", append([]v1.Layer{boot}, layers...)...)
	extra := ocitest.LayerFromTar(t, layerTar(t, 99, "opt/app", 20<<20))
	img2 := ocitest.Image(t, "linux/arm64", append(append([]v1.Layer{boot}, layers[:5]...), extra)...)
	ref1 := ocitest.Push(t, proxy.Addr, "bench/base:v1", img1)
	ref2 := ocitest.Push(t, proxy.Addr, "bench/app:v1", img2)
	var compressed int64
	for _, l := range layers {
		s, _ := l.Size()
		compressed += s
	}
	extraSize, _ := extra.Size()
	lastSize, _ := layers[5].Size()
	t.Logf("image 1: %d layers, %.0f MB compressed, ~300 MB unpacked", len(layers)+1, float64(compressed)/1e6)

	var ours, peer, rss, amp []float64
	var secondBytes int64
	for i := 0; i < runs; i++ {
		// ocicache: a fresh store, the service binary from start to ready.
		storeDir := t.TempDir()
		downBefore := proxy.Downloaded()
		t0 := time.Now()
		r := start(t, storeDir, fmt.Sprintf(`{"DefaultImage":%q,"InsecureRegistries":[%q]}`, ref1, proxy.Addr))
		r.waitReady(t, 1)
		ours = append(ours, time.Since(t0).Seconds())
		amp = append(amp, float64(r.written(t))/float64(proxy.Downloaded()-downBefore))

		// The second image: only what it does not share may cross the wire.
		before := proxy.Downloaded()
		os.WriteFile(r.cfg, []byte(fmt.Sprintf(`{"Netboot":{"DefaultImage":%q,"InsecureRegistries":[%q],"Nodes":[{"Serial":"00000001","Image":%q}]}}`, ref1, proxy.Addr, ref2)), 0o644)
		r.proc.Kill(syscall.SIGHUP)
		r.waitReady(t, 2)
		secondBytes = proxy.Downloaded() - before
		rss = append(rss, float64(r.stop(t)))
		os.RemoveAll(storeDir)

		// Peer: skopeo copy + umoci unpack of the same image.
		dir := t.TempDir()
		t0 = time.Now()
		if out, err := exec.Command("skopeo", "copy", "--src-tls-verify=false", "docker://"+ref1, "oci:"+dir+"/oci:v1").CombinedOutput(); err != nil {
			t.Fatalf("skopeo: %v\n%s", err, out)
		}
		if out, err := exec.Command("umoci", "unpack", "--image", dir+"/oci:v1", dir+"/bundle").CombinedOutput(); err != nil {
			t.Fatalf("umoci: %v\n%s", err, out)
		}
		peer = append(peer, time.Since(t0).Seconds())
		os.RemoveAll(dir)
		t.Logf("run %d: ocicache %.2fs, skopeo+umoci %.2fs, second image fetched %d bytes, peak RSS %.0f MiB, %.2f bytes written per byte pulled", i+1, ours[i], peer[i], secondBytes, rss[i]/(1<<20), amp[i])
	}
	mo, mp := median(ours), median(peer)
	sp := make([]float64, runs)
	for i := range sp {
		sp[i] = peer[i] / ours[i]
	}
	sort.Float64s(sp)
	t.Logf("pull+unpack ~300 MB, median of %d: ocicache %.2fs, skopeo+umoci %.2fs, speed-up %.2fx [per run %.2f-%.2f] (goal >= 4x)", runs, mo, mp, mp/mo, sp[0], sp[len(sp)-1])
	t.Logf("written to the store per byte pulled (write_bytes of the service / bytes through the registry proxy), median: %.2f (the compressed blob kept for serving plus the unpacked tree)", median(amp))
	unique := extraSize
	t.Logf("second image sharing 5 of 6 big layers: fetched %d bytes; its unshared layer is %d bytes (the replaced layer was %d); shared bytes refetched: %d (goal 0)",
		secondBytes, unique, lastSize, max(0, secondBytes-unique-64<<10))
	t.Logf("peak RSS of the service, median: %.0f MiB (goal <= 64 MiB)", median(rss)/(1<<20))
	if secondBytes > unique+64<<10 {
		t.Errorf("second image fetched %d bytes, more than its unique layer (%d) plus manifests", secondBytes, unique)
	}
}
