package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/ociboot/ociboot/appliance/piemu"
	"github.com/ociboot/ociboot/appliance/testenv"
	"github.com/ociboot/ociboot/tests/guest"
	testlab "github.com/ociboot/ociboot/tests/lab"
)

// TestPiBoot: a Pi 4 emulator on the segment does what a CM4's bootloader
// does against the whole head node: DHCP with its option 97, then the TFTP
// sequence of the EEPROM and start4.elf with its serial as prefix, and gets
// the bytes of its image (an arm64 Raspberry Pi OS layout pushed to the
// registry) and a command line pointing at its own NFS export.
func TestPiBoot(t *testing.T) {
	testenv.Short(t, "end-to-end")
	lab := NewLab(t)
	netboot := FullMode(lab)
	netboot["KernelArgs"] = []string{"console=ttyAMA0", "panic=-1"} // the QEMU arm64 machine's serial port; a Pi has serial0
	h := NewHead(t, lab, netboot)
	// The test is the Pi's boot: without the arm64 kernel nothing would
	// boot, so it does not pass without one.
	testlab.NeedQEMU(t, "aarch64")
	k, err := guest.Arm64Kernel()
	if err != nil {
		testenv.Need(t, "%v", err)
	}
	img, files, err := guest.PiImage(&k)
	if err != nil {
		t.Fatal(err)
	}
	piRef := h.PushImage(t, img, "rpi/os:bookworm")
	const serial = 0x5b154510
	var cfg map[string]map[string]any
	b, _ := os.ReadFile(h.Config)
	json.Unmarshal(b, &cfg)
	cfg["Netboot"]["Nodes"] = []map[string]string{{"Name": "cm4-2", "Serial": "5b154510", "Image": piRef, "Platform": "linux/arm64", "IP": lab.Addr(12)}}
	b, _ = json.MarshalIndent(cfg, "", "  ")
	os.WriteFile(h.Config, b, 0o644)
	h.Start(t)
	h.WaitFor(t, "rpi/os:bookworm", 2*time.Minute)

	piNS := lab.NewNS("pi", 0)
	exec := func(args ...string) { run(t, append([]string{"ip", "-n", piNS}, args...)...) }
	exec("link", "set", "eth0", "down")
	exec("link", "set", "eth0", "address", "dc:a6:32:5b:15:45")
	exec("link", "set", "eth0", "up")
	var lease piemu.Lease
	var rep piemu.TFTPReport
	var dhcpErr, tftpErr error
	testlab.InNS(t, piNS, func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		pi := piemu.Pi{MAC: []byte{0xdc, 0xa6, 0x32, 0x5b, 0x15, 0x45}, Serial: serial}
		lease, dhcpErr = pi.DHCP(ctx, "eth0")
		if dhcpErr != nil {
			return
		}
		// Take the address as the bootloader does, then fetch over TFTP.
		if out, err := execIn("ip", "addr", "add", lease.IP.String()+"/24", "dev", "eth0"); err != nil {
			dhcpErr = err
			t.Logf("%s", out)
			return
		}
		rep, tftpErr = piemu.TFTPBoot(ctx, lease.TFTP.String()+":69", pi.SerialHex(), 1468)
	})
	if dhcpErr != nil {
		t.Fatalf("Pi DHCP: %v\ndhcpd:\n%s", dhcpErr, tail(h.Procs["dhcpd"].Output()))
	}
	if got, want := lease.IP.String(), lab.Addr(12); got != want {
		t.Errorf("Pi address: got %s, want its reservation %s", got, want)
	}
	if got, want := lease.TFTP.String(), lab.Addr(1); got != want {
		t.Errorf("TFTP server: got %s, want %s", got, want)
	}
	if tftpErr != nil {
		t.Fatalf("Pi TFTP: %v\ntftpd:\n%s", tftpErr, tail(h.Procs["tftpd"].Output()))
	}
	for _, f := range []string{"start4.elf", "fixup4.dat", "bcm2711-rpi-4-b.dtb", "kernel8.img"} {
		if !bytes.Equal(rep.Files[f], files[f]) {
			t.Errorf("%s: got %d bytes that differ from the image's %d", f, len(rep.Files[f]), len(files[f]))
		}
	}
	want := "console=serial0,115200 console=tty1 fsck.repair=yes root=/dev/nfs nfsroot=" + lab.Addr(1) + ":/nodes/5b154510,vers=3,tcp,port=2049 ip=dhcp rw rootwait console=ttyAMA0 panic=-1\n"
	if got := string(rep.Files["cmdline.txt"]); got != want {
		t.Errorf("cmdline.txt:\ngot  %q\nwant %q", got, want)
	}
	if got := string(rep.Files["config.txt"]); !strings.HasPrefix(got, "arm_64bit=1\n") {
		t.Errorf("config.txt: got %q", got)
	}
	var st struct {
		Nodes []struct{ Name, Serial, IP, Stage, Digest string }
	}
	if err := h.Status(t, "http://127.0.0.1:8080/api/status", &st); err != nil {
		t.Fatal(err)
	}
	if len(st.Nodes) != 1 || st.Nodes[0].Name != "cm4-2" || st.Nodes[0].Stage != "kernel" || st.Nodes[0].IP != lab.Addr(12) || st.Nodes[0].Digest == "" {
		t.Errorf("status page: got %+v", st.Nodes)
	}

	if !bytes.Equal(rep.Files["initramfs8"], files["initramfs8"]) {
		t.Fatalf("initramfs8 named by config.txt: got %d bytes that differ from the image's", len(rep.Files["initramfs8"]))
	}

	// What the Pi was handed boots: an arm64 QEMU machine with the Pi's
	// MAC runs the fetched kernel8.img and initramfs8 with the generated
	// cmdline.txt, gets its reserved address again from its OS's DHCP
	// client (no option 97 now) and mounts its root from nfsd.
	run(t, "ip", "-n", piNS, "link", "set", "eth0", "down")
	kernel := lab.Dir + "/kernel8.img"
	initrd := lab.Dir + "/initramfs8"
	os.WriteFile(kernel, rep.Files["kernel8.img"], 0o644)
	os.WriteFile(initrd, rep.Files["initramfs8"], 0o644)
	tap := lab.Tap()
	args := append(testlab.Arm64(512), "-kernel", kernel, "-initrd", initrd,
		"-append", strings.TrimSpace(string(rep.Files["cmdline.txt"])))
	pi := lab.Start("pi-qemu", lab.Hub, append(args, testlab.TapNIC(tap, "dc:a6:32:5b:15:45")...)...)
	node := &Node{MAC: "dc:a6:32:5b:15:45", Proc: pi}
	line := node.WaitUp(t, 6*time.Minute) // always TCG: an arm64 guest on this machine
	t.Logf("Pi kernel in QEMU: %s", line)
	if want := "image=pi-os boots=1 root=" + lab.Addr(1) + ":/nodes/5b154510"; !strings.Contains(line, want) {
		t.Errorf("Pi init reports %q, want %q", line, want)
	}
	if !strings.Contains(pi.Output(), "initramfs: eth0 "+lab.Addr(12)+"/") {
		t.Errorf("the Pi's OS did not get its reserved address %s", lab.Addr(12))
	}
	waitHeartbeats(t, []*Node{node}, []int{0}, 3*time.Minute)
}
