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

// FuzzRRQ: any request body parses or fails cleanly, and what parses
// negotiates a block size the server can send.
func FuzzRRQ(f *testing.F) {
	for _, s := range []string{
		"abcd1234/start4.elf\x00octet\x00tsize\x000\x00blksize\x001468\x00",
		"x\x00netascii\x00", "x\x00octet\x00blksize\x00", "\x00\x00", "", "a\x00b\x00c\x00d",
		"x\x00octet\x00blksize\x007\x00", "x\x00octet\x00BLKSIZE\x0099999999999999999999\x00",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := parseRRQ(b)
		if err != nil {
			return
		}
		bs, _ := negotiate(r, 100)
		if bs < 8 || bs > MaxBlockSize {
			t.Fatalf("%q: block size %d", b, bs)
		}
	})
}
