// Package images is the contract between ocicache, which pulls and unpacks
// images, and the services that read them (tftpd, nfsd, the status page).
//
// ocicache is the only writer of images/: unpacked trees live in
// images/<digest-dir>/ (the manifest digest with ':' replaced by '-', so
// "sha256-<hex>") and are immutable once renamed into place. Which tree a
// reference currently means is recorded in images/index.json, rewritten
// atomically after each successful pull.
package images

import (
	"errors"
	"fmt"
	"io/fs"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/ociboot/ociboot/appliance/store"
)

// Entry maps one (reference, platform) from the config to an unpacked tree.
type Entry struct {
	Ref      string    // as written in config.json
	Platform string    // e.g. "linux/arm64"
	Digest   string    // manifest digest, "sha256:<hex>"
	BootDir  string    // inside the tree, e.g. "boot/firmware"; "" if none was found
	Kernel   string    `json:",omitempty"` // kernel file found in BootDir, e.g. "kernel8.img"
	Pulled   time.Time // when the tree was completed
	// Resolved is what the tag pointed to when the tree was pulled (an
	// index or the manifest itself); revalidation compares it with a
	// HEAD of the tag.
	Resolved string `json:",omitempty"`
	// StandIn, if set, is the reference whose tree this entry serves
	// because Ref itself has never been pulled successfully (a typo in
	// the config must not take nodes off their last working image).
	StandIn string `json:",omitempty"`
	// LastAttempt is the last pull of Ref; LastError its error, empty
	// when it succeeded. A failed attempt leaves Digest serving.
	LastAttempt time.Time `json:",omitzero"`
	LastError   string    `json:",omitempty"`
}

// Index is images/index.json.
type Index struct {
	Entries []Entry
}

const indexFile = "index.json"

// DirName turns a digest into the tree's directory name below images/.
func DirName(digest string) (string, error) {
	algo, hex, ok := strings.Cut(digest, ":")
	if !ok || algo != "sha256" || len(hex) != 64 || strings.Trim(hex, "0123456789abcdef") != "" {
		return "", fmt.Errorf("images: %q is not a sha256 digest", digest)
	}
	return algo + "-" + hex, nil
}

// Root returns the absolute path of the unpacked tree of digest.
func Root(st *store.Store, digest string) (string, error) {
	d, err := DirName(digest)
	if err != nil {
		return "", err
	}
	return st.Path(store.ImagesDir, d), nil
}

// LoadIndex reads images/index.json; a missing file is an empty index.
func LoadIndex(st *store.Store) (Index, error) {
	var ix Index
	err := store.ReadJSON(st.Path(store.ImagesDir, indexFile), &ix)
	if errors.Is(err, fs.ErrNotExist) {
		return Index{}, nil
	}
	return ix, err
}

// SaveIndex replaces images/index.json crash-safely. Only ocicache calls it.
func SaveIndex(st *store.Store, ix Index) error {
	return store.WriteJSON(st.Path(store.ImagesDir, indexFile), ix)
}

// Lookup finds the entry for ref on platform.
func (ix Index) Lookup(ref, platform string) (Entry, bool) {
	for _, e := range ix.Entries {
		if e.Ref == ref && e.Platform == platform {
			return e, true
		}
	}
	return Entry{}, false
}

// Put adds or replaces the entry for (e.Ref, e.Platform).
func (ix *Index) Put(e Entry) {
	for i, old := range ix.Entries {
		if old.Ref == e.Ref && old.Platform == e.Platform {
			ix.Entries[i] = e
			return
		}
	}
	ix.Entries = append(ix.Entries, e)
}

// KernelPatterns in order of preference: the Pi 4/CM4 64-bit kernel first,
// then other Pi kernels, then generic Linux kernels (QEMU test machines).
var KernelPatterns = []string{"kernel8.img", "kernel_2712.img", "kernel*.img", "vmlinuz", "vmlinuz-*", "Image", "zImage", "bzImage"}

// PickKernel chooses the kernel among the file names of a boot
// directory: the first KernelPatterns match, the newest version first
// when several vmlinuz-<version> exist. "" if none matches.
func PickKernel(names []string) string {
	names = append([]string(nil), names...)
	sort.Slice(names, func(i, j int) bool { return versionLess(names[j], names[i]) })
	for _, pat := range KernelPatterns {
		for _, n := range names {
			if ok, _ := path.Match(pat, n); ok {
				return n
			}
		}
	}
	return ""
}

// versionLess orders names with their runs of digits compared as numbers,
// so that vmlinuz-6.1.0-28-arm64 comes after vmlinuz-6.1.0-9-arm64.
func versionLess(a, b string) bool {
	for a != "" && b != "" {
		da, db := digits(a), digits(b)
		if da > 0 && db > 0 {
			na, nb := strings.TrimLeft(a[:da], "0"), strings.TrimLeft(b[:db], "0")
			if len(na) != len(nb) {
				return len(na) < len(nb)
			}
			if na != nb {
				return na < nb
			}
			a, b = a[da:], b[db:]
			continue
		}
		if a[0] != b[0] {
			return a[0] < b[0]
		}
		a, b = a[1:], b[1:]
	}
	return len(a) < len(b)
}

func digits(s string) int {
	n := 0
	for n < len(s) && s[n] >= '0' && s[n] <= '9' {
		n++
	}
	return n
}

// BootPath returns the absolute boot directory of an entry's tree.
func BootPath(st *store.Store, e Entry) (string, error) {
	root, err := Root(st, e.Digest)
	if err != nil {
		return "", err
	}
	if e.BootDir == "" {
		return "", fmt.Errorf("images: %s (%s) has no boot directory", e.Ref, e.Digest)
	}
	return filepath.Join(root, filepath.FromSlash(e.BootDir)), nil
}
