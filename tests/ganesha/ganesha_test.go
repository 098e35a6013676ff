package ganesha

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ociboot/ociboot/appliance/testenv"
)

// TestStart checks the reference server itself with libnfs-utils: a file
// written through NFS lands in the export, and one on disk reads back.
func TestStart(t *testing.T) {
	testenv.Short(t, "runs nfs-ganesha in a network namespace")
	for _, tool := range []string{"nfs-cp", "nfs-cat", "nfs-ls"} {
		testenv.NeedTool(t, tool, "libnfs-utils")
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "hello"), []byte("hello from disk\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	s := Start(t, dir)

	out, err := s.Command("nfs-cat", s.URL(dir+"/hello")).CombinedOutput()
	if err != nil || string(out) != "hello from disk\n" {
		t.Fatalf("nfs-cat: %v %q", err, out)
	}
	local := filepath.Join(t.TempDir(), "up")
	os.WriteFile(local, []byte("hello over nfs\n"), 0o644)
	if out, err := s.Command("nfs-cp", local, s.URL(dir+"/up")).CombinedOutput(); err != nil {
		t.Fatalf("nfs-cp: %v\n%s", err, out)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "up")); err != nil || string(b) != "hello over nfs\n" {
		t.Fatalf("written file: %v %q", err, b)
	}
	out, err = s.Command("nfs-ls", s.URL(dir)).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "hello") || !strings.Contains(string(out), "up") {
		t.Fatalf("nfs-ls: %v\n%s", err, out)
	}
}
