package guest

import (
	"archive/tar"
	"crypto/rand"
	"os"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
)

// PiImage is a linux/arm64 image laid out like Raspberry Pi OS: firmware,
// device tree, kernel8.img, initramfs8 and the boot config in
// boot/firmware, and a root file system. The firmware is random bytes of
// realistic size (no Pi hardware here runs it). With an arm64 kernel k
// (Arm64Kernel), kernel8.img is that kernel (a Debian arm64 Image is the
// same format), initramfs8 the test initramfs for it and the root a
// busybox root whose init prints Marker: a QEMU arm64 machine boots what a
// Pi would be handed. Without one, the kernel is random bytes too. files
// returns the boot files by name for comparison.
func PiImage(k *Kernel) (img v1.Image, files map[string][]byte, err error) {
	files = map[string][]byte{
		"start4.elf":          make([]byte, 2_200_000),
		"fixup4.dat":          make([]byte, 5_400),
		"bcm2711-rpi-4-b.dtb": make([]byte, 52_000),
		"kernel8.img":         make([]byte, 9_500_000),
	}
	for _, b := range files {
		rand.Read(b)
	}
	files["cmdline.txt"] = []byte("console=serial0,115200 console=tty1 root=PARTUUID=6c586e13-02 rootfstype=ext4 fsck.repair=yes rootwait\n")
	files["config.txt"] = []byte("arm_64bit=1\n[pi4]\narm_boost=1\n")
	var root v1.Layer
	if k != nil {
		if files["kernel8.img"], err = os.ReadFile(k.Path); err != nil {
			return nil, nil, err
		}
		if files["initramfs8"], err = Initramfs(*k); err != nil {
			return nil, nil, err
		}
		files["config.txt"] = []byte("arm_64bit=1\ninitramfs initramfs8 followkernel\n[pi4]\narm_boost=1\n")
		if root, err = RootLayer(*k, "pi-os"); err != nil {
			return nil, nil, err
		}
	}
	tf := []tarFile{
		{name: "boot/", mode: 0o755, typeflag: tar.TypeDir},
		{name: "boot/firmware/", mode: 0o755, typeflag: tar.TypeDir},
		{name: "etc/", mode: 0o755, typeflag: tar.TypeDir},
		{name: "etc/hostname", mode: 0o644, data: []byte("pi\n")},
	}
	for name, data := range files {
		tf = append(tf, tarFile{name: "boot/firmware/" + name, mode: 0o644, data: data})
	}
	l, err := layer(tf)
	if err != nil {
		return nil, nil, err
	}
	layers := []v1.Layer{l}
	if root != nil {
		layers = append(layers, root)
	}
	img, err = mutate.AppendLayers(empty.Image, layers...)
	if err != nil {
		return nil, nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", "arm64"
	img, err = mutate.ConfigFile(img, cf)
	return img, files, err
}
