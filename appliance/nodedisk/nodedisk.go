// Package nodedisk owns the nodes' NBD disks: nodes/<key>/disk.img on the
// store, a sparse file of the configured size (Netboot.NodeDisk,
// Nodes[].Disk) that nbdd serves to the node over NBD and the node formats
// as ext4 for its container runtime.
//
// Only written blocks take space on the store, and they count against the
// node's quota together with its root (package budget): a write that may
// allocate is checked first and refused with ENOSPC (the store's reserve)
// or EDQUOT (the quota); overwriting allocated blocks always works, and a
// TRIM from the node (fstrim, discard) gives blocks back.
//
// Who serves a disk is told by a lock, not by a file: each open Disk holds
// a shared flock on disk.img, and dropping the disk takes it exclusively.
// So a reset refuses a disk in use (unless forced) even across processes,
// and a crashed nbdd leaves no stale marker: the kernel releases its locks.
// A disk dropped under an open Disk is seen by Dropped; nbdd then closes
// the node's connections.
package nodedisk

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/ociboot/ociboot/appliance/budget"
	"github.com/ociboot/ociboot/appliance/config"
	"github.com/ociboot/ociboot/appliance/nbd"
	"github.com/ociboot/ociboot/appliance/nodes"
	"github.com/ociboot/ociboot/appliance/store"
)

// File is the disk's name in the node's directory.
const File = "disk.img"

var (
	// ErrNoDisk: the config gives the node no NBD disk.
	ErrNoDisk = errors.New("no NBD disk configured for the node")
	// ErrInUse: nbdd serves the disk (a Disk is open), so dropping it
	// would pull it from under the running node.
	ErrInUse = errors.New("the node's NBD disk is in use")
)

// Path is node key's disk file.
func Path(st *store.Store, key string) (string, error) {
	dir, err := st.NodeDir(key)
	if err != nil {
		return "", err
	}
	return filepath.Join(dir, File), nil
}

// Limits are what a disk's writes are checked against.
type Limits struct {
	// Budget is the store's reserve and the nodes' quotas (nil: none).
	Budget *budget.Budget
	// RootUsed is what node key's root uses on the store (nfsd's
	// count), which shares the quota with the disk; nil: 0.
	RootUsed func(key string) int64
}

// Disk is an open NBD disk. Its methods are those of nbd.Export; it is
// safe for concurrent use (reads and writes are pread and pwrite).
type Disk struct {
	key  string
	path string
	f    *os.File
	fd   int
	io   *nbd.File // the I/O itself; Disk adds bounds, budget and the lock
	size int64
	blk  int64
	lim  Limits

	closeOnce sync.Once
	closeErr  error
}

// Open opens node key's (already Canonical) disk, making it at the
// configured size on first use and growing it when the configured size
// grew. It never shrinks a disk: a smaller configured size is an error
// naming the config field. The error wraps ErrNoDisk when the config
// gives the node no NBD disk.
func Open(cfg *config.Config, st *store.Store, key string, lim Limits) (*Disk, error) {
	dc, field := nodes.DiskOf(cfg, key)
	if !dc.NBD() {
		if dc != nil {
			return nil, fmt.Errorf("node %s: %w: %s.Device is %q, the node's own disk", key, ErrNoDisk, field, dc.Device)
		}
		return nil, fmt.Errorf("node %s: %w: set Netboot.NodeDisk, or the node's Netboot.Nodes[].Disk, e.g. {\"Size\": \"20G\"}", key, ErrNoDisk)
	}
	p, err := Path(st, key)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return nil, fmt.Errorf("nodedisk: %v", err)
	}
	f, created, err := openLocked(p)
	if err != nil {
		return nil, fmt.Errorf("nodedisk: node %s: %v", key, err)
	}
	var fst unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &fst); err != nil {
		f.Close()
		return nil, fmt.Errorf("nodedisk: node %s: %v", key, err)
	}
	switch {
	case fst.Size > dc.Size:
		f.Close()
		return nil, fmt.Errorf("node %s: its NBD disk %s is %d bytes (%s), but %s.Size is %d bytes: a disk is never shrunk (its file system would be cut off); set %s.Size back to at least %s, or drop the disk by resetting the node (forgetting it when KeepOnReset is set)",
			key, p, fst.Size, human(fst.Size), field, dc.Size, field, human(fst.Size))
	case fst.Size < dc.Size:
		// Sparse: takes no space until the node writes.
		if err := f.Truncate(dc.Size); err != nil {
			f.Close()
			return nil, fmt.Errorf("nodedisk: node %s: sizing %s to %d bytes: %v", key, p, dc.Size, err)
		}
	}
	if created {
		store.SyncDir(filepath.Dir(p))
	}
	blk := int64(fst.Blksize)
	if blk <= 0 {
		blk = 4096
	}
	x, err := nbd.NewFile(f)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("node %s: disk %s: %v", key, p, err)
	}
	return &Disk{key: key, path: p, f: f, fd: int(f.Fd()), io: x, size: dc.Size, blk: blk, lim: lim}, nil
}

