// Package budget is the one rule for what node writes may take on the
// store, shared by nfsd (a node's root) and nbdd (a node's NBD disk): a
// reserve of free space that node writes never take, so the head node's
// own state (leases, node records, view.json, ocicache's index) can always
// be saved, and a per-node quota on what the node's root and disk use
// together.
//
// Callers check before a write takes space (MayGrow, with what the write
// may add) and never for what takes no space: overwriting allocated bytes,
// reading, deleting, trimming. So a node at its limit can still clean up.
package budget

import (
	"fmt"
	"log/slog"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// DefaultReserve is the free space node writes leave by default (nfsd's
// and nbdd's -reserve_mib): leases.json of a /24 is about 40 KB, a node's
// record, stages and boot log stay under 100 KB, view.json and ocicache's
// index.json and state.json are a few KB; 64 MiB keeps those of a few
// hundred nodes many times over, with room for the file system's journal
// commits, and is 0.2% of a 32 GB card.
const DefaultReserve = 64 << 20

// Use is what a node takes on the store: its root's own files (nfsd's
// count) and its NBD disk's allocated blocks. Its quota bounds the sum.
type Use struct {
	Root, Disk int64
}

// Total is Root + Disk.
func (u Use) Total() int64 { return u.Root + u.Disk }

// Budget holds the limits. The zero value (no reserve, no quota) allows
// everything.
type Budget struct {
	Log *slog.Logger
	// Reserve is the free space node writes never take (0: none).
	Reserve int64
	// Quota returns the bytes node key may use (0: none); nil: no quotas.
	Quota func(key string) int64
	// Writes names what is refused in log lines: "root" (nfsd) or "NBD
	// disk" (nbdd); NoSpace and OverQuota the errors the node gets, as
	// its protocol names them ("NFS3ERR_NOSPC", "NFS3ERR_DQUOT").
	Writes, NoSpace, OverQuota string

	mu     sync.Mutex
	warned map[string]time.Time // node+reason → last log line
}

// QuotaOf is b.Quota(key), 0 without one.
func (b *Budget) QuotaOf(key string) int64 {
	if b == nil || b.Quota == nil {
		return 0
	}
	return b.Quota(key)
}

// Free is the free space of the file system of fd for others than root
// (Bavail). On ext4 the root-reserved blocks stay for the head node's
// services on top of the reserve.
func Free(fd int) (int64, error) {
	var sf unix.Statfs_t
	if err := unix.Fstatfs(fd, &sf); err != nil {
		return 0, err
	}
	return int64(sf.Bavail) * sf.Bsize, nil
}

// FreeAt is Free for the file system of path.
func FreeAt(path string) (int64, error) {
	var sf unix.Statfs_t
	if err := unix.Statfs(path, &sf); err != nil {
		return 0, err
	}
	return int64(sf.Bavail) * sf.Bsize, nil
}

// MayGrow checks that node key may take need more bytes on the file
// system of fd (a file of the node's on the store): an error wrapping
// unix.ENOSPC when the free space would drop below the reserve, unix.EDQUOT
// when the node's use would pass its quota. use is called only when the
// node has a quota. A refusal is logged at most once a minute per node and
// reason (a node at its limit retries, and each retry would be a line).
func (b *Budget) MayGrow(key string, fd int, need int64, use func() Use) error {
	if b == nil {
		return nil
	}
	if b.Reserve > 0 {
		if free, err := Free(fd); err == nil && free-need < b.Reserve {
			b.warn(key, "reserve", "refusing node writes to its "+b.Writes+" ("+b.NoSpace+": No space left on device): the store keeps -reserve_mib free for the head node's own state; free space on the store, remove files on the node or reset a node",
				"free_mib", free>>20, "reserve_mib", b.Reserve>>20)
			return fmt.Errorf("node %s: %d MiB free on the store, %d MiB kept for the head node: %w", key, free>>20, b.Reserve>>20, unix.ENOSPC)
		}
	}
	if q := b.QuotaOf(key); q > 0 {
		if u := use(); u.Total()+need > q {
			what, clean := "root is", "remove files on the node"
			if u.Disk > 0 {
				what, clean = "root and NBD disk are", "remove files on the node (on its NBD disk, then run fstrim)"
			}
			b.warn(key, "quota", "refusing node writes to its "+b.Writes+" ("+b.OverQuota+": Disk quota exceeded): the node's "+what+" at its quota; "+clean+", raise its Quota (Netboot.Nodes[].Quota or Netboot.NodeQuota) or reset it",
				"used_mib", u.Total()>>20, "quota_mib", q>>20, "root_mib", u.Root>>20, "disk_mib", u.Disk>>20)
			return fmt.Errorf("node %s uses %d of its %d bytes (root %d, NBD disk %d): %w", key, u.Total(), q, u.Root, u.Disk, unix.EDQUOT)
		}
	}
	return nil
}

func (b *Budget) warn(key, reason, msg string, args ...any) {
	if b.Log == nil {
		return
	}
	b.mu.Lock()
	last, ok := b.warned[key+reason]
	now := time.Now()
	if ok && now.Sub(last) < time.Minute {
		b.mu.Unlock()
		return
	}
	if b.warned == nil {
		b.warned = map[string]time.Time{}
	}
	b.warned[key+reason] = now
	b.mu.Unlock()
	b.Log.Warn(msg, append([]any{"node", key}, args...)...)
}
