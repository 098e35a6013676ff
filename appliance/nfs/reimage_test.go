package nfs

import (
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/ociboot/ociboot/appliance/config"
	"github.com/ociboot/ociboot/appliance/images"
	"github.com/ociboot/ociboot/appliance/nodedisk"
	"github.com/ociboot/ociboot/appliance/nodes"
	"github.com/ociboot/ociboot/appliance/store"
)

// reimageResolver reimages a node whose root was made from another image
// than the one it is given now, as nodes.BootOf does with Reimage on-boot.
type reimageResolver struct {
	fakeResolver
	env *testEnv
}

func (r reimageResolver) Reimage(key string, client netip.Addr) bool {
	d := nodes.ViewImage(r.env.st, key)
	return d != "" && d != r.images[key] && client == netip.MustParseAddr("127.0.0.1")
}

func TestReimageOnBoot(t *testing.T) {
	env := newEnv(t)
	env.stop()
	res := reimageResolver{fakeResolver{images: map[string]string{"node1": testDigest}}, env}
	// The node's NBD disk goes with the root a reimage replaces.
	diskCfg, err := config.Parse([]byte(`{"Netboot": {"NodeDisk": {"Size": "1G"}}}`))
	if err != nil {
		t.Fatal(err)
	}
	disk, err := nodedisk.Open(diskCfg, env.st, "node1", nodedisk.Limits{})
	if err != nil {
		t.Fatal(err)
	}
	disk.Close()
	srv, err := New(Options{Store: env.st, Resolver: res, InsecurePorts: true, Disks: nodedisk.Disks{Config: diskCfg, Store: env.st}})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	env.srv, env.ln = srv, ln
	go srv.ServeTCP(ln)

	c := env.dial(0, 0)
	root, _ := c.mnt("/nodes/node1")
	host := c.walk(root, "etc", "hostname")
	c.write(host, 0, []byte("mine\n"), fileSync)

	// The configured image moves on to one whose tree is not there: the
	// reimage fails and the node keeps its root, changes included.
	res.images["node1"] = "sha256:" + "ee" + testDigest[9:]
	if _, st := c.mnt("/nodes/node1"); st == mntOK {
		t.Fatalf("MNT with a missing image: got OK, want an error")
	}
	if got, _ := os.ReadFile(env.st.Path("nodes", "node1", "root", "etc", "hostname")); string(got) != "mine\n" {
		t.Errorf("after a failed reimage the root's etc/hostname is %q, want the node's %q", got, "mine\n")
	}
	if got := nodes.ViewImage(env.st, "node1"); got != testDigest {
		t.Errorf("after a failed reimage view.json names %s, want %s", got, testDigest)
	}
	if !nodedisk.Stat(env.st, "node1").Exists {
		t.Errorf("a failed reimage dropped the node's NBD disk")
	}

	// A real new image: the next mount gets a fresh root from it.
	newDigest := "sha256:" + "dd" + testDigest[9:]
	newRoot, _ := images.Root(env.st, newDigest)
	os.MkdirAll(filepath.Join(newRoot, "etc"), 0o755)
	os.WriteFile(filepath.Join(newRoot, "etc", "hostname"), []byte("new image\n"), 0o644)
	res.images["node1"] = newDigest
	root, st := c.mnt("/nodes/node1")
	if st != mntOK {
		t.Fatalf("MNT after the image changed: status %d", st)
	}
	if got, _, _ := c.read(c.walk(root, "etc", "hostname"), 0, 100); string(got) != "new image\n" {
		t.Errorf("after reimage etc/hostname reads %q, want the new image's", got)
	}
	if _, st := c.getattr(host); st != errStaleFH {
		t.Errorf("handle into the previous root: status %d, want STALE", st)
	}
	if got := nodes.ViewImage(env.st, "node1"); got != newDigest {
		t.Errorf("view.json names %s, want %s", got, newDigest)
	}
	if nodedisk.Stat(env.st, "node1").Exists {
		t.Errorf("the NBD disk of the previous root is still there after the reimage")
	}
	if _, err := os.Stat(env.st.Path("nodes", "node1", nodes.PreviousDir)); err == nil {
		t.Errorf("the previous root is still there after the new one mounted")
	}
	if got, _ := os.ReadFile(filepath.Join(env.image, "etc", "hostname")); string(got) != "node\n" {
		t.Errorf("the old image tree changed: %q", got)
	}
}

// TestNodeResolverReimage: the policy and the image change come from
// nodes.BootOf; only the node's own address triggers it.
func TestNodeResolverReimage(t *testing.T) {
	st, err := store.Open(t.TempDir(), store.Options{AllowTmpfs: true})
	if err != nil {
		t.Fatal(err)
	}
	newDigest := "sha256:" + "dd" + testDigest[9:]
	images.SaveIndex(st, images.Index{Entries: []images.Entry{{Ref: "r/node:1", Platform: "linux/arm64", Digest: newDigest, BootDir: "boot"}}})
	nodes.Save(st, nodes.Record{Serial: "abcd0001", IP: "10.0.0.5"})
	os.MkdirAll(st.Path("nodes", "abcd0001", "root", "boot"), 0o755)
	store.WriteJSON(st.Path("nodes", "abcd0001", nodes.ViewFile), map[string]string{"Digest": testDigest})
	for _, tc := range []struct {
		policy, client string
		want           bool
	}{
		{"on-boot", "10.0.0.5", true},
		{"on-boot", "10.0.0.9", false}, // ExportTo: an admin's mount
		{"manual", "10.0.0.5", false},
	} {
		cfg, err := config.Parse([]byte(`{"Netboot": {"DefaultImage": "r/node:1", "Reimage": "` + tc.policy + `", "ExportTo": ["10.0.0.0/24"]}}`))
		if err != nil {
			t.Fatal(err)
		}
		r := NodeResolver{Config: cfg, Store: st}
		if got := r.Reimage("abcd0001", netip.MustParseAddr(tc.client)); got != tc.want {
			t.Errorf("%s, MNT from %s: Reimage = %v, want %v", tc.policy, tc.client, got, tc.want)
		}
	}
}
