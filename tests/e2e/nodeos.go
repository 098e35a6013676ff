package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ociboot/ociboot/appliance/piemu"
	"github.com/ociboot/ociboot/appliance/testenv"
	testlab "github.com/ociboot/ociboot/tests/lab"
)

// The node OS tests boot the image `make node-image` builds (Debian
// bookworm, systemd, raspi-firmware, Debian's arm64 kernel and an
// initramfs-tools initramfs) as a Pi would get it: a Pi emulator does the
// bootloader's DHCP and TFTP with the node's serial, and a QEMU arm64
// machine with the Pi's MAC runs the kernel, initrd and generated
// cmdline.txt it was handed, mounts its root from nfsd and boots systemd to
// multi-user.target. Logins go over SSH with a key from the config.

var (
	nodeImageOnce sync.Once
	nodeImageDir  string
	nodeImageErr  error
	nodeImageLog  string
	// nodeImageTemp is the temporary directory of a build that finished
	// (not set while it runs, or for OCIBOOT_NODE_IMAGE), for
	// RemoveNodeOSImage.
	nodeImageTemp atomic.Pointer[string]
)

// RemoveNodeOSImage deletes the image NodeOSImage built, once the tests
// are done with it: a CI run on the same machine would otherwise leave
// half a GiB in the temporary directory each time.
func RemoveNodeOSImage() {
	if dir := nodeImageTemp.Load(); dir != nil {
		os.RemoveAll(*dir)
	}
}

// NodeOSImage builds the node image once per test binary with the
// Makefile's own target and returns its OCI layout. OCIBOOT_NODE_IMAGE
// names a layout built before (by `make node-image`), which saves the
// build on a developer's machine; CI always builds. StartNodeOSImage
// begins the build early, so that it overlaps other tests.
func NodeOSImage(t testing.TB) string {
	t.Helper()
	nodeImageOnce.Do(buildNodeOSImage)
	if nodeImageErr != nil {
		t.Fatal(nodeImageErr)
	}
	if nodeImageLog != "" {
		t.Log(nodeImageLog)
		nodeImageLog = "" // once, in the first test that waited
	}
	return nodeImageDir
}

// StartNodeOSImage starts the build NodeOSImage waits for in the
// background. The build runs at the CPU priority of the tests: at nice
// 19 it starved under their QEMU machines on a 2-core machine (~28 min
// instead of 10 in CI), and the node OS tests, which wait for it, were
// the whole run's last half hour.
func StartNodeOSImage() {
	go nodeImageOnce.Do(buildNodeOSImage)
}

func buildNodeOSImage() {
	if dir := os.Getenv("OCIBOOT_NODE_IMAGE"); dir != "" && !testenv.Required() {
		nodeImageDir = dir
		return
	}
	dir, err := os.MkdirTemp("", "ociboot-node-image-")
	if err != nil {
		nodeImageErr = err
		return
	}
	nodeImageDir = filepath.Join(dir, "oci")
	start := time.Now()
	// containerd (Debian's) for the node-disk test, on top of the
	// recipe's packages.
	cmd := exec.Command("make", "-C", repoRoot(), "node-image", "NODE_IMAGE="+nodeImageDir, "NODE_IMAGE_FLAGS=-q -packages containerd")
	out, err := cmd.CombinedOutput()
	nodeImageTemp.Store(&dir)
	if err != nil {
		nodeImageErr = fmt.Errorf("make node-image: %v\n%s", err, tail(string(out)))
		return
	}
	nodeImageLog = fmt.Sprintf("make node-image: %v\n%s", time.Since(start).Round(time.Second), strings.TrimSpace(string(out)))
}

// PiNode is one netbooting Pi 4 of the lab: the emulator's namespace for
// its bootloader's DHCP and TFTP, then a QEMU arm64 machine.
type PiNode struct {
	Name   string
	Serial uint32
	MAC    string
	IP     string
	// Config is merged into the node's Netboot.Nodes entry (Disk, Install).
	Config map[string]any
	// Disk is a raw disk image the machine has as a virtio disk (/dev/vda).
	Disk   string
	ns     string
	Proc   *Proc
	Booted time.Time // power-on of the current boot
	// kernelStart is when QEMU started the kernel the bootloader fetched.
	kernelStart time.Time
	Up          time.Duration
	// Fetched holds every file the bootloader fetched over TFTP on the
	// last power-on, by name (the generated config.txt and cmdline.txt
	// included).
	Fetched map[string][]byte
}

