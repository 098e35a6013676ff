package nfs

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/ociboot/ociboot/appliance/metrics"
	"golang.org/x/sys/unix"

	"github.com/ociboot/ociboot/appliance/budget"
	"github.com/ociboot/ociboot/appliance/config"
	"github.com/ociboot/ociboot/appliance/nodedisk"
	"github.com/ociboot/ociboot/appliance/store"
	"github.com/ociboot/ociboot/appliance/testenv"
)

const chunk = 256 << 10

// fill writes chunks to fh (stable) until a WRITE fails; it returns the
// bytes written and the failing status.
func fill(t *testing.T, c *client, fh []byte, max int) (int, uint32) {
	t.Helper()
	data := bytes.Repeat([]byte("n"), chunk)
	for off := 0; off < max; off += chunk {
		if st, _ := c.write(fh, uint64(off), data, fileSync); st != 0 {
			return off, st
		}
	}
	return max, 0
}

func exportStatus(t *testing.T, srv *Server, key string) ExportStatus {
	t.Helper()
	for _, e := range srv.Status().Exports {
		if e.Node == key {
			return e
		}
	}
	t.Fatalf("no export of %s in the status", key)
	return ExportStatus{}
}

// TestQuota: a node with a quota writes until NFS3ERR_DQUOT, near its
// quota; creating files and copying image files up are refused too, reads
// and removes work, and after a remove it writes again. The usage counted
// call by call is what a walk of the view finds after a restart.
func TestQuota(t *testing.T) {
	dir, _ := testenv.InTmpfs(t, 64)
	if dir == "" {
		return
	}
	const quota = 4 << 20
	env := newEnvIn(t, dir, Options{Quota: func(key string) int64 {
		if key == "node1" {
			return quota
		}
		return 0
	}})
	c := env.dial(0, 0)
	root, st := c.mnt("/nodes/node1")
	if st != 0 {
		t.Fatalf("MNT: status %d", st)
	}
	start := exportStatus(t, env.srv, "node1").Used
	big, st := c.create(root, "big", 0o644)
	if st != 0 {
		t.Fatalf("CREATE big: status %d", st)
	}
	n, st := fill(t, c, big, 32<<20)
	if got, want := st, uint32(errDQuot); got != want {
		t.Fatalf("WRITE past the quota: status %d after %d bytes, want %d (NFS3ERR_DQUOT)", got, n, want)
	}
	if n < quota-int(start)-2*chunk || n > quota {
		t.Errorf("node wrote %d bytes before DQUOT; with %d in use and a quota of %d, want about %d", n, start, quota, quota-int(start))
	}
	used := exportStatus(t, env.srv, "node1")
	if used.Quota != quota || used.Used > quota+chunk || used.Used < quota-2*chunk {
		t.Errorf("status: used %d of %d, want about %d", used.Used, used.Quota, quota)
	}
	if _, st := c.create(root, "more", 0o644); st != errDQuot {
		t.Errorf("CREATE at the quota: status %d, want %d", st, errDQuot)
	}
	// Truncating an existing file frees space: CREATE UNCHECKED of it
	// (open with O_CREAT|O_TRUNC) works at the quota.
	if st := createUncheckedTrunc(c, root, "big"); st != 0 {
		t.Errorf("CREATE UNCHECKED size 0 of an existing file at the quota: status %d", st)
	}
	if data, _, st := c.read(big, 0, 4); st != 0 || len(data) != 0 {
		t.Errorf("READ after the truncate: %q, status %d", data, st)
	}
	if n, st := fill(t, c, big, 2*quota); st != errDQuot {
		t.Fatalf("WRITE up to the quota again: status %d after %d bytes", st, n)
	}
	if _, st := c.mkdir(root, "d", 0o755); st != errDQuot {
		t.Errorf("MKDIR at the quota: status %d, want %d", st, errDQuot)
	}
	// The first write to an image file copies it: refused too, and the
	// image keeps its content.
	if st, _ := c.write(c.walk(root, "etc", "hostname"), 0, []byte("changed"), fileSync); st != errDQuot {
		t.Errorf("WRITE to an image file at the quota: status %d, want %d", st, errDQuot)
	}
	if got := string(mustRead(t, filepath.Join(env.image, "etc/hostname"))); got != "node\n" {
		t.Errorf("image etc/hostname: %q", got)
	}
	// Another node without a quota is not affected.
	c2 := env.dial(0, 0)
	root2, _ := c2.mnt("/nodes/node2")
	if _, st := c2.create(root2, "x", 0o644); st != 0 {
		t.Errorf("CREATE on node2 (no quota): status %d", st)
	}
	if data, _, st := c.read(big, 0, 4); st != 0 || string(data) != "nnnn" {
		t.Errorf("READ at the quota: %q, status %d", data, st)
	}
	if st := c.nameOp(nfsRemove, root, "big"); st != 0 {
		t.Fatalf("REMOVE at the quota: status %d", st)
	}
	after := exportStatus(t, env.srv, "node1").Used
	if after > start+chunk {
		t.Errorf("after REMOVE the node uses %d bytes, %d before it wrote", after, start)
	}
	again, st := c.create(root, "again", 0o644)
	if st != 0 {
		t.Fatalf("CREATE after REMOVE: status %d", st)
	}
	if n, st := fill(t, c, again, 1<<20); st != 0 {
		t.Errorf("WRITE after REMOVE: status %d after %d bytes", st, n)
	}
	if st, _ := c.write(c.walk(root, "etc", "hostname"), 0, []byte("changed"), fileSync); st != 0 {
		t.Errorf("copy-up after REMOVE: status %d", st)
	}
	counted := exportStatus(t, env.srv, "node1").Used
	reg := metrics.NewRegistry()
	reg.MustRegister(newUsageCollector(env.srv))
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	gauges := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.Samples {
			name := mf.Name
			for k, v := range m.Labels {
				name += "{" + k + "=" + v + "}"
			}
			gauges[name] = m.Value
		}
	}
	for name, want := range map[string]float64{"node_used_bytes{node=node1}": float64(counted), "node_quota_bytes{node=node1}": quota} {
		if got, ok := gauges[name]; !ok || got != want {
			t.Errorf("metric %s: got %v (present %v), want %v; all: %v", name, got, ok, want, gauges)
		}
	}
	if _, ok := gauges["node_quota_bytes{node=node2}"]; ok {
		t.Errorf("node2 has no quota but a node_quota_bytes gauge")
	}
	env.restart()
	if scanned := exportStatus(t, env.srv, "node1").Used; scanned != counted {
		t.Errorf("node1 uses %d bytes counted call by call, %d by a walk after a restart", counted, scanned)
	}
}

