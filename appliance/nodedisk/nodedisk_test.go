package nodedisk

import (
	"bytes"
	"errors"
	"os"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ociboot/ociboot/appliance/budget"
	"github.com/ociboot/ociboot/appliance/config"
	"github.com/ociboot/ociboot/appliance/store"
	"github.com/ociboot/ociboot/appliance/testenv"
)

const key = "abcd0001"

func parse(t *testing.T, js string) *config.Config {
	t.Helper()
	cfg, err := config.Parse([]byte(js))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func openStore(t *testing.T, dir string) *store.Store {
	t.Helper()
	st, err := store.Open(dir, store.Options{AllowTmpfs: true})
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func sizeCfg(t *testing.T, size string) *config.Config {
	return parse(t, `{"Netboot": {"Nodes": [{"Serial": "`+key+`", "Disk": {"Size": "`+size+`"}}]}}`)
}

// TestOpenSizes: the first Open makes a sparse file of the configured
// size, a larger Size grows it with its data kept, a smaller one is
// refused with the field to change.
func TestOpenSizes(t *testing.T) {
	st := openStore(t, t.TempDir())
	d, err := Open(sizeCfg(t, "1G"), st, key, Limits{})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := d.Size(), int64(1<<30); got != want {
		t.Errorf("Size: got %d, want %d", got, want)
	}
	// Sparse: a 1 GiB disk takes (almost) nothing before the node writes.
	if got := d.Allocated(); got > 64<<10 {
		t.Errorf("Allocated of a new disk: got %d bytes, want (about) 0", got)
	}
	data := bytes.Repeat([]byte("ociboot!"), 512)
	if _, err := d.WriteAt(data, 1<<20); err != nil {
		t.Fatal(err)
	}
	d.Close()

	d, err = Open(sizeCfg(t, "2G"), st, key, Limits{})
	if err != nil {
		t.Fatalf("Open with a larger Size: %v", err)
	}
	if got, want := d.Size(), int64(2<<30); got != want {
		t.Errorf("Size after growing: got %d, want %d", got, want)
	}
	got := make([]byte, len(data))
	if _, err := d.ReadAt(got, 1<<20); err != nil || !bytes.Equal(got, data) {
		t.Errorf("data after growing: err %v, equal %v", err, bytes.Equal(got, data))
	}
	if got, want := Usage(st, key), d.Allocated(); got != want || got < int64(len(data)) {
		t.Errorf("Usage: got %d, want %d (at least %d)", got, want, len(data))
	}
	d.Close()

	_, err = Open(sizeCfg(t, "1G"), st, key, Limits{})
	if err == nil {
		t.Fatal("Open with a smaller Size: no error, want a refusal")
	}
	for _, want := range []string{"never shrunk", "Netboot.Nodes[0].Disk.Size", "2G"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("shrink error %q does not say %q", err, want)
		}
	}
	// The default disk names Netboot.NodeDisk.
	_, err = Open(parse(t, `{"Netboot": {"NodeDisk": {"Size": "1G"}}}`), st, key, Limits{})
	if err == nil || !strings.Contains(err.Error(), "Netboot.NodeDisk.Size") {
		t.Errorf("shrink through NodeDisk: got %v, want an error naming Netboot.NodeDisk.Size", err)
	}
}

func TestOpenNoDisk(t *testing.T) {
	st := openStore(t, t.TempDir())
	for _, tt := range []struct {
		name, cfg, want string
	}{
		{"none", `{"Netboot": {}}`, "Netboot.NodeDisk"},
		{"off", `{"Netboot": {"NodeDisk": {}, "Nodes": [{"Serial": "` + key + `", "Disk": {"Off": true}}]}}`, "Netboot.NodeDisk"},
		{"own device", `{"Netboot": {"Nodes": [{"Serial": "` + key + `", "Disk": {"Device": "LABEL=data"}}]}}`, "Netboot.Nodes[0].Disk.Device"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Open(parse(t, tt.cfg), st, key, Limits{})
			if !errors.Is(err, ErrNoDisk) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("got %v, want ErrNoDisk naming %s", err, tt.want)
			}
			if _, err := os.Stat(st.Path("nodes", key, File)); err == nil {
				t.Errorf("a disk file was made for a node without an NBD disk")
			}
		})
	}
}

