package tftpd

import (
	"strings"
	"testing"
)

// applied returns the lines of config.txt a board acts on, following the
// bootloader's conditional filters: a "[section]" line starts a section
// whose lines apply only to the boards it names, until the next section;
// "[all]" applies to every board. Comments and blank lines are dropped.
func applied(cfg string, board map[string]bool) []string {
	var out []string
	on := true
	for _, l := range strings.Split(cfg, "\n") {
		l = strings.TrimSpace(l)
		switch {
		case l == "" || strings.HasPrefix(l, "#"):
		case strings.HasPrefix(l, "[") && strings.HasSuffix(l, "]"):
			f := strings.Trim(l, "[]")
			on = f == "all" || board[f]
		case on:
			out = append(out, l)
		}
	}
	return out
}

func TestConfigTxtExtrasApplyAfterAConditionalSection(t *testing.T) {
	cm4 := map[string]bool{"pi4": true, "cm4": true}
	for _, tc := range []struct {
		name  string
		image string
		want  string
	}{
		{"ends inside [cm5]", "arm_64bit=1\n[cm5]\ndtoverlay=dwc2,dr_mode=host\n", "arm_64bit=1,dtoverlay=disable-wifi,enable_uart=1"},
		{"ends inside [pi4] without newline", "[pi4]\narm_boost=1", "arm_boost=1,dtoverlay=disable-wifi,enable_uart=1"},
		{"no sections", "arm_64bit=1\n", "arm_64bit=1,dtoverlay=disable-wifi,enable_uart=1"},
		{"no image config.txt", "", "dtoverlay=disable-wifi,enable_uart=1"},
	} {
		got := strings.Join(applied(ConfigTxt([]byte(tc.image), []string{"dtoverlay=disable-wifi", "enable_uart=1"}), cm4), ",")
		if got != tc.want {
			t.Errorf("%s: a CM4 applies %q, want %q", tc.name, got, tc.want)
		}
	}
	if got, want := ConfigTxt([]byte("arm_64bit=1\n"), nil), "arm_64bit=1\n"; got != want {
		t.Errorf("no extras: got %q, want the image's config.txt unchanged %q", got, want)
	}
}
