package nfsd

import (
	"crypto/rand"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ociboot/ociboot/appliance/testenv"
)

// The store's budget for node writes (appliance/nfs/budget.go) with
// clients nobody here wrote, on a small real file system: a tmpfs in a
// mount namespace of the test's own (testenv.InTmpfs).

const reserveMiB = 64

// startBudget runs nfsd on a store in dir with -reserve_mib reserveMiB and
// Netboot.NodeQuota quota.
func startBudget(t *testing.T, dir, quota string, fill func(string) error) *Nfsd {
	t.Helper()
	s, err := NewNfsd(t, dir, fill)
	if err != nil {
		t.Fatal(err)
	}
	cfg := `{"Netboot": {"DefaultImage": "` + Ref + `", "ExportTo": ["127.0.0.0/8"], "NodeQuota": "` + quota + `"}}`
	if err := os.WriteFile(s.Config, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	// The kernel client in QEMU reaches nfsd through QEMU's NAT, from an
	// unprivileged port; libnfs as root binds a privileged one either way.
	s.InsecurePorts = true
	s.Args = []string{"-reserve_mib", fmt.Sprint(reserveMiB)}
	if err := s.Start(30 * time.Second); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		s.Kill()
		s.CheckReplies(t)
	})
	return s
}

// fillStore writes a file beside the store (what another node or an image
// would take) so that leave bytes are free.
func fillStore(dir string, leave int64) error {
	var sf unix.Statfs_t
	if err := unix.Statfs(dir, &sf); err != nil {
		return err
	}
	n := int64(sf.Bavail)*sf.Bsize - leave
	if n <= 0 {
		return fmt.Errorf("only %d bytes free, want to leave %d", int64(sf.Bavail)*sf.Bsize, leave)
	}
	f, err := os.Create(filepath.Join(dir, "filler"))
	if err != nil {
		return err
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	for n > 0 {
		m := min(n, int64(len(buf)))
		if _, err := f.Write(buf[:m]); err != nil {
			return err
		}
		n -= m
	}
	return f.Sync()
}

// metric reads one sample from nfsd's /metrics (its status address is in
// its log).
func (s *Nfsd) metric(t *testing.T, sample string) float64 {
	t.Helper()
	m := regexp.MustCompile(`msg="status listening" service=nfsd addr=(\S+)`).FindStringSubmatch(s.Log())
	if m == nil {
		t.Fatalf("no status address in nfsd's log:\n%s", s.Log())
	}
	resp, err := http.Get("http://" + m[1] + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, sample+" "); ok {
			f, _ := strconv.ParseFloat(v, 64)
			return f
		}
	}
	return 0
}

func storeFree(t *testing.T, dir string) int64 {
	var sf unix.Statfs_t
	if err := unix.Statfs(dir, &sf); err != nil {
		t.Fatal(err)
	}
	return int64(sf.Bavail) * sf.Bsize
}

