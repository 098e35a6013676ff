package nfsd

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ociboot/ociboot/appliance/testenv"
	"github.com/ociboot/ociboot/tests/lab"
)

// startForLibnfs runs nfsd on a loopback port with a small image: etc/motd,
// bin/su (setuid), a 1777 tmp and a symlink.
func startForLibnfs(t *testing.T) *Nfsd {
	t.Helper()
	testenv.NeedRoot(t, "nfsd sets owners")
	for _, tool := range []string{"nfs-ls", "nfs-cp", "nfs-cat"} {
		testenv.NeedTool(t, tool, "libnfs-utils")
	}
	dir := t.TempDir()
	s, err := NewNfsd(t, dir, func(root string) error {
		for _, d := range []string{"etc", "bin", "tmp"} {
			os.MkdirAll(filepath.Join(root, d), 0o755)
		}
		os.WriteFile(filepath.Join(root, "etc/motd"), []byte("welcome to the node\n"), 0o644)
		os.WriteFile(filepath.Join(root, "bin/su"), []byte("su"), 0o755)
		syscall.Chmod(filepath.Join(root, "bin/su"), 0o4755)
		syscall.Chmod(filepath.Join(root, "tmp"), 0o1777)
		return os.Symlink("/etc/motd", filepath.Join(root, "etc/issue"))
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(30 * time.Second); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		s.Kill()
		s.CheckReplies(t)
	})
	return s
}

func (s *Nfsd) url(p string) string {
	return fmt.Sprintf("nfs://127.0.0.1%s?nfsport=%d&mountport=%d&version=3", p, s.Port, s.Port)
}

func libnfs(t *testing.T, args ...string) (string, error) {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	return string(out), err
}

