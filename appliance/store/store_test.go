package store

import (
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ociboot/ociboot/appliance/testenv"
)

func TestOpenCreatesAreas(t *testing.T) {
	root := filepath.Join(t.TempDir(), "perm", "ociboot")
	s, err := Open(root, Options{AllowTmpfs: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, area := range []string{OCIDir, ImagesDir, NodesDir, DHCPDir} {
		if fi, err := os.Stat(s.Path(area)); err != nil || !fi.IsDir() {
			t.Errorf("area %s: %v", area, err)
		}
	}
	left, _ := filepath.Glob(filepath.Join(root, ".probe-*"))
	if len(left) != 0 {
		t.Errorf("probe files left behind: %v", left)
	}
}

// inMountNS runs the named helper test in a new mount namespace after setup
// (a shell snippet working on $D, a fresh temp dir) and returns its output.
func inMountNS(t *testing.T, setup, helper string) string {
	t.Helper()
	testenv.NeedRoot(t, "a mount namespace")
	if out, err := exec.Command("unshare", "-m", "true").CombinedOutput(); err != nil {
		testenv.Need(t, "no mount namespaces (unshare -m: %v %s)", err, out)
	}
	cmd := exec.Command("unshare", "-m", "sh", "-c", setup+" && exec \"$0\" -test.run \"^"+helper+"$\" -test.v", os.Args[0])
	cmd.Env = append(os.Environ(), "D="+t.TempDir(), "OCIBOOT_STORE_HELPER=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%v: %v\n%s", cmd.Args, err, out)
	}
	return string(out)
}

func TestOpenReadOnly(t *testing.T) {
	if os.Geteuid() != 0 {
		dir := t.TempDir()
		if err := os.Chmod(dir, 0o555); err != nil {
			t.Fatal(err)
		}
		_, err := Open(filepath.Join(dir, "store"), Options{AllowTmpfs: true})
		if err == nil || !strings.Contains(err.Error(), "not writable") {
			t.Errorf("Open on read-only dir: got %v, want 'not writable'", err)
		}
		return
	}
	// root ignores permissions: use a read-only bind mount, as /perm is on
	// an appliance without a perm partition.
	out := inMountNS(t, `mount --bind "$D" "$D" && mount -o remount,bind,ro "$D"`, "TestOpenHelper")
	if !strings.Contains(out, "is read-only") {
		t.Errorf("want the read-only message, got:\n%s", out)
	}
}

func TestOpenTmpfsRefused(t *testing.T) {
	out := inMountNS(t, `mount -t tmpfs tmpfs "$D"`, "TestOpenHelper")
	if !strings.Contains(out, "is on tmpfs") {
		t.Errorf("want the tmpfs refusal, got:\n%s", out)
	}
}

// TestOpenHelper prints what Open says about $D/store; the tests above run it
// inside their mount namespaces.
func TestOpenHelper(t *testing.T) {
	testenv.OptIn(t, "OCIBOOT_STORE_HELPER", "helper for TestOpenReadOnly and TestOpenTmpfsRefused")
	_, err := Open(filepath.Join(os.Getenv("D"), "store"), Options{})
	t.Logf("Open: %v", err)
}

func TestWriteFileAtomic(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "leases.json")
	if err := WriteFile(p, []byte("one"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := WriteFile(p, []byte("two"), 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(p)
	if err != nil || string(got) != "two" {
		t.Errorf("ReadFile: got %q, %v; want %q", got, err, "two")
	}
	fi, _ := os.Stat(p)
	if got, want := fi.Mode().Perm(), fs.FileMode(0o644); got != want {
		t.Errorf("mode: got %v, want %v", got, want)
	}
	entries, _ := os.ReadDir(dir)
	if got, want := len(entries), 1; got != want {
		t.Errorf("dir has %d entries, want %d (temp files left?)", got, want)
	}
}

func TestWriteFileFailureKeepsOld(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "f")
	if err := WriteFile(p, []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	// A directory in the way makes the rename fail after the temp file was
	// written: the old content must stay and no temp file may remain.
	q := filepath.Join(dir, "sub")
	os.Mkdir(q, 0o755)
	os.WriteFile(filepath.Join(q, "x"), nil, 0o644)
	if err := WriteFile(q, []byte("new"), 0o644); err == nil {
		t.Fatal("WriteFile onto a non-empty dir: got nil error")
	}
	if got, _ := os.ReadFile(p); string(got) != "old" {
		t.Errorf("old file: got %q", got)
	}
	left, _ := filepath.Glob(filepath.Join(dir, ".*tmp-*"))
	if len(left) != 0 {
		t.Errorf("temp files left: %v", left)
	}
}

func TestJSONRoundTripAndCorrupt(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "rec.json")
	type rec struct{ A string }
	if err := WriteJSON(p, rec{A: "x"}); err != nil {
		t.Fatal(err)
	}
	var r rec
	if err := ReadJSON(p, &r); err != nil || r.A != "x" {
		t.Errorf("ReadJSON: got %+v, %v", r, err)
	}
	if err := ReadJSON(filepath.Join(dir, "missing"), &r); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing file: got %v, want ErrNotExist", err)
	}
	os.WriteFile(p, []byte("{trunc"), 0o644)
	if err := ReadJSON(p, &r); err == nil || !strings.Contains(err.Error(), "corrupt") {
		t.Errorf("corrupt file: got %v", err)
	}
}

func TestCleanTemps(t *testing.T) {
	dir := t.TempDir()
	final := filepath.Join(dir, "sha256-abc")
	tmp, err := TempDir(final)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(tmp, "half"), []byte("x"), 0o644)
	os.WriteFile(filepath.Join(dir, "keep"), nil, 0o644)
	if err := CleanTemps(dir); err != nil {
		t.Fatal(err)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 || entries[0].Name() != "keep" {
		t.Errorf("after CleanTemps: %v", entries)
	}
}

func TestValidName(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want bool
	}{
		{"abcd1234", true}, {"", false}, {".", false}, {"..", false},
		{"../x", false}, {"a/b", false}, {".hidden", false}, {"a\x00", false},
	} {
		if got := ValidName(tt.in); got != tt.want {
			t.Errorf("ValidName(%q) = %v, want %v", tt.in, got, tt.want)
		}
	}
}
