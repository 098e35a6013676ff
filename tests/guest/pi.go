package guest

import (
	"archive/tar"
	"crypto/rand"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
)

// PiImage is a linux/arm64 image laid out like Raspberry Pi OS: firmware,
// device tree, kernel8.img and the boot config in boot/firmware. The
// firmware and kernel are random bytes of realistic size (no Pi hardware
// here runs them); files returns them by name for comparison.
func PiImage() (img v1.Image, files map[string][]byte, err error) {
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
	img, err = mutate.AppendLayers(empty.Image, l)
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