// TestQuotaWithDisk: the node's NBD disk and its root share the quota:
// what the disk has allocated leaves less for the root's writes, and what
// the root uses (nfsd's count, as nbdd reads it from the status) leaves
// less for the disk.
func TestQuotaWithDisk(t *testing.T) {
	const quota = 8 << 20
	quotaOf := func(key string) int64 {
		if key == "node1" {
			return quota
		}
		return 0
	}
	cfg, err := config.Parse([]byte(`{"Netboot": {"NodeDisk": {"Size": "1G"}}}`))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	st, err := store.Open(dir, store.Options{AllowTmpfs: true})
	if err != nil {
		t.Fatal(err)
	}
	env := newEnvIn(t, dir, Options{Quota: quotaOf, Disks: nodedisk.Disks{Config: cfg, Store: st}})
	rootUsed := func(key string) int64 { return exportStatus(t, env.srv, key).Used }
	disk, err := nodedisk.Open(cfg, st, "node1", nodedisk.Limits{Budget: &budget.Budget{Quota: quotaOf, Writes: "NBD disk"}, RootUsed: rootUsed})
	if err != nil {
		t.Fatal(err)
	}
	defer disk.Close()
	c := env.dial(0, 0)
	root, stat := c.mnt("/nodes/node1")
	if stat != 0 {
		t.Fatalf("MNT: status %d", stat)
	}
	data := bytes.Repeat([]byte("d"), chunk)
	for off := int64(0); off < 4<<20; off += chunk {
		if _, err := disk.WriteAt(data, off); err != nil {
			t.Fatalf("disk write at %d: %v", off, err)
		}
	}
	start := exportStatus(t, env.srv, "node1").Used
	big, stat := c.create(root, "big", 0o644)
	if stat != 0 {
		t.Fatalf("CREATE: status %d", stat)
	}
	n, stat := fill(t, c, big, 32<<20)
	if got, want := stat, uint32(errDQuot); got != want {
		t.Fatalf("root WRITE past the quota: status %d after %d bytes, want %d", got, n, want)
	}
	if left := quota - int(start) - int(disk.Allocated()); n < left-2*chunk || n > left {
		t.Errorf("root wrote %d bytes before DQUOT; with a quota of %d, %d in the root and %d on the disk, want about %d", n, quota, start, disk.Allocated(), left)
	}
	if _, err := disk.WriteAt(data, 16<<20); !errors.Is(err, unix.EDQUOT) {
		t.Errorf("disk write with the root at the quota: got %v, want EDQUOT", err)
	}
	if _, err := disk.WriteAt(data, 0); err != nil {
		t.Errorf("disk overwrite at the quota: %v", err)
	}
	if st := c.nameOp(nfsRemove, root, "big"); st != 0 {
		t.Fatalf("REMOVE: status %d", st)
	}
	if _, err := disk.WriteAt(data, 16<<20); err != nil {
		t.Errorf("disk write after the root freed space: %v", err)
	}
}