func (p *PiNode) serialHex() string { return fmt.Sprintf("%08x", p.Serial) }

func (p *PiNode) macBytes() []byte {
	var b [6]byte
	fmt.Sscanf(p.MAC, "%02x:%02x:%02x:%02x:%02x:%02x", &b[0], &b[1], &b[2], &b[3], &b[4], &b[5])
	return b[:]
}

// PowerOn does what the Pi's bootloader and firmware do (DHCP with the
// serial in option 97, the TFTP sequence of start4.elf), then starts QEMU
// with what was fetched.
func (p *PiNode) PowerOn(t testing.TB, lab *Lab, h *Head) {
	t.Helper()
	if p.ns == "" {
		p.ns = lab.NewNS("pi-"+p.Name, 0)
		run(t, "ip", "-n", p.ns, "link", "set", "eth0", "down")
		run(t, "ip", "-n", p.ns, "link", "set", "eth0", "address", p.MAC)
	}
	p.Booted = time.Now()
	run(t, "ip", "-n", p.ns, "link", "set", "eth0", "up")
	var lease piemu.Lease
	var rep piemu.TFTPReport
	var err error
	testlab.InNS(t, p.ns, func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		pi := piemu.Pi{MAC: p.macBytes(), Serial: p.Serial}
		if lease, err = pi.DHCP(ctx, "eth0"); err != nil {
			return
		}
		if out, aerr := execIn("ip", "addr", "replace", lease.IP.String()+"/24", "dev", "eth0"); aerr != nil {
			err = fmt.Errorf("%v: %s", aerr, out)
			return
		}
		rep, err = piemu.TFTPBoot(ctx, lease.TFTP.String()+":69", pi.SerialHex(), 1468)
	})
	// The bootloader is done: its address and socket go away, as on a Pi
	// when start4.elf hands over to the kernel.
	run(t, "ip", "-n", p.ns, "addr", "flush", "dev", "eth0")
	run(t, "ip", "-n", p.ns, "link", "set", "eth0", "down")
	if err != nil {
		t.Fatalf("%s: bootloader: %v\ndhcpd:\n%s\ntftpd:\n%s", p.Name, err, tail(h.Procs["dhcpd"].Output()), tail(h.Procs["tftpd"].Output()))
	}
	if got := lease.IP.String(); got != p.IP {
		t.Errorf("%s: bootloader got address %s, want its reservation %s", p.Name, got, p.IP)
	}
	if rep.Initramfs == "" {
		t.Fatalf("%s: config.txt names no initramfs; the Debian kernel needs one for an NFS root:\n%s", p.Name, rep.Files["config.txt"])
	}
	p.Fetched = rep.Files
	dir := filepath.Join(lab.Dir, p.Name)
	os.MkdirAll(dir, 0o755)
	kernel, initrd := filepath.Join(dir, rep.Kernel), filepath.Join(dir, rep.Initramfs)
	os.WriteFile(kernel, rep.Files[rep.Kernel], 0o644)
	os.WriteFile(initrd, rep.Files[rep.Initramfs], 0o644)
	cmdline := strings.TrimSpace(string(rep.Files["cmdline.txt"]))
	if want := "nfsroot=" + lab.Addr(1) + ":/nodes/" + p.serialHex() + ","; !strings.Contains(cmdline, want) {
		t.Errorf("%s: cmdline.txt %q lacks %q", p.Name, cmdline, want)
	}
	tap := lab.Tap()
	p.kernelStart = time.Now()
	args := []string{"qemu-system-aarch64", "-M", "virt", "-cpu", "cortex-a72", "-smp", "1", "-m", "1024",
		"-nographic", "-no-reboot", "-kernel", kernel, "-initrd", initrd, "-append", cmdline,
		"-netdev", "tap,id=n0,ifname=" + tap + ",script=no,downscript=no",
		"-device", "virtio-net-pci,netdev=n0,mac=" + p.MAC,
		"-serial", "stdio", "-monitor", "none"}
	p.Proc = lab.Start(p.Name, lab.Hub, append(args, p.diskArgs()...)...)
}

func (p *PiNode) diskArgs() []string {
	if p.Disk == "" {
		return nil
	}
	return []string{"-drive", "file=" + p.Disk + ",if=none,format=raw,id=d0,cache=unsafe", "-device", "virtio-blk-pci,drive=d0"}
}

