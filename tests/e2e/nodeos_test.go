package e2e

import (
	"archive/tar"
	"bytes"
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/ociboot/ociboot/appliance/nodeimage/sdimage/sdtest"
	"github.com/ociboot/ociboot/appliance/piemu"
	"github.com/ociboot/ociboot/appliance/testenv"
	"github.com/ociboot/ociboot/tests/guest"
	testlab "github.com/ociboot/ociboot/tests/lab"
)

// TestNodeOSThreeNodes: the recipe's Debian image boots three Pi 4 nodes at
// once through the head node to multi-user.target; each is its own
// machine, reachable over SSH with the configured key, keeps its writes
// across a reboot. cm4-3 installs itself to its disk meanwhile (minutes
// of rsync under TCG): what cm4-1 and cm4-2 are checked for runs while
// it does, so the install sets the test's length. (One node booting
// alone is timed by tests/bench/cluster.)
func TestNodeOSThreeNodes(t *testing.T) {
	testenv.Short(t, "boots Debian on three arm64 QEMU nodes")
	ociDir := NodeOSImage(t)
	// cm4-1 keeps its containers on an NBD disk from the head node; cm4-3
	// installs itself to its virtio disk.
	installDisk := filepath.Join(t.TempDir(), "cm4-3-emmc.img")
	if err := os.WriteFile(installDisk, nil, 0o644); err != nil || os.Truncate(installDisk, 4<<30) != nil {
		t.Fatal(err)
	}
	pis := []*PiNode{
		{Name: "cm4-1", Serial: 0x6a100001, MAC: "dc:a6:32:10:00:01", Config: map[string]any{"Disk": map[string]any{"Size": "4G"}}},
		{Name: "cm4-2", Serial: 0x6a100002, MAC: "dc:a6:32:10:00:02"},
		{Name: "cm4-3", Serial: 0x6a100003, MAC: "dc:a6:32:10:00:03", Config: map[string]any{"Install": map[string]any{"Device": "/dev/vda"}}, Disk: installDisk},
	}
	key, pub := SSHKey(t, t.TempDir())
	lab, h, _ := NodeOSHead(t, ociDir, "rpi/node:bookworm", pis, pub)
	ctrRef := lab.Addr(1) + ":5000/" + strings.TrimPrefix(h.PushImage(t, busyboxImage(t), "ctr/busybox:1"), h.Registry+"/")

	for _, p := range pis {
		p.PowerOn(t, lab, h)
	}
	// cm4-3's multi-user.target waits for its install; the other two come
	// up on their own.
	for _, p := range pis[:2] {
		p.WaitMultiUser(t, lab, key, 20*time.Minute)
	}
	t.Logf("power-on → multi-user.target, three at once: %s %v, %s %v", pis[0].Name, pis[0].Up.Round(time.Second), pis[1].Name, pis[1].Up.Round(time.Second))
	ids := nodeIdentities{}
	for _, p := range pis[:2] {
		ids.check(t, lab, h, key, p)
	}

	// containerd on the NBD disk: an image from the head node's mirror, a
	// container on the overlayfs snapshotter.
	c := pis[0]
	if src := c.MustSSH(t, lab, key, "findmnt -n -o SOURCE,FSTYPE --target /var/lib/containerd"); !strings.HasPrefix(src, "/dev/nbd0") || !strings.HasSuffix(src, "ext4") {
		t.Errorf("%s: /var/lib/containerd is on %q, want the NBD disk's ext4", c.Name, src)
	}
	c.MustSSH(t, lab, key, "systemctl is-active containerd")
	c.MustSSH(t, lab, key, "ctr image pull --plain-http "+ctrRef)
	runCtr := "ctr run --rm --snapshotter overlayfs " + ctrRef + " e2e-$RANDOM /bin/busybox echo hello-from-a-container"
	if got := c.MustSSH(t, lab, key, runCtr); got != "hello-from-a-container" {
		t.Errorf("%s: container printed %q", c.Name, got)
	}
	var disks struct {
		Nodes []struct {
			Serial string
			Disk   *struct{ Connected []string }
		}
	}
	if err := h.Status(t, "http://127.0.0.1:8080/api/status", &disks); err != nil {
		t.Fatal(err)
	}
	for _, n := range disks.Nodes {
		if n.Serial == c.serialHex() && (n.Disk == nil || len(n.Disk.Connected) == 0) {
			t.Errorf("status page: %s's disk %+v, want it connected", c.Name, n.Disk)
		}
	}

	// nbdd goes away under the node's writes (kill -9, down 10 s, as in a
	// head node update): the kernel holds the disk's requests,
	// ociboot-nbd reconnects, every write completes and reads back from
	// the head node, and the file system stays read-write.
	c.MustSSH(t, lab, key, `rm -f /root/w.*; nohup sh -c 'for i in $(seq 1 40); do dd if=/dev/urandom of=/var/lib/containerd/e2e-$i bs=64k count=16 conv=fsync status=none 2>>/root/w.err || echo "dd $i failed" >>/root/w.err; sha256sum /var/lib/containerd/e2e-$i >>/root/w.sum; sleep 0.5; done; echo done >/root/w.done' >/dev/null 2>&1 &`)
	time.Sleep(3 * time.Second)
	h.Procs["nbdd"].Kill(syscall.SIGKILL)
	time.Sleep(10 * time.Second)
	h.StartService(t, "nbdd")
	for deadline := time.Now().Add(5 * time.Minute); ; time.Sleep(2 * time.Second) {
		if out, _ := c.SSH(t, lab, key, "cat /root/w.done"); out == "done" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: the writes across the nbdd restart did not finish in 5 min:\n%s", c.Name, c.MustSSH(t, lab, key, "journalctl -b -u ociboot-nbd --no-pager | tail -n 20; dmesg | grep -i nbd | tail -n 20"))
		}
	}
	if out := c.MustSSH(t, lab, key, "cat /root/w.err 2>/dev/null; true"); out != "" {
		t.Errorf("%s: writes failed across the nbdd restart:\n%s", c.Name, out)
	}
	if out, err := c.SSH(t, lab, key, "sync; echo 3 >/proc/sys/vm/drop_caches; sha256sum -c --quiet /root/w.sum && wc -l </root/w.sum"); err != nil || out != "40" {
		t.Errorf("%s: the files written across the nbdd restart do not read back: %v\n%s", c.Name, err, out)
	}
	if out := c.MustSSH(t, lab, key, "findmnt -n -o OPTIONS /var/lib/ociboot/disk"); !strings.HasPrefix(out, "rw") {
		t.Errorf("%s: the disk's file system is %q after the nbdd restart, want rw", c.Name, out)
	}
	if out := c.MustSSH(t, lab, key, "journalctl -b -u ociboot-nbd --no-pager"); !strings.Contains(out, "reconnected") {
		t.Errorf("%s: ociboot-nbd did not say it reconnected:\n%s", c.Name, out)
	} else {
		for _, l := range strings.Split(out, "\n") {
			if strings.Contains(l, "reconnected") {
				t.Logf("%s: %s", c.Name, l)
			}
		}
	}
	if out := c.MustSSH(t, lab, key, "dmesg | grep -iE 'nbd0.*(I/O error|Buffer I/O)|EXT4-fs error' || true"); out != "" {
		t.Errorf("%s: the kernel logged disk errors across the nbdd restart:\n%s", c.Name, out)
	}

	// A reboot comes back with the node's file, and containerd with its
	// image on the disk.
	r := pis[0]
	r.SSH(t, lab, key, "systemctl reboot")
	waitExit(t, r.Proc, 3*time.Minute) // -no-reboot: QEMU exits where a Pi would restart its bootloader
	r.PowerOn(t, lab, h)
	r.WaitMultiUser(t, lab, key, 15*time.Minute)
	r.WaitSSH(t, lab, key, 3*time.Minute)
	if got, want := r.MustSSH(t, lab, key, "cat /root/ociboot-e2e"), "written-by-"+r.Name; got != want {
		t.Errorf("%s after reboot: got %q, want %q", r.Name, got, want)
	}
	t.Logf("%s: reboot → multi-user.target: %v", r.Name, r.Up.Round(time.Second))
	if got := r.MustSSH(t, lab, key, "ctr image ls -q"); !strings.Contains(got, ctrRef) {
		t.Errorf("%s after reboot: containerd's images %q, want %s", r.Name, got, ctrRef)
	}
	if got := r.MustSSH(t, lab, key, runCtr); got != "hello-from-a-container" {
		t.Errorf("%s after reboot: container printed %q", r.Name, got)
	}

	// cm4-3 installed itself to its disk and said so; its
	// multi-user.target came after the install.
	in := pis[2]
	in.WaitMultiUser(t, lab, key, 25*time.Minute)
	if res, _ := in.SSH(t, lab, key, "systemctl show -P ActiveState ociboot-install"); res != "active" {
		log, _ := in.SSH(t, lab, key, "journalctl -b -u ociboot-install --no-pager | tail -n 30")
		t.Fatalf("%s: ociboot-install is %q at multi-user.target, want active:\n%s", in.Name, res, log)
	}
	t.Logf("%s: power-on → multi-user.target after its install: %v", in.Name, in.Up.Round(time.Second))
	ids.check(t, lab, h, key, in)
	var st2 struct {
		Nodes []struct{ Serial, Install string }
	}
	if err := h.Status(t, "http://127.0.0.1:8080/api/status", &st2); err != nil {
		t.Fatal(err)
	}
	installed := false
	for _, n := range st2.Nodes {
		if n.Serial == in.serialHex() {
			installed = strings.HasPrefix(n.Install, "installed to /dev/vda") && strings.HasSuffix(n.Install, "boots locally")
			if !installed {
				t.Errorf("status page: %s's install %q, want installed to /dev/vda, boots locally", in.Name, n.Install)
			}
		}
	}
	in.SSH(t, lab, key, "systemctl poweroff")
	waitExit(t, in.Proc, 3*time.Minute)

	// ociboot no longer answers its netboot.
	testlab.InNS(t, in.ns, func() {
		execIn("ip", "link", "set", "eth0", "up")
		defer execIn("ip", "link", "set", "eth0", "down")
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if l, err := (piemu.Pi{MAC: in.macBytes(), Serial: in.Serial}).DHCP(ctx, "eth0"); err == nil {
			t.Errorf("%s: installed, but its netboot was answered: %+v", in.Name, l)
		}
	})

	// From its own disk with no network: the installed root and identity.
	in.BootLocal(t, lab)
	// getty's issue line ("Debian GNU/Linux 12 cm4-3 ttyAMA0") comes
	// right before the login prompt, which ends in no newline.
	if _, err := in.Proc.WaitLine(15*time.Minute, in.Name+" ttyAMA0"); err != nil {
		t.Fatalf("%s: no login prompt booting from its disk: %v\n%s", in.Name, err, tail(in.Proc.Output()))
	}
	console := in.Proc.Output()
	for _, want := range []string{"EXT4-fs (vda2)"} {
		if !strings.Contains(console, want) {
			t.Errorf("%s: the local boot's console lacks %q", in.Name, want)
		}
	}
	if strings.Contains(console, "nfsroot") || strings.Contains(console, "IP-Config") {
		t.Errorf("%s: the local boot used the network:\n%s", in.Name, tail(console))
	}
	t.Logf("%s: installed, power-on from its disk → login prompt: %v", in.Name, time.Since(in.Booted).Round(time.Second))
	in.Proc.Stop(30 * time.Second)
}

