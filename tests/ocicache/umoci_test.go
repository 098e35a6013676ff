package ocicache_test

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ociboot/ociboot/appliance/config"
	"github.com/ociboot/ociboot/appliance/images"
	"github.com/ociboot/ociboot/appliance/ocicache"
	"github.com/ociboot/ociboot/appliance/ocicache/ocitest"
	"github.com/ociboot/ociboot/appliance/store"
	"github.com/ociboot/ociboot/appliance/testenv"
	"github.com/ociboot/ociboot/tests/lab"
)

// node is what we compare of one file system entry.
type node struct {
	Mode     fs.FileMode
	UID, GID uint32
	Size     int64
	Sum      string
	Link     string
	Rdev     uint64
	Mtime    int64 // seconds; directories excluded (see below)
	Xattr    string
}

func (n node) String() string { return fmt.Sprintf("%+v", struct{ node }{n}) }

// snapshot walks root without following symlinks. Hard links are recorded
// as the set of paths sharing an inode.
func snapshot(t *testing.T, root string) (map[string]node, [][]string) {
	t.Helper()
	out := map[string]node{}
	inodes := map[uint64][]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		if rel == "." {
			return nil
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		fi, _ := d.Info()
		n := node{Mode: fi.Mode(), UID: st.Uid, GID: st.Gid, Rdev: st.Rdev}
		switch {
		case fi.Mode().IsRegular():
			b, _ := os.ReadFile(p)
			s := sha256.Sum256(b)
			n.Sum, n.Size = hex.EncodeToString(s[:]), fi.Size()
			n.Mtime = st.Mtim.Sec
			inodes[st.Ino] = append(inodes[st.Ino], rel)
		case fi.Mode()&fs.ModeSymlink != 0:
			n.Link, _ = os.Readlink(p)
		case fi.IsDir():
			// umoci and we both set directory mtimes; but umoci's
			// whiteout handling touches parents afterwards, so the
			// comparison would measure umoci's ordering, not ours.
		default:
			n.Mtime = st.Mtim.Sec
		}
		buf := make([]byte, 256)
		if sz, err := unix.Lgetxattr(p, "user.ociboot", buf); err == nil {
			n.Xattr = string(buf[:sz])
		}
		out[rel] = n
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	var links [][]string
	for _, ps := range inodes {
		if len(ps) > 1 {
			sort.Strings(ps)
			links = append(links, ps)
		}
	}
	sort.Slice(links, func(i, j int) bool { return links[i][0] < links[j][0] })
	return out, links
}

// TestUnpackMatchesUmoci unpacks an image exercising whiteouts, opaque
// dirs, hard links, devices, owners, setuid and xattrs with ocicache and
// with umoci (from the same registry, via skopeo) and compares the trees.
func TestUnpackMatchesUmoci(t *testing.T) {
	testenv.NeedRoot(t, "owners and device nodes")
	testenv.NeedTool(t, "umoci", "umoci")
	reg := lab.DockerRegistry(t, "", "")
	mt := time.Unix(1650000000, 0)
	e := func(h tar.Header, body string) ocitest.Entry {
		if h.ModTime.IsZero() {
			h.ModTime = mt
		}
		if h.Typeflag == 0 {
			h.Typeflag = tar.TypeReg
		}
		return ocitest.Entry{Header: h, Body: []byte(body)}
	}
	base := ocitest.Layer(t,
		e(tar.Header{Name: "boot/", Typeflag: tar.TypeDir, Mode: 0o755}, ""),
		e(tar.Header{Name: "boot/vmlinuz", Mode: 0o644}, "kernel"),
		e(tar.Header{Name: "etc/", Typeflag: tar.TypeDir, Mode: 0o755}, ""),
		e(tar.Header{Name: "etc/gone", Mode: 0o644}, "gone"),
		e(tar.Header{Name: "etc/xattr", Mode: 0o644, PAXRecords: map[string]string{"SCHILY.xattr.user.ociboot": "v"}}, "x"),
		e(tar.Header{Name: "tmp/", Typeflag: tar.TypeDir, Mode: 0o1777}, ""),
		e(tar.Header{Name: "usr/", Typeflag: tar.TypeDir, Mode: 0o755}, ""),
		e(tar.Header{Name: "usr/bin/", Typeflag: tar.TypeDir, Mode: 0o755}, ""),
		e(tar.Header{Name: "usr/lib/", Typeflag: tar.TypeDir, Mode: 0o755}, ""),
		e(tar.Header{Name: "usr/bin/su", Mode: 0o4755}, "su"),
		e(tar.Header{Name: "usr/bin/wall", Mode: 0o2755, Gid: 5}, "wall"),
		e(tar.Header{Name: "usr/bin/a", Mode: 0o755}, "a-v1"),
		e(tar.Header{Name: "usr/bin/b", Typeflag: tar.TypeLink, Linkname: "usr/bin/a"}, ""),
		e(tar.Header{Name: "lib", Typeflag: tar.TypeSymlink, Linkname: "usr/lib"}, ""),
		e(tar.Header{Name: "home/", Typeflag: tar.TypeDir, Mode: 0o755}, ""),
		e(tar.Header{Name: "home/u/", Typeflag: tar.TypeDir, Mode: 0o700, Uid: 1000, Gid: 1000}, ""),
		e(tar.Header{Name: "home/u/f", Mode: 0o640, Uid: 1000, Gid: 1000}, "mine"),
		e(tar.Header{Name: "dev/", Typeflag: tar.TypeDir, Mode: 0o755}, ""),
		e(tar.Header{Name: "dev/null", Typeflag: tar.TypeChar, Mode: 0o666, Devmajor: 1, Devminor: 3}, ""),
		e(tar.Header{Name: "run/", Typeflag: tar.TypeDir, Mode: 0o755}, ""),
		e(tar.Header{Name: "run/fifo", Typeflag: tar.TypeFifo, Mode: 0o600}, ""),
		e(tar.Header{Name: "var/", Typeflag: tar.TypeDir, Mode: 0o755}, ""),
		e(tar.Header{Name: "var/cache/", Typeflag: tar.TypeDir, Mode: 0o755}, ""),
		e(tar.Header{Name: "var/cache/old", Mode: 0o644}, "old"),
		e(tar.Header{Name: "var/cache/sub/", Typeflag: tar.TypeDir, Mode: 0o755}, ""),
		e(tar.Header{Name: "var/cache/sub/x", Mode: 0o644}, "x"),
	)
	upper := ocitest.Layer(t,
		e(tar.Header{Name: "etc/.wh.gone", Mode: 0o644}, ""),
		e(tar.Header{Name: "var/cache/", Typeflag: tar.TypeDir, Mode: 0o750}, ""),
		e(tar.Header{Name: "var/cache/.wh..wh..opq", Mode: 0o644}, ""),
		e(tar.Header{Name: "var/cache/new", Mode: 0o644}, "new"),
		e(tar.Header{Name: "usr/bin/a", Mode: 0o755}, "a-v2"),
		e(tar.Header{Name: "usr/bin/c", Typeflag: tar.TypeLink, Linkname: "usr/bin/su"}, ""),
		e(tar.Header{Name: "usr/lib/libx.so", Mode: 0o644}, "lib"),
	)
	img := ocitest.Image(t, "linux/amd64", base, upper)
	ref := ocitest.Push(t, reg, "cmp/img:v1", img)

	st, err := store.Open(t.TempDir(), store.Options{AllowTmpfs: true})
	if err != nil {
		t.Fatal(err)
	}
	c, err := ocicache.New(st, ocicache.Options{Log: slog.New(slog.NewTextHandler(io.Discard, nil)), MinFree: 1})
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Parse([]byte(fmt.Sprintf(`{"Netboot":{"InsecureRegistries":[%q]}}`, reg)))
	if err != nil {
		t.Fatal(err)
	}
	entry, _, err := c.Pull(context.Background(), cfg, ref, "linux/amd64")
	if err != nil {
		t.Fatal(err)
	}
	ours, _ := images.Root(st, entry.Digest)

	layout := filepath.Join(t.TempDir(), "oci")
	if out, err := skopeo(t, "copy", "--src-tls-verify=false", "docker://"+ref, "oci:"+layout+":v1"); err != nil {
		t.Fatalf("skopeo: %v\n%s", err, out)
	}
	bundle := filepath.Join(t.TempDir(), "bundle")
	if out, err := exec.Command("umoci", "unpack", "--image", layout+":v1", bundle).CombinedOutput(); err != nil {
		t.Fatalf("umoci unpack: %v\n%s", err, out)
	}
	got, gotLinks := snapshot(t, ours)
	want, wantLinks := snapshot(t, filepath.Join(bundle, "rootfs"))
	t.Logf("comparing %d entries (ours %d), hard link groups %v", len(want), len(got), wantLinks)
	for p, w := range want {
		if g, ok := got[p]; !ok {
			t.Errorf("%s: missing in ours; umoci has %v", p, w)
		} else if g != w {
			t.Errorf("%s:\n ours  %v\n umoci %v", p, g, w)
		}
	}
	for p := range got {
		if _, ok := want[p]; !ok {
			t.Errorf("%s: only in ours", p)
		}
	}
	if fmt.Sprint(gotLinks) != fmt.Sprint(wantLinks) {
		t.Errorf("hard link groups: ours %v, umoci %v", gotLinks, wantLinks)
	}
	// The checks above compare against umoci; these pin the semantics.
	for _, p := range []string{"etc/gone", "var/cache/old", "var/cache/sub"} {
		if _, ok := got[p]; ok {
			t.Errorf("%s should be whited out", p)
		}
	}
	if g := got["usr/bin/su"]; g.Mode != fs.ModeSetuid|0o755 {
		t.Errorf("usr/bin/su mode %v", g.Mode)
	}
	if strings.Join(gotLinks[len(gotLinks)-1], ",") == "" {
		t.Errorf("no hard links found")
	}
}
