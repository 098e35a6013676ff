package nfs

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ociboot/ociboot/appliance/config"
	"github.com/ociboot/ociboot/appliance/nodedisk"
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

// TestResetNodeDisk: a reset takes the node's NBD disk with its root
// unless the config keeps it; a disk nbdd has open refuses the reset (the
// root stays) unless forced; forget always drops it.
func TestResetNodeDisk(t *testing.T) {
	srv := fuzzServer(t)
	st := srv.opts.Store
	parse := func(js string) *config.Config {
		cfg, err := config.Parse([]byte(js))
		if err != nil {
			t.Fatal(err)
		}
		return cfg
	}
	cfg := parse(`{"Netboot": {"Nodes": [{"Serial": "abcd0001", "Disk": {"Size": "1G"}}, {"Serial": "abcd0002", "Disk": {"Size": "1G", "KeepOnReset": true}}]}}`)
	srv.opts.Disks = nodedisk.Disks{Config: cfg, Store: st}
	root := func(k string) string {
		d, _ := st.NodeDir(k)
		return filepath.Join(d, nodes.RootDir)
	}
	disk := func(k string) *nodedisk.Disk {
		d, err := nodedisk.Open(cfg, st, k, nodedisk.Limits{})
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	for _, k := range []string{"abcd0001", "abcd0002"} {
		nodes.Save(st, nodes.Record{Serial: k})
		os.MkdirAll(filepath.Join(root(k), "etc"), 0o755)
	}
	exists := func(k string) bool { return nodedisk.Stat(st, k).Exists }

	d := disk("abcd0001")
	if err := srv.ResetNode(cfg, "abcd0001", false); !errors.Is(err, nodedisk.ErrInUse) {
		t.Errorf("reset while nbdd serves the disk: got %v, want ErrInUse", err)
	}
	if _, err := os.Stat(root("abcd0001")); err != nil || !exists("abcd0001") {
		t.Errorf("a refused reset changed something: root %v, disk %v", err, exists("abcd0001"))
	}
	if err := srv.ResetNode(cfg, "abcd0001", true); err != nil {
		t.Fatalf("forced reset: %v", err)
	}
	if exists("abcd0001") || !d.Dropped() {
		t.Errorf("forced reset: disk exists %v, open disk dropped %v; want gone", exists("abcd0001"), d.Dropped())
	}
	d.Close()

	disk("abcd0002").Close()
	if err := srv.ResetNode(cfg, "abcd0002", false); err != nil {
		t.Fatal(err)
	}
	if !exists("abcd0002") {
		t.Errorf("reset dropped a KeepOnReset disk")
	}
	// Forget needs the node out of config.json; the disk goes anyway.
	srv.opts.Disks = nodedisk.Disks{Config: parse(`{"Netboot": {}}`), Store: st}
	if err := srv.Forget(parse(`{"Netboot": {}}`), "abcd0002", false); err != nil {
		t.Fatal(err)
	}
	if exists("abcd0002") {
		t.Errorf("forget left the disk")
	}
}
