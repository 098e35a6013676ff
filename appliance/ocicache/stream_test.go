package ocicache

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"

	"github.com/ociboot/ociboot/appliance/images"
	"github.com/ociboot/ociboot/appliance/ocicache/ocitest"
)

// corruptOnce slows the first download of the blob whose digest it names
// so that the unpacker follows it, and flips a byte past the start.
type corruptOnce struct {
	hex  string
	once atomic.Bool
}

func (c *corruptOnce) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := http.DefaultTransport.RoundTrip(r)
	if err != nil || r.Method != http.MethodGet || !strings.Contains(r.URL.Path, c.hex) || resp.StatusCode != 200 || c.once.Swap(true) {
		return resp, err
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	b[len(b)*3/4] ^= 0xff
	resp.Body = io.NopCloser(&trickle{b: b})
	return resp, nil
}

// trickle hands out 64 KiB a millisecond.
type trickle struct{ b []byte }

func (t *trickle) Read(p []byte) (int, error) {
	if len(t.b) == 0 {
		return 0, io.EOF
	}
	time.Sleep(time.Millisecond)
	n := copy(p[:min(len(p), 64<<10)], t.b)
	t.b = t.b[n:]
	return n, nil
}

type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) { l.mu.Lock(); defer l.mu.Unlock(); return l.b.Write(p) }
func (l *logBuf) String() string              { l.mu.Lock(); defer l.mu.Unlock(); return l.b.String() }

// TestStreamedLayerCorruptedInFlight: the unpacker reads a layer as it
// downloads; a download that fails its digest check is retried, and the
// tree is unpacked again from the verified blobs, not refused and not
// made of the corrupted bytes.
func TestStreamedLayerCorruptedInFlight(t *testing.T) {
	data := ocitest.Random(7, 4<<20)
	big := ocitest.Layer(t, ocitest.File("data", 0o644, string(data)))
	co := &corruptOnce{hex: digestOf(t, big).Hex}
	f := newFixture(t, nil)
	var logs logBuf
	c, err := New(f.st, Options{Log: slog.New(slog.NewTextHandler(&logs, nil)), Keychain: authn.NewMultiKeychain(),
		Transport: co, MinFree: 1, Backoff: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	img := ocitest.Image(t, "linux/arm64", ocitest.PiBoot(t), big)
	ref := f.push(t, "x/stream:v1", img)
	e, _, err := c.Pull(context.Background(), f.config(t, "{}"), ref, "linux/arm64")
	if err != nil {
		t.Fatalf("pull with a layer corrupted in flight: %v\n%s", err, logs.String())
	}
	if !co.once.Load() {
		t.Fatal("the corrupting transport never saw the layer")
	}
	if !strings.Contains(logs.String(), "unpacking again") {
		t.Errorf("no second unpack from the stored layers in the log:\n%s", logs.String())
	}
	root, _ := images.Root(f.st, e.Digest)
	got, err := os.ReadFile(filepath.Join(root, "data"))
	if err != nil || !bytes.Equal(got, data) {
		t.Errorf("unpacked data: %d bytes, %v; want the layer's %d bytes", len(got), err, len(data))
	}
	left, _ := filepath.Glob(filepath.Join(filepath.Dir(root), ".*tmp-*"))
	if len(left) != 0 {
		t.Errorf("temp trees left: %v", left)
	}
}

// TestStreamedLayerFollowsTheDownload: a reader of a slow download gets
// every byte as it arrives and the end only once the blob is stored.
func TestStreamedLayerFollowsTheDownload(t *testing.T) {
	data := ocitest.Random(8, 2<<20)
	big := ocitest.Layer(t, ocitest.File("data", 0o644, string(data)))
	s := newStream()
	dir := t.TempDir()
	b, err := OpenBlobs(dir)
	if err != nil {
		t.Fatal(err)
	}
	rc, _ := big.Compressed()
	comp, _ := io.ReadAll(rc)
	d := digestOf(t, big)
	errc := make(chan error, 1)
	go func() {
		err := b.put(d, int64(len(comp)), &trickle{b: comp}, nil, s)
		s.end(err)
		errc <- err
	}()
	got, err := io.ReadAll(s.reader(context.Background()))
	if err != nil || !bytes.Equal(got, comp) {
		t.Fatalf("followed download: %d bytes, %v; want %d identical bytes", len(got), err, len(comp))
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if !b.Has(d, int64(len(comp))) {
		t.Errorf("blob %s not stored after the followed download", d)
	}
	s.close()
}
