package nfs

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ociboot/ociboot/appliance/config"
	"github.com/ociboot/ociboot/appliance/nodes"
)

func TestResetNodeAndForget(t *testing.T) {
	srv := fuzzServer(t)
	st := srv.opts.Store
	cfg, err := config.Parse([]byte(`{"Netboot": {"Nodes": [{"Name": "listed", "Serial": "abcd0001"}]}}`))
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"abcd0001", "abcd0002"} {
		nodes.Save(st, nodes.Record{Serial: k})
		d, _ := st.NodeDir(k)
		os.MkdirAll(filepath.Join(d, nodes.RootDir, "etc"), 0o755)
	}
	client := netip.MustParseAddr("10.0.0.2")
	srv.mu.Lock()
	srv.mounts[mountKey{client, "abcd0002"}] = time.Now()
	srv.mu.Unlock()
	srv.act.touch(client, time.Now())

	if err := srv.ResetNode(cfg, "0badc0de", true); !errors.Is(err, ErrUnknownNode) {
		t.Errorf("reset of an unknown node: got %v, want ErrUnknownNode", err)
	}
	if err := srv.ResetNode(cfg, "../etc", true); !errors.Is(err, ErrUnknownNode) {
		t.Errorf("reset of a path: got %v, want ErrUnknownNode", err)
	}
	if err := srv.ResetNode(cfg, "abcd0002", false); !errors.Is(err, ErrMounted) {
		t.Errorf("reset of a root in use: got %v, want ErrMounted", err)
	}
	if err := srv.Forget(cfg, "abcd0001", false); err == nil {
		t.Error("forget of a node listed in config.json succeeded")
	}
	// A client that went quiet no longer holds the root.
	srv.act.touch(client, time.Now().Add(-MountedWindow-time.Second))
	if use := srv.InUse("abcd0002", time.Now()); len(use) != 0 {
		t.Errorf("a quiet client still counts as using the root: %+v", use)
	}
	if err := srv.Forget(cfg, "abcd0002", false); err != nil {
		t.Fatalf("forget: %v", err)
	}
	d, _ := st.NodeDir("abcd0002")
	if _, err := os.Stat(d); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("forget left the node's directory: %v", err)
	}
	if err := srv.ResetNode(cfg, "abcd0001", false); err != nil {
		t.Errorf("reset of an idle listed node: %v", err)
	}
}

func TestStatusName(t *testing.T) {
	for st, want := range map[uint32]string{errNoEnt: "NFS3ERR_NOENT", errStaleFH: "NFS3ERR_STALE", errServerFault: "NFS3ERR_SERVERFAULT", 12345: "12345"} {
		if got := StatusName(st); got != want {
			t.Errorf("StatusName(%d): got %q, want %q", st, got, want)
		}
	}
}

func TestActivityBounded(t *testing.T) {
	var a activity
	now := time.Now()
	for i := 0; i < maxActivity+100; i++ {
		a.touch(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), now.Add(time.Duration(i)))
	}
	if got := len(a.last); got != maxActivity {
		t.Errorf("activity entries: got %d, want %d", got, maxActivity)
	}
}
