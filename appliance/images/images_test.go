package images

import (
	"strings"
	"testing"

	"github.com/ociboot/ociboot/appliance/store"
)

func TestIndexRoundTrip(t *testing.T) {
	st, err := store.Open(t.TempDir(), store.Options{AllowTmpfs: true})
	if err != nil {
		t.Fatal(err)
	}
	ix, err := LoadIndex(st)
	if err != nil || len(ix.Entries) != 0 {
		t.Fatalf("empty store: got %v, %v", ix, err)
	}
	d := "sha256:" + strings.Repeat("ab", 32)
	ix.Put(Entry{Ref: "r:1", Platform: "linux/arm64", Digest: d, BootDir: "boot/firmware"})
	ix.Put(Entry{Ref: "r:1", Platform: "linux/arm64", Digest: d, BootDir: "boot"})
	if err := SaveIndex(st, ix); err != nil {
		t.Fatal(err)
	}
	ix2, err := LoadIndex(st)
	if err != nil {
		t.Fatal(err)
	}
	e, ok := ix2.Lookup("r:1", "linux/arm64")
	if !ok || e.BootDir != "boot" || len(ix2.Entries) != 1 {
		t.Errorf("Lookup: got %+v, %v (entries %d)", e, ok, len(ix2.Entries))
	}
	p, err := BootPath(st, e)
	if err != nil || !strings.HasSuffix(p, "images/sha256-"+strings.Repeat("ab", 32)+"/boot") {
		t.Errorf("BootPath: got %q, %v", p, err)
	}
}

func TestDirNameRejectsHostile(t *testing.T) {
	for _, bad := range []string{"", "sha256:../../etc", "md5:abc", "sha256:" + strings.Repeat("A", 64), "sha256:" + strings.Repeat("a", 63) + "/"} {
		if _, err := DirName(bad); err == nil {
			t.Errorf("DirName(%q): got nil error", bad)
		}
	}
}

func TestPickKernel(t *testing.T) {
	for _, tc := range []struct {
		names []string
		want  string
	}{
		{[]string{"start4.elf", "kernel_2712.img", "kernel8.img"}, "kernel8.img"},
		{[]string{"kernel_2712.img", "bcm2712-rpi-5-b.dtb"}, "kernel_2712.img"},
		{[]string{"vmlinuz-6.1.0-9-arm64", "vmlinuz-6.1.0-28-arm64", "initrd.img"}, "vmlinuz-6.1.0-28-arm64"},
		{[]string{"vmlinuz-6.12.1", "vmlinuz-6.9.7"}, "vmlinuz-6.12.1"},
		{[]string{"vmlinuz-6.1.0-28-arm64", "vmlinuz"}, "vmlinuz"},
		{[]string{"config.txt"}, ""},
	} {
		if got := PickKernel(tc.names); got != tc.want {
			t.Errorf("PickKernel(%q) = %q, want %q", tc.names, got, tc.want)
		}
	}
}
