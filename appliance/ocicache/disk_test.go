package ocicache

import (
	"context"
	"errors"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"

	"github.com/ociboot/ociboot/appliance/ocicache/ocitest"
)

// reopen replaces the fixture's cache with one whose options edit changed.
func (f *fixture) reopen(t *testing.T, transport http.RoundTripper, edit func(*Options)) *Cache {
	t.Helper()
	o := Options{Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Keychain: authn.NewMultiKeychain(),
		Transport: transport, MinFree: 1, Backoff: 10 * time.Millisecond}
	edit(&o)
	c, err := New(f.st, o)
	if err != nil {
		t.Fatal(err)
	}
	f.cache = c
	return c
}

// blobGets counts blob GETs per digest.
type blobGets struct {
	next http.RoundTripper
	mu   sync.Mutex
	n    map[string]int
}

func (b *blobGets) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/") {
		b.mu.Lock()
		if b.n == nil {
			b.n = map[string]int{}
		}
		b.n[r.URL.Path[strings.LastIndex(r.URL.Path, "/")+1:]]++
		b.mu.Unlock()
	}
	next := b.next
	if next == nil {
		next = http.DefaultTransport
	}
	return next.RoundTrip(r)
}

func (b *blobGets) get(digest string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.n[digest]
}

const mib = 1 << 20

// A layer larger than the free space above the floor is never requested,
// and the error says which image and layer, the sizes and the flag.
func TestLayerLargerThanFreeSpaceIsNotFetched(t *testing.T) {
	gets := &blobGets{}
	f := newFixture(t, gets)
	big := ocitest.Layer(t, ocitest.File("data", 0o644, string(ocitest.Random(2, 2*mib))))
	img := ocitest.Image(t, "linux/arm64", ocitest.PiBoot(t), big)
	ref := f.push(t, "x/big:v1", img)
	f.reopen(t, gets, func(o *Options) {
		o.MinFree = 100 * mib
		o.FreeSpace = func(string) (int64, error) { return 101 * mib, nil }
	})
	_, _, err := f.cache.Pull(context.Background(), f.config(t, "{}"), ref, "linux/arm64")
	bd := digestOf(t, big).String()
	for _, want := range []string{ref, bd, "2.0 MiB", "101.0 MiB free", "-min_free_mib keeps 100.0 MiB"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("pull: got %v, want an error containing %q", err, want)
		}
	}
	var de *DiskError
	if !errors.As(err, &de) {
		t.Errorf("error is not a DiskError: %v", err)
	}
	if got := gets.get(bd); got != 0 {
		t.Errorf("GETs of the layer that cannot fit: got %d, want 0", got)
	}
}

// A download that would take the store below the floor (something else
// filled the disk meanwhile) is cut, and not retried.
func TestDownloadCutAtFloor(t *testing.T) {
	gets := &blobGets{}
	f := newFixture(t, gets)
	big := ocitest.Layer(t, ocitest.File("data", 0o644, string(ocitest.Random(3, 3*mib))))
	img := ocitest.Image(t, "linux/arm64", ocitest.PiBoot(t), big)
	ref := f.push(t, "x/fill:v1", img)
	var c *Cache
	c = f.reopen(t, gets, func(o *Options) {
		o.MinFree = 10 * mib
		o.FreeSpace = func(string) (int64, error) {
			if c != nil && c.FetchedBytes() >= 256<<10 { // the big layer is under way
				return 10*mib + 1000, nil
			}
			return 1 << 40, nil
		}
	})
	c.opts.Jobs = 1
	_, _, err := c.Pull(context.Background(), f.config(t, "{}"), ref, "linux/arm64")
	var de *DiskError
	if !errors.As(err, &de) || de.Written == 0 {
		t.Fatalf("pull: got %v, want a DiskError cutting the download", err)
	}
	if !strings.Contains(err.Error(), "cut after") || !strings.Contains(err.Error(), "-min_free_mib") {
		t.Errorf("error text: %v", err)
	}
	if got, want := gets.get(digestOf(t, big).String()), 1; got != want {
		t.Errorf("GETs of the cut layer: got %d, want %d (disk errors are not retried)", got, want)
	}
	if c.Blobs().Has(digestOf(t, big), -1) {
		t.Error("cut layer was stored")
	}
}

// ENOSPC is a disk error: syscall.Errno implements net.Error, which made
// it look like a network error worth five more attempts.
func TestENOSPCIsNotRetryable(t *testing.T) {
	for _, err := range []error{
		&fs.PathError{Op: "write", Path: "/perm/ociboot/oci/blobs/sha256/.x.tmp-1", Err: syscall.ENOSPC},
		syscall.EDQUOT,
		&DiskError{Size: 1},
	} {
		if retryable(err) {
			t.Errorf("retryable(%v) = true, want false", err)
		}
	}
	if !retryable(syscall.ECONNRESET) {
		t.Error("retryable(ECONNRESET) = false, want true")
	}
}

// status503 answers every blob GET with 503.
type status503 struct{ n atomic.Int64 }

func (s *status503) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/") {
		s.n.Add(1)
		return &http.Response{StatusCode: 503, Status: "503 Service Unavailable", Header: http.Header{}, Body: io.NopCloser(strings.NewReader("")), Request: r}, nil
	}
	return http.DefaultTransport.RoundTrip(r)
}

// Attempts are exactly Options.Attempts, with a sleep between two
// attempts and none after the last.
func TestNoSleepAfterLastAttempt(t *testing.T) {
	tr := &status503{}
	f := newFixture(t, tr)
	img := ocitest.Image(t, "linux/arm64", ocitest.PiBoot(t))
	ref := f.push(t, "x/down:v1", img)
	const backoff = 400 * time.Millisecond
	c := f.reopen(t, tr, func(o *Options) { o.Attempts = 2; o.Backoff = backoff })
	start := time.Now()
	_, _, err := c.Pull(context.Background(), f.config(t, "{}"), ref, "linux/arm64")
	took := time.Since(start)
	if err == nil {
		t.Fatal("pull with every blob answering 503 succeeded")
	}
	if got, want := tr.n.Load(), int64(2); got != want {
		t.Errorf("blob GETs: got %d, want %d", got, want)
	}
	// One sleep of backoff; a sleep after the last attempt would add 2x.
	if took >= 3*backoff {
		t.Errorf("pull took %v, want < %v (no sleep after the last attempt)", took, 3*backoff)
	}
}

// endless counts what is read from it and never ends.
type endless struct{ n int64 }

func (e *endless) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = 'x'
	}
	e.n += int64(len(p))
	return len(p), nil
}

// A stream that runs past its declared size is cut one byte after it.
func TestStreamPastDeclaredSizeIsCut(t *testing.T) {
	f := newFixture(t, nil)
	src := &endless{}
	d := digestOf(t, ocitest.Layer(t, ocitest.File("x", 0o644, "x")))
	err := f.cache.Blobs().Put(d, 1000, io.LimitReader(src, 1<<30), nil)
	if err == nil || !strings.Contains(err.Error(), "got 1001 bytes, want 1000") {
		t.Errorf("Put of an endless stream: got %v, want the size error", err)
	}
	if src.n > 256<<10 {
		t.Errorf("read %d bytes of a stream declared as 1000", src.n)
	}
}
