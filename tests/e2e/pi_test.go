package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/ociboot/ociboot/tests/dhcpd/netlab"
	"github.com/ociboot/ociboot/tests/guest"
	"github.com/ociboot/ociboot/tests/piemu"
)

// TestPiBoot: a Pi 4 emulator on the segment does what a CM4's bootloader
// does against the whole head node: DHCP with its option 97, then the TFTP
// sequence of the EEPROM and start4.elf with its serial as prefix, and gets
// the bytes of its image (an arm64 Raspberry Pi OS layout pushed to the
// registry) and a command line pointing at its own NFS export.
func TestPiBoot(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end")
	}
	lab := NewLab(t)
	h := NewHead(t, lab, map[string]any{
		"Interface": "eth0", "Mode": "full", "ServerIP": lab.Addr(1),
		"Subnet": lab.Addr(0) + "/24", "Range": lab.Addr(100) + "-" + lab.Addr(150),
	})
	img, files, err := guest.PiImage()
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
	netlab.InNS(t, piNS, func() {
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
	want := "console=serial0,115200 console=tty1 fsck.repair=yes root=/dev/nfs nfsroot=" + lab.Addr(1) + ":/nodes/5b154510,vers=3,tcp,port=2049,mountport=2049 ip=dhcp rw rootwait\n"
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
}
