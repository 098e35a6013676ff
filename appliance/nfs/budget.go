// The store's budget for node writes: a reserve of free space that node
// writes never take (NFS3ERR_NOSPC), so the head node's own state
// (leases, node records, view.json, ocicache's index) can always be saved,
// and per-node quotas on what a node's own files use (NFS3ERR_DQUOT).
//
// What a node uses is the space of the inodes in its view that are its
// own: files it wrote or copied out of the image, its directories and
// symlinks, each inode once (st_blocks). Files still shared with the image
// cost the node nothing. The count is made by a walk when a view is opened
// (startup, first MNT) and kept up to date by the procedures that change
// it, from the st_blocks of the files they touch before and after; no call
// walks the tree.
//
// Checks come before a call takes space: WRITE (by the bytes it may add),
// CREATE, MKDIR, SYMLINK, MKNOD and LINK (one block each), SETATTR that
// grows a size, and the copy-up of a shared file before its first change
// (by the file's size). A call may overshoot a quota by what it writes
// itself (at most one WRITE, 1 MiB); the next is refused. Everything that
// frees or takes no space (READ, REMOVE, RMDIR, RENAME, overwriting
// allocated bytes) keeps working, so a node at its limit can clean up.

package nfs

import (
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"

	"github.com/ociboot/ociboot/appliance/nodes"
)

// DefaultReserve is the free space node writes leave by default (nfsd's
// -reserve_mib): leases.json of a /24 is about 40 KB, a node's record,
// stages and boot log stay under 100 KB, view.json and ocicache's
// index.json and state.json are a few KB; 64 MiB keeps those of a few
// hundred nodes many times over, with room for the file system's journal
// commits, and is 0.2% of a 32 GB card.
const DefaultReserve = 64 << 20

// entryCost is what a new name or inode is charged before it is made: about
// one block of a directory or inode table.
const entryCost = 4096

// budget is the server's part of the accounting: limits and the locks that
// make one inode's before/after measurement exact.
type budget struct {
	log     *slog.Logger
	reserve int64
	quota   func(key string) int64
	inoMu   [64]sync.Mutex

	mu     sync.Mutex
	warned map[string]time.Time // node+reason → last log line
}

func newBudget(opts Options, log *slog.Logger) *budget {
	return &budget{log: log, reserve: opts.Reserve, quota: opts.Quota, warned: map[string]time.Time{}}
}

// lockIno serialises the measurements around a change of inode ino.
func (b *budget) lockIno(ino uint64) func() {
	m := &b.inoMu[ino%uint64(len(b.inoMu))]
	m.Lock()
	return m.Unlock
}

func (b *budget) quotaOf(key string) int64 {
	if b.quota == nil {
		return 0
	}
	return b.quota(key)
}

// warn logs a refusal at most once a minute per node and reason: a node
// that hits its quota retries, and each retry would be a line.
func (b *budget) warn(key, reason, msg string, args ...any) {
	b.mu.Lock()
	last, ok := b.warned[key+reason]
	now := time.Now()
	if ok && now.Sub(last) < time.Minute {
		b.mu.Unlock()
		return
	}
	b.warned[key+reason] = now
	b.mu.Unlock()
	b.log.Warn(msg, append([]any{"node", key}, args...)...)
}

// attach makes e part of the server's accounting and counts what its view
// uses.
func (s *Server) attach(e *export) {
	e.onCopy = s.metrics.copyUps.Inc
	e.budget = s.budget
	e.used.Store(e.scanUsage())
}

// scanUsage adds up the space of the view's own inodes.
func (e *export) scanUsage() int64 {
	var st unix.Stat_t
	if unix.Fstat(e.rootFd, &st) != nil {
		return 0
	}
	total := int64(st.Blocks) * 512
	seen := map[uint64]bool{}
	e.eachEntry(func(_ int, _, _ string, st *unix.Stat_t) {
		if e.shared(st) {
			return
		}
		if st.Nlink > 1 && st.Mode&unix.S_IFMT != unix.S_IFDIR {
			if seen[st.Ino] {
				return
			}
			seen[st.Ino] = true
		}
		total += int64(st.Blocks) * 512
	})
	return total
}

// mayGrow checks that the node may take need more bytes: ENOSPC when the
// store's free space would drop below the reserve, EDQUOT when the node's
// use would pass its quota. The errors map to NFS3ERR_NOSPC and
// NFS3ERR_DQUOT.
func (e *export) mayGrow(need int64) error {
	b := e.budget
	if b == nil {
		return nil
	}
	if b.reserve > 0 {
		var sf unix.Statfs_t
		if err := unix.Fstatfs(e.rootFd, &sf); err == nil {
			// Bavail: what is free for anyone but root. On ext4 the
			// root-reserved blocks stay for the head node's services on
			// top of the reserve.
			free := int64(sf.Bavail) * sf.Bsize
			if free-need < b.reserve {
				b.warn(e.key, "reserve", "refusing node writes (NFS3ERR_NOSPC): the store keeps -reserve_mib free for the head node's own state; free space on the store or remove files on the node",
					"free_mib", free>>20, "reserve_mib", b.reserve>>20, "used_mib", e.used.Load()>>20)
				return fmt.Errorf("node %s: %d MiB free on the store, %d MiB kept for the head node: %w", e.key, free>>20, b.reserve>>20, unix.ENOSPC)
			}
		}
	}
	if q := b.quotaOf(e.key); q > 0 {
		if used := e.used.Load(); used+need > q {
			b.warn(e.key, "quota", "refusing node writes (NFS3ERR_DQUOT): the node's root is at its quota; remove files on the node, raise its Quota (Netboot.Nodes[].Quota or Netboot.NodeQuota) or reset it",
				"used_mib", used>>20, "quota_mib", q>>20)
			return fmt.Errorf("node %s uses %d of its %d bytes: %w", e.key, used, q, unix.EDQUOT)
		}
	}
	return nil
}

