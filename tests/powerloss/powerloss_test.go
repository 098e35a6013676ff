// Package powerloss cuts the power of a head node under writes. Crash tests
// elsewhere kill the services with SIGKILL, which keeps the kernel's page
// cache: everything the services wrote reaches the disk anyway. Here the
// head node is a QEMU machine (the Debian kernel, the built nfsd and dhcpd
// in an initramfs) with its /perm on a virtio disk with cache=none, so
// what the guest did not write to the disk is gone after a system_reset
// from QEMU's monitor, as after a power cut. The machine boots again from
// the same disk (ext4 replays its journal) and the test checks that what
// the services acknowledged before the cut is there: every file a libnfs
// client created, COMMITted and renamed, every committed block, every
// lease dhcpd ACKed, intact node records and view.json.
package powerloss

import (
	"archive/tar"
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/ociboot/ociboot/appliance/dhcpd"
	"github.com/ociboot/ociboot/appliance/images"
	"github.com/ociboot/ociboot/appliance/nodes"
	"github.com/ociboot/ociboot/appliance/store"
	"github.com/ociboot/ociboot/appliance/testenv"
	"github.com/ociboot/ociboot/tests/guest"
	"github.com/ociboot/ociboot/tests/lab"
)

const (
	digest  = "sha256:706f7765726c6f737300000000000000000000000000000000000000000000aa"
	ref     = "registry.test/node:1"
	nodeKey = "aabbccdd"
	clients = 6 // DHCP clients, each a configured node with a MAC
)

// headInit is /init of the head node: modules, its static address, /perm
// from the virtio disk, the services; "poweroff" on the console shuts it
// down cleanly.
const headInit = `#!/bin/sh
export PATH=/bin
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /etc/modules.order); do insmod /lib/modules/$m 2>/dev/null; done
for arg in $(cat /proc/cmdline); do
  case "$arg" in head_ip=*) head_ip="${arg#head_ip=}";; esac
done
ip link set lo up
ip link set eth0 up
ip addr add "$head_ip/24" dev eth0
mkdir -p /perm
mount -t ext4 /dev/vda /perm || { echo "HEAD no /perm"; poweroff -f; }
n=$(cat /perm/boots 2>/dev/null || echo 0); n=$((n+1)); echo $n > /perm/boots; sync
nfsd -config /etc/ociboot/config.json -store /perm/ociboot -status :9049 -reserve_mib 0 &
dhcpd -config /etc/ociboot/config.json -store /perm/ociboot -status :9067 -probe_wait 1s &
ocicache -config /etc/ociboot/config.json -store /perm/ociboot -status :9050 -registry "" -min_free_mib 16 &
until wget -q -O /dev/null http://127.0.0.1:9049/status && wget -q -O /dev/null http://127.0.0.1:9067/status && wget -q -O /dev/null http://127.0.0.1:9050/status; do sleep 1; done
echo "HEAD READY boot $n"
while read line; do
  case "$line" in poweroff)
    kill $(pidof nfsd dhcpd ocicache); sleep 2; sync; umount /perm && echo "HEAD clean"; poweroff -f;;
  esac
done
`

var modules = []string{"virtio_pci", "virtio_net", "virtio_blk", "crc32c_generic", "ext4"}

func mac(i int) string { return fmt.Sprintf("02:00:00:00:70:%02x", i+1) }

func serial(i int) string { return fmt.Sprintf("7000%04x", i+1) }