// openLocked opens (or creates) p and takes its shared lock. A Drop may
// unlink p between the open and the lock; the lock then holds a file
// nobody else sees, so it opens p again.
func openLocked(p string) (*os.File, bool, error) {
	for range 10 {
		_, serr := os.Lstat(p)
		created := errors.Is(serr, fs.ErrNotExist)
		f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE, 0o600)
		if err != nil {
			return nil, false, err
		}
		// Blocks only while a Drop holds it, for the time of an unlink.
		if err := unix.Flock(int(f.Fd()), unix.LOCK_SH); err != nil {
			f.Close()
			return nil, false, fmt.Errorf("locking %s: %v", p, err)
		}
		var a, b unix.Stat_t
		if unix.Fstat(int(f.Fd()), &a) == nil && unix.Stat(p, &b) == nil && a.Ino == b.Ino && a.Dev == b.Dev {
			return f, created, nil
		}
		f.Close()
	}
	return nil, false, fmt.Errorf("%s: dropped again and again while being opened", p)
}

// Key is the node whose disk d is.
func (d *Disk) Key() string { return d.key }

// Description names this disk file (NBD_INFO_DESCRIPTION): its inode
// and birth time. A node reconnecting after nbdd restarted compares it
// with what it attached, and does not hand a dropped and remade disk to
// a file system that was mounted from the old one.
func (d *Disk) Description() string {
	var sx unix.Statx_t
	if err := unix.Statx(d.fd, "", unix.AT_EMPTY_PATH, unix.STATX_INO|unix.STATX_BTIME, &sx); err != nil {
		return "ociboot disk " + d.key
	}
	if sx.Mask&unix.STATX_BTIME == 0 {
		return fmt.Sprintf("ociboot disk %s id %x", d.key, sx.Ino)
	}
	return fmt.Sprintf("ociboot disk %s id %x-%x.%x", d.key, sx.Ino, sx.Btime.Sec, sx.Btime.Nsec)
}

// Size is the disk's size in bytes, as when it was opened (an NBD client
// learns it once per connection).
func (d *Disk) Size() int64 { return d.size }

func (d *Disk) bounds(off int64, n int) error {
	if off < 0 || off+int64(n) > d.size || off+int64(n) < off {
		return fmt.Errorf("node %s: %d bytes at %d are outside the disk's %d: %w", d.key, n, off, d.size, unix.EINVAL)
	}
	return nil
}

// ReadAt reads from the disk; holes read as zeros.
func (d *Disk) ReadAt(p []byte, off int64) (int, error) {
	if err := d.bounds(off, len(p)); err != nil {
		return 0, err
	}
	return d.io.ReadAt(p, off)
}

// WriteAt writes to the disk. A write that may allocate blocks (it
// touches a hole) is checked against the reserve and the quota first, by
// all the blocks it spans: an error wrapping unix.ENOSPC or unix.EDQUOT
// refuses it. Concurrent writes are each checked alone, so the node may
// pass its quota by what it has in flight at once.
func (d *Disk) WriteAt(p []byte, off int64) (int, error) {
	if err := d.bounds(off, len(p)); err != nil {
		return 0, err
	}
	if len(p) > 0 && d.lim.Budget != nil && d.mayAllocate(off, int64(len(p))) {
		start := off / d.blk * d.blk
		end := (off + int64(len(p)) + d.blk - 1) / d.blk * d.blk
		if err := d.lim.Budget.MayGrow(d.key, d.fd, end-start, d.use); err != nil {
			return 0, err
		}
	}
	return d.io.WriteAt(p, off)
}

// mayAllocate reports whether [off, off+n) may touch a hole: the next
// hole at or after off (SEEK_HOLE; the end of the file counts as one)
// starts before off+n. When the file system cannot tell, it may.
func (d *Disk) mayAllocate(off, n int64) bool {
	hole, err := unix.Seek(d.fd, off, unix.SEEK_HOLE)
	return err != nil || hole < off+n
}

func (d *Disk) use() budget.Use {
	u := budget.Use{Disk: d.Allocated()}
	if d.lim.RootUsed != nil {
		u.Root = d.lim.RootUsed(d.key)
	}
	return u
}

// Allocated is the bytes the disk takes on the store (st_blocks).
func (d *Disk) Allocated() int64 {
	var st unix.Stat_t
	if unix.Fstat(d.fd, &st) != nil {
		return 0
	}
	return st.Blocks * 512
}

// Flush makes the disk's written data durable (NBD_CMD_FLUSH).
func (d *Disk) Flush() error {
	if err := d.io.Flush(); err != nil {
		return fmt.Errorf("node %s: flushing its disk: %w", d.key, err)
	}
	return nil
}