// charge adds the change of an inode's blocks to the node's use.
func (e *export) charge(before, after *unix.Stat_t) {
	e.used.Add((int64(after.Blocks) - int64(before.Blocks)) * 512)
}

// chargeNew adds a new inode of the node's (a copy-up, a created file).
func (e *export) chargeNew(st *unix.Stat_t) {
	if !e.shared(st) {
		e.used.Add(int64(st.Blocks) * 512)
	}
}

// credit takes off the blocks of an inode whose last name went.
func (e *export) credit(st *unix.Stat_t) {
	if e.shared(st) || st.Mode&unix.S_IFMT != unix.S_IFDIR && st.Nlink > 1 {
		return
	}
	e.used.Add(-int64(st.Blocks) * 512)
}

// writeNeed is what a WRITE of n bytes at off may add to a file of st:
// nothing when it overwrites allocated bytes, n when it extends the file
// or the file has holes it may fill.
func writeNeed(st *unix.Stat_t, off uint64, n int) int64 {
	if off+uint64(n) > uint64(st.Size) || int64(st.Blocks)*512 < st.Size {
		return int64(n)
	}
	return 0
}

// Quota answers Options.Quota from the config: the node's own Quota, or
// Netboot.NodeQuota for nodes the config does not list (0: none).
func (r NodeResolver) Quota(key string) int64 {
	for _, n := range r.Config.Nodes {
		if n.Serial == key || n.Serial == "" && n.MAC != nil && nodes.MACKey(n.MAC) == key {
			return n.Quota
		}
	}
	return r.Config.NodeQuota
}

// usageCollector exports each view's use and quota. Its labels are the
// nodes that have a view, so they stay bounded and vanish on reset.
type usageCollector struct {
	s                          *Server
	used, quota, reserve, free *prometheus.Desc
}

func newUsageCollector(s *Server) *usageCollector {
	return &usageCollector{s: s,
		used:    prometheus.NewDesc("node_used_bytes", "Bytes the node's own files in its root use on the store (shared image files not counted).", []string{"node"}, nil),
		quota:   prometheus.NewDesc("node_quota_bytes", "The node's quota on the store (nodes with one).", []string{"node"}, nil),
		reserve: prometheus.NewDesc("store_reserve_bytes", "Free space on the store node writes never take (-reserve_mib).", nil, nil),
		free:    prometheus.NewDesc("store_free_bytes", "Free space on the store (for others than root).", nil, nil),
	}
}

func (c *usageCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.used
	ch <- c.quota
	ch <- c.reserve
	ch <- c.free
}

func (c *usageCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.s.Status()
	for _, e := range st.Exports {
		ch <- prometheus.MustNewConstMetric(c.used, prometheus.GaugeValue, float64(e.Used), e.Node)
		if e.Quota > 0 {
			ch <- prometheus.MustNewConstMetric(c.quota, prometheus.GaugeValue, float64(e.Quota), e.Node)
		}
	}
	ch <- prometheus.MustNewConstMetric(c.reserve, prometheus.GaugeValue, float64(st.ReserveBytes))
	if st.FreeBytes >= 0 {
		ch <- prometheus.MustNewConstMetric(c.free, prometheus.GaugeValue, float64(st.FreeBytes))
	}
}

// storeFree is the store's free space (Bavail), -1 if unknown.
func (s *Server) storeFree() int64 {
	var sf unix.Statfs_t
	if err := unix.Statfs(s.opts.Store.Root, &sf); err != nil {
		return -1
	}
	return int64(sf.Bavail) * sf.Bsize
}

// measure runs change, which alters the inode behind fd (its content, or a
// directory's entries), and charges the difference in its blocks. Changes
// of one inode are measured one at a time, so concurrent WRITEs to a file
// add up exactly.
func (e *export) measure(fd int, change func() error) error {
	var before, after unix.Stat_t
	if e.budget == nil || unix.Fstat(fd, &before) != nil {
		return change()
	}
	defer e.budget.lockIno(before.Ino)()
	unix.Fstat(fd, &before)
	err := change()
	if unix.Fstat(fd, &after) == nil && !e.shared(&after) {
		e.charge(&before, &after)
	}
	return err
}
