package nodes

import (
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/ociboot/ociboot/appliance/config"
	"github.com/ociboot/ociboot/appliance/images"
	"github.com/ociboot/ociboot/appliance/store"
)

// RootDir is nodes/<key>/root, the node's writable root (nfsd writes it).
const RootDir = "root"

// Boot is the one answer to "what does node K boot", for tftpd (where its
// boot files come from), nfsd (whether its next mount makes a fresh root)
// and the status page.
//
// Before the node's root exists, everything comes from its configured
// image. Once it exists, the boot files (firmware, device trees, overlays,
// kernel, initramfs, and the base of config.txt and cmdline.txt) come from
// the root's own boot directory, so the kernel always matches the root's
// /lib/modules and a kernel upgraded inside the node is what it boots next.
// A node leaves its root only by reset, or by reimage when the configured
// image changed and Netboot.Reimage is "on-boot".
type Boot struct {
	Key string
	// Image is the configured image; ImageErr (wrapping ErrNoImage) says
	// why there is none in the cache, which only matters when the boot
	// files must come from it.
	Image    Image
	ImageErr error
	// RootDigest is the image the node's root was made from, "" before
	// nfsd made one.
	RootDigest string
	// FromRoot: the boot files come from the node's root.
	FromRoot bool
	// Base is the trusted directory (an image tree or nodes/<key>/root)
	// and BootDir the boot directory inside it, slash-separated. Readers
	// open BootDir beneath Base (os.Root): the node's root is written by
	// the node, so nothing in it may lead outside.
	Base    string
	BootDir string
	// Kernel is the kernel ocicache found in the image, "" when the boot
	// files come from the root (the reader looks there).
	Kernel string
	// Changed: the root was made from another image than the configured
	// one.
	Changed bool
	// Reimage: Changed and the policy is "on-boot": the node's next mount
	// gets a fresh root from Image (the previous one kept until the new
	// one has mounted), so its boot files come from Image already.
	Reimage bool
}

// BootOf decides what node key (already Canonical) boots.
func BootOf(cfg *config.Config, st *store.Store, key string) (Boot, error) {
	b := Boot{Key: key}
	img, err := ImageOf(cfg, st, key)
	if err != nil && !errors.Is(err, ErrNoImage) {
		return Boot{}, err
	}
	b.Image, b.ImageErr = img, err
	dir, err := st.NodeDir(key)
	if err != nil {
		return Boot{}, err
	}
	if d := ViewImage(st, key); d != "" && isRealDir(filepath.Join(dir, RootDir)) {
		b.RootDigest = d
		b.Changed = b.ImageErr == nil && img.Entry.Digest != d
		b.Reimage = b.Changed && cfg.Reimage == config.ReimageOnBoot
	}
	if b.RootDigest != "" && !b.Reimage {
		b.FromRoot = true
		b.Base = filepath.Join(dir, RootDir)
		b.BootDir = rootBootDir(cfg, st, b.Base, b.RootDigest)
		if b.BootDir == "" {
			return Boot{}, fmt.Errorf("%w: node %s: its root has no boot/firmware or boot directory; reset the node to make it again from its image", ErrNoImage, key)
		}
		return b, nil
	}
	if b.ImageErr != nil {
		return Boot{}, b.ImageErr
	}
	root, err := images.Root(st, img.Entry.Digest)
	if err != nil {
		return Boot{}, err
	}
	b.Base, b.BootDir, b.Kernel = root, img.Entry.BootDir, img.Entry.Kernel
	if cfg.BootDir != "" {
		b.BootDir = cfg.BootDir
	}
	if b.BootDir == "" {
		return Boot{}, fmt.Errorf("%w: image %s (%s) has no boot directory", ErrNoImage, img.Ref, img.Entry.Digest)
	}
	return b, nil
}

// rootBootDir is the boot directory inside a node's root: Netboot.BootDir,
// else the one ocicache found in the image the root was made from, else
// the first of boot/firmware and boot that is a directory there.
func rootBootDir(cfg *config.Config, st *store.Store, root, digest string) string {
	if cfg.BootDir != "" {
		return cfg.BootDir
	}
	if ix, err := images.LoadIndex(st); err == nil {
		for _, e := range ix.Entries {
			if e.Digest == digest && e.BootDir != "" {
				return e.BootDir
			}
		}
	}
	for _, c := range []string{"boot/firmware", "boot"} {
		if isRealDir(filepath.Join(root, filepath.FromSlash(c))) {
			return c
		}
	}
	return ""
}

// isRealDir: p is a directory and not a symlink to one.
func isRealDir(p string) bool {
	fi, err := os.Lstat(p)
	return err == nil && fi.IsDir()
}

// Source says in words where the boot files come from, for logs and the
// status page.
func (b Boot) Source() string {
	switch {
	case b.FromRoot:
		return "its own root (nodes/" + b.Key + "/" + path.Join(RootDir, strings.TrimPrefix(b.BootDir, "/")) + ")"
	case b.Reimage:
		return "image " + b.Image.Ref + " (reimage at next mount)"
	default:
		return "image " + b.Image.Ref
	}
}
