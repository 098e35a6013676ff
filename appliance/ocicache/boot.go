package ocicache

import (
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/ociboot/ociboot/appliance/images"
)

// Boot is what FindBoot found in an unpacked tree.
type Boot struct {
	Dir      string   // relative to the tree, e.g. "boot/firmware"
	Kernel   string   // file name inside Dir
	Warnings []string // problems that do not stop a boot
}

// FindBoot locates the boot directory of the tree at root: override if set,
// else boot/firmware, then boot. The directory must hold a kernel. For
// arm/arm64 platforms it must also hold start4.elf, the firmware a Pi 4 /
// CM4 fetches first over TFTP, or the Pi 5 / CM5 boot files (kernel_2712.img
// or a bcm2712-*.dtb; a Pi 5 has its firmware in the EEPROM); for other
// platforms (amd64 images booted by QEMU with -kernel) their absence is
// only a warning. Nothing in the tree is
// followed through a symlink: a boot dir or kernel that is a symlink does
// not count, as tftpd would refuse to serve it.
func FindBoot(root, override, platform string) (Boot, error) {
	candidates := []string{"boot/firmware", "boot"}
	if override != "" {
		candidates = []string{strings.Trim(path.Clean(override), "/")}
	}
	var tried []string
	for _, c := range candidates {
		if !isRealDir(root, c) {
			tried = append(tried, c+"/ (missing)")
			continue
		}
		kernel := findKernel(filepath.Join(root, filepath.FromSlash(c)))
		if kernel == "" {
			tried = append(tried, c+"/ (no kernel: none of "+strings.Join(images.KernelPatterns, ", ")+")")
			continue
		}
		b := Boot{Dir: c, Kernel: kernel}
		dir := filepath.Join(root, filepath.FromSlash(c))
		pi4, pi5 := hasPi4Boot(dir), hasPi5Boot(dir)
		if !pi4 && !pi5 {
			msg := fmt.Sprintf("%s/ has kernel %s but boot files for neither Pi model: %s", c, kernel, piNeeds)
			arch := platformArch(platform)
			if arch == "arm64" || arch == "arm" {
				return Boot{}, fmt.Errorf("ocicache: image cannot netboot a Pi: %s; install the raspi-firmware package (Pi 4) or the Pi 5 kernel and device trees in the image", msg)
			}
			b.Warnings = append(b.Warnings, msg+"; fine for "+platform+" machines booted with an external loader, not for a Pi")
		} else if !pi4 {
			b.Warnings = append(b.Warnings, c+"/ has no start4.elf: it boots a Pi 5/CM5, not a Pi 4/CM4")
		}
		return b, nil
	}
	return Boot{}, fmt.Errorf("ocicache: image has no boot directory with a kernel: looked at %s; set Netboot.BootDir if it lives elsewhere, or install a kernel package in the image", strings.Join(tried, ", "))
}

// piNeeds says which files each Pi model fetches first.
const piNeeds = "a Pi 4/CM4 needs start4.elf and fixup4.dat (its firmware) next to the kernel; " +
	"a Pi 5/CM5 needs kernel_2712.img (or kernel8.img) and its device tree, a bcm2712-*.dtb such as bcm2712-rpi-5-b.dtb or bcm2712-rpi-cm5-cm5io.dtb (its firmware is in the EEPROM)"

// hasPi4Boot: the Pi 4 bootloader loads start4.elf from the boot files.
func hasPi4Boot(dir string) bool { return isRegular(filepath.Join(dir, "start4.elf")) }

// hasPi5Boot: a Pi 5's firmware is in its EEPROM, so a boot directory is
// one for a Pi 5 when it holds the Pi 5 kernel or a BCM2712 device tree.
func hasPi5Boot(dir string) bool {
	if isRegular(filepath.Join(dir, "kernel_2712.img")) {
		return true
	}
	m, _ := filepath.Glob(filepath.Join(dir, "bcm2712*.dtb"))
	for _, f := range m {
		if isRegular(f) {
			return true
		}
	}
	return false
}

func isRegular(p string) bool {
	fi, err := os.Lstat(p)
	return err == nil && fi.Mode().IsRegular()
}

func platformArch(p string) string {
	parts := strings.Split(p, "/")
	if len(parts) < 2 {
		return ""
	}
	return parts[1]
}

// isRealDir checks every component of rel below root is a directory, not a
// symlink.
func isRealDir(root, rel string) bool {
	cur := root
	for _, el := range strings.Split(rel, "/") {
		if el == "" || el == "." || el == ".." {
			return false
		}
		cur = filepath.Join(cur, el)
		fi, err := os.Lstat(cur)
		if err != nil || !fi.IsDir() {
			return false
		}
	}
	return true
}

func findKernel(dir string) string {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return ""
	}
	var names []string
	for _, e := range entries {
		if e.Type().IsRegular() {
			names = append(names, e.Name())
		}
	}
	return images.PickKernel(names)
}
