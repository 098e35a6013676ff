package ocicache

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"golang.org/x/sys/unix"

	"github.com/ociboot/ociboot/appliance/store"
)

// Annotations on oci/index.json entries.
const (
	// AnnotationRef is the full reference a descriptor was pulled under,
	// e.g. "registry.example:5000/rpi/node:bookworm".
	AnnotationRef = "org.opencontainers.image.ref.name"
	// AnnotationPullThrough marks entries fetched for a /v2/ client rather
	// than for the config.
	AnnotationPullThrough = "io.ociboot.pull-through"
)

// Blobs is an OCI image layout (oci-layout, index.json, blobs/sha256/…).
//
// A blob file exists under its digest only after its content was hashed,
// compared with the digest, fsynced and renamed into place, so a present blob
// is a correct blob: after a crash, only ".*.tmp-*" files can be partial and
// OpenBlobs removes them.
type Blobs struct {
	dir string
	mu  sync.Mutex // serialises index.json read-modify-write

	// minFree bytes must stay free on the store while a blob is
	// written; free reports the free bytes of a directory's file system.
	// Both are set by the Cache (Options.MinFree, Options.FreeSpace).
	minFree int64
	free    func(dir string) (int64, error)
}

// FreeSpace reports the bytes available to unprivileged writers on the
// file system of dir.
func FreeSpace(dir string) (int64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return 0, fmt.Errorf("statfs %s: %v", dir, err)
	}
	return int64(st.Bavail) * int64(st.Bsize), nil
}

// DiskError says a blob did not fit on the store. It is never retried:
// fetching again cannot make room.
type DiskError struct {
	Blob    v1.Hash
	Size    int64 // declared size; -1 if the registry declared none
	Written int64 // bytes written when the write was cut
	Free    int64 // free bytes on the store when it was checked
	MinFree int64
	Err     error // the write error (ENOSPC, ...), if any
}

func (e *DiskError) Error() string {
	mib := func(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }
	what := "blob " + e.Blob.String()
	if e.Size >= 0 {
		what += " (" + mib(e.Size) + ")"
	}
	var why string
	switch {
	case e.Err != nil:
		why = fmt.Sprintf("writing it failed after %s: %v", mib(e.Written), e.Err)
	case e.Written > 0:
		why = fmt.Sprintf("cut after %s: the store is down to %s free and -min_free_mib keeps %s free", mib(e.Written), mib(e.Free), mib(e.MinFree))
	default:
		why = fmt.Sprintf("does not fit: the store has %s free and -min_free_mib keeps %s free", mib(e.Free), mib(e.MinFree))
	}
	return fmt.Sprintf("ocicache: %s %s; free space on the store (/perm), drop unused images from the config, or lower -min_free_mib", what, why)
}

func (e *DiskError) Unwrap() error { return e.Err }

// diskErr reports whether err is the store's fault rather than the
// network's: such errors are never retried.
func diskErr(err error) bool {
	var de *DiskError
	return errors.As(err, &de) || errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.EDQUOT) ||
		errors.Is(err, unix.EROFS) || errors.Is(err, unix.EIO)
}

// Room checks that size more bytes fit above the floor.
func (b *Blobs) Room(d v1.Hash, size int64) error {
	if b.free == nil || size < 0 {
		return nil
	}
	free, err := b.free(b.dir)
	if err != nil {
		return err
	}
	if free-b.minFree < size {
		return &DiskError{Blob: d, Size: size, Free: free, MinFree: b.minFree}
	}
	return nil
}

// floorWriter fails a write that would take the store below the floor.
type floorWriter struct {
	b       *Blobs
	d       v1.Hash
	size    int64
	written int64
}

func (w *floorWriter) Write(p []byte) (int, error) {
	if w.b.free != nil {
		free, err := w.b.free(w.b.dir)
		if err == nil && free-int64(len(p)) < w.b.minFree {
			return 0, &DiskError{Blob: w.d, Size: w.size, Written: w.written, Free: free, MinFree: w.b.minFree}
		}
	}
	w.written += int64(len(p))
	return len(p), nil
}

// OpenBlobs opens (creating) the layout in dir and removes temp files a
// crash left behind.
func OpenBlobs(dir string) (*Blobs, error) {
	bdir := filepath.Join(dir, "blobs", "sha256")
	if err := os.MkdirAll(bdir, 0o755); err != nil {
		return nil, fmt.Errorf("ocicache: %v", err)
	}
	if err := store.CleanTemps(bdir); err != nil {
		return nil, fmt.Errorf("ocicache: cleaning partial blobs: %v", err)
	}
	if err := store.CleanTemps(dir); err != nil {
		return nil, fmt.Errorf("ocicache: cleaning %s: %v", dir, err)
	}
	lay := filepath.Join(dir, "oci-layout")
	if _, err := os.Stat(lay); errors.Is(err, fs.ErrNotExist) {
		if err := store.WriteFile(lay, []byte(`{"imageLayoutVersion":"1.0.0"}`+"\n"), 0o644); err != nil {
			return nil, err
		}
	}
	return &Blobs{dir: dir}, nil
}

