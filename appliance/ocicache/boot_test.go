package ocicache

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestFindBootPiModels(t *testing.T) {
	for _, tc := range []struct {
		name     string
		files    []string
		platform string
		kernel   string
		err      []string // substrings of the error; nil = accepted
	}{
		{"pi 4", []string{"start4.elf", "fixup4.dat", "bcm2711-rpi-4-b.dtb", "kernel8.img"}, "linux/arm64", "kernel8.img", nil},
		{"pi 5 dtb and kernel_2712", []string{"bcm2712-rpi-5-b.dtb", "kernel_2712.img"}, "linux/arm64", "kernel_2712.img", nil},
		{"cm5 dtb with kernel8", []string{"bcm2712-rpi-cm5-cm5io.dtb", "kernel8.img"}, "linux/arm64", "kernel8.img", nil},
		{"pi 5 kernel only", []string{"kernel_2712.img"}, "linux/arm64", "kernel_2712.img", nil},
		{"both models", []string{"start4.elf", "bcm2712-rpi-5-b.dtb", "kernel8.img", "kernel_2712.img"}, "linux/arm64", "kernel8.img", nil},
		{"neither", []string{"kernel8.img", "bcm2711-rpi-4-b.dtb"}, "linux/arm64", "",
			[]string{"Pi 4/CM4 needs start4.elf", "Pi 5/CM5 needs kernel_2712.img", "bcm2712-rpi-5-b.dtb"}},
		{"neither on amd64", []string{"vmlinuz"}, "linux/amd64", "vmlinuz", nil},
	} {
		root := t.TempDir()
		boot := filepath.Join(root, "boot", "firmware")
		os.MkdirAll(boot, 0o755)
		for _, f := range tc.files {
			os.WriteFile(filepath.Join(boot, f), []byte("x"), 0o644)
		}
		b, err := FindBoot(root, "", tc.platform)
		if tc.err == nil {
			if err != nil || b.Kernel != tc.kernel {
				t.Errorf("%s: got %+v, %v; want kernel %s", tc.name, b, err, tc.kernel)
			}
			continue
		}
		for _, want := range tc.err {
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Errorf("%s: got %v, want an error containing %q", tc.name, err, want)
			}
		}
	}
}
