package nfsd

import (
	"crypto/md5"
	"encoding/hex"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ociboot/ociboot/appliance/testenv"
	"github.com/ociboot/ociboot/tests/guest"
	"github.com/ociboot/ociboot/tests/lab"
)

// nodeKey is the node whose export the guest mounts (/nodes/<key>).
const nodeKey = "aabbccdd"

func needKernelClient(t *testing.T) {
	t.Helper()
	testenv.Short(t, "boots QEMU")
	testenv.NeedRoot(t, "the image tree has files of other owners, setuid bits and device nodes")
	lab.NeedQEMU(t, "x86_64")
	if _, err := guest.HostKernel(); err != nil {
		testenv.Need(t, "%v", err)
	}
	if _, err := guest.Busybox(); err != nil {
		testenv.Need(t, "%v", err)
	}
}

// TestKernelClient boots the Linux kernel's NFSv3 client in QEMU with its
// root on our nfsd (export /nodes/aabbccdd, the node's view of the image
// WriteImage builds). The guest's init (InitScript) checks modes, owners,
// hard links, renames, a 64 MB file, symlinks, directories and device nodes;
// halfway through, nfsd is killed with SIGKILL and started again on the same
// port and store while the guest keeps files, a directory and its cwd open.
// Afterwards the image tree must be unchanged to the byte, mode, owner,
// mtime and inode, and the node's view must hold what the guest wrote.
func TestKernelClient(t *testing.T) {
	needKernelClient(t)
	dir := t.TempDir()
	srv, err := NewNfsd(t, dir, WriteImage)
	if err != nil {
		t.Fatal(err)
	}
	before, err := Manifest(srv.Image)
	if err != nil {
		t.Fatal(err)
	}
	srv.InsecurePorts = true // the guest reaches nfsd through QEMU's NAT
	if err := srv.Start(30 * time.Second); err != nil {
		t.Fatalf("nfsd: %v", err)
	}
	t.Cleanup(srv.Kill)
	run := &KernelRun{Server: srv, NFSPort: srv.Port, MountPort: srv.Port, Export: "/nodes/" + nodeKey, Dir: dir, Logf: t.Logf, View: srv.View(nodeKey)}
	runKernel(t, run)
	checkImage(t, srv.Image, before)
	checkView(t, srv.View(nodeKey), run.BigMD5)
	srv.CheckReplies(t)
	if t.Failed() {
		t.Logf("nfsd log tail:\n%s", srv.Log())
	}
}

// runKernel runs the guest and reports every failed check.
func runKernel(t *testing.T, run *KernelRun) {
	t.Helper()
	err := run.Run(t)
	for _, b := range run.Bad {
		t.Errorf("guest: %s", b)
	}
	if err != nil {
		t.Fatal(err)
	}
	if len(run.Bad) > 0 {
		tail := run.Console
		if len(tail) > 4000 {
			tail = tail[len(tail)-4000:]
		}
		t.Logf("console tail:\n%s", tail)
	}
}

// checkImage compares the image tree with its manifest before the run.
func checkImage(t *testing.T, image string, before map[string]string) {
	t.Helper()
	after, err := Manifest(image)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range DiffManifests(before, after) {
		t.Errorf("image tree changed: %s", d)
	}
}

// checkView checks the node's view on the host against what the guest did.
func checkView(t *testing.T, view, bigMD5 string) {
	t.Helper()
	for rel, want := range ViewAfter {
		got, err := os.ReadFile(filepath.Join(view, rel))
		if err != nil {
			t.Errorf("view: %v", err)
		} else if string(got) != want {
			t.Errorf("view: %s holds %q, want %q", rel, got, want)
		}
	}
	for _, rel := range ViewGone {
		if _, err := os.Lstat(filepath.Join(view, rel)); err == nil {
			t.Errorf("view: %s still exists", rel)
		}
	}
	f, err := os.Open(filepath.Join(view, "big.bin"))
	if err != nil {
		t.Errorf("view: %v", err)
		return
	}
	defer f.Close()
	h := md5.New()
	io.Copy(h, f)
	if got := hex.EncodeToString(h.Sum(nil)); got != bigMD5 {
		t.Errorf("view: big.bin has md5 %s, the guest wrote %s", got, bigMD5)
	}
}
