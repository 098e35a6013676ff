package sdimage_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/ociboot/ociboot/appliance/nodeimage/sdimage"
	"github.com/ociboot/ociboot/appliance/nodeimage/sdimage/sdtest"
	"github.com/ociboot/ociboot/appliance/testenv"
)

// baseImage builds a small good image for the bad-input tests to spoil.
func baseImage(t *testing.T, opts sdtest.Options) []byte {
	t.Helper()
	sdtest.Need(t, false)
	dir := t.TempDir()
	tree := filepath.Join(dir, "tree")
	for _, f := range []string{"etc/passwd", "usr/bin/true", "boot/firmware/config.txt"} {
		p := filepath.Join(tree, f)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(f+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	img := filepath.Join(dir, "sd.img")
	if err := opts.Build(tree, img); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func partOffset(img []byte, n int) int64 {
	return int64(binary.LittleEndian.Uint32(img[446+16*(n-1)+8:])) * 512
}

// debugfsOut runs a debugfs request on the image's root partition.
func debugfsOut(t *testing.T, img []byte, req string) string {
	t.Helper()
	start := partOffset(img, 2)
	n := int64(binary.LittleEndian.Uint32(img[446+16+12:])) * 512
	p := filepath.Join(t.TempDir(), "root.img")
	if err := os.WriteFile(p, img[start:start+n], 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("debugfs", "-R", req, p).Output()
	if err != nil {
		t.Fatalf("debugfs -R %q: %v", req, err)
	}
	return strings.TrimSpace(string(out))
}

// inodeOffset returns where in the image debugfs says path's inode is.
func inodeOffset(t *testing.T, img []byte, path string) int64 {
	t.Helper()
	var blk, off int64
	imap := debugfsOut(t, img, "imap "+path)
	i := strings.Index(imap, "located at block ")
	if i < 0 {
		t.Fatalf("debugfs imap: %q", imap)
	}
	if _, err := fmt.Sscanf(imap[i:], "located at block %d, offset 0x%x", &blk, &off); err != nil {
		t.Fatalf("debugfs imap %q: %v", imap, err)
	}
	return partOffset(img, 2) + blk*4096 + off
}

func xzFile(t *testing.T, b []byte) []byte {
	t.Helper()
	testenv.NeedTool(t, "xz", "xz-utils")
	cmd := exec.Command("xz", "-c", "-0", "-T1")
	cmd.Stdin = bytes.NewReader(b)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("xz: %v", err)
	}
	return out
}

func TestXZ(t *testing.T) {
	img := baseImage(t, sdtest.Options{})
	dir := t.TempDir()
	plain, packed := filepath.Join(dir, "sd.img"), filepath.Join(dir, "sd.img.xz")
	if err := os.WriteFile(plain, img, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(packed, xzFile(t, img), 0o644); err != nil {
		t.Fatal(err)
	}
	var a, b bytes.Buffer
	if err := sdimage.WriteTar(context.Background(), plain, &a); err != nil {
		t.Fatal(err)
	}
	im := &sdimage.Importer{TempDir: t.TempDir()}
	if err := im.WriteTar(context.Background(), packed, &b); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a.Bytes(), b.Bytes()) {
		t.Errorf("the .img.xz gave another stream than the .img")
	}
	if ents, _ := os.ReadDir(im.TempDir); len(ents) != 0 {
		t.Errorf("temporary files left behind: %v", ents)
	}
}

func TestBadInput(t *testing.T) {
	img := baseImage(t, sdtest.Options{})
	root := partOffset(img, 2)
	// Without metadata_csum a damaged inode gets as far as its extents.
	plain := baseImage(t, sdtest.Options{Ext4Features: "^metadata_csum"})
	spoil := func(f func(b []byte) []byte) []byte { return f(bytes.Clone(img)) }

	// Where debugfs says /etc's directory block and /etc/passwd's inode are.
	etcBlock, err := strconv.ParseInt(strings.Fields(debugfsOut(t, img, "blocks /etc"))[0], 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	passwdInode, plainPasswdInode := inodeOffset(t, img, "/etc/passwd"), inodeOffset(t, plain, "/etc/passwd")

	gpt := func() []byte {
		p := filepath.Join(t.TempDir(), "gpt.img")
		if err := os.WriteFile(p, make([]byte, 8<<20), 0o644); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command("sfdisk", "--no-reread", "--no-tell-kernel", "-q", p)
		cmd.Stdin = strings.NewReader("label: gpt\nstart=2048, size=4096, type=linux\n")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("sfdisk: %v: %s", err, out)
		}
		b, _ := os.ReadFile(p)
		return b
	}
	superfloppy := func() []byte {
		p := filepath.Join(t.TempDir(), "fat.img")
		if out, err := exec.Command("mkfs.vfat", "-C", p, "8192").CombinedOutput(); err != nil {
			t.Fatalf("mkfs.vfat: %v: %s", err, out)
		}
		b, _ := os.ReadFile(p)
		return b
	}

	for _, tc := range []struct {
		name string
		data []byte
		xz   bool
		want error
		text string // in the message
	}{
		{"text file", []byte("hello, this is not an image\n"), false, sdimage.ErrNotDiskImage, "shorter than one 512-byte sector"},
		{"zeros", make([]byte, 1<<20), false, sdimage.ErrNotDiskImage, "no 55 AA boot signature"},
		{"gzip", append([]byte{0x1F, 0x8B, 8, 0}, make([]byte, 600)...), false, sdimage.ErrNotDiskImage, "gunzip"},
		{"zip", append([]byte("PK\x03\x04"), make([]byte, 600)...), false, sdimage.ErrNotDiskImage, "unzip"},
		{"GPT disk", gpt(), false, sdimage.ErrNoMBR, "GPT"},
		{"FAT without partition table", superfloppy(), false, sdimage.ErrNoMBR, "bare FAT filesystem"},
		{"ext4 without partition table", spoil(func(b []byte) []byte { return b[root:] }), false, sdimage.ErrNotDiskImage, "bare ext4 filesystem"},
		{"empty partition table", spoil(func(b []byte) []byte { clear(b[446:510]); return b }), false, sdimage.ErrNoMBR, "empty"},
		{"no FAT partition", spoil(func(b []byte) []byte { clear(b[partOffset(b, 1) : partOffset(b, 1)+512]); return b }), false, sdimage.ErrNoFAT, "no FAT boot sector"},
		{"no ext4 partition", spoil(func(b []byte) []byte { clear(b[root+1024 : root+2048]); return b }), false, sdimage.ErrNoExt4, "ext4"},
		{"truncated image", spoil(func(b []byte) []byte { return b[:len(b)/2] }), false, sdimage.ErrTruncated, "incomplete download"},
		{"truncated xz", img, true, sdimage.ErrTruncatedXZ, "download it again"},
		{"corrupt xz", img, true, sdimage.ErrCorruptXZ, "xz:"},
		{"corrupt directory", spoil(func(b []byte) []byte {
			d := b[root+etcBlock*4096:]
			binary.LittleEndian.PutUint16(d[4:], 3) // first entry's rec_len
			return b
		}), false, sdimage.ErrCorrupt, "entry length 3"},
		{"corrupt inode", spoil(func(b []byte) []byte { b[passwdInode+2] ^= 1; return b }), false, sdimage.ErrCorrupt, "inode 16: checksum"},
		{"corrupt extent tree", func() []byte {
			b := bytes.Clone(plain)
			clear(b[plainPasswdInode+0x28 : plainPasswdInode+0x30])
			return b
		}(), false, sdimage.ErrCorrupt, "bad extent header"},
		{"inode beyond the filesystem", spoil(func(b []byte) []byte {
			d := b[root+etcBlock*4096:]
			binary.LittleEndian.PutUint32(d[24:], 0x7FFFFFFF) // third entry's inode
			return b
		}), false, sdimage.ErrCorrupt, "outside"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			data := tc.data
			name := "in.img"
			if tc.xz {
				data = xzFile(t, data)
				name = "in.img.xz"
				if tc.name == "truncated xz" {
					data = data[:len(data)/2]
				} else {
					for i := len(data) / 3; i < len(data)/3+64; i++ {
						data[i] ^= 0x5A
					}
				}
			}
			p := filepath.Join(t.TempDir(), name)
			if err := os.WriteFile(p, data, 0o644); err != nil {
				t.Fatal(err)
			}
			var out bytes.Buffer
			err := sdimage.WriteTar(context.Background(), p, &out)
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
			msg := err.Error()
			t.Logf("%s", msg)
			if strings.Contains(msg, "\n") || !strings.HasPrefix(msg, p+": ") || !strings.Contains(msg, tc.text) {
				t.Errorf("message %q: want one line starting with %q and containing %q", msg, p+": ", tc.text)
			}
		})
	}
}
