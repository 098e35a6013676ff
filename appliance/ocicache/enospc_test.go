package ocicache

import (
	"context"
	"errors"
	"os"
	"os/exec"
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
	if os.Getenv("OCIBOOT_ENOSPC_HELPER") == "" {
		testenv.NeedRoot(t, "a tmpfs in a mount namespace")
		cmd := exec.Command("unshare", "-m", "sh", "-c", `mount -t tmpfs -o size=8m tmpfs "$D" && exec "$0" -test.run '^TestRealENOSPCIsADiskError$' -test.v`, os.Args[0])
		cmd.Env = append(os.Environ(), "D="+t.TempDir(), "OCIBOOT_ENOSPC_HELPER=1")
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.Contains(string(out), "--- PASS") {
			t.Fatalf("%v: %v\n%s", cmd.Args, err, out)
		}
		for _, l := range strings.Split(string(out), "\n") {
			if strings.Contains(l, "error: ") {
				t.Log(strings.TrimSpace(l))
			}
		}
		return
	}
	gets := &blobGets{}
	f := newFixture(t, gets)
	st, err := store.Open(os.Getenv("D"), store.Options{AllowTmpfs: true})
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
