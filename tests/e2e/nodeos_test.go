package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"

	"github.com/ociboot/ociboot/appliance/nodeimage/sdimage/sdtest"
	"github.com/ociboot/ociboot/appliance/testenv"
)

// TestNodeOSThreeNodes: the recipe's Debian image boots three Pi 4 nodes at
// once through the head node to multi-user.target; each is its own
// machine, reachable over SSH with the configured key, keeps its writes
// across a reboot.
func TestNodeOSThreeNodes(t *testing.T) {
	testenv.Short(t, "boots Debian on three arm64 QEMU nodes")
	ociDir := NodeOSImage(t)
	pis := []*PiNode{
		{Name: "cm4-1", Serial: 0x6a100001, MAC: "dc:a6:32:10:00:01"},
		{Name: "cm4-2", Serial: 0x6a100002, MAC: "dc:a6:32:10:00:02"},
		{Name: "cm4-3", Serial: 0x6a100003, MAC: "dc:a6:32:10:00:03"},
	}
	key, pub := SSHKey(t, t.TempDir())
	lab, h, _ := NodeOSHead(t, ociDir, "rpi/node:bookworm", pis, pub)

	// One node alone: power-on to multi-user.target.
	first := pis[0]
	first.PowerOn(t, lab, h)
	first.WaitMultiUser(t, lab, key, 15*time.Minute)
	alone := first.Up
	t.Logf("%s: power-on → multi-user.target alone: %v", first.Name, alone.Round(time.Second))
	first.WaitSSH(t, lab, key, 3*time.Minute)
	CheckRunning(t, lab, key, first)
	first.MustSSH(t, lab, key, "systemctl poweroff")
	waitExit(t, first.Proc, 3*time.Minute)

	// Three at once.
	for _, p := range pis {
		p.PowerOn(t, lab, h)
	}
	for _, p := range pis {
		p.WaitMultiUser(t, lab, key, 25*time.Minute)
	}
	var ups []string
	for _, p := range pis {
		ups = append(ups, fmt.Sprintf("%s %v", p.Name, p.Up.Round(time.Second)))
	}
	t.Logf("power-on → multi-user.target, three at once: %s (alone: %v)", strings.Join(ups, ", "), alone.Round(time.Second))

	seen := map[string]map[string]string{"hostname": {}, "machine-id": {}, "host key": {}}
	for _, p := range pis {
		p.WaitSSH(t, lab, key, 3*time.Minute)
		CheckRunning(t, lab, key, p)
		got := map[string]string{
			"hostname":   p.MustSSH(t, lab, key, "hostname"),
			"machine-id": p.MustSSH(t, lab, key, "cat /etc/machine-id"),
			"host key":   p.MustSSH(t, lab, key, "cut -d' ' -f1,2 /etc/ssh/ssh_host_ed25519_key.pub"),
		}
		if got["hostname"] != p.Name {
			t.Errorf("%s: hostname %q, want its configured Name", p.Name, got["hostname"])
		}
		if len(got["machine-id"]) != 32 {
			t.Errorf("%s: machine-id %q", p.Name, got["machine-id"])
		}
		for what, v := range got {
			if other, dup := seen[what][v]; dup {
				t.Errorf("%s and %s have the same %s %q", other, p.Name, what, v)
			}
			seen[what][v] = p.Name
		}
		// The root is the NFS export, read-write, and nothing local.
		if mnt := p.MustSSH(t, lab, key, "findmnt -n -o SOURCE,FSTYPE /"); !strings.HasPrefix(mnt, lab.Addr(1)+":/nodes/"+p.serialHex()) || !strings.Contains(mnt, "nfs") {
			t.Errorf("%s: / is %q, want its NFS export", p.Name, mnt)
		}
		p.MustSSH(t, lab, key, "echo written-by-"+p.Name+" >/root/ociboot-e2e && sync")
		if got, want := p.MustSSH(t, lab, key, "cat /root/ociboot-e2e"), "written-by-"+p.Name; got != want {
			t.Errorf("%s: read back %q, want %q", p.Name, got, want)
		}
	}
	// What the status page shows is what the nodes have.
	var st struct {
		Nodes []struct {
			Name, Serial, Stage, Hostname string
			HostKeys                      []string
		}
	}
	if err := h.Status(t, "http://127.0.0.1:8080/api/status", &st); err != nil {
		t.Fatal(err)
	}
	for _, p := range pis {
		found := false
		for _, n := range st.Nodes {
			if n.Serial != p.serialHex() {
				continue
			}
			found = true
			fp := p.MustSSH(t, lab, key, "ssh-keygen -l -f /etc/ssh/ssh_host_ed25519_key.pub | cut -d' ' -f2")
			if n.Hostname != p.Name || len(n.HostKeys) == 0 || !strings.Contains(strings.Join(n.HostKeys, " "), fp) || n.Stage != "root-mounted" {
				t.Errorf("status page for %s: got %+v, want host name %s, host key %s, stage root-mounted", p.Name, n, p.Name, fp)
			}
		}
		if !found {
			t.Errorf("status page lists no node %s", p.serialHex())
		}
	}

	// A reboot comes back with the node's file.
	r := pis[1]
	r.SSH(t, lab, key, "systemctl reboot")
	waitExit(t, r.Proc, 3*time.Minute) // -no-reboot: QEMU exits where a Pi would restart its bootloader
	r.PowerOn(t, lab, h)
	r.WaitMultiUser(t, lab, key, 15*time.Minute)
	r.WaitSSH(t, lab, key, 3*time.Minute)
	if got, want := r.MustSSH(t, lab, key, "cat /root/ociboot-e2e"), "written-by-"+r.Name; got != want {
		t.Errorf("%s after reboot: got %q, want %q", r.Name, got, want)
	}
	t.Logf("%s: reboot → multi-user.target: %v", r.Name, r.Up.Round(time.Second))
}

