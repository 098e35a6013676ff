package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestHeadPullsNodeImage: the node image goes registry → ocicache → an
// unpacked tree with its boot directory found.
func TestHeadPullsNodeImage(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end")
	}
	lab := NewLab(t)
	h := NewHead(t, lab, map[string]any{"Interface": "eth0", "ServerIP": lab.Addr(1)})
	h.StartService(t, "ocicache")
	h.WaitImage(t, 2*time.Minute)
	var ix struct {
		Entries []struct{ Ref, Platform, Digest, BootDir, Kernel string }
	}
	b, _ := os.ReadFile(filepath.Join(h.Store, "images", "index.json"))
	if err := json.Unmarshal(b, &ix); err != nil {
		t.Fatal(err)
	}
	if got, want := len(ix.Entries), 1; got != want {
		t.Fatalf("index entries: got %d, want %d", got, want)
	}
	e := ix.Entries[0]
	if e.BootDir != "boot" || e.Platform != "linux/amd64" {
		t.Errorf("entry: got %+v, want boot dir boot on linux/amd64", e)
	}
	t.Logf("pulled %+v", e)
}
