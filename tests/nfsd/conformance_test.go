package nfsd

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ociboot/ociboot/appliance/testenv"
	"github.com/ociboot/ociboot/tests/ganesha"
	"github.com/ociboot/ociboot/tests/guest"
	"github.com/ociboot/ociboot/tests/lab"
)

// posixInit is /sbin/init of the conformance guest: its root is nfsd's
// export, it mounts nfs-ganesha's export and a tmpfs beside it and runs
// posixcases in each.
const posixInit = `#!/bin/sh
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs run /run
# The node's own setting, which the servers never see: they apply their
# host's (1 on Debian).
echo 0 > /proc/sys/fs/protected_hardlinks
for arg in $(cat /proc/cmdline); do
  case "$arg" in posix_g=*) g="${arg#posix_g=}";; esac
done
gport=${g%%:*}; rest=${g#*:}; gmport=${rest%%:*}; gpath=${rest#*:}
mkdir -p /run/g /run/local
mount -t tmpfs local /run/local
if ! mount -t nfs -o vers=3,proto=tcp,mountproto=tcp,nolock,port=$gport,mountport=$gmport,addr=10.0.2.2,mountaddr=10.0.2.2 10.0.2.2:$gpath /run/g; then
  echo "POSIX ganesha mount-failed"
fi
/bin/posixcases /posix nfsd
/bin/posixcases /run/g ganesha
/bin/posixcases /run/local local
echo "POSIX all-done"
poweroff -f
`

var posixLine = regexp.MustCompile(`(?m)^POSIX (nfsd|ganesha|local) (\S+) (.*?)\s*$`)

// knownLocalDifferences are the cases where nfsd and ganesha agree with
// each other but not with a local file system, and why (see the README).
var knownLocalDifferences = map[string]string{
	"rmdir-after-unlink-of-open-file": "the NFS client renames an open file it unlinks to .nfsXXXX (silly rename), so its directory is not empty",
}

// ganeshaDeviations are cases where nfs-ganesha (4.3, FSAL VFS) does not
// do what the kernel does locally and nfsd does: there nfsd must give the
// local result instead of ganesha's.
var ganeshaDeviations = map[string]string{
	// ganesha truncates as root after its own permission check, so the
	// kernel's should_remove_suid never sees the caller; nfsd truncates
	// with the caller's fsuid, as a local truncate(2) does.
	"truncate-by-owner-clears-suid": "ganesha keeps setuid/setgid on a truncate by a non-root owner",
}