// waitExit waits for a machine to power itself off.
func waitExit(t testing.TB, p *Proc, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !p.Exited() {
		if time.Now().After(deadline) {
			t.Fatalf("%s did not power off within %v:\n%s", p.Name, timeout, tail(p.Output()))
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// extractLayout unpacks the single image of an OCI layout into dst with
// GNU tar as root: owners, modes, xattrs and hard links as in the layer.
func extractLayout(t testing.TB, ociDir, dst string) {
	t.Helper()
	p, err := layout.FromPath(ociDir)
	if err != nil {
		t.Fatal(err)
	}
	ix, err := p.ImageIndex()
	if err != nil {
		t.Fatal(err)
	}
	m, err := ix.IndexManifest()
	if err != nil || len(m.Manifests) != 1 {
		t.Fatalf("%s: want one image, got %v (%v)", ociDir, m, err)
	}
	img, err := p.Image(m.Manifests[0].Digest)
	if err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(dst, 0o755)
	cmd := exec.Command("tar", "-xpf", "-", "--numeric-owner", "--xattrs", "--xattrs-include=*", "-C", dst)
	rc := mutate.Extract(img)
	defer rc.Close()
	cmd.Stdin = rc
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("tar -x of %s: %v\n%s", ociDir, err, out)
	}
}

// sdCardImage makes an SD-card image in Raspberry Pi OS's layout (bootfs
// and rootfs partitions, root=PARTUUID= in cmdline.txt, PARTUUID lines in
// fstab) from the built node image's tree, with a machine-id and SSH host
// keys as an image that has booted once carries them, and compresses it
// with xz as the downloads are.
func sdCardImage(t testing.TB, ociDir, dir string) string {
	t.Helper()
	tree := filepath.Join(dir, "tree")
	extractLayout(t, ociDir, tree)
	os.WriteFile(filepath.Join(tree, "etc/machine-id"), []byte("0123456789abcdef0123456789abcdef\n"), 0o444)
	run(t, "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", filepath.Join(tree, "etc/ssh/ssh_host_ed25519_key"))
	// A file capability, as Raspberry Pi OS images carry them.
	run(t, "setcap", "cap_net_raw+ep", filepath.Join(tree, "usr/bin/ping"))
	img := filepath.Join(dir, "raspios-like.img")
	if err := sdtest.Build(tree, img); err != nil {
		t.Fatal(err)
	}
	os.RemoveAll(tree)
	run(t, "xz", "-T2", "-0", img)
	return img + ".xz"
}

// TestNodeOSImportedSDCard: an SD-card image in Raspberry Pi OS's layout,
// imported with `make node-import`, boots a Pi to multi-user.target over
// ociboot with its fstab made NFS-safe and an identity of its own.
func TestNodeOSImportedSDCard(t *testing.T) {
	testenv.Short(t, "boots an imported SD-card image on an arm64 QEMU node")
	testenv.NeedTool(t, "xz", "xz-utils")
	testenv.NeedTool(t, "setcap", "libcap2-bin")
	sdtest.Need(t, true)
	ociDir := NodeOSImage(t)
	work := t.TempDir()
	xzImg := sdCardImage(t, ociDir, work)
	imported := filepath.Join(work, "imported")
	start := time.Now()
	out, err := exec.Command("make", "-C", repoRoot(), "node-import", "IMG="+xzImg, "NODE_IMAGE="+imported).CombinedOutput()
	if err != nil {
		t.Fatalf("make node-import: %v\n%s", err, out)
	}
	t.Logf("make node-import: %v\n%s", time.Since(start).Round(time.Second), strings.TrimSpace(string(out)))

	pi := &PiNode{Name: "rpios-1", Serial: 0x6a100009, MAC: "dc:a6:32:10:00:09"}
	key, pub := SSHKey(t, t.TempDir())
	lab, h, _ := NodeOSHead(t, imported, "rpi/imported:v1", []*PiNode{pi}, pub)
	pi.PowerOn(t, lab, h)
	pi.WaitMultiUser(t, lab, key, 15*time.Minute)
	t.Logf("%s (imported SD-card image): power-on → multi-user.target alone: %v", pi.Name, pi.Up.Round(time.Second))
	pi.WaitSSH(t, lab, key, 3*time.Minute)
	CheckRunning(t, lab, key, pi)
	if got := pi.MustSSH(t, lab, key, "hostname"); got != pi.Name {
		t.Errorf("hostname %q, want %q", got, pi.Name)
	}
	if got := pi.MustSSH(t, lab, key, "cat /etc/machine-id"); got == "0123456789abcdef0123456789abcdef" {
		t.Errorf("the node kept the SD-card image's machine-id")
	}
	fstab := pi.MustSSH(t, lab, key, "cat /etc/fstab")
	for _, line := range strings.Split(fstab, "\n") {
		if strings.HasPrefix(line, "PARTUUID=") {
			t.Errorf("fstab still mounts %q", line)
		}
	}
	if !strings.Contains(fstab, "# ociboot") {
		t.Errorf("fstab: the SD card's entries are not there as comments:\n%s", fstab)
	}
	if mnt := pi.MustSSH(t, lab, key, "findmnt -n -o SOURCE /"); !strings.HasPrefix(mnt, lab.Addr(1)+":/nodes/"+pi.serialHex()) {
		t.Errorf("/ is %q, want the node's export", mnt)
	}
	// The file capability survived import, push, pull and unpack into the
	// node's root (NFSv3 has no xattrs, so the node itself cannot read it;
	// the README says so).
	if caps := run(t, "getcap", filepath.Join(h.Store, "nodes", pi.serialHex(), "root/usr/bin/ping")); !strings.Contains(caps, "cap_net_raw") {
		t.Errorf("/usr/bin/ping in the node's root lost its capability: %q", caps)
	}
}
