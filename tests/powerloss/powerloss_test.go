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
	"bufio"
	"encoding/json"
	"fmt"
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
until wget -q -O /dev/null http://127.0.0.1:9049/status && wget -q -O /dev/null http://127.0.0.1:9067/status; do sleep 1; done
echo "HEAD READY boot $n"
while read line; do
  case "$line" in poweroff)
    kill $(pidof nfsd dhcpd); sleep 2; sync; umount /perm && echo "HEAD clean"; poweroff -f;;
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
	for tool, pkg := range map[string]string{"mkfs.ext4": "e2fsprogs", "debugfs": "e2fsprogs", "gcc": "gcc", "busybox": "busybox", "curl": "curl"} {
		testenv.NeedTool(t, tool, pkg)
	}
	k, err := guest.HostKernel()
	if err != nil {
		testenv.Need(t, "%v", err)
	}
	dir := t.TempDir()
	bin := buildStatic(t, dir, "nfsd", "dhcpd")
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
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-L", "perm", "-d", src, disk, "256M").CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v\n%s", err, out)
	}

	var nodesCfg []map[string]string
	for i := 0; i < clients; i++ {
		nodesCfg = append(nodesCfg, map[string]string{"Serial": serial(i), "MAC": mac(i)})
	}
	cfg, _ := json.Marshal(map[string]any{"Netboot": map[string]any{
		"Mode": "full", "ServerIP": head, "Subnet": seg.Prefix() + ".0/24", "Range": seg.Prefix() + ".100-" + seg.Prefix() + ".199",
		"DefaultImage": ref, "ExportTo": []string{seg.Prefix() + ".0/24"}, "Nodes": nodesCfg}})
	extra := map[string][]byte{"etc/ociboot/config.json": cfg}
	for _, name := range []string{"nfsd", "dhcpd"} {
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
	deadline := time.Now().Add(30 * slow * time.Second)
	for {
		f, _ := acks()
		mu.Lock()
		l := len(leased)
		mu.Unlock()
		if f >= 20 && l >= clients/2 {
			break
		}
		if w.Exited() || time.Now().After(deadline) {
			t.Fatalf("writes before the cut: %d files, %d leases; nfspower (%v):\n%s\nhead:\n%s", f, l, w.Err(), w.Tail(2000), vm.Tail(4000))
		}
		time.Sleep(200 * time.Millisecond)
	}

	// The cut.
	if err := qmpCommand(qmp, "system_reset"); err != nil {
		t.Fatalf("QMP system_reset: %v", err)
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
	t.Logf("power cut after %d files and %d log blocks acknowledged, %d leases ACKed", files, blocks, len(acked))

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
