package piemu

import "testing"

func TestParseConfigTxt(t *testing.T) {
	// The shape Debian's raspi-firmware writes, with a CM5 section last.
	debian := []byte(`# Do not modify this file!
arm_64bit=1
enable_uart=1
upstream_kernel=1

kernel=vmlinuz-6.12.95+deb12-arm64
# For details on the initramfs directive, see
# https://www.raspberrypi.com/documentation/computers/config_txt.html#initramfs
initramfs initrd.img-6.12.95+deb12-arm64

[pi4]
# Enable the audio output, I2C and SPI interfaces on the GPIO header.
dtparam=audio=on
[cm5]
kernel=other
[all]
gpu_mem=16
`)
	for _, tc := range []struct {
		board, kernel, initramfs, audio string
	}{
		{"pi4", "vmlinuz-6.12.95+deb12-arm64", "initrd.img-6.12.95+deb12-arm64", "audio=on"},
		{"cm4", "vmlinuz-6.12.95+deb12-arm64", "initrd.img-6.12.95+deb12-arm64", "audio=on"},
		{"cm5", "other", "initrd.img-6.12.95+deb12-arm64", ""},
	} {
		c := ParseConfigTxt(debian, tc.board)
		if c.Kernel != tc.kernel || c.Initramfs != tc.initramfs || c.Settings["dtparam"] != tc.audio {
			t.Errorf("%s: got kernel %q initramfs %q dtparam %q; want %q %q %q", tc.board, c.Kernel, c.Initramfs, c.Settings["dtparam"], tc.kernel, tc.initramfs, tc.audio)
		}
		if got, want := c.Settings["gpu_mem"], "16"; got != want {
			t.Errorf("%s: [all] after a section: gpu_mem %q, want %q", tc.board, got, want)
		}
	}
	if got, want := ParseConfigTxt([]byte("arm_64bit=1\n"), "pi5").Kernel, "kernel_2712.img"; got != want {
		t.Errorf("Pi 5 default kernel: got %q, want %q", got, want)
	}
	if got, want := ParseConfigTxt([]byte("[pi5]\nkernel=x\n"), "pi4").Kernel, "kernel8.img"; got != want {
		t.Errorf("Pi 4 with only a [pi5] kernel=: got %q, want %q", got, want)
	}
}