func TestPowerLossUnderWrites(t *testing.T) {
	testenv.Short(t, "boots QEMU")
	testenv.NeedRoot(t, "network namespaces and owners in the store")
	lab.NeedQEMU(t, "x86_64")
	for tool, pkg := range map[string]string{"mkfs.ext4": "e2fsprogs", "debugfs": "e2fsprogs", "gcc": "gcc", "busybox": "busybox", "curl": "curl", "e2fsck": "e2fsprogs", "skopeo": "skopeo"} {
		testenv.NeedTool(t, tool, pkg)
	}
	k, err := guest.HostKernel()
	if err != nil {
		testenv.Need(t, "%v", err)
	}
	dir := t.TempDir()
	bin := buildStatic(t, dir, "nfsd", "dhcpd", "ocicache")
	writer := filepath.Join(dir, "nfspower")
	if out, err := exec.Command("gcc", "-O2", "-Wall", "-o", writer, filepath.Join(lab.RepoRoot(), "tests", "powerloss", "testdata", "nfspower.c"), "-lnfs").CombinedOutput(); err != nil {
		t.Fatalf("gcc nfspower.c -lnfs (needs gcc and libnfs-dev): %v\n%s", err, out)
	}

	seg := lab.NewSegment(t)
	head := seg.Addr(1)
	nfsNS := seg.NewNS("nfsclient", 50)
	var dhcpNS []string
	for i := 0; i < clients; i++ {
		dhcpNS = append(dhcpNS, seg.Attach(fmt.Sprintf("dhcp%d", i), 0, mac(i)))
	}

	// The store as the head node finds it: one image tree, its index.
	src := filepath.Join(dir, "perm")
	st, err := store.Open(filepath.Join(src, "ociboot"), store.Options{AllowTmpfs: true})
	if err != nil {
		t.Fatal(err)
	}
	root, _ := images.Root(st, digest)
	os.MkdirAll(filepath.Join(root, "etc"), 0o755)
	os.WriteFile(filepath.Join(root, "etc", "motd"), []byte("image\n"), 0o644)
	if err := images.SaveIndex(st, images.Index{Entries: []images.Entry{{Ref: ref, Platform: "linux/arm64", Digest: digest, Pulled: time.Now()}}}); err != nil {
		t.Fatal(err)
	}
	disk := filepath.Join(dir, "perm.img")
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-L", "perm", "-d", src, disk, "640M").CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v\n%s", err, out)
	}

	// The image ocicache pulls and unpacks while the power goes.
	registry := lab.DockerRegistry(t, nfsNS, seg.Addr(50)+":5000")
	bigRef := registry + "/ociboot/big:v1"
	bigBlob := pushBig(t, nfsNS, filepath.Join(dir, "big-oci"), bigRef)

	nodesCfg := []map[string]string{{"Serial": nodeKey, "Image": ref}}
	for i := 0; i < clients; i++ {
		nodesCfg = append(nodesCfg, map[string]string{"Serial": serial(i), "MAC": mac(i)})
	}
	cfg, _ := json.Marshal(map[string]any{"Netboot": map[string]any{
		"Mode": "full", "ServerIP": head, "Subnet": seg.Prefix() + ".0/24", "Range": seg.Prefix() + ".100-" + seg.Prefix() + ".199",
		"DefaultImage": bigRef, "InsecureRegistries": []string{registry}, "ExportTo": []string{seg.Prefix() + ".0/24"}, "Nodes": nodesCfg}})
	extra := map[string][]byte{"etc/ociboot/config.json": cfg}
	for _, name := range []string{"nfsd", "dhcpd", "ocicache"} {
		b, err := os.ReadFile(filepath.Join(bin, name))
		if err != nil {
			t.Fatal(err)
		}
		extra["bin/"+name] = b
	}
	initrd, err := guest.InitramfsWith(k, headInit, modules, extra)
	if err != nil {
		t.Fatal(err)
	}
	initrdPath := filepath.Join(dir, "initrd.img")
	os.WriteFile(initrdPath, initrd, 0o644)

	acc, slow := lab.Accel()
	qmp := filepath.Join(dir, "qmp.sock")
	args := append([]string{"qemu-system-x86_64"}, acc...)
	args = append(args, "-m", "1024", "-smp", "1", "-nographic",
		"-kernel", k.Path, "-initrd", initrdPath, "-append", "console=ttyS0 panic=-1 head_ip="+head,
		// cache=none: the guest's writes go to the image file with
		// O_DIRECT, so what the guest has not written is lost at the
		// reset and nothing comes back from a page cache.
		"-drive", "file="+disk+",format=raw,if=virtio,cache=none",
		"-netdev", "tap,id=n0,ifname="+seg.Tap()+",script=no,downscript=no",
		"-device", "virtio-net-pci,netdev=n0,mac=02:00:00:00:70:00",
		"-serial", "stdio", "-monitor", "none", "-qmp", "unix:"+qmp+",server=on,wait=off")
	vm := lab.Cmd{Name: "head", NS: seg.Hub, Log: filepath.Join(dir, "console.log"), Args: args, Stdin: true}.Start(t)
	t.Cleanup(func() { vm.Kill(syscall.SIGKILL) })
	if _, err := vm.WaitLine(60*slow*time.Second, "HEAD READY boot 1"); err != nil {
		t.Fatalf("head node: %v\n%s", err, vm.Tail(6000))
	}

	// Writes: the libnfs client and the DHCP clients, until the cut.
	url := fmt.Sprintf("nfs://%s/nodes/%s?version=3&nfsport=2049&mountport=2049", head, nodeKey)
	w := lab.Cmd{Name: "nfspower", NS: nfsNS, Args: []string{writer, "write", url}}.Start(t)
	var (
		mu     sync.Mutex
		leased = map[string]string{} // MAC → address, ACKed
		stop   = make(chan struct{})
		done   = make(chan struct{})
	)
	var stopOnce sync.Once
	stopAll := func() {
		stopOnce.Do(func() { close(stop) })
		<-done
	}
	t.Cleanup(stopAll)
	go func() {
		defer close(done)
		for i := 0; ; i = (i + 1) % clients {
			select {
			case <-stop:
				return
			default:
			}
			if ip := udhcpc(t, dhcpNS[i], dir, stop); ip != "" {
				mu.Lock()
				leased[mac(i)] = ip
				mu.Unlock()
			}
		}
	}()
	acks := func() (files, blocks int) {
		for _, m := range regexp.MustCompile(`ACK (file|log) (\d+)`).FindAllStringSubmatch(w.Output(), -1) {
			n, _ := strconv.Atoi(m[2])
			if m[1] == "file" {
				files = max(files, n+1)
			} else {
				blocks = max(blocks, n+1)
			}
		}
		return files, blocks
	}
	deadline := time.Now().Add(180 * slow * time.Second) // the mount may take two minutes (nfspower.c)
	for {
		f, _ := acks()
		mu.Lock()
		l := len(leased)
		mu.Unlock()
		if f >= 20 && l >= clients/2 && ocicacheStatus(t, nfsNS, head).unpacking(bigRef, bigBlob) {
			break
		}
		if w.Exited() || time.Now().After(deadline) {
			t.Fatalf("writes before the cut: %d files, %d leases; nfspower (%v):\n%s\nhead:\n%s", f, l, w.Err(), w.Tail(2000), vm.Tail(4000))
		}
		time.Sleep(200 * time.Millisecond)
	}

	// The cut.
	// The machine stops (its disk has what it has), the disk as it is is
	// copied, then it is reset and runs again.
	if err := qmpCommand(qmp, "stop"); err != nil {
		t.Fatalf("QMP stop: %v", err)
	}
	readyBefore := strings.Count(vm.Output(), `msg="image ready"`)
	cut := filepath.Join(dir, "cut.img")
	if out, err := exec.Command("cp", "--sparse=always", disk, cut).CombinedOutput(); err != nil {
		t.Fatalf("copying the disk at the cut: %v\n%s", err, out)
	}
	for _, c := range []string{"system_reset", "cont"} {
		if err := qmpCommand(qmp, c); err != nil {
			t.Fatalf("QMP %s: %v", c, err)
		}
	}
	w.Kill(syscall.SIGKILL)
	stopAll()
	files, blocks := acks()
	mu.Lock()
	acked := map[string]string{}
	for m, ip := range leased {
		acked[m] = ip
	}
	mu.Unlock()
	t.Logf("power cut after %d files and %d log blocks acknowledged, %d leases ACKed, %d images ready", files, blocks, len(acked), readyBefore)
	checkCutDisk(t, cut, bigRef, acked)

	if _, err := vm.WaitLine(60*slow*time.Second, "HEAD READY boot 2"); err != nil {
		t.Fatalf("head node after the cut: %v\n%s", err, vm.Tail(6000))
	}
	for _, l := range strings.Split(vm.Output(), "\n") {
		if strings.Contains(l, "EXT4-fs (vda)") || strings.Contains(l, "HEAD READY") {
			t.Logf("head: %s", strings.TrimSpace(l))
		}
	}
	// Through the services again: the node's root (so its view.json) and
	// what it acknowledged.
	c := lab.Cmd{Name: "nfspower-check", NS: nfsNS, Args: []string{writer, "check", url, strconv.Itoa(files), strconv.Itoa(blocks)}}.Start(t)
	<-c.Done()
	if out := c.Output(); !strings.Contains(out, "OK files=") {
		t.Errorf("after the power cut, nfspower check %d files %d blocks:\n%s", files, blocks, out)
	}
	var dst dhcpd.Status
	if err := json.Unmarshal(lab.GetIn(t, nfsNS, "http://"+head+":9067/status"), &dst); err != nil {
		t.Fatal(err)
	}
	have := map[string]string{}
	for _, l := range dst.Leases {
		have[l.MAC] = l.IP.String()
	}
	for m, ip := range acked {
		if have[m] != ip {
			t.Errorf("lease of %s: ACKed %s before the cut, dhcpd has %q after it", m, ip, have[m])
		}
	}

	// ocicache finds the half tree, drops it and unpacks again.
	if err := poll(60*slow*time.Second, func() error {
		for _, e := range ocicacheStatus(t, nfsNS, head).References {
			if e.Ref == bigRef && e.Digest != "" {
				return nil
			}
		}
		return fmt.Errorf("%s is not ready", bigRef)
	}); err != nil {
		t.Errorf("after the cut: %v", err)
	}

	// A clean shutdown, then the disk itself.
	vm.Type("poweroff\n")
	if _, err := vm.WaitLine(30*slow*time.Second, "HEAD clean"); err != nil {
		t.Fatalf("clean shutdown: %v\n%s", err, vm.Tail(3000))
	}
	select {
	case <-vm.Done():
	case <-time.After(30 * time.Second):
	}
	var vi struct{ Key, Digest string }
	if err := json.Unmarshal([]byte(debugfsCat(t, disk, "/ociboot/nodes/"+nodeKey+"/"+nodes.ViewFile)), &vi); err != nil || vi.Key != nodeKey || vi.Digest != digest {
		t.Errorf("view.json after the cut: %+v, %v", vi, err)
	}
	checkTrees(t, disk, bigRef, true)
	for i := 0; i < clients; i++ {
		if _, ok := acked[mac(i)]; !ok {
			continue
		}
		var rec nodes.Record
		b := debugfsCat(t, disk, "/ociboot/nodes/"+serial(i)+"/node.json")
		if b == "" {
			continue // not flushed yet at the cut: dhcpd writes records within a second
		}
		if err := json.Unmarshal([]byte(b), &rec); err != nil || rec.Serial != serial(i) {
			t.Errorf("node record of %s after the cut: %q: %v", serial(i), b, err)
		}
	}
	if t.Failed() {
		t.Logf("head console tail:\n%s", vm.Tail(8000))
	}
}