// BootLocal powers the node on from its own disk with no network at all
// (the cable pulled): as a Pi's firmware does from an SD card or eMMC, it
// reads config.txt from the first (FAT) partition, and the kernel,
// initramfs and cmdline.txt it names; QEMU runs them with the disk
// attached and no network device.
func (p *PiNode) BootLocal(t testing.TB, lab *Lab) {
	t.Helper()
	var pt struct {
		PartitionTable struct {
			Partitions []struct {
				Start int64
				Type  string
			}
		}
	}
	if err := json.Unmarshal([]byte(run(t, "sfdisk", "-J", p.Disk)), &pt); err != nil || len(pt.PartitionTable.Partitions) == 0 {
		t.Fatalf("%s: the disk has no partition table: %v", p.Name, err)
	}
	boot := pt.PartitionTable.Partitions[0]
	if boot.Type != "c" {
		t.Fatalf("%s: the disk's first partition is type %s, not FAT32 (c): a Pi would not boot it", p.Name, boot.Type)
	}
	fat := fmt.Sprintf("%s@@%d", p.Disk, boot.Start*512)
	dir := filepath.Join(lab.Dir, p.Name+"-local")
	os.MkdirAll(dir, 0o755)
	ct := piemu.ParseConfigTxt([]byte(run(t, "mtype", "-i", fat, "::config.txt")), "cm4")
	if ct.Kernel == "" || ct.Initramfs == "" {
		t.Fatalf("%s: config.txt on the disk names no kernel or initramfs: %+v", p.Name, ct)
	}
	kernel, initrd := filepath.Join(dir, ct.Kernel), filepath.Join(dir, ct.Initramfs)
	run(t, "mcopy", "-n", "-i", fat, "::"+ct.Kernel, kernel)
	run(t, "mcopy", "-n", "-i", fat, "::"+ct.Initramfs, initrd)
	cmdline := strings.TrimSpace(run(t, "mtype", "-i", fat, "::cmdline.txt"))
	p.Booted = time.Now()
	p.kernelStart = p.Booted
	args := []string{"qemu-system-aarch64", "-M", "virt", "-cpu", "cortex-a72", "-smp", "1", "-m", "1024",
		"-nographic", "-no-reboot", "-kernel", kernel, "-initrd", initrd, "-append", cmdline,
		"-nic", "none", "-serial", "stdio", "-monitor", "none"}
	p.Proc = lab.Start(p.Name+"-local", lab.Hub, append(args, p.diskArgs()...)...)
}

// WaitMultiUser waits until systemd on the node has reached
// multi-user.target and records the time from power-on: the bootloader's
// part (DHCP, TFTP) measured here plus systemd's own timestamp of the
// target, which counts from the kernel's start. (The console is no
// witness: once a getty owns it, systemd stops printing there.)
func (p *PiNode) WaitMultiUser(t testing.TB, lab *Lab, key string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		out, err := p.SSH(t, lab, key, "systemctl show -P ActiveEnterTimestampMonotonic multi-user.target")
		if us, perr := strconv.ParseInt(out, 10, 64); err == nil && perr == nil && us > 0 {
			p.Up = p.kernelStart.Sub(p.Booted) + time.Duration(us)*time.Microsecond
			return
		}
		if p.Proc.Exited() {
			t.Fatalf("%s: the machine stopped before multi-user.target:\n%s", p.Name, tail(p.Proc.Output()))
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: no multi-user.target within %v (ssh: %v %s):\n%s", p.Name, timeout, err, out, tail(p.Proc.Output()))
		}
		time.Sleep(3 * time.Second)
	}
}

// PowerOff shuts the node down cleanly (systemctl poweroff; QEMU runs
// with -no-reboot, so it exits) and waits for the machine to stop, or
// stops it after timeout.
func (p *PiNode) PowerOff(t testing.TB, lab *Lab, key string, timeout time.Duration) {
	t.Helper()
	p.SSH(t, lab, key, "systemctl --no-block poweroff")
	select {
	case <-p.Proc.Done():
	case <-time.After(timeout):
		t.Logf("%s: still running %v after poweroff; stopping the machine", p.Name, timeout)
		p.Proc.Stop(10 * time.Second)
	}
}

