package guest

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ociboot/ociboot/appliance/testenv"
	"github.com/ociboot/ociboot/tests/lab"
)

// TestInitramfsBringsUpNetwork boots the host kernel with the initramfs in
// QEMU with user networking (its DHCP server is QEMU's own): the init must
// load the NIC driver, get a lease and try the NFS mount named on the
// command line. Nothing listens for NFS on the host side of 10.0.2.2 (the
// host's loopback), so the mount fails and the guest powers off.
func TestInitramfsBringsUpNetwork(t *testing.T) {
	testenv.Short(t, "boots QEMU")
	lab.NeedQEMU(t, "x86_64")
	k, err := HostKernel()
	if err != nil {
		testenv.Need(t, "%v", err)
	}
	initrd, err := Initramfs(k)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	ip := filepath.Join(dir, "initrd")
	os.WriteFile(ip, initrd, 0o644)
	_, slow := lab.Accel()
	ctx, cancel := context.WithTimeout(context.Background(), slow*90*time.Second)
	defer cancel()
	qemu := lab.X86(512)
	cmd := exec.CommandContext(ctx, qemu[0], append(qemu[1:],
		"-kernel", k.Path, "-initrd", ip,
		"-append", "console=ttyS0 panic=-1 root=/dev/nfs nfsroot=10.0.2.2:/nodes/none,vers=3,tcp,port=1,mountport=1",
		"-netdev", "user,id=n0,restrict=on", "-device", "virtio-net-pci,netdev=n0")...)
	out, _ := cmd.CombinedOutput()
	for _, want := range []string{"initramfs: DHCP on eth0", "initramfs: eth0 10.0.2.15/", "initramfs: mounting 10.0.2.2:/nodes/none (vers=3,tcp,port=1,mountport=1)", "initramfs: NFS mount failed"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("console lacks %q", want)
		}
	}
	if t.Failed() {
		t.Logf("console:\n%s", out[max(0, len(out)-4000):])
	}
}
