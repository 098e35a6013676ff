package statuspage

import (
	"context"
	"html"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/ociboot/ociboot/appliance/config"
	"github.com/ociboot/ociboot/appliance/nodedisk"
	"github.com/ociboot/ociboot/appliance/nodes"
	"github.com/ociboot/ociboot/appliance/store"
)

// TestDisksAndInstalls: each node's disk says what it takes and who is
// connected (nbdd's status), or names the node's own device; each
// configured install says where it stands.
func TestDisksAndInstalls(t *testing.T) {
	st, err := store.Open(t.TempDir(), store.Options{AllowTmpfs: true})
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Parse([]byte(`{"Netboot": {"DefaultImage": "localhost:5000/node:v1", "NodeDisk": {"Size": "20G"}, "Nodes": [
		{"Name": "nbd", "Serial": "abcd0001", "IP": "10.42.0.11", "Install": {"Device": "/dev/nvme0n1"}},
		{"Name": "idle", "Serial": "abcd0002", "Disk": {"Size": "2G", "KeepOnReset": true}, "Install": {"Device": "/dev/nvme0n1"}},
		{"Name": "own", "Serial": "abcd0003", "Disk": {"Device": "LABEL=data", "Mount": ["/var/lib/containerd"]}, "Install": {"Device": "/dev/mmcblk0"}},
		{"Name": "none", "Serial": "abcd0004", "Disk": {"Off": true}}]}}`))
	if err != nil {
		t.Fatal(err)
	}
	d, err := nodedisk.Open(cfg, st, "abcd0001", nodedisk.Limits{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.WriteAt(make([]byte, 3<<20), 0); err != nil {
		t.Fatal(err)
	}
	d.Close()
	at := time.Date(2026, 11, 24, 11, 0, 0, 0, time.UTC)
	nodes.SaveInstall(st, "abcd0002", nodes.Install{Device: "/dev/nvme0n1", Time: at, Error: "sgdisk: /dev/nvme0n1: No such file or directory"})
	nodes.SaveInstall(st, "abcd0003", nodes.Install{Device: "/dev/mmcblk0", Time: at, OK: true})
	nbdd := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, `{"Conns": [{"Node": "abcd0001", "Remote": "10.42.0.11:1023"}]}`)
	}))
	defer nbdd.Close()
	p := &Page{Config: cfg, Store: st, Services: []Service{{Name: "nbdd", URL: nbdd.URL}}}
	ov := p.Collect(context.Background(), "")
	by := map[string]Node{}
	for _, n := range ov.Nodes {
		by[n.Name] = n
	}
	for _, tt := range []struct {
		node, disk, install string
		inUse, failed       bool
	}{
		{"nbd", "disk: 3 MiB used of 20 GiB (NBD, connected from 10.42.0.11)", "installing to /dev/nvme0n1…", true, false},
		{"idle", "disk: 0 B used of 2 GiB (NBD, not connected)", "install failed: sgdisk: /dev/nvme0n1: No such file or directory; the node keeps netbooting", false, true},
		{"own", "disk: LABEL=data (node's own)", "installed to /dev/mmcblk0 at 2026-11-24 11:00:00, boots locally", false, false},
		{"none", "", "", false, false},
	} {
		n := by[tt.node]
		got := ""
		if n.Disk != nil {
			got = n.Disk.Text()
		}
		if got != tt.disk {
			t.Errorf("%s: disk %q, want %q", tt.node, got, tt.disk)
		}
		if !strings.HasPrefix(n.Install, tt.install) || (tt.install == "") != (n.Install == "") {
			t.Errorf("%s: install %q, want %q", tt.node, n.Install, tt.install)
		}
		if n.InUse != tt.inUse || n.InstallFailed != tt.failed {
			t.Errorf("%s: in use %v, install failed %v; want %v, %v", tt.node, n.InUse, n.InstallFailed, tt.inUse, tt.failed)
		}
	}
	srv := httptest.NewServer(p)
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	page := html.UnescapeString(string(b))
	for _, want := range []string{
		"disk: 3 MiB used of 20 GiB (NBD, connected from 10.42.0.11) at <code>/var/lib/containerd</code>, <code>/var/lib/rancher</code>",
		"(NBD, not connected) at <code>/var/lib/containerd</code>, <code>/var/lib/rancher</code>; kept on reset",
		"installed to /dev/mmcblk0",
	} {
		if !strings.Contains(page, want) {
			t.Errorf("page lacks %q", want)
		}
	}
}

func TestGiB(t *testing.T) {
	for n, want := range map[int64]string{0: "0 B", 20 << 30: "20 GiB", 2254857830: "2.1 GiB", 512 << 20: "512 MiB", 1536: "1.5 KiB", 150 << 30: "150 GiB"} {
		if got := gib(n); got != want {
			t.Errorf("gib(%d): got %q, want %q", n, got, want)
		}
	}
}