// SSH runs a command on the node as root, from the head node's namespace.
func (p *PiNode) SSH(t testing.TB, lab *Lab, key string, command string) (string, error) {
	t.Helper()
	cmd := exec.Command("ip", "netns", "exec", lab.Head, "ssh", "-i", key,
		"-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
		"-o", "ConnectTimeout=20", "-o", "LogLevel=ERROR", "root@"+p.IP, command)
	out, err := cmd.CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// MustSSH is SSH that fails the test on error.
func (p *PiNode) MustSSH(t testing.TB, lab *Lab, key, command string) string {
	t.Helper()
	out, err := p.SSH(t, lab, key, command)
	if err != nil {
		t.Fatalf("%s: ssh %q: %v\n%s\nconsole:\n%s", p.Name, command, err, out, tail(p.Proc.Output()))
	}
	return out
}

// WaitSSH waits until sshd on the node answers.
func (p *PiNode) WaitSSH(t testing.TB, lab *Lab, key string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		out, err := p.SSH(t, lab, key, "true")
		if err == nil {
			return
		}
		if time.Now().After(deadline) || p.Proc.Exited() {
			t.Fatalf("%s: no SSH login within %v: %v %s\nconsole:\n%s", p.Name, timeout, err, out, tail(p.Proc.Output()))
		}
		time.Sleep(2 * time.Second)
	}
}

// SSHKey makes a client key pair in dir and returns the private key's path
// and the public key line.
func SSHKey(t testing.TB, dir string) (string, string) {
	t.Helper()
	key := filepath.Join(dir, "id_ed25519")
	run(t, "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "ociboot-e2e", "-f", key)
	pub, err := os.ReadFile(key + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	return key, strings.TrimSpace(string(pub))
}

// NodeOSHead is a full-mode head node whose registry holds the node OS
// image built by the recipe, with nodes reserved for pis and the key's
// public half in Netboot.SSHAuthorizedKeys.
func NodeOSHead(t testing.TB, ociDir, repoTag string, pis []*PiNode, pub string) (*Lab, *Head, string) {
	t.Helper()
	testenv.NeedTool(t, "qemu-system-aarch64", "qemu-system-arm")
	testenv.NeedTool(t, "ssh", "openssh-client")
	testenv.NeedTool(t, "make", "make")
	lab := NewLab(t)
	for i, p := range pis {
		p.IP = lab.Addr(21 + i)
	}
	netboot := FullMode(lab)
	// The QEMU arm64 machine's serial port is ttyAMA0 (a Pi's is serial0,
	// which raspi-firmware's cmdline.txt names already).
	netboot["KernelArgs"] = []string{"console=ttyAMA0", "panic=-1"}
	h := NewHead(t, lab, netboot)
	ref := h.Registry + "/" + repoTag
	h.push(t, ociDir, ref)
	var nodesCfg []map[string]any
	for _, p := range pis {
		n := map[string]any{"Name": p.Name, "Serial": p.serialHex(), "MAC": p.MAC, "IP": p.IP, "Image": ref, "Platform": "linux/arm64"}
		for k, v := range p.Config {
			n[k] = v
		}
		nodesCfg = append(nodesCfg, n)
	}
	var cfg map[string]map[string]any
	b, _ := os.ReadFile(h.Config)
	json.Unmarshal(b, &cfg)
	cfg["Netboot"]["Nodes"] = nodesCfg
	cfg["Netboot"]["SSHAuthorizedKeys"] = []string{pub}
	// Container images for the nodes' runtimes come through the head
	// node's mirror (:5000), pull-through from the registry's ctr/....
	cfg["Netboot"]["Upstreams"] = []string{h.Registry + "/ctr"}
	b, _ = json.MarshalIndent(cfg, "", "  ")
	os.WriteFile(h.Config, b, 0o644)
	h.Start(t)
	h.WaitFor(t, repoTag, 10*time.Minute)
	return lab, h, ref
}

// CheckRunning asserts systemd's state is "running"; when it is degraded,
// the failed units are printed.
func CheckRunning(t testing.TB, lab *Lab, key string, p *PiNode) {
	t.Helper()
	state, _ := p.SSH(t, lab, key, "systemctl is-system-running --wait")
	if state != "running" {
		failed, _ := p.SSH(t, lab, key, "systemctl --failed --no-legend --plain; for u in $(systemctl --failed --no-legend --plain | cut -d' ' -f1); do journalctl -b -u $u --no-pager | tail -n 15; done")
		t.Errorf("%s: systemctl is-system-running: %q, want running; failed units:\n%s", p.Name, state, failed)
	}
}