// buildStatic builds services for the guest, without cgo (the initramfs
// has no C library for them).
func buildStatic(t *testing.T, dir string, names ...string) string {
	t.Helper()
	out := filepath.Join(dir, "bin")
	args := []string{"build", "-o", out + "/"}
	for _, n := range names {
		args = append(args, "./services/"+n)
	}
	cmd := exec.Command("go", args...)
	cmd.Dir = lab.RepoRoot()
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go %v: %v\n%s", args, err, b)
	}
	return out
}

// udhcpc asks for a lease in ns once and returns the address it was
// ACKed, "" if none.
func udhcpc(t *testing.T, ns, dir string, stop <-chan struct{}) string {
	script := filepath.Join(dir, "udhcpc-"+ns)
	env := script + ".env"
	os.Remove(env)
	os.WriteFile(script, []byte("#!/bin/sh\n[ \"$1\" = bound ] && echo \"$ip\" > '"+env+"'\nexit 0\n"), 0o755)
	p := lab.Cmd{Name: "udhcpc", NS: ns, Args: []string{"busybox", "udhcpc", "-f", "-q", "-n", "-i", "eth0", "-t", "4", "-T", "1", "-A", "1", "-s", script}}.Start(t)
	select {
	case <-p.Done():
	case <-stop:
		p.Kill(syscall.SIGKILL)
	}
	b, _ := os.ReadFile(env)
	return strings.TrimSpace(string(b))
}

