package ocicache

import (
	"context"
	"errors"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ociboot/ociboot/appliance/ocicache/ocitest"
	"github.com/ociboot/ociboot/appliance/store"
	"github.com/ociboot/ociboot/appliance/testenv"
)

// A real full file system: the store on an 8 MiB tmpfs (in a mount
// namespace of its own), the free-space checks blinded so that the write
// itself runs into ENOSPC. The error is a disk error, the layer is asked
// for once, and nothing half-written is left.
func TestRealENOSPCIsADiskError(t *testing.T) {
	dir, out := testenv.InTmpfs(t, 8)
	if dir == "" {
		for _, l := range strings.Split(out, "\n") {
			if strings.Contains(l, "error: ") {
				t.Log(strings.TrimSpace(l))
			}
		}
		return
	}
	gets := &blobGets{}
	f := newFixture(t, gets)
	st, err := store.Open(dir, store.Options{AllowTmpfs: true})
	if err != nil {
		t.Fatal(err)
	}
	f.st = st
	big := ocitest.Layer(t, ocitest.File("data", 0o644, string(ocitest.Random(7, 12<<20))))
	ref := f.push(t, "x/huge:v1", ocitest.Image(t, "linux/arm64", ocitest.PiBoot(t), big))
	c := f.reopen(t, gets, func(o *Options) {
		o.FreeSpace = func(string) (int64, error) { return 1 << 40, nil }
		o.Backoff = time.Second
	})
	start := time.Now()
	_, _, err = c.Pull(context.Background(), f.config(t, "{}"), ref, "linux/arm64")
	var de *DiskError
	if !errors.As(err, &de) || !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("pull onto a full tmpfs: got %v, want a DiskError wrapping ENOSPC", err)
	}
	if got, want := gets.get(digestOf(t, big).String()), 1; got != want {
		t.Errorf("GETs of the layer: got %d, want %d (ENOSPC is not retried)", got, want)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("pull took %v; a retry with backoff must not happen", took)
	}
	if c.Blobs().Has(digestOf(t, big), -1) {
		t.Error("the layer was stored")
	}
	t.Logf("error: %v", err)
}