func TestBounds(t *testing.T) {
	st := openStore(t, t.TempDir())
	d, err := Open(sizeCfg(t, "1G"), st, key, Limits{})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	buf := make([]byte, 4096)
	for _, off := range []int64{-1, 1<<30 - 4095, 1 << 30, 1<<62 + 1<<61} {
		if _, err := d.WriteAt(buf, off); !errors.Is(err, unix.EINVAL) {
			t.Errorf("WriteAt %d: got %v, want EINVAL", off, err)
		}
		if _, err := d.ReadAt(buf, off); !errors.Is(err, unix.EINVAL) {
			t.Errorf("ReadAt %d: got %v, want EINVAL", off, err)
		}
	}
	if err := d.Trim(1<<30-4096, 8192); !errors.Is(err, unix.EINVAL) {
		t.Errorf("Trim past the end: got %v, want EINVAL", err)
	}
	if _, err := d.WriteAt(buf, 1<<30-4096); err != nil {
		t.Errorf("WriteAt of the last block: %v", err)
	}
}

// TestQuota: the disk and the root share the node's quota. Writes into
// holes are refused with EDQUOT at the limit; overwriting written blocks
// still works; a TRIM gives space back and writes go on.
func TestQuota(t *testing.T) {
	st := openStore(t, t.TempDir())
	const quota = 8 << 20
	const root = 2 << 20
	b := &budget.Budget{Quota: func(k string) int64 {
		if k == key {
			return quota
		}
		return 0
	}, Writes: "NBD disk"}
	d, err := Open(sizeCfg(t, "1G"), st, key, Limits{Budget: b, RootUsed: func(string) int64 { return root }})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	const chunk = 256 << 10
	data := bytes.Repeat([]byte{0xa5}, chunk)
	var off int64
	var werr error
	for ; off < 64<<20; off += chunk {
		if _, werr = d.WriteAt(data, off); werr != nil {
			break
		}
	}
	if !errors.Is(werr, unix.EDQUOT) {
		t.Fatalf("writing past the quota: got %v after %d bytes, want EDQUOT", werr, off)
	}
	if got := d.Allocated() + root; got > quota || got < quota-2*chunk {
		t.Errorf("root + disk at the refusal: %d bytes, want at most the quota %d and within two writes of it", got, quota)
	}
	// Overwriting allocated blocks needs no space.
	if _, err := d.WriteAt(bytes.Repeat([]byte{0x5a}, chunk), 0); err != nil {
		t.Errorf("overwriting written blocks at the quota: %v", err)
	}
	got := make([]byte, chunk)
	d.ReadAt(got, 0)
	if got[0] != 0x5a || got[chunk-1] != 0x5a {
		t.Errorf("overwritten block reads %x...%x, want 5a", got[0], got[chunk-1])
	}
	if err := d.Trim(0, 4*chunk); err != nil {
		t.Fatal(err)
	}
	d.ReadAt(got, 0)
	if !bytes.Equal(got, make([]byte, chunk)) {
		t.Errorf("a trimmed block does not read as zeros")
	}
	if _, err := d.WriteAt(data, off); err != nil {
		t.Errorf("writing after a trim freed space: %v", err)
	}
	// Another node without a quota is not limited.
	if err := b.MayGrow("abcd0002", d.fd, 1<<40, nil); err != nil {
		t.Errorf("node without a quota: %v", err)
	}
}

