package guest

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

var (
	accelOnce sync.Once
	accelArgs []string
	accelSlow time.Duration
)

// Accel returns the QEMU accelerator arguments: KVM when it really runs a
// kernel, else TCG, plus a factor to stretch timeouts under TCG. /dev/kvm
// can exist and still fail (nested virtualisation has stopped guests here
// with "emulation failure"), so the probe boots the host's kernel for a few
// seconds. OCIBOOT_QEMU_ACCEL=tcg|kvm skips the probe. The CPU model must
// offer what the kernels use (BMI2 in the decompressor), which qemu64 lacks.
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