// qmpCommand runs one command on QEMU's QMP socket.
func qmpCommand(sock, cmd string) error {
	c, err := net.DialTimeout("unix", sock, 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(c)
	if _, err := r.ReadString('\n'); err != nil { // greeting
		return err
	}
	for _, m := range []string{`{"execute":"qmp_capabilities"}`, `{"execute":"` + cmd + `"}`} {
		if _, err := fmt.Fprintln(c, m); err != nil {
			return err
		}
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return err
			}
			if strings.Contains(line, `"error"`) {
				return fmt.Errorf("%s: %s", m, line)
			}
			if strings.Contains(line, `"return"`) {
				break
			}
		}
	}
	return nil
}

// debugfsCat reads a file from the ext4 image without mounting it; "" if
// it does not exist.
func debugfsCat(t *testing.T, disk, path string) string {
	t.Helper()
	out, err := exec.Command("debugfs", "-R", "cat "+path, disk).Output()
	if err != nil {
		t.Fatalf("debugfs cat %s: %v", path, err)
	}
	return string(out)
}

const (
	bigFiles = 1500
	bigSize  = 64 << 10
)

// pushBig pushes an arm64 image with Pi boot files and bigFiles random
// files of bigSize (about 100 MB, which takes the guest a while to
// unpack) to ref from namespace ns.
func pushBig(t *testing.T, ns, dir, ref string) int64 {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	add := func(name string, data []byte) {
		tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(data)), Typeflag: tar.TypeReg, ModTime: time.Unix(1767225600, 0)})
		tw.Write(data)
	}
	for _, d := range []string{"boot/", "boot/firmware/", "data/"} {
		tw.WriteHeader(&tar.Header{Name: d, Mode: 0o755, Typeflag: tar.TypeDir, ModTime: time.Unix(1767225600, 0)})
	}
	add("boot/firmware/kernel8.img", []byte("kernel"))
	add("boot/firmware/start4.elf", []byte("firmware"))
	data := make([]byte, bigSize)
	for i := 0; i < bigFiles; i++ {
		rand.Read(data)
		add(fmt.Sprintf("data/f%04d", i), data)
	}
	tw.Close()
	b := buf.Bytes()
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil })
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
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		t.Fatal(err)
	}
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.AppendImage(img); err != nil {
		t.Fatal(err)
	}
	lab.Run(t, "ip", "netns", "exec", ns, "skopeo", "copy", "--dest-tls-verify=false", "oci:"+dir, "docker://"+ref)
	size, err := layer.Size()
	if err != nil {
		t.Fatal(err)
	}
	return size
}

