package tftpd

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
)

// FuzzRequest feeds arbitrary requested names through parsing, node
// resolution and the open beneath the boot directory: nothing may panic,
// and whatever opens must be a file of the image's boot directory.
func FuzzRequest(f *testing.F) {
	for _, s := range []string{
		"abcd1234/start4.elf", "start4.elf", "/abcd1234/overlays/overlay_map.dtb",
		"../etc/passwd", "abcd1234/../../x", "dc-a6-32-01-02-03/boot.ipxe", "boot.ipxe",
		"abcd1234/up/etc/shadow", "abcd1234/rel-link", "a\x00b", "//", "abcd1234/", "ABCD1234/CMDLINE.TXT",
	} {
		f.Add(s)
	}
	fx := newFixture(f, defaultNetboot)
	remote := netip.MustParseAddr("127.0.0.1")
	f.Fuzz(func(t *testing.T, name string) {
		c, req, err := fx.srv.open(name, remote, remote)
		if err != nil {
			if !errors.Is(err, ErrNotFound) && !strings.HasPrefix(err.Error(), "tftpd:") {
				t.Fatalf("open(%q): unexpected error %v", name, err)
			}
			return
		}
		if c.c != nil {
			defer c.c.Close()
		}
		for _, el := range strings.Split(req.File, "/") {
			if el == ".." || el == "" {
				t.Fatalf("open(%q) accepted path %q", name, req.File)
			}
		}
	})
}