// Path is where the blob of d lives (whether or not it exists).
func (b *Blobs) Path(d v1.Hash) string {
	return filepath.Join(b.dir, "blobs", d.Algorithm, d.Hex)
}

func validHash(d v1.Hash) bool {
	return d.Algorithm == "sha256" && len(d.Hex) == 64 && strings.Trim(d.Hex, "0123456789abcdef") == ""
}

// Has reports whether the blob is stored (with the given size, if >= 0).
func (b *Blobs) Has(d v1.Hash, size int64) bool {
	if !validHash(d) {
		return false
	}
	fi, err := os.Lstat(b.Path(d))
	return err == nil && fi.Mode().IsRegular() && (size < 0 || fi.Size() == size)
}

// Open opens a stored blob for reading.
func (b *Blobs) Open(d v1.Hash) (*os.File, error) {
	if !validHash(d) {
		return nil, fmt.Errorf("ocicache: %q is not a sha256 digest", d)
	}
	return os.Open(b.Path(d))
}

// ReadSmall reads a stored blob (manifests, configs) of at most 4 MiB.
func (b *Blobs) ReadSmall(d v1.Hash) ([]byte, error) {
	f, err := b.Open(d)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxManifest+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxManifest {
		return nil, fmt.Errorf("ocicache: blob %s is larger than %d bytes", d, maxManifest)
	}
	return data, nil
}

const maxManifest = 4 << 20

// DigestError says that content did not match its digest.
type DigestError struct {
	Want v1.Hash
	Got  string
	Size int64
}

func (e *DigestError) Error() string {
	return fmt.Sprintf("ocicache: blob %s: content has digest sha256:%s (%d bytes); the registry or the network corrupted it", e.Want, e.Got, e.Size)
}

// Put stores r as the blob d: the content goes to a temp file, is hashed
// on the way, and is renamed into place only if it matches d (and size,
// when >= 0). counted, if not nil, is told of each chunk written.
func (b *Blobs) Put(d v1.Hash, size int64, r io.Reader, counted func(n int)) error {
	return b.put(d, size, r, counted, nil)
}