// Trim gives the blocks of [off, off+length) back to the store (a hole:
// they read as zeros). On a file system that cannot punch holes the error
// wraps unix.EOPNOTSUPP: the NBD server then ignores a TRIM (advice) and
// writes zeros for a WRITE_ZEROES.
func (d *Disk) Trim(off, length int64) error {
	if length < 0 || length > d.size {
		return fmt.Errorf("node %s: trim of %d bytes: %w", d.key, length, unix.EINVAL)
	}
	if err := d.bounds(off, int(length)); err != nil {
		return err
	}
	if err := d.io.Trim(off, length); err != nil {
		return fmt.Errorf("node %s: trim of its disk: %w", d.key, err)
	}
	return nil
}

// MultiConn tells the NBD server that several connections may share the
// disk (NBD_FLAG_CAN_MULTI_CONN): there is no cache but the kernel's, and
// Flush's fdatasync writes back every connection's data.
func (d *Disk) MultiConn() bool { return true }

// Dropped reports whether the disk was dropped (reset, forgotten) while
// open: the file has no name any more, and what is written to it is lost.
func (d *Disk) Dropped() bool {
	var st unix.Stat_t
	return unix.Fstat(d.fd, &st) == nil && st.Nlink == 0
}

// Close releases the disk (and its lock).
func (d *Disk) Close() error {
	d.closeOnce.Do(func() { d.closeErr = d.io.Close() })
	return d.closeErr
}

// Usage is the bytes node key's disk takes on the store (its allocated
// blocks), 0 when it has none.
func Usage(st *store.Store, key string) int64 {
	p, err := Path(st, key)
	if err != nil {
		return 0
	}
	var s unix.Stat_t
	if unix.Stat(p, &s) != nil {
		return 0
	}
	return s.Blocks * 512
}

// Info is what the store holds of a node's disk.
type Info struct {
	Exists    bool
	Size      int64 // the file's size
	Allocated int64 // bytes it takes on the store
	InUse     bool  // open in nbdd
}

// Stat describes node key's disk.
func Stat(st *store.Store, key string) Info {
	p, err := Path(st, key)
	if err != nil {
		return Info{}
	}
	var s unix.Stat_t
	if unix.Stat(p, &s) != nil {
		return Info{}
	}
	return Info{Exists: true, Size: s.Size, Allocated: s.Blocks * 512, InUse: InUse(st, key)}
}

// InUse reports whether nbdd has node key's disk open.
func InUse(st *store.Store, key string) bool {
	p, err := Path(st, key)
	if err != nil {
		return false
	}
	f, err := os.Open(p)
	if err != nil {
		return false
	}
	defer f.Close()
	return unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB) != nil
}

// Drop removes node key's disk. A disk in use is refused with an error
// wrapping ErrInUse unless force; a forced drop leaves nbdd's open Disk
// on a file without a name (Dropped), whose connections nbdd closes.
// dropped says whether there was a disk.
func Drop(st *store.Store, key string, force bool) (dropped bool, err error) {
	p, err := Path(st, key)
	if err != nil {
		return false, err
	}
	f, err := os.Open(p)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("nodedisk: dropping node %s's disk: %v", key, err)
	}
	defer f.Close()
	// Held until the name is gone, so no Open takes the disk meanwhile.
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil && !force {
		return false, fmt.Errorf("%w: nbdd serves it to the node, whose running system would lose its container storage; shut the node down first, or pass force=1", ErrInUse)
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return false, fmt.Errorf("nodedisk: dropping node %s's disk: %v", key, err)
	}
	store.SyncDir(filepath.Dir(p))
	return true, nil
}

// Reset is what a reset or reimage of node key's root does to its disk:
// Drop, unless the config keeps the disk (Disk.KeepOnReset).
func Reset(cfg *config.Config, st *store.Store, key string, force bool) (dropped bool, err error) {
	if dc, _ := nodes.DiskOf(cfg, key); dc.NBD() && dc.KeepOnReset {
		return false, nil
	}
	return Drop(st, key, force)
}

// Disks is the nodes' disks of one config and store, as nfsd uses them.
type Disks struct {
	Config *config.Config
	Store  *store.Store
}

func (d Disks) Usage(key string) int64 { return Usage(d.Store, key) }

func (d Disks) Reset(key string, force bool) (bool, error) {
	return Reset(d.Config, d.Store, key, force)
}

func (d Disks) Drop(key string, force bool) (bool, error) { return Drop(d.Store, key, force) }

// human prints n as a size config.json accepts ("20G", "1536M").
func human(n int64) string {
	for _, u := range []struct {
		s string
		b int64
	}{{"T", 1 << 40}, {"G", 1 << 30}, {"M", 1 << 20}, {"K", 1 << 10}} {
		if n%u.b == 0 {
			return fmt.Sprintf("%d%s", n/u.b, u.s)
		}
	}
	return fmt.Sprint(n)
}
