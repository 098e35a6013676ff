// Package tests holds end-to-end checks of the whole appliance: the image gok
// builds from this repository, and the services as users start them.
package tests

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ociboot/ociboot/appliance/testenv"
	"github.com/ociboot/ociboot/tests/lab"
)

// packages name the Debian package of each program the tests here run.
var packages = map[string]string{"unsquashfs": "squashfs-tools", "mkfs.ext4": "e2fsprogs", "dumpe2fs": "e2fsprogs", "make": "make", "chromium": "chromium"}

func need(t *testing.T, cmds ...string) {
	t.Helper()
	for _, c := range cmds {
		testenv.NeedTool(t, c, packages[c])
	}
}

// builddirState is what gok may not change: a build that needs to `go get`
// would rewrite these and leave the checkout dirty.
func builddirState(t *testing.T, root string) []byte {
	var b []byte
	for _, f := range []string{"go.mod", "go.sum"} {
		c, err := os.ReadFile(filepath.Join(root, "builddir", f))
		if err != nil {
			t.Fatal(err)
		}
		b = append(b, c...)
	}
	return b
}

// TestImage builds the head-node image exactly as `make image` does and
// checks that it holds the services, the config and a formatted /perm.
func TestImage(t *testing.T) {
	testenv.Short(t, "builds the gokrazy image (about 2 minutes on a cold module cache)")
	need(t, "unsquashfs", "mkfs.ext4", "dumpe2fs", "make")
	root := lab.RepoRoot()
	before := builddirState(t, root)
	dir := t.TempDir()
	img := filepath.Join(dir, "ociboot.img")

	mk := exec.Command("make", "-C", root, "image", "IMAGE="+img, "TARGET_STORAGE_BYTES=2147483648")
	out, err := mk.CombinedOutput()
	if err != nil {
		t.Fatalf("make image: %v\n%s", err, tail(out))
	}
	if after := builddirState(t, root); !bytes.Equal(before, after) {
		t.Errorf("make image changed builddir/go.mod or go.sum: run `make builddir-sync` and commit the result")
	}
	fi, err := os.Stat(img)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := fi.Size(), int64(2147483648); got != want {
		t.Errorf("image size: got %d, want %d", got, want)
	}
	mbr := readMBR(t, img)
	if got, want := mbr[510:512], []byte{0x55, 0xaa}; !bytes.Equal(got, want) {
		t.Errorf("image has no boot signature: got %x, want %x", got, want)
	}
	// The perm partition must be a clean ext4 so that /perm/ociboot is
	// writable on first boot.
	offset := ""
	for _, line := range strings.Split(string(out), "\n") {
		if i := strings.Index(line, "formatted at offset "); i >= 0 {
			offset = strings.TrimSuffix(strings.TrimSpace(line[i+len("formatted at offset "):]), ")")
		}
	}
	if offset == "" {
		t.Fatalf("make image did not report the perm partition offset:\n%s", tail(out))
	}
	dump, err := exec.Command("dumpe2fs", "-h", img+"?offset="+offset).CombinedOutput()
	if err != nil {
		t.Fatalf("dumpe2fs perm partition: %v\n%s", err, dump)
	}
	if !strings.Contains(string(dump), "Filesystem volume name:   perm") {
		t.Errorf("perm partition is not the ext4 labelled perm:\n%s", dump)
	}

	// The root file system, built by the same gok from the same config.
	sq := filepath.Join(dir, "root.squashfs")
	gok := exec.Command("go", "tool", "gok", "--parent_dir", filepath.Dir(root), "--instance", filepath.Base(root),
		"overwrite", "--root", sq)
	gok.Dir = root
	if out, err := gok.CombinedOutput(); err != nil {
		t.Fatalf("gok overwrite --root: %v\n%s", err, tail(out))
	}
	list, err := exec.Command("unsquashfs", "-l", sq).CombinedOutput()
	if err != nil {
		t.Fatalf("unsquashfs -l: %v\n%s", err, list)
	}
	for _, want := range []string{
		"squashfs-root/user/dhcpd",
		"squashfs-root/user/tftpd",
		"squashfs-root/user/ocicache",
		"squashfs-root/user/nfsd",
		"squashfs-root/user/status",
		"squashfs-root/etc/ociboot/config.json",
		"squashfs-root/gokrazy/init",
	} {
		if !bytes.Contains(list, []byte(want+"\n")) {
			t.Errorf("root file system lacks %s", want)
		}
	}
	ex := filepath.Join(dir, "x")
	if out, err := exec.Command("unsquashfs", "-d", ex, sq, "etc/ociboot/config.json", "user/dhcpd").CombinedOutput(); err != nil {
		t.Fatalf("unsquashfs extract: %v\n%s", err, out)
	}
	got, _ := os.ReadFile(filepath.Join(ex, "etc/ociboot/config.json"))
	want, _ := os.ReadFile(filepath.Join(root, "config.json"))
	if !bytes.Equal(got, want) {
		t.Errorf("/etc/ociboot/config.json in the image differs from config.json")
	}
	// The services are built for the Pi: arm64 ELF.
	elf, _ := os.ReadFile(filepath.Join(ex, "user/dhcpd"))
	if len(elf) < 20 || !bytes.Equal(elf[:4], []byte("\x7fELF")) || elf[18] != 0xb7 {
		t.Errorf("user/dhcpd is not an arm64 ELF binary")
	}
}

func readMBR(t *testing.T, path string) []byte {
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 512)
	if _, err := f.ReadAt(b, 0); err != nil {
		t.Fatal(err)
	}
	return b
}

func tail(b []byte) string {
	if len(b) > 3000 {
		b = b[len(b)-3000:]
	}
	return string(b)
}