// nodeIdentities holds what must differ between the nodes (host name,
// machine-id, SSH host key) as the nodes are checked, by value.
type nodeIdentities map[string]map[string]string

// check asserts a netbooted node runs, is its own machine (configured
// host name; machine-id and host key no other checked node has), has its
// NFS export as a read-write root (it writes /root/ociboot-e2e, which a
// reboot must keep), and that the status page shows it so.
func (ids nodeIdentities) check(t *testing.T, lab *Lab, h *Head, key string, p *PiNode) {
	t.Helper()
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
		if ids[what] == nil {
			ids[what] = map[string]string{}
		}
		if other, dup := ids[what][v]; dup {
			t.Errorf("%s and %s have the same %s %q", other, p.Name, what, v)
		}
		ids[what][v] = p.Name
	}
	// The root is the NFS export, read-write, and nothing local.
	if mnt := p.MustSSH(t, lab, key, "findmnt -n -o SOURCE,FSTYPE /"); !strings.HasPrefix(mnt, lab.Addr(1)+":/nodes/"+p.serialHex()) || !strings.Contains(mnt, "nfs") {
		t.Errorf("%s: / is %q, want its NFS export", p.Name, mnt)
	}
	p.MustSSH(t, lab, key, "echo written-by-"+p.Name+" >/root/ociboot-e2e && sync")
	if got, want := p.MustSSH(t, lab, key, "cat /root/ociboot-e2e"), "written-by-"+p.Name; got != want {
		t.Errorf("%s: read back %q, want %q", p.Name, got, want)
	}
	// What the status page shows is what the node has.
	var st struct {
		Nodes []struct {
			Name, Serial, Stage, Hostname string
			HostKeys                      []string
		}
	}
	if err := h.Status(t, "http://127.0.0.1:8080/api/status", &st); err != nil {
		t.Fatal(err)
	}
	fp := p.MustSSH(t, lab, key, "ssh-keygen -l -f /etc/ssh/ssh_host_ed25519_key.pub | cut -d' ' -f2")
	found := false
	for _, n := range st.Nodes {
		if n.Serial != p.serialHex() {
			continue
		}
		found = true
		if n.Hostname != p.Name || len(n.HostKeys) == 0 || !strings.Contains(strings.Join(n.HostKeys, " "), fp) || n.Stage != "root-mounted" {
			t.Errorf("status page for %s: got %+v, want host name %s, host key %s, stage root-mounted", p.Name, n, p.Name, fp)
		}
	}
	if !found {
		t.Errorf("status page lists no node %s", p.serialHex())
	}
}

// busyboxImage is an arm64 container image holding Debian's static
// busybox, the one the Pi test's initramfs uses.
func busyboxImage(t testing.TB) v1.Image {
	t.Helper()
	k, err := guest.Arm64Kernel()
	if err != nil {
		testenv.Need(t, "%v", err)
	}
	bb, err := os.ReadFile(k.Busybox)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	tw.WriteHeader(&tar.Header{Name: "bin/", Typeflag: tar.TypeDir, Mode: 0o755})
	tw.WriteHeader(&tar.Header{Name: "bin/busybox", Typeflag: tar.TypeReg, Mode: 0o755, Size: int64(len(bb))})
	tw.Write(bb)
	tw.Close()
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(buf.Bytes())), nil })
	if err != nil {
		t.Fatal(err)
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		t.Fatal(err)
	}
	cf, _ := img.ConfigFile()
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", "arm64"
	cf.Config.Cmd = []string{"/bin/busybox", "sh"}
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		t.Fatal(err)
	}
	return img
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
