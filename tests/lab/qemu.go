package lab

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ociboot/ociboot/appliance/testenv"
)

var (
	accelOnce sync.Once
	accelArgs []string
	accelSlow time.Duration
)

// Accel returns the QEMU accelerator arguments for an x86 guest: KVM when
// it really runs a kernel, else TCG, plus a factor to stretch timeouts
// under TCG. /dev/kvm can exist and still fail (nested virtualisation has
// stopped guests here with "emulation failure"), so the probe boots the
// host's kernel for a few seconds. OCIBOOT_QEMU_ACCEL=tcg|kvm skips the
// probe. The CPU model must offer what the kernels use (BMI2 in the
// decompressor), which qemu64 lacks.
func Accel() (args []string, slow time.Duration) {
	accelOnce.Do(func() {
		accelArgs, accelSlow = []string{"-accel", "tcg", "-cpu", "max"}, 5
		switch os.Getenv("OCIBOOT_QEMU_ACCEL") {
		case "tcg":
			return
		case "kvm":
			accelArgs, accelSlow = []string{"-accel", "kvm", "-cpu", "host"}, 1
			return
		}
		kernels, _ := filepath.Glob("/boot/vmlinuz-*")
		if len(kernels) == 0 {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		out, _ := exec.CommandContext(ctx, "qemu-system-x86_64", "-accel", "kvm", "-cpu", "host", "-m", "256",
			"-nographic", "-no-reboot", "-kernel", kernels[0], "-append", "console=ttyS0 panic=-1 root=/dev/null").CombinedOutput()
		if strings.Contains(string(out), "Kernel panic") || strings.Contains(string(out), "VFS:") {
			accelArgs, accelSlow = []string{"-accel", "kvm", "-cpu", "host"}, 1
		}
	})
	return accelArgs, accelSlow
}

// NeedQEMU stops t (skip, or fail in CI) unless qemu-system-<arch> is
// installed; arch is "x86_64" or "aarch64".
func NeedQEMU(t testing.TB, arch string) {
	t.Helper()
	pkg := map[string]string{"x86_64": "qemu-system-x86", "aarch64": "qemu-system-arm"}[arch]
	testenv.NeedTool(t, "qemu-system-"+arch, pkg)
}

// X86 starts the command line of an x86_64 guest with memMiB of memory:
// the accelerator (Accel), no display, no reboot (a guest that panics or
// powers off ends the process), the serial console on stdio.
func X86(memMiB int) []string {
	acc, _ := Accel()
	args := append([]string{"qemu-system-x86_64"}, acc...)
	return append(args, "-m", strconv.Itoa(memMiB), "-nographic", "-no-reboot")
}

// Arm64 starts the command line of an arm64 guest (QEMU's virt machine
// with a Cortex-A72, the CM4's core) with memMiB of memory. It always runs
// under TCG here.
func Arm64(memMiB int) []string {
	return []string{"qemu-system-aarch64", "-M", "virt", "-cpu", "cortex-a72", "-m", strconv.Itoa(memMiB), "-nographic", "-no-reboot"}
}

// TapNIC is a virtio NIC with mac on tap device tap (Segment.Tap), and the
// serial console on stdio without a monitor.
func TapNIC(tap, mac string) []string {
	return []string{"-netdev", "tap,id=n0,ifname=" + tap + ",script=no,downscript=no",
		"-device", "virtio-net-pci,netdev=n0,mac=" + mac, "-serial", "stdio", "-monitor", "none"}
}
