package nodeimage

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/klauspost/compress/gzip"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// ImageOptions describe the OCI image WriteLayout makes of a root tree.
type ImageOptions struct {
	// Platform of the image; ocicache checks the config's architecture.
	OS, Arch string
	// Created is the image config's creation time: SOURCE_DATE_EPOCH for
	// reproducible builds.
	Created time.Time
	// Labels go into the image config (e.g. what the image was made from).
	Labels map[string]string
	// Logf reports what Sanitize changed (may be nil).
	Logf func(format string, args ...any)
}

// WriteLayout makes dir an OCI image layout holding one image whose single
// layer is the root tree rootTar, made NFS-safe by Sanitize. dir must not
// exist or be empty. It returns the manifest digest.
//
// The layer is gzip-compressed by one deterministic writer, so the same
// tar stream and options always give the same digest.
func WriteLayout(dir string, rootTar io.Reader, opts ImageOptions) (v1.Hash, error) {
	if opts.OS == "" {
		opts.OS = "linux"
	}
	if opts.Arch == "" {
		opts.Arch = "arm64"
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return v1.Hash{}, err
	}
	if ents, _ := os.ReadDir(dir); len(ents) > 0 {
		return v1.Hash{}, fmt.Errorf("%s is not empty; remove it or choose another output directory", dir)
	}
	tmp, err := os.CreateTemp(dir, ".layer-*.tar.gz")
	if err != nil {
		return v1.Hash{}, err
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	zw, err := gzip.NewWriterLevel(tmp, gzip.DefaultCompression)
	if err != nil {
		return v1.Hash{}, err
	}
	if err := Sanitize(rootTar, zw, opts.Logf); err != nil {
		return v1.Hash{}, err
	}
	if err := zw.Close(); err != nil {
		return v1.Hash{}, fmt.Errorf("compressing the layer: %v", err)
	}
	if err := tmp.Sync(); err != nil {
		return v1.Hash{}, fmt.Errorf("writing the layer: %v", err)
	}
	layer, err := tarball.LayerFromFile(tmp.Name())
	if err != nil {
		return v1.Hash{}, fmt.Errorf("reading back the layer: %v", err)
	}
	img, err := mutate.Append(empty.Image, mutate.Addendum{
		Layer:   layer,
		History: v1.History{Created: v1.Time{Time: opts.Created.UTC()}, CreatedBy: "ociboot nodeimage"},
	})
	if err != nil {
		return v1.Hash{}, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return v1.Hash{}, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = opts.OS, opts.Arch
	cf.Created = v1.Time{Time: opts.Created.UTC()}
	cf.Config.Labels = opts.Labels
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		return v1.Hash{}, err
	}
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		return v1.Hash{}, err
	}
	if err := p.AppendImage(img, layout.WithPlatform(v1.Platform{OS: opts.OS, Architecture: opts.Arch})); err != nil {
		return v1.Hash{}, fmt.Errorf("writing the OCI layout %s: %v", dir, err)
	}
	tmp.Close()
	os.Remove(tmp.Name())
	syncTree(dir)
	return img.Digest()
}

// syncTree fsyncs a freshly written layout, so a crash right after the
// command returns does not leave a layout whose index names missing blobs.
func syncTree(dir string) {
	filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return nil
		}
		if f, err := os.Open(p); err == nil {
			f.Sync()
			f.Close()
		}
		return nil
	})
}
