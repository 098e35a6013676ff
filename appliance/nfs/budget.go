// The store's budget for node writes: a reserve of free space that node
// writes never take (NFS3ERR_NOSPC), so the head node's own state
// (leases, node records, view.json, ocicache's index) can always be saved,
// and per-node quotas on what a node's own files use together with its
// NBD disk (NFS3ERR_DQUOT). The rule is package budget's, which nbdd
// applies to the disks; this file counts the roots.
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
	"log/slog"
	"sync"

	"github.com/ociboot/ociboot/appliance/metrics"
	"golang.org/x/sys/unix"

	"github.com/ociboot/ociboot/appliance/budget"
	"github.com/ociboot/ociboot/appliance/nodes"
)

// entryCost is what a new name or inode is charged before it is made: about
// one block of a directory or inode table.
const entryCost = 4096

// nodeBudget is the server's part of the accounting: the store's rule
// (package budget, shared with nbdd's disks), what the nodes' NBD disks
// take, and the locks that make one inode's before/after measurement
// exact.
type nodeBudget struct {
	*budget.Budget
	disks Disks
	inoMu [64]sync.Mutex
}

func newBudget(opts Options, log *slog.Logger) *nodeBudget {
	return &nodeBudget{Budget: &budget.Budget{Log: log, Reserve: opts.Reserve, Quota: opts.Quota, Writes: "root", NoSpace: "NFS3ERR_NOSPC", OverQuota: "NFS3ERR_DQUOT"}, disks: opts.Disks}
}

// lockIno serialises the measurements around a change of inode ino.
func (b *nodeBudget) lockIno(ino uint64) func() {
	m := &b.inoMu[ino%uint64(len(b.inoMu))]
	m.Lock()
	return m.Unlock
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

// mayGrow checks that the node may take need more bytes (budget.MayGrow:
// the store's reserve, the node's quota over its root and its NBD disk).
// The errors map to NFS3ERR_NOSPC and NFS3ERR_DQUOT.
func (e *export) mayGrow(need int64) error {
	b := e.budget
	if b == nil {
		return nil
	}
	return b.MayGrow(e.key, e.rootFd, need, func() budget.Use {
		u := budget.Use{Root: e.used.Load()}
		if b.disks != nil {
			u.Disk = b.disks.Usage(e.key)
		}
		return u
	})
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

// Quota answers Options.Quota from the config (nodes.QuotaOf).
func (r NodeResolver) Quota(key string) int64 { return nodes.QuotaOf(r.Config, key) }

// usageCollector exports each view's use and quota. Its labels are the
// nodes that have a view, so they stay bounded and vanish on reset.
type usageCollector struct {
	s                          *Server
	used, quota, reserve, free *metrics.Desc
}

func newUsageCollector(s *Server) *usageCollector {
	return &usageCollector{s: s,
		used:    metrics.NewDesc("node_used_bytes", "Bytes the node's own files in its root use on the store (shared image files not counted).", []string{"node"}, nil),
		quota:   metrics.NewDesc("node_quota_bytes", "The node's quota on the store (nodes with one).", []string{"node"}, nil),
		reserve: metrics.NewDesc("store_reserve_bytes", "Free space on the store node writes never take (-reserve_mib).", nil, nil),
		free:    metrics.NewDesc("store_free_bytes", "Free space on the store (for others than root).", nil, nil),
	}
}

func (c *usageCollector) Describe(ch chan<- *metrics.Desc) {
	ch <- c.used
	ch <- c.quota
	ch <- c.reserve
	ch <- c.free
}

func (c *usageCollector) Collect(ch chan<- metrics.Metric) {
	st := c.s.Status()
	for _, e := range st.Exports {
		ch <- metrics.MustNewConstMetric(c.used, metrics.GaugeValue, float64(e.Used), e.Node)
		if e.Quota > 0 {
			ch <- metrics.MustNewConstMetric(c.quota, metrics.GaugeValue, float64(e.Quota), e.Node)
		}
	}
	ch <- metrics.MustNewConstMetric(c.reserve, metrics.GaugeValue, float64(st.ReserveBytes))
	if st.FreeBytes >= 0 {
		ch <- metrics.MustNewConstMetric(c.free, metrics.GaugeValue, float64(st.FreeBytes))
	}
}

// storeFree is the store's free space (Bavail), -1 if unknown.
func (s *Server) storeFree() int64 {
	free, err := budget.FreeAt(s.opts.Store.Root)
	if err != nil {
		return -1
	}
	return free
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
