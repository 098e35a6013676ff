// Package store owns the on-disk layout under /perm/ociboot:
//
//	oci/                    OCI image layout, content-addressed (ocicache)
//	images/<digest>/        unpacked root trees, immutable once renamed (ocicache)
//	nodes/<serial>/         node record (dhcpd) and writable root (nfsd)
//	dhcp/leases.json        leases (dhcpd)
//
// Each area has one writer. Every write is crash-safe: a temp file in the same
// directory, fsync, rename, fsync of the directory. A reader therefore sees the
// old or the new content, never a torn file.
package store

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// DefaultRoot is the store on a gokrazy appliance's persistent partition.
const DefaultRoot = "/perm/ociboot"

// Areas of the store, relative to its root.
const (
	OCIDir    = "oci"
	ImagesDir = "images"
	NodesDir  = "nodes"
	DHCPDir   = "dhcp"
	// CacheDir is ocicache's own state (which config slot serves which
	// reference, manifests it refused).
	CacheDir = "ocicache"
)

// Options change how Open checks the store.
type Options struct {
	// AllowTmpfs accepts a store on tmpfs (tests, `make run`). On the
	// appliance a tmpfs store would lose every lease and image at reboot.
	AllowTmpfs bool
}

// Store is an opened, writable store.
type Store struct {
	Root string
}

// Open creates the store's areas under root and proves root is writable by
// writing, syncing and removing a probe file.
func Open(root string, opts Options) (*Store, error) {
	if root == "" {
		return nil, errors.New("store: empty path; pass -store")
	}
	abs, err := filepath.Abs(root)
	if err != nil {
		return nil, fmt.Errorf("store: %v", err)
	}
	for _, area := range []string{"", OCIDir, ImagesDir, NodesDir, DHCPDir, CacheDir} {
		if err := os.MkdirAll(filepath.Join(abs, area), 0o755); err != nil {
			return nil, explain(abs, err)
		}
	}
	if err := probe(abs); err != nil {
		return nil, explain(abs, err)
	}
	if !opts.AllowTmpfs {
		var st unix.Statfs_t
		if err := unix.Statfs(abs, &st); err == nil && st.Type == unix.TMPFS_MAGIC {
			return nil, fmt.Errorf("store: %s is on tmpfs, so everything would be lost at reboot; mount the persistent partition at /perm (gokrazy does this when it exists) or pass -allow_tmpfs for a throw-away run", abs)
		}
	}
	return &Store{Root: abs}, nil
}

func probe(dir string) error {
	f, err := os.CreateTemp(dir, ".probe-*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if _, err := f.Write([]byte("ociboot")); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func explain(root string, err error) error {
	switch {
	case errors.Is(err, unix.EROFS):
		return fmt.Errorf("store: %s is read-only (%v); gokrazy mounts /perm only when the SD card has a fourth partition: create it with `gok overwrite --full` or `mkfs.ext4` on the perm partition", root, err)
	case errors.Is(err, unix.ENOSPC):
		return fmt.Errorf("store: %s: disk full (%v); free space or move -store", root, err)
	case errors.Is(err, os.ErrPermission):
		return fmt.Errorf("store: %s is not writable (%v); run as root or pass a writable -store", root, err)
	}
	return fmt.Errorf("store: %s: %v", root, err)
}

// Path joins elements below the store root.
func (s *Store) Path(elem ...string) string {
	return filepath.Join(append([]string{s.Root}, elem...)...)
}

// NodeDir is nodes/<serial>; serial must already be normalized.
func (s *Store) NodeDir(serial string) (string, error) {
	if !ValidName(serial) {
		return "", fmt.Errorf("store: %q is not a valid node name", serial)
	}
	return s.Path(NodesDir, serial), nil
}

// ValidName reports whether s is safe as one path element: no separators, no
// dot-dot, nothing hidden, nothing empty.
func ValidName(s string) bool {
	return s != "" && s != "." && s != ".." && !strings.HasPrefix(s, ".") &&
		!strings.ContainsAny(s, "/\\\x00") && len(s) <= 255
}

// WriteFile replaces path atomically and durably: temp file beside it, fsync,
// rename, fsync of the directory. After a crash path holds either the old or
// the new data.
func WriteFile(path string, data []byte, perm os.FileMode) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("store: write %s: %w", path, err)
	}
	tmp := f.Name()
	fail := func(err error) error {
		f.Close()
		os.Remove(tmp)
		return fmt.Errorf("store: write %s: %w", path, err)
	}
	if _, err := f.Write(data); err != nil {
		return fail(err)
	}
	if err := f.Chmod(perm); err != nil {
		return fail(err)
	}
	if err := f.Sync(); err != nil {
		return fail(err)
	}
	if err := f.Close(); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("store: write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("store: write %s: %w", path, err)
	}
	return SyncDir(dir)
}

// SyncDir fsyncs a directory so that a rename into it survives power loss.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("store: sync %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("store: sync %s: %w", dir, err)
	}
	return nil
}

// WriteJSON stores v as indented JSON with WriteFile.
func WriteJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("store: encode %s: %w", path, err)
	}
	return WriteFile(path, append(b, '\n'), 0o644)
}

// ReadJSON decodes path into v. A missing file returns an error that
// satisfies errors.Is(err, fs.ErrNotExist).
func ReadJSON(path string, v any) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("store: %s is corrupt (%v); move it aside to start fresh", path, err)
	}
	return nil
}

// CleanTemps removes temp files and dirs that a crash left in dir (names
// starting with ".", containing ".tmp-"). Call it at start-up before
// trusting a directory's contents.
func CleanTemps(dir string) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return err
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".") && strings.Contains(e.Name(), ".tmp-") {
			if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
				return err
			}
		}
	}
	return nil
}

// TempDir makes a temp directory beside final, named so that CleanTemps
// removes it after a crash; rename it onto final when complete.
func TempDir(final string) (string, error) {
	return os.MkdirTemp(filepath.Dir(final), "."+filepath.Base(final)+".tmp-*")
}