// TestReserve: on a small real file system, disk writes stop with ENOSPC
// while the reserve is still free.
func TestReserve(t *testing.T) {
	dir, _ := testenv.InTmpfs(t, 32)
	if dir == "" {
		return
	}
	st := openStore(t, dir)
	const reserve = 12 << 20
	d, err := Open(sizeCfg(t, "1G"), st, key, Limits{Budget: &budget.Budget{Reserve: reserve, Writes: "NBD disk"}})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	data := bytes.Repeat([]byte{1}, 1<<20)
	var off int64
	var werr error
	for ; off < 64<<20; off += int64(len(data)) {
		if _, werr = d.WriteAt(data, off); werr != nil {
			break
		}
	}
	if !errors.Is(werr, unix.ENOSPC) {
		t.Fatalf("filling the store: got %v after %d MiB, want ENOSPC", werr, off>>20)
	}
	free, err := budget.FreeAt(dir)
	if err != nil {
		t.Fatal(err)
	}
	if free < reserve {
		t.Errorf("free after the refusal: %d bytes, want at least the reserve %d", free, reserve)
	}
	// The head node's own state can still be saved.
	if err := store.WriteJSON(st.Path("dhcp", "leases.json"), map[string]string{"a": "b"}); err != nil {
		t.Errorf("saving state in the reserve: %v", err)
	}
	if _, err := d.WriteAt(data, 0); err != nil {
		t.Errorf("overwriting written blocks with the store at its reserve: %v", err)
	}
}

// TestDrop: a disk that is open is in use, and Drop refuses it unless
// forced; a forced drop leaves the open disk Dropped, and the next Open
// starts with a fresh one. Reset keeps a KeepOnReset disk.
func TestDrop(t *testing.T) {
	st := openStore(t, t.TempDir())
	cfg := sizeCfg(t, "1G")
	d, err := Open(cfg, st, key, Limits{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.WriteAt([]byte("data"), 0); err != nil {
		t.Fatal(err)
	}
	desc := d.Description()
	if d2, err := Open(cfg, st, key, Limits{}); err != nil {
		t.Fatal(err)
	} else {
		if got := d2.Description(); got != desc || !strings.Contains(got, key) {
			t.Errorf("Description of the same disk opened again: got %q, want %q", got, desc)
		}
		d2.Close()
	}
	if !InUse(st, key) {
		t.Errorf("InUse of an open disk: false")
	}
	if _, err := Drop(st, key, false); !errors.Is(err, ErrInUse) {
		t.Errorf("Drop of an open disk: got %v, want ErrInUse", err)
	}
	if d.Dropped() {
		t.Errorf("Dropped after a refused drop")
	}
	if _, err := Reset(cfg, st, key, false); !errors.Is(err, ErrInUse) {
		t.Errorf("Reset of an open disk: got %v, want ErrInUse", err)
	}
	if dropped, err := Drop(st, key, true); err != nil || !dropped {
		t.Fatalf("forced Drop: dropped %v, err %v", dropped, err)
	}
	if !d.Dropped() {
		t.Errorf("Dropped after a forced drop: false")
	}
	d.Close()
	if InUse(st, key) {
		t.Errorf("InUse after the drop")
	}
	d, err = Open(cfg, st, key, Limits{})
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 4)
	d.ReadAt(got, 0)
	if !bytes.Equal(got, make([]byte, 4)) {
		t.Errorf("a dropped disk's data came back: %q", got)
	}
	// A node reconnecting must be able to tell the new disk from the old.
	if got := d.Description(); got == desc {
		t.Errorf("Description of the remade disk is the dropped one's: %q", got)
	}
	d.Close()
	if InUse(st, key) {
		t.Errorf("InUse of a closed disk")
	}

	keep := parse(t, `{"Netboot": {"Nodes": [{"Serial": "`+key+`", "Disk": {"Size": "1G", "KeepOnReset": true}}]}}`)
	if dropped, err := Reset(keep, st, key, false); err != nil || dropped {
		t.Errorf("Reset with KeepOnReset: dropped %v, err %v; want kept", dropped, err)
	}
	if dropped, err := Reset(cfg, st, key, false); err != nil || !dropped {
		t.Errorf("Reset of a closed disk: dropped %v, err %v", dropped, err)
	}
	if dropped, err := Drop(st, key, false); err != nil || dropped {
		t.Errorf("Drop without a disk: dropped %v, err %v; want nothing to do", dropped, err)
	}
	if got := Stat(st, key); got.Exists {
		t.Errorf("Stat after the drop: %+v", got)
	}
}
