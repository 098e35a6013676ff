package piemu

import "strings"

// ConfigTxt is what a Pi's firmware takes from config.txt for one board:
// the lines of the sections whose filter matches it ([all], [pi4], [cm4],
// ...), later lines winning.
type ConfigTxt struct {
	Kernel    string // kernel=, else the firmware's default for the board
	Initramfs string // initramfs <file> [followkernel]
	Settings  map[string]string
}

// ParseConfigTxt reads config.txt as the firmware of board does. board is
// a model filter name: "pi4" (Pi 4 B), "cm4", "pi400", "pi5", "cm5".
// Unknown filters (EDID=, gpio, serial numbers) never match.
func ParseConfigTxt(data []byte, board string) ConfigTxt {
	c := ConfigTxt{Settings: map[string]string{}}
	family := map[string]string{"cm4": "pi4", "pi400": "pi4", "cm5": "pi5", "pi500": "pi5"}[board]
	if family == "" {
		family = board
	}
	active := true
	for _, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = strings.TrimSpace(line[:i])
		}
		if line == "" {
			continue
		}
		if strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]") {
			f := strings.ToLower(line[1 : len(line)-1])
			active = f == "all" || f == board || f == family
			continue
		}
		if !active {
			continue
		}
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "initramfs" {
			c.Initramfs = f[1]
			continue
		}
		if k, v, ok := strings.Cut(line, "="); ok {
			c.Settings[strings.TrimSpace(k)] = strings.TrimSpace(v)
		}
	}
	c.Kernel = c.Settings["kernel"]
	if c.Kernel == "" {
		c.Kernel = "kernel8.img"
		if family == "pi5" {
			c.Kernel = "kernel_2712.img"
		}
	}
	return c
}