// ociStatus is the part of ocicache's /status the test reads.
type ociStatus struct {
	References []images.Entry
	Pulling    []struct {
		Ref  string
		Done int64
	}
	FetchedBytes int64
}

func ocicacheStatus(t *testing.T, ns, head string) ociStatus {
	t.Helper()
	var st struct{ Cache ociStatus }
	if err := json.Unmarshal(lab.GetIn(t, ns, "http://"+head+":9050/status"), &st); err != nil {
		t.Fatalf("ocicache /status: %v", err)
	}
	return st.Cache
}

// unpacking reports whether ocicache is half way through ref's layer (of
// size blob): it unpacks while it fetches, so its temp tree is half made.
func (st ociStatus) unpacking(ref string, blob int64) bool {
	for _, p := range st.Pulling {
		if p.Ref == ref && p.Done >= blob/2 {
			return true
		}
	}
	return false
}

// checkCutDisk checks the disk as the power cut left it, after e2fsck
// replayed its journal as the kernel would: every ACKed lease is in
// leases.json, the node's view.json is whole, and an index entry for the
// image being pulled points to a complete tree.
func checkCutDisk(t *testing.T, cut, bigRef string, acked map[string]string) {
	t.Helper()
	out, err := exec.Command("e2fsck", "-fy", cut).CombinedOutput()
	if code := exitCode(err); code > 1 {
		t.Errorf("e2fsck of the disk at the cut: exit %d\n%s", code, out)
	}
	t.Logf("e2fsck at the cut: %s", lastLine(string(out)))
	var lf struct{ Leases []dhcpd.Lease }
	if err := json.Unmarshal([]byte(debugfsCat(t, cut, "/ociboot/dhcp/leases.json")), &lf); err != nil {
		t.Errorf("leases.json at the cut: %v", err)
	}
	have := map[string]string{}
	for _, l := range lf.Leases {
		have[l.MAC] = l.IP.String()
	}
	for m, ip := range acked {
		if have[m] != ip {
			t.Errorf("leases.json at the cut: %s was ACKed %s, the file has %q", m, ip, have[m])
		}
	}
	var vi struct{ Key, Digest string }
	if err := json.Unmarshal([]byte(debugfsCat(t, cut, "/ociboot/nodes/"+nodeKey+"/"+nodes.ViewFile)), &vi); err != nil || vi.Key != nodeKey {
		t.Errorf("view.json at the cut: %+v, %v", vi, err)
	}
	checkTrees(t, cut, bigRef, false)
	for _, e := range debugfsLs(t, cut, "/ociboot/images") {
		if e.name != "." && e.name != ".." && e.name != "index.json" {
			t.Logf("at the cut, images/ holds %s with %d files in data/", e.name, len(debugfsLs(t, cut, "/ociboot/images/"+e.name+"/data")))
		}
	}
}

