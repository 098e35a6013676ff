package nodes

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ociboot/ociboot/appliance/store"
)

func openStore(t *testing.T) *store.Store {
	t.Helper()
	st, err := store.Open(t.TempDir(), store.Options{AllowTmpfs: true})
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func TestSaveLoadList(t *testing.T) {
	st := openStore(t)
	now := time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)
	for _, s := range []string{"bbbb0002", "aaaa0001"} {
		if err := Save(st, Record{Serial: s, MAC: "dc:a6:32:00:00:01", Enrolled: now, LastSeen: now}); err != nil {
			t.Fatal(err)
		}
	}
	rec, err := Load(st, "aaaa0001")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := rec.MAC, "dc:a6:32:00:00:01"; got != want {
		t.Errorf("MAC: got %q, want %q", got, want)
	}
	if _, err := Load(st, "cccc0003"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("unknown node: got %v, want ErrNotExist", err)
	}
	// A corrupt record is reported, the others still listed.
	os.MkdirAll(st.Path(store.NodesDir, "dddd0004"), 0o755)
	os.WriteFile(st.Path(store.NodesDir, "dddd0004", "node.json"), []byte("{"), 0o644)
	recs, errs := List(st)
	if got, want := len(recs), 2; got != want {
		t.Fatalf("List: got %d records, want %d", got, want)
	}
	if got, want := recs[0].Serial, "aaaa0001"; got != want {
		t.Errorf("List order: got %q first, want %q", got, want)
	}
	if got, want := len(errs), 1; got != want {
		t.Errorf("List errors: got %v, want one", errs)
	}
}

func TestHostileSerial(t *testing.T) {
	st := openStore(t)
	for _, bad := range []string{"../escape", "", "..", "a/b"} {
		if err := Save(st, Record{Serial: bad}); err == nil {
			t.Errorf("Save(%q): got nil error", bad)
		}
	}
	if _, err := os.Stat(filepath.Join(st.Root, "escape")); err == nil {
		t.Error("a record escaped the nodes dir")
	}
}

func TestProgressTakesFurthestStageAndNewestError(t *testing.T) {
	st := openStore(t)
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	SaveStage(st, "aaaa0001", "dhcpd", Stage{Stage: StageDHCP, Time: t0.Add(3 * time.Second)})
	SaveStage(st, "aaaa0001", "tftpd", Stage{Stage: StageKernel, Time: t0.Add(time.Second), Detail: "kernel8.img",
		LastError: "old", ErrorTime: t0})
	SaveStage(st, "aaaa0001", "nfsd", Stage{LastError: "mount refused", ErrorTime: t0.Add(time.Minute)})
	p, err := Progress(st, "aaaa0001")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := p.Stage, StageKernel; got != want {
		t.Errorf("stage: got %q, want %q", got, want)
	}
	if got, want := p.LastError, "mount refused"; got != want {
		t.Errorf("error: got %q, want %q", got, want)
	}
}