// put is Put that tells s, if not nil, of the temp file and of each chunk
// once it is in the file, so that a reader can follow the download.
func (b *Blobs) put(d v1.Hash, size int64, r io.Reader, counted func(n int), s *stream) error {
	if !validHash(d) {
		return fmt.Errorf("ocicache: %q is not a sha256 digest", d)
	}
	final := b.Path(d)
	f, err := os.CreateTemp(filepath.Dir(final), "."+d.Hex+".tmp-*")
	if err != nil {
		return fmt.Errorf("ocicache: blob %s: %v", d, err)
	}
	tmp := f.Name()
	ok := false
	defer func() {
		if !ok {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if s != nil {
		if err := s.begin(tmp); err != nil {
			return err
		}
		counted = s.grew(counted)
	}
	h := sha256.New()
	src := r
	if size >= 0 {
		// One byte more than announced proves a size mismatch without
		// reading an endless stream.
		src = io.LimitReader(r, size+1)
	}
	if err := b.Room(d, size); err != nil {
		return err
	}
	// The floor is checked before each chunk reaches the file.
	fw := &floorWriter{b: b, d: d, size: size}
	n, err := io.CopyBuffer(io.MultiWriter(fw, f, h, countWriter(counted)), src, make([]byte, 256<<10))
	if err != nil {
		var de *DiskError
		if errors.As(err, &de) {
			return de
		}
		if diskErr(err) {
			free, _ := FreeSpace(filepath.Dir(final))
			return &DiskError{Blob: d, Size: size, Written: fw.written, Free: free, MinFree: b.minFree, Err: err}
		}
		return fmt.Errorf("ocicache: fetching blob %s: %w", d, err)
	}
	if size >= 0 && n != size {
		return fmt.Errorf("ocicache: blob %s: got %d bytes, want %d", d, n, size)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != d.Hex {
		return &DigestError{Want: d, Got: got, Size: n}
	}
	if err := f.Chmod(0o444); err != nil {
		return fmt.Errorf("ocicache: blob %s: %v", d, err)
	}
	if err := f.Sync(); err != nil {
		if diskErr(err) {
			return &DiskError{Blob: d, Size: size, Written: n, MinFree: b.minFree, Err: err}
		}
		return fmt.Errorf("ocicache: blob %s: fsync: %w", d, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("ocicache: blob %s: %v", d, err)
	}
	if err := os.Rename(tmp, final); err != nil {
		return fmt.Errorf("ocicache: blob %s: %v", d, err)
	}
	ok = true
	return store.SyncDir(filepath.Dir(final))
}

// PutBytes stores small content whose digest is computed here.
func (b *Blobs) PutBytes(data []byte) (v1.Hash, error) {
	sum := sha256.Sum256(data)
	d := v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(sum[:])}
	if b.Has(d, int64(len(data))) {
		return d, nil
	}
	return d, b.Put(d, int64(len(data)), strings.NewReader(string(data)), nil)
}

type countWriter func(n int)

func (c countWriter) Write(p []byte) (int, error) {
	if c != nil {
		c(len(p))
	}
	return len(p), nil
}

// Index reads oci/index.json (empty if missing).
func (b *Blobs) Index() (v1.IndexManifest, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.readIndex()
}

func (b *Blobs) readIndex() (v1.IndexManifest, error) {
	ix := v1.IndexManifest{SchemaVersion: 2, MediaType: types.OCIImageIndex}
	err := store.ReadJSON(filepath.Join(b.dir, "index.json"), &ix)
	if errors.Is(err, fs.ErrNotExist) {
		err = nil
	}
	return ix, err
}

// Update changes index.json under the lock and writes it atomically.
func (b *Blobs) Update(f func(ix *v1.IndexManifest)) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	ix, err := b.readIndex()
	if err != nil {
		return err
	}
	f(&ix)
	sort.SliceStable(ix.Manifests, func(i, j int) bool {
		return ix.Manifests[i].Annotations[AnnotationRef] < ix.Manifests[j].Annotations[AnnotationRef]
	})
	return store.WriteJSON(filepath.Join(b.dir, "index.json"), ix)
}

// SetRef records that ref (a full reference) names desc.
func (b *Blobs) SetRef(ref string, desc v1.Descriptor, pullThrough bool) error {
	fetched := desc.Annotations[AnnotationFetched] // the caller's clock, if it set one
	desc.Annotations = map[string]string{AnnotationRef: ref}
	if pullThrough {
		if fetched == "" {
			fetched = time.Now().UTC().Format(time.RFC3339)
		}
		desc.Annotations[AnnotationPullThrough] = "true"
		desc.Annotations[AnnotationFetched] = fetched
	}
	desc.Platform = nil
	return b.Update(func(ix *v1.IndexManifest) {
		for i, m := range ix.Manifests {
			if m.Annotations[AnnotationRef] == ref {
				ix.Manifests[i] = desc
				return
			}
		}
		ix.Manifests = append(ix.Manifests, desc)
	})
}

// manifestInfo is the part of any manifest or index we need.
type manifestInfo struct {
	SchemaVersion int             `json:"schemaVersion"`
	MediaType     types.MediaType `json:"mediaType"`
	Config        *v1.Descriptor  `json:"config"`
	Layers        []v1.Descriptor `json:"layers"`
	Manifests     []v1.Descriptor `json:"manifests"`
}

// sniff returns the media type of a manifest or index and what it refers
// to; ok is false for anything that is not one.
func sniff(data []byte) (mt types.MediaType, refs []v1.Descriptor, ok bool) {
	var m manifestInfo
	if len(data) == 0 || data[0] != '{' || json.Unmarshal(data, &m) != nil || m.SchemaVersion != 2 {
		return "", nil, false
	}
	mt = m.MediaType
	switch {
	case mt == "" && m.Manifests != nil:
		mt = types.OCIImageIndex
	case mt == "" && m.Config != nil:
		mt = types.OCIManifestSchema1
	}
	if !mt.IsIndex() && !mt.IsImage() && m.Config == nil {
		return "", nil, false
	}
	if m.Config != nil {
		refs = append(refs, *m.Config)
	}
	refs = append(refs, m.Layers...)
	refs = append(refs, m.Manifests...)
	return mt, refs, true
}

// reachable lists the blobs reachable from roots (manifest or index
// digests), roots included, whether stored or not.
func (b *Blobs) reachable(roots []v1.Hash) []v1.Hash {
	seen := map[string]bool{}
	var out []v1.Hash
	var walk func(d v1.Hash)
	walk = func(d v1.Hash) {
		if seen[d.Hex] || !validHash(d) {
			return
		}
		seen[d.Hex] = true
		out = append(out, d)
		data, err := b.ReadSmall(d)
		if err != nil {
			return
		}
		if _, refs, ok := sniff(data); ok {
			for _, r := range refs {
				walk(r.Digest)
			}
		}
	}
	for _, d := range roots {
		walk(d)
	}
	return out
}

// GC removes every blob not reachable from keep (manifest or index
// digests) and returns how many bytes it freed. Children of an index that
// were never fetched are simply absent.
func (b *Blobs) GC(keep []v1.Hash) (freed int64, err error) {
	live := map[string]bool{}
	for _, h := range b.reachable(keep) {
		live[h.Hex] = true
	}
	bdir := filepath.Join(b.dir, "blobs", "sha256")
	entries, err := os.ReadDir(bdir)
	if err != nil {
		return 0, fmt.Errorf("ocicache: gc: %v", err)
	}
	for _, e := range entries {
		if live[e.Name()] || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		fi, err := e.Info()
		if err != nil {
			continue
		}
		if err := os.Remove(filepath.Join(bdir, e.Name())); err != nil {
			return freed, fmt.Errorf("ocicache: gc: %v", err)
		}
		freed += fi.Size()
	}
	return freed, nil
}
