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

// TestMountPaths checks the setup the cluster boot benchmark gives a
// kernel command line made for nfsd: directories exported under other
// mount paths, MOUNT registered with rpcbind on UDP as well as TCP (klibc's
// nfsmount asks the portmapper), and a file read through the mount path.
func TestMountPaths(t *testing.T) {
	testenv.Short(t, "runs nfs-ganesha in a network namespace")
	testenv.NeedTool(t, "nfs-cat", "libnfs-utils")
	testenv.NeedTool(t, "rpcinfo", "rpcbind")
	a, b := t.TempDir(), t.TempDir()
	os.WriteFile(filepath.Join(a, "who"), []byte("a\n"), 0o644)
	os.WriteFile(filepath.Join(b, "who"), []byte("b\n"), 0o644)
	s := StartWith(t, Options{MountPaths: []string{"/nodes/0001", "/nodes/0002"}, UDP: true}, a, b)

	out, err := s.Command("rpcinfo", "-p", "127.0.0.1").CombinedOutput()
	if err != nil {
		t.Fatalf("rpcinfo -p: %v\n%s", err, out)
	}
	for _, want := range []string{"100005    3   udp", "100005    3   tcp", "100003    3   tcp"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("rpcinfo -p lacks %q:\n%s", want, out)
		}
	}
	for _, c := range []struct{ path, want string }{{"/nodes/0001/who", "a\n"}, {"/nodes/0002/who", "b\n"}} {
		out, err := s.Command("nfs-cat", s.URL(c.path)).CombinedOutput()
		if got := string(out); err != nil || got != c.want {
			t.Errorf("nfs-cat %s: got %q (%v), want %q", c.path, got, err, c.want)
		}
	}
}