// TestReserve: with the store's free space near the reserve every node is
// refused with NFS3ERR_NOSPC, while the head node's own files can still
// be written; a remove on the node frees space and writes work again.
func TestReserve(t *testing.T) {
	dir, _ := testenv.InTmpfs(t, 48)
	if dir == "" {
		return
	}
	const reserve = 32 << 20
	env := newEnvIn(t, dir, Options{Reserve: reserve})
	c := env.dial(0, 0)
	root, st := c.mnt("/nodes/node1")
	if st != 0 {
		t.Fatalf("MNT: status %d", st)
	}
	c2 := env.dial(0, 0)
	root2, _ := c2.mnt("/nodes/node2")
	other, st := c2.create(root2, "other", 0o644)
	if st != 0 {
		t.Fatalf("CREATE on node2: status %d", st)
	}
	big, _ := c.create(root, "big", 0o644)
	n, st := fill(t, c, big, 64<<20)
	if got, want := st, uint32(errNoSpc); got != want {
		t.Fatalf("WRITE into the reserve: status %d after %d bytes, want %d (NFS3ERR_NOSPC)", got, n, want)
	}
	s := env.srv.Status()
	if s.FreeBytes < reserve || s.FreeBytes > reserve+2*chunk {
		t.Errorf("free space after the node was refused: %d, want just above the reserve %d", s.FreeBytes, s.ReserveBytes)
	}
	if n, st := fill(t, c2, other, chunk); st != errNoSpc {
		t.Errorf("WRITE on node2 in the reserve: status %d after %d bytes, want %d", st, n, errNoSpc)
	}
	// The reserve is there for the head node's own state.
	state := bytes.Repeat([]byte("lease "), (16<<20)/6)
	if err := store.WriteFile(filepath.Join(dir, "dhcp-leases.json"), state, 0o644); err != nil {
		t.Errorf("writing 16 MiB of the head node's own state with the nodes refused: %v", err)
	}
	os.Remove(filepath.Join(dir, "dhcp-leases.json"))
	if st := c.nameOp(nfsRemove, root, "big"); st != 0 {
		t.Fatalf("REMOVE in the reserve: status %d", st)
	}
	if n, st := fill(t, c2, other, 4<<20); st != 0 {
		t.Errorf("WRITE on node2 after a REMOVE on node1: status %d after %d bytes", st, n)
	}
}

// createUncheckedTrunc sends CREATE UNCHECKED with size 0, as a client's
// open(O_CREAT|O_TRUNC) of a name it has not looked up does.
func createUncheckedTrunc(c *client, dir []byte, name string) uint32 {
	return c.raw(progNFS, 3, nfsCreate, args(func(w *writer) {
		w.opaque(dir)
		w.string(name)
		w.uint32(createUnchecked)
		w.bool(false) // mode
		w.bool(false) // uid
		w.bool(false) // gid
		w.bool(true)  // size
		w.uint64(0)
		w.uint32(0)
		w.uint32(0)
	})).uint32()
}
