package tftpd

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/ociboot/ociboot/appliance/config"
)

// dropArgs are kernel arguments of the image's cmdline.txt that describe
// how the image boots from its own disk; the generated root arguments
// replace them, and ociboot.* arguments, which come from the node's config
// alone (an image made from an installed node's disk carries its own).
// Everything else (console=, quiet, cgroup settings, ...) is kept in its
// order.
var dropArgs = []string{"root=", "nfsroot=", "ip=", "rootfstype=", "rootwait", "init=", "boot=", "ro", "rw", "resume=", "ociboot."}

func dropped(arg string) bool {
	for _, d := range dropArgs {
		if strings.HasSuffix(d, "=") || strings.HasSuffix(d, ".") {
			if strings.HasPrefix(arg, d) {
				return true
			}
		} else if arg == d {
			return true
		}
	}
	return false
}

// RootArgs are the arguments that make the kernel mount the node's export.
// The NFS port is explicit; the MOUNT port is left to the portmapper
// (nfsd serves one on 111) because the initramfs of Debian and Raspberry
// Pi OS mounts with klibc's nfsmount, which refuses "mountport=" and
// stops the boot ("bad option 'mountport'"), while the kernel's own
// nfsroot and busybox ask the portmapper too when it is missing.
func RootArgs(head netip.Addr, key string) string {
	return fmt.Sprintf("root=/dev/nfs nfsroot=%s:/nodes/%s,vers=3,tcp,port=2049 ip=dhcp rw rootwait", head, key)
}

// NBDPort is where nbdd serves the nodes' disks (the IANA port of NBD),
// InstallPort where it takes the nodes' install reports.
const (
	NBDPort     = 10809
	InstallPort = 9809
)

// DiskArgs tell the node image's ociboot-disk.service which disk to mount
// at d.Mount before container runtimes start: the head node's NBD export
// named by the node's key, or a device of the node, which it formats only
// with ociboot.format=1 (Disk.Format). nil for no disk.
func DiskArgs(head netip.Addr, key string, d *config.DiskConfig) []string {
	if d == nil {
		return nil
	}
	var args []string
	if d.NBD() {
		args = append(args, fmt.Sprintf("ociboot.disk=nbd://%s:%d/%s", head, NBDPort, key))
	} else {
		args = append(args, "ociboot.disk="+d.Device)
		if d.Format {
			args = append(args, "ociboot.format=1")
		}
	}
	return append(args, "ociboot.mount="+strings.Join(d.Mount, ","))
}

// InstallArgs make the node image's ociboot-install.service copy the
// netbooted system to device and report the outcome to the head node.
func InstallArgs(head netip.Addr, device string) []string {
	return []string{"ociboot.install=" + device, fmt.Sprintf("ociboot.report=http://%s:%d/install", head, InstallPort)}
}

// NetconsoleArg makes the kernel send its log as UDP to the head node's
// port 6666 (netconsole.Port), from the interface's own address and the
// default source port 6665, to the broadcast MAC: the kernel needs no ARP
// reply to start logging.
func NetconsoleArg(head netip.Addr) string {
	return fmt.Sprintf("netconsole=@/,6666@%s/", head)
}

// Cmdline generates a node's kernel command line from the image's
// cmdline.txt (may be nil), the root arguments and Netboot.KernelArgs.
func Cmdline(image []byte, head netip.Addr, key string, extra []string) string {
	var args []string
	for _, a := range strings.Fields(string(image)) {
		if !dropped(a) {
			args = append(args, a)
		}
	}
	args = append(args, RootArgs(head, key))
	args = append(args, extra...)
	return strings.Join(args, " ")
}

// ConfigTxt is the image's config.txt followed by Netboot.ConfigTxt. The
// bootloader applies later lines over earlier ones, so ours win; they come
// after an "[all]" line because the image's file may end inside a
// conditional section such as "[cm5]", whose lines a CM4 skips.
func ConfigTxt(image []byte, extra []string) string {
	var b strings.Builder
	b.Write(image)
	if len(extra) == 0 {
		return b.String()
	}
	if len(image) > 0 && image[len(image)-1] != '\n' {
		b.WriteByte('\n')
	}
	b.WriteString("\n# ociboot: Netboot.ConfigTxt, for every board\n[all]\n")
	for _, l := range extra {
		b.WriteString(l)
		b.WriteByte('\n')
	}
	return b.String()
}

// IPXEChain is the root boot.ipxe: iPXE fetches the node's own script from
// its MAC directory (a URI relative to this script's), and keeps trying
// while the head node cannot give it one.
const IPXEChain = "#!ipxe\n:chain\nchain ${mac:hexhyp}/boot.ipxe || goto retry\n:retry\nsleep 3\ngoto chain\n"

// IPXEScript boots kernel and initrd (relative to the node's directory)
// with cmdline.
func IPXEScript(kernel, initrd, cmdline string) string {
	var b strings.Builder
	b.WriteString("#!ipxe\n:fetch\n")
	fmt.Fprintf(&b, "kernel %s %s || goto retry\n", kernel, cmdline)
	if initrd != "" {
		fmt.Fprintf(&b, "initrd %s || goto retry\n", initrd)
	}
	// A head node that restarts tftpd (or reboots) mid-transfer costs the
	// node a retry, not a boot stuck in the firmware, as with a Pi's
	// bootloader, which also starts over.
	b.WriteString("boot || goto retry\n:retry\necho ociboot: boot files not fetched, trying again in 3 s\nimgfree\nsleep 3\ngoto fetch\n")
	return b.String()
}