// TestLibnfsClients: the libnfs command-line clients list, read and write a
// node's root; writes land in the node's view, never in the image.
func TestLibnfsClients(t *testing.T) {
	s := startForLibnfs(t)
	out, err := libnfs(t, "nfs-ls", "-R", s.url("/nodes/aabbccdd"))
	if err != nil {
		t.Fatalf("nfs-ls: %v\n%s\nnfsd:\n%s", err, out, s.Log())
	}
	// (nfs-ls prints only the rwx bits; the kernel test checks setuid,
	// setgid and sticky.)
	for _, want := range []string{"-rwxr-xr-x  1     0     0            2 bin/su", "lrwxrwxrwx", "etc/issue", "etc/motd"} {
		if !strings.Contains(out, want) {
			t.Errorf("nfs-ls -R output lacks %q:\n%s", want, out)
		}
	}
	out, err = libnfs(t, "nfs-cat", s.url("/nodes/aabbccdd/etc/motd"))
	if err != nil || out != "welcome to the node\n" {
		t.Errorf("nfs-cat etc/motd = %q, %v", out, err)
	}

	data := make([]byte, 5<<20+123)
	rand.Read(data)
	local := filepath.Join(t.TempDir(), "blob")
	os.WriteFile(local, data, 0o644)
	if out, err := libnfs(t, "nfs-cp", local, s.url("/nodes/aabbccdd/tmp/blob")); err != nil {
		t.Fatalf("nfs-cp up: %v\n%s", err, out)
	}
	back := local + ".back"
	if out, err := libnfs(t, "nfs-cp", s.url("/nodes/aabbccdd/tmp/blob"), back); err != nil {
		t.Fatalf("nfs-cp down: %v\n%s", err, out)
	}
	if got, _ := os.ReadFile(back); !bytes.Equal(got, data) {
		t.Errorf("round trip through nfsd changed %d bytes into %d", len(data), len(got))
	}
	if got, _ := os.ReadFile(filepath.Join(s.View("aabbccdd"), "tmp", "blob")); !bytes.Equal(got, data) {
		t.Error("the node's view does not hold what was written")
	}
	if _, err := os.Stat(filepath.Join(s.Image, "tmp", "blob")); err == nil {
		t.Error("a write reached the image tree")
	}
	// Another node has its own root.
	if out, _ := libnfs(t, "nfs-ls", s.url("/nodes/11223344/tmp")); strings.Contains(out, "blob") {
		t.Errorf("node 11223344 sees node aabbccdd's file:\n%s", out)
	}
	// A restart keeps everything.
	s.Kill()
	if err := s.Start(30 * time.Second); err != nil {
		t.Fatal(err)
	}
	if out, err := libnfs(t, "nfs-cat", s.url("/nodes/aabbccdd/tmp/blob")); err != nil || out != string(data) {
		t.Errorf("after a restart nfs-cat tmp/blob gives %d bytes, %v", len(out), err)
	}

	// Reset through the status port: the node's changes are gone, its
	// image's files are back.
	_, rest, ok := strings.Cut(s.Log(), `msg="status listening" service=nfsd addr=`)
	if !ok {
		t.Fatalf("no status address in the log:\n%s", s.Log())
	}
	addr, _, _ := strings.Cut(rest, "\n")
	// The root is mounted and was just used: refused without force,
	// and a serial nobody knows is refused too.
	for _, tt := range []struct{ query, want string }{
		{"node=aabbccdd", "409"},
		{"node=0badc0de&force=1", "404"},
	} {
		out, _ = libnfs(t, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST", "http://"+addr+"/reset?"+tt.query)
		if out != tt.want {
			t.Errorf("POST /reset?%s: got HTTP %s, want %s", tt.query, out, tt.want)
		}
	}
	if out, _ := libnfs(t, "nfs-ls", s.url("/nodes/aabbccdd/tmp")); !strings.Contains(out, "blob") {
		t.Errorf("a refused reset dropped the root: tmp lists %q", out)
	}
	out, err = libnfs(t, "curl", "-sf", "-X", "POST", "http://"+addr+"/reset?node=aabbccdd&force=1")
	if err != nil {
		t.Fatalf("POST /reset: %v\n%s", err, out)
	}
	if out, err := libnfs(t, "nfs-ls", s.url("/nodes/aabbccdd/tmp")); err != nil || strings.Contains(out, "blob") {
		t.Errorf("after reset tmp lists %q (%v), want no blob", out, err)
	}
	if out, err := libnfs(t, "nfs-cat", s.url("/nodes/aabbccdd/etc/motd")); err != nil || out != "welcome to the node\n" {
		t.Errorf("after reset etc/motd = %q, %v", out, err)
	}
}

// TestLibnfsRefusedAndUnknown: an address outside ExportTo that is no
// node's gets no mount; a path that is no node's export neither.
func TestLibnfsRefusedAndUnknown(t *testing.T) {
	s := startForLibnfs(t)
	if out, err := libnfs(t, "nfs-ls", s.url("/images")); err == nil {
		t.Errorf("nfs-ls /images succeeded:\n%s", out)
	}
	s.Kill()
	os.WriteFile(s.Config, []byte(`{"Netboot": {"DefaultImage": "`+Ref+`", "ExportTo": ["10.99.0.0/16"]}}`), 0o644)
	if err := s.Start(30 * time.Second); err != nil {
		t.Fatal(err)
	}
	out, err := libnfs(t, "nfs-ls", s.url("/nodes/aabbccdd"))
	if err == nil || !strings.Contains(out, "MNT3ERR_ACCES") {
		t.Errorf("nfs-ls from an address that is not the node's: %v\n%s", err, out)
	}
	// The log arrives through a pipe: wait for the line, do not race it.
	if _, err := s.proc.WaitLine(10*time.Second, "mount refused"); err != nil {
		t.Errorf("nfsd did not log the refusal: %v\n%s", err, s.Log())
	}
}

// TestLibnfsThroughPortmapper: with no ports in the URL libnfs asks the
// portmapper on 111 for MOUNT and NFS, as klibc's nfsmount does; nfsd runs
// on its standard ports inside a network namespace of its own.
func TestLibnfsThroughPortmapper(t *testing.T) {
	s := startForLibnfs(t)
	s.Kill()
	ns := lab.NewNS(t, "nfsd")
	p := lab.Cmd{Name: "nfsd-ns", NS: ns, Log: filepath.Join(s.Dir, "nfsd-ns.log"),
		Args: []string{s.Bin, "-config", s.Config, "-store", s.Store, "-allow_tmpfs", "-status", "127.0.0.1:0", "-reply_log", s.ReplyLog(100)}}.Start(t)
	if _, err := p.WaitLine(30*time.Second, `what=portmap`); err != nil {
		t.Fatalf("%v\n%s", err, p.Tail(3000))
	}
	out, err := exec.Command("ip", "netns", "exec", ns, "nfs-cat", "nfs://127.0.0.1/nodes/aabbccdd/etc/motd").CombinedOutput()
	if err != nil || string(out) != "welcome to the node\n" {
		t.Errorf("nfs-cat through the portmapper: %q, %v\n%s", out, err, p.Tail(3000))
	}

	// rpcbind's and nfs-common's own tools: the portmap v2 and rpcbind v4
	// dumps, NULL calls over the UDP and TCP ports they name, and MOUNT's
	// EXPORT with who may mount.
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"rpcinfo", "-p", "127.0.0.1"}, []string{"100003    3   tcp   2049  nfs", "100005    3   udp   2049  mountd"}},
		{[]string{"rpcinfo", "127.0.0.1"}, []string{"100003    3    tcp       127.0.0.1.8.1"}},
		{[]string{"rpcinfo", "-u", "127.0.0.1", "mountd", "3"}, []string{"program 100005 version 3 ready and waiting"}},
		{[]string{"rpcinfo", "-t", "127.0.0.1", "nfs", "3"}, []string{"program 100003 version 3 ready and waiting"}},
		{[]string{"showmount", "-e", "127.0.0.1"}, []string{"/nodes/aabbccdd 127.0.0.0/8"}},
	} {
		if _, err := testenv.LookPath(tc.args[0]); err != nil {
			testenv.Need(t, "%s not installed: install the Debian packages rpcbind and nfs-common", tc.args[0])
		}
		out, err := exec.Command("ip", append([]string{"netns", "exec", ns}, tc.args...)...).CombinedOutput()
		for _, want := range tc.want {
			if err != nil || !strings.Contains(string(out), want) {
				t.Errorf("%v: %v, want %q in:\n%s", tc.args, err, want, out)
			}
		}
	}
}
