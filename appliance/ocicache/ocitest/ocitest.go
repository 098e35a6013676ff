// Package ocitest builds small OCI images for ocicache's tests and
// benchmarks: tar layers from a list of entries, images for a platform, and
// a bootable base (a boot dir with a kernel and Pi firmware).
package ocitest

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"io"
	"math/rand/v2"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Entry is one tar entry; Body is the content of regular files.
type Entry struct {
	tar.Header
	Body []byte
}

// Dir, File, Symlink and Hardlink make common entries.
func Dir(n string, mode int64) Entry {
	return Entry{Header: tar.Header{Name: n, Typeflag: tar.TypeDir, Mode: mode}}
}
func File(n string, mode int64, body string) Entry {
	return Entry{Header: tar.Header{Name: n, Typeflag: tar.TypeReg, Mode: mode}, Body: []byte(body)}
}
func Symlink(n, target string) Entry {
	return Entry{Header: tar.Header{Name: n, Typeflag: tar.TypeSymlink, Linkname: target, Mode: 0o777}}
}
func Hardlink(n, target string) Entry {
	return Entry{Header: tar.Header{Name: n, Typeflag: tar.TypeLink, Linkname: target, Mode: 0o644}}
}

// Tar encodes entries as an uncompressed tar stream (PAX, so xattrs in
// PAXRecords survive).
func Tar(tb testing.TB, entries ...Entry) []byte {
	tb.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := e.Header
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(e.Body))
		}
		if h.ModTime.IsZero() {
			h.ModTime = time.Unix(1700000000, 0)
		}
		h.Format = tar.FormatPAX
		if err := tw.WriteHeader(&h); err != nil {
			tb.Fatalf("tar header %s: %v", h.Name, err)
		}
		if h.Typeflag == tar.TypeReg {
			if _, err := tw.Write(e.Body); err != nil {
				tb.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		tb.Fatal(err)
	}
	return buf.Bytes()
}

// Layer is a gzip-compressed layer of entries.
func Layer(tb testing.TB, entries ...Entry) v1.Layer {
	tb.Helper()
	return LayerFromTar(tb, Tar(tb, entries...))
}

// LayerFromTar gzips a tar stream once and wraps it as a layer (the
// library would otherwise recompress it for every digest it computes).
func LayerFromTar(tb testing.TB, tarData []byte) v1.Layer {
	tb.Helper()
	var gz bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&gz, gzip.BestSpeed)
	zw.Write(tarData)
	if err := zw.Close(); err != nil {
		tb.Fatal(err)
	}
	data := gz.Bytes()
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(data)), nil
	}, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		tb.Fatal(err)
	}
	return l
}

// Image stacks layers into an OCI image for platform ("linux/arm64").
func Image(tb testing.TB, platform string, layers ...v1.Layer) v1.Image {
	tb.Helper()
	p, err := v1.ParsePlatform(platform)
	if err != nil {
		tb.Fatal(err)
	}
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	img, err = mutate.AppendLayers(img, layers...)
	if err != nil {
		tb.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		tb.Fatal(err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture, cf.Variant = p.OS, p.Architecture, p.Variant
	cf.Created = v1.Time{Time: time.Unix(1700000000, 0).UTC()}
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		tb.Fatal(err)
	}
	return img
}

// Index bundles images, each tagged with its platform.
func Index(tb testing.TB, imgs map[string]v1.Image) v1.ImageIndex {
	tb.Helper()
	var idx v1.ImageIndex = mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	for plat, img := range imgs {
		p, err := v1.ParsePlatform(plat)
		if err != nil {
			tb.Fatal(err)
		}
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: p}})
	}
	return idx
}

// PiBoot is a layer with what a Pi needs to netboot: boot/firmware with
// start4.elf and kernel8.img.
func PiBoot(tb testing.TB) v1.Layer {
	return Layer(tb,
		Dir("boot/", 0o755), Dir("boot/firmware/", 0o755),
		File("boot/firmware/start4.elf", 0o644, "firmware"),
		File("boot/firmware/kernel8.img", 0o644, "kernel"),
		File("boot/firmware/config.txt", 0o644, "arm_64bit=1\n"),
	)
}

// Random returns n pseudo-random bytes from seed: incompressible content
// for size-realistic layers.
func Random(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for i := 0; i+8 <= n; i += 8 {
		v := r.Uint64()
		for j := 0; j < 8; j++ {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	return b
}