// checkTrees checks that an index entry for ref names a complete tree;
// with want, that there is one.
func checkTrees(t *testing.T, disk, ref string, want bool) {
	t.Helper()
	var ix images.Index
	if err := json.Unmarshal([]byte(debugfsCat(t, disk, "/ociboot/images/index.json")), &ix); err != nil {
		t.Errorf("index.json on %s: %v", disk, err)
	}
	found := false
	for _, e := range ix.Entries {
		if e.Ref != ref {
			continue
		}
		found = true
		d, err := images.DirName(e.Digest)
		if err != nil {
			t.Errorf("index entry %+v: %v", e, err)
			continue
		}
		n, bad := 0, 0
		for _, f := range debugfsLs(t, disk, "/ociboot/images/"+d+"/data") {
			if strings.HasPrefix(f.name, "f") {
				n++
				if f.size != bigSize {
					bad++
				}
			}
		}
		t.Logf("%s: index.json names %s ready, %d files", filepath.Base(disk), e.Digest, n)
		if n != bigFiles || bad != 0 {
			t.Errorf("%s: a half tree is taken for ready: index.json names %s for %s, its data/ has %d of %d files, %d of the wrong size", filepath.Base(disk), e.Digest, ref, n, bigFiles, bad)
		}
	}
	if want && !found {
		t.Errorf("%s: index.json has no tree for %s", filepath.Base(disk), ref)
	}
}

type lsEntry struct {
	name string
	size int64
}

// debugfsLs lists a directory of the image: names and sizes.
func debugfsLs(t *testing.T, disk, dir string) []lsEntry {
	t.Helper()
	out, err := exec.Command("debugfs", "-R", "ls -p "+dir, disk).Output()
	if err != nil {
		t.Fatalf("debugfs ls %s: %v", dir, err)
	}
	// ls -p: /inode/mode/uid/gid/name/size/
	var ents []lsEntry
	for _, l := range strings.Split(string(out), "\n") {
		f := strings.Split(strings.TrimSpace(l), "/")
		if len(f) < 7 {
			continue
		}
		size, _ := strconv.ParseInt(f[6], 10, 64)
		ents = append(ents, lsEntry{name: f[5], size: size})
	}
	return ents
}

func exitCode(err error) int {
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode()
	}
	if err != nil {
		return 99
	}
	return 0
}

func lastLine(s string) string {
	l := strings.Split(strings.TrimSpace(s), "\n")
	return l[len(l)-1]
}

// poll calls f every second until it returns nil or timeout passes.
func poll(timeout time.Duration, f func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(time.Second)
	}
}
