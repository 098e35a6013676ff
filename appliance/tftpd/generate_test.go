package tftpd

import (
	"testing"

	"github.com/ociboot/ociboot/appliance/piemu"
)

func TestConfigTxtExtrasApplyAfterAConditionalSection(t *testing.T) {
	extra := []string{"dtoverlay=disable-wifi", "enable_uart=1"}
	for _, tc := range []struct {
		name  string
		image string
	}{
		{"ends inside [cm5]", "arm_64bit=1\n[cm5]\ndtoverlay=dwc2,dr_mode=host\nenable_uart=0\n"},
		{"ends inside [pi5] without newline", "[pi5]\nenable_uart=0"},
		{"no sections", "arm_64bit=1\n"},
		{"no image config.txt", ""},
	} {
		// A CM4 reads the file as its firmware does (board filters).
		ct := piemu.ParseConfigTxt([]byte(ConfigTxt([]byte(tc.image), extra)), "cm4")
		if got, want := ct.Settings["dtoverlay"]+" "+ct.Settings["enable_uart"], "disable-wifi 1"; got != want {
			t.Errorf("%s: a CM4 applies dtoverlay, enable_uart = %q, want %q", tc.name, got, want)
		}
	}
	if got, want := ConfigTxt([]byte("arm_64bit=1\n"), nil), "arm_64bit=1\n"; got != want {
		t.Errorf("no extras: got %q, want the image's config.txt unchanged %q", got, want)
	}
}