// TestPOSIXConformance runs one case list (tests/nfsd/posixcases: chown,
// chmod, utimes, truncate, write, link, rename, unlink, rmdir, mkdir,
// mknod, symlink as root, an owner and a stranger, with groups, sticky
// and setgid directories, 255-byte names and 4095-byte paths) through
// the Linux kernel's NFSv3 client in one QEMU guest against nfsd (the
// guest's root), nfs-ganesha's VFS backend (a second mount) and a local
// tmpfs. nfsd must give what ganesha gives on every case.
func TestPOSIXConformance(t *testing.T) {
	needKernelClient(t)
	if err := ganesha.Available(); err != nil {
		testenv.Need(t, "%v", err)
	}
	dir := t.TempDir()
	cases := filepath.Join(dir, "posixcases")
	build := exec.Command("go", "build", "-o", cases, "./posixcases")
	build.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building posixcases: %v\n%s", err, out)
	}
	bin, err := os.ReadFile(cases)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := NewNfsd(t, dir, func(root string) error {
		if err := WriteImage(root); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(root, "sbin", "init"), []byte(posixInit), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(root, "bin", "posixcases"), bin, 0o755); err != nil {
			return err
		}
		if err := os.Mkdir(filepath.Join(root, "posix"), 0o777); err != nil {
			return err
		}
		return os.Chmod(filepath.Join(root, "posix"), 0o777)
	})
	if err != nil {
		t.Fatal(err)
	}
	// QEMU, ganesha and nfsd's sockets share one namespace: the guest
	// reaches its 127.0.0.1 as 10.0.2.2.
	ns := lab.NewNS(t, "posix")
	srv.ListenIn(t, ns)
	srv.InsecurePorts = true // the guest reaches nfsd through QEMU's NAT
	gdir := filepath.Join(dir, "g")
	if err := os.Mkdir(gdir, 0o777); err != nil {
		t.Fatal(err)
	}
	os.Chmod(gdir, 0o777)
	os.Chmod(dir, 0o755)
	g := ganesha.StartWith(t, ganesha.Options{NS: ns}, gdir)
	if err := srv.Start(30 * time.Second); err != nil {
		t.Fatalf("nfsd: %v", err)
	}
	t.Cleanup(srv.Kill)

	k, err := guest.HostKernel()
	if err != nil {
		t.Fatal(err)
	}
	initrd, err := guest.Initramfs(k)
	if err != nil {
		t.Fatal(err)
	}
	ip := filepath.Join(dir, "initrd.img")
	if err := os.WriteFile(ip, initrd, 0o644); err != nil {
		t.Fatal(err)
	}
	_, slow := lab.Accel()
	cmdline := fmt.Sprintf("console=ttyS0 loglevel=4 panic=-1 root=/dev/nfs nfsroot=10.0.2.2:/nodes/%s,vers=3,tcp,port=%d,mountport=%d posix_g=%d:%d:%s",
		nodeKey, srv.Port, srv.Port, g.NFSPort, g.MountPort, gdir)
	args := append([]string{"ip", "netns", "exec", ns}, lab.X86(768)...)
	args = append(args, "-smp", "1", "-kernel", k.Path, "-initrd", ip, "-append", cmdline,
		"-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0")
	consoleLog := filepath.Join(dir, "console.log")
	q := lab.Cmd{Name: "qemu", Log: consoleLog, Args: args}.Start(t)
	defer q.Kill(syscall.SIGKILL)
	if _, err := q.WaitLine(120*slow*time.Second, "POSIX all-done"); err != nil {
		t.Fatalf("guest: %v; console tail:\n%s\nnfsd log:\n%s", err, q.Tail(6000), srv.Log())
	}
	got := map[string]map[string]string{"nfsd": {}, "ganesha": {}, "local": {}}
	for _, m := range posixLine.FindAllStringSubmatch(q.Output(), -1) {
		got[m[1]][m[2]] = m[3]
	}
	if got["ganesha"]["mount-failed"] != "" || len(got["ganesha"]) == 0 {
		t.Fatalf("the guest could not mount ganesha's export; console tail:\n%s", q.Tail(6000))
	}
	var names []string
	for name := range got["local"] {
		if name != "done" {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	for name := range knownLocalDifferences {
		if n, l := got["nfsd"][name], got["local"][name]; n == l {
			t.Errorf("%s: nfsd now gives the local result %q; drop it from knownLocalDifferences and the README", name, l)
		}
	}
	if len(names) < 50 {
		t.Fatalf("the guest ran %d cases locally; console tail:\n%s", len(names), q.Tail(6000))
	}
	var differ []string
	for _, name := range names {
		n, gn, l := got["nfsd"][name], got["ganesha"][name], got["local"][name]
		if why, ok := ganeshaDeviations[name]; ok {
			if n != l {
				t.Errorf("%s: nfsd gives %q, a local tmpfs %q (%s, so nfsd must do what the kernel does locally)", name, n, l, why)
			}
			if gn == l {
				t.Logf("%s: ganesha now gives the local result %q; drop it from ganeshaDeviations", name, l)
			}
			continue
		}
		if n != gn {
			t.Errorf("%s: nfsd gives %q, ganesha %q (local tmpfs %q)", name, n, gn, l)
		}
		if n == gn && n != l {
			differ = append(differ, fmt.Sprintf("%s: both servers %q, local %q", name, n, l))
			if _, known := knownLocalDifferences[name]; !known {
				t.Errorf("not in the README's list of NFSv3 differences: %s", differ[len(differ)-1])
			}
		}
	}
	t.Logf("%d cases; nfsd and ganesha differ from a local tmpfs in %d:\n%s", len(names), len(differ), strings.Join(differ, "\n"))
	srv.CheckReplies(t)
}