// TestLibnfsQuotaAndReserve: libnfs's nfs-cp of a file larger than the
// node's quota fails with NFS3ERR_DQUOT near the quota; with the store
// down to nfsd's reserve, another node's copy fails with NFS3ERR_NOSPC and
// the reserve stays free.
func TestLibnfsQuotaAndReserve(t *testing.T) {
	dir, _ := testenv.InTmpfs(t, 160)
	if dir == "" {
		return
	}
	testenv.NeedTool(t, "nfs-cp", "libnfs-utils")
	s := startBudget(t, dir, "8M", func(root string) error {
		os.MkdirAll(filepath.Join(root, "etc"), 0o755)
		return os.WriteFile(filepath.Join(root, "etc/motd"), []byte("welcome\n"), 0o644)
	})
	src := filepath.Join(dir, "src.bin")
	data := make([]byte, 16<<20)
	rand.Read(data)
	if err := os.WriteFile(src, data, 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := libnfs(t, "nfs-cp", src, s.url("/nodes/aabbccdd/big.bin"))
	t.Logf("nfs-cp past the quota: %v: %s", err, out)
	if err == nil {
		t.Errorf("nfs-cp of 16 MiB into a node with an 8 MiB quota succeeded")
	}
	// nfs-cp prints no status; nfsd's metrics count what it answered.
	if got := s.metric(t, `ociboot_nfsd_errors_total{proc="WRITE",status="NFS3ERR_DQUOT"}`); got < 1 {
		t.Errorf("WRITE replies with NFS3ERR_DQUOT (69): %v, want at least 1", got)
	}
	if got := s.metric(t, `ociboot_nfsd_node_used_bytes{node="aabbccdd"}`); got < 7<<20 || got > 9<<20 {
		t.Errorf("ociboot_nfsd_node_used_bytes of the node at its 8 MiB quota: %v", got)
	}
	if got := s.metric(t, `ociboot_nfsd_node_quota_bytes{node="aabbccdd"}`); got != 8<<20 {
		t.Errorf("ociboot_nfsd_node_quota_bytes: %v, want %d", got, 8<<20)
	}
	if fi, err := os.Stat(filepath.Join(s.View("aabbccdd"), "big.bin")); err != nil || fi.Size() > 9<<20 {
		t.Errorf("big.bin in the node's view: %v, %v; want at most the quota and a write", fi, err)
	}
	if out, err := libnfs(t, "nfs-cat", s.url("/nodes/aabbccdd/etc/motd")); err != nil || out != "welcome\n" {
		t.Errorf("nfs-cat at the quota: %q, %v", out, err)
	}
	os.Remove(filepath.Join(s.View("aabbccdd"), "big.bin"))

	// The store nearly full: 4 MiB above the reserve are left.
	if err := fillStore(dir, (reserveMiB+4)<<20); err != nil {
		t.Fatal(err)
	}
	out, err = libnfs(t, "nfs-cp", src, s.url("/nodes/aabbccde/big.bin"))
	t.Logf("nfs-cp into the reserve: %v: %s", err, out)
	if err == nil {
		t.Errorf("nfs-cp of 16 MiB with 4 MiB above the reserve succeeded")
	}
	if got := s.metric(t, `ociboot_nfsd_errors_total{proc="WRITE",status="NFS3ERR_NOSPC"}`); got < 1 {
		t.Errorf("WRITE replies with NFS3ERR_NOSPC (28): %v, want at least 1", got)
	}
	if free := storeFree(t, dir); free < reserveMiB<<20 {
		t.Errorf("%d MiB free after the node was refused; the reserve is %d MiB", free>>20, reserveMiB)
	}
	for _, want := range []string{"NFS3ERR_DQUOT", "NFS3ERR_NOSPC", "node=aabbccdd used_mib", "node=aabbccde free_mib"} {
		if !strings.Contains(s.Log(), want) {
			t.Errorf("nfsd's log lacks %q:\n%s", want, s.Log())
		}
	}
}

// QuotaInit is /sbin/init of the kernel client's quota test: dd past the
// node's quota must fail with "Disk quota exceeded"; after rm, writing
// works again. Then the host fills the store to 8 MiB above nfsd's
// reserve: dd must fail with "No space left on device", and after rm
// writing works again.
const QuotaInit = `#!/bin/sh
export PATH=/bin:/sbin
mount -t proc proc /proc 2>/dev/null
mount -t sysfs sys /sys 2>/dev/null
mount -t devtmpfs dev /dev 2>/dev/null
mount -t tmpfs run /run
fails=
say() { echo "NFSTEST $*"; }
ok() { say "ok $1"; }
bad() { say "bad $1: $2"; fails="$fails $1"; }
# refused CHECK ERRNO-TEXT: dd of 64 MiB must fail with that text
refused() {
  out=$(dd if=/dev/zero of=/t/big bs=1M count=64 conv=fsync 2>&1); rc=$?
  say "$1 dd rc=$rc wrote $(stat -c %s /t/big 2>/dev/null) bytes: $(echo $out | tr '\n' ' ')"
  case "$rc:$out" in
    0:*) bad "$1" "dd of 64 MiB succeeded";;
    *"$2"*) ok "$1";;
    *) bad "$1" "dd failed without \"$2\": $out";;
  esac
}
# again CHECK: after rm, 4 MiB can be written and read back
again() {
  if rm /t/big; then ok "$1-rm"; else bad "$1-rm" "rm failed"; fi
  sync
  if out=$(dd if=/dev/zero of=/t/again bs=1M count=4 conv=fsync 2>&1); then ok "$1-write-again"; else bad "$1-write-again" "$out"; fi
  echo 3 > /proc/sys/vm/drop_caches
  [ "$(stat -c %s /t/again)" = 4194304 ] && ok "$1-size" || bad "$1-size" "$(stat -c %s /t/again)"
  rm -f /t/again; sync
}
refused quota "Disk quota exceeded"
again quota
say FILL-NOW
read line
refused reserve "No space left on device"
again reserve
sync
if [ -z "$fails" ]; then say PASS; else say "FAIL$fails"; fi
sleep 1
poweroff -f
`

// TestKernelClientQuotaAndReserve boots the Linux kernel's NFS client in
// QEMU with its root on nfsd (QuotaInit): dd gets EDQUOT at the node's
// quota and ENOSPC at nfsd's reserve, rm works and writing works again.
func TestKernelClientQuotaAndReserve(t *testing.T) {
	needKernelClient(t)
	dir, out := testenv.InTmpfs(t, 192)
	if dir == "" {
		for _, l := range strings.Split(out, "\n") {
			if strings.Contains(l, "guest:") {
				t.Log(strings.TrimSpace(l))
			}
		}
		return
	}
	srv := startBudget(t, dir, "24M", func(root string) error {
		if err := WriteImage(root); err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(root, "sbin/init"), []byte(QuotaInit), 0o755)
	})
	run := &KernelRun{Server: srv, NFSPort: srv.Port, MountPort: srv.Port, Export: "/nodes/" + nodeKey, Dir: t.TempDir(), Logf: t.Logf, View: srv.View(nodeKey),
		Steps: []Step{{Line: "NFSTEST FILL-NOW", Input: "filled", Do: func() error {
			return fillStore(dir, (reserveMiB+8)<<20)
		}}}}
	runKernel(t, run)
	for _, l := range strings.Split(run.Console, "\n") {
		if strings.Contains(l, "dd rc=") {
			t.Logf("guest: %s", strings.TrimSpace(l))
		}
	}
	if free := storeFree(t, dir); free < reserveMiB<<20 {
		t.Errorf("%d MiB free after the node was refused; the reserve is %d MiB", free>>20, reserveMiB)
	}
	if t.Failed() {
		t.Logf("nfsd log tail:\n%s", srv.Log())
	}
}
