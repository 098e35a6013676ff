// Package guest builds what a test node boots: an OCI image for linux/amd64
// whose boot directory holds the host's Debian kernel and an initramfs made
// here, and whose root is a small busybox system that prints a marker on
// the serial console once it runs from its NFS root.
//
// The Debian kernel has no built-in NFS client or ip=dhcp, so the initramfs
// loads the NIC and NFS modules, runs udhcpc and mounts the root named by
// nfsroot= on the kernel command line, exactly as ociboot's tftpd generates
// it for a Pi (root=/dev/nfs nfsroot=<head>:/nodes/<id>,vers=3,tcp,...).
package guest

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"debug/elf"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// Marker is what the node's init prints once it runs from its NFS root.
const Marker = "OCIBOOT-NODE-UP"

// AliveMarker starts the heartbeat line the node's init prints every 3 s:
// "<AliveMarker> <n> ok" after writing, flushing and reading back a file on
// its root, "... fail" if that did not work.
const AliveMarker = "OCIBOOT-NODE-ALIVE"

// Kernel is a Debian kernel with its modules and a busybox of the same
// architecture: the host's (linux-image-amd64), or an arm64 one unpacked
// from Debian's packages (see Arm64Kernel).
type Kernel struct {
	Path    string // <Root>/boot/vmlinuz-<release>
	Release string
	Root    string // where lib/modules/<release> is: "/" for the host
	Busybox string // busybox binary for the initramfs and node roots; "" = the host's
	Arch    string // "amd64" or "arm64"
}

// Arm64Root is where tests/lab/install-deps.sh unpacks Debian's arm64 kernel and
// busybox-static (dpkg -x), unless OCIBOOT_ARM64_ROOT says otherwise.
const Arm64Root = "/opt/ociboot-arm64"

// Arm64Kernel is Debian's arm64 kernel: its vmlinuz is a plain arm64 Image,
// the format of a Raspberry Pi's kernel8.img.
func Arm64Kernel() (Kernel, error) {
	root := os.Getenv("OCIBOOT_ARM64_ROOT")
	if root == "" {
		root = Arm64Root
	}
	paths, _ := filepath.Glob(filepath.Join(root, "boot", "vmlinuz-*"))
	sort.Strings(paths)
	for i := len(paths) - 1; i >= 0; i-- {
		rel := strings.TrimPrefix(filepath.Base(paths[i]), "vmlinuz-")
		bb := filepath.Join(root, "bin", "busybox")
		if _, err := os.Stat(filepath.Join(root, "lib", "modules", rel, "modules.dep")); err != nil {
			continue
		}
		if _, err := os.Stat(bb); err != nil {
			continue
		}
		return Kernel{Path: paths[i], Release: rel, Root: root, Busybox: bb, Arch: "arm64"}, nil
	}
	return Kernel{}, fmt.Errorf("guest: no arm64 kernel with modules and busybox under %s (`make deps` unpacks linux-image-arm64 and busybox-static:arm64 there)", root)
}

// HostKernel finds the newest /boot/vmlinuz-* whose modules are installed.
func HostKernel() (Kernel, error) {
	paths, _ := filepath.Glob("/boot/vmlinuz-*")
	sort.Strings(paths)
	for i := len(paths) - 1; i >= 0; i-- {
		rel := strings.TrimPrefix(filepath.Base(paths[i]), "vmlinuz-")
		if _, err := os.Stat(filepath.Join("/lib/modules", rel, "modules.dep")); err == nil {
			return Kernel{Path: paths[i], Release: rel, Root: "/", Arch: "amd64"}, nil
		}
	}
	return Kernel{}, fmt.Errorf("guest: no /boot/vmlinuz-* with modules in /lib/modules; install linux-image-amd64")
}

// Modules the initramfs loads: the QEMU NICs and the NFSv3 client.
var Modules = []string{"virtio_pci", "virtio_net", "e1000", "nfsv3"}

// moduleOrder resolves names to module paths (relative to
// /lib/modules/<release>) with every dependency before its user.
func moduleOrder(k Kernel, names []string) ([]string, error) {
	f, err := os.Open(filepath.Join(k.Root, "lib", "modules", k.Release, "modules.dep"))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	deps := map[string][]string{}
	byName := map[string]string{}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<16), 1<<20)
	for sc.Scan() {
		mod, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		deps[mod] = strings.Fields(rest)
		base := strings.TrimSuffix(path.Base(mod), ".ko")
		byName[strings.ReplaceAll(base, "-", "_")] = mod
	}
	var order []string
	seen := map[string]bool{}
	var visit func(m string)
	visit = func(m string) {
		if seen[m] {
			return
		}
		seen[m] = true
		for _, d := range deps[m] {
			visit(d)
		}
		order = append(order, m)
	}
	for _, n := range names {
		m, ok := byName[n]
		if !ok {
			// Built into the kernel (or absent): nothing to load.
			continue
		}
		visit(m)
	}
	return order, nil
}

// cpio writes a newc archive.
type cpio struct {
	w   io.Writer
	ino int
	err error
}

func (c *cpio) entry(name string, mode uint32, data []byte) {
	if c.err != nil {
		return
	}
	c.ino++
	hdr := fmt.Sprintf("070701%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x",
		c.ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name)+1, 0)
	buf := append([]byte(hdr), name...)
	buf = append(buf, 0)
	for len(buf)%4 != 0 {
		buf = append(buf, 0)
	}
	buf = append(buf, data...)
	for len(buf)%4 != 0 {
		buf = append(buf, 0)
	}
	_, c.err = c.w.Write(buf)
}

func (c *cpio) dir(name string)               { c.entry(name, 0o040755, nil) }
func (c *cpio) file(name string, data []byte) { c.entry(name, 0o100755, data) }
func (c *cpio) symlink(name, target string)   { c.entry(name, 0o120777, []byte(target)) }
func (c *cpio) close() error {
	c.entry("TRAILER!!!", 0, nil)
	return c.err
}

// Busybox returns the host's busybox and, for a dynamic build, the shared
// objects it needs (so it runs in an initramfs without the host's /lib).
func Busybox() (files map[string]string, err error) {
	return busyboxFor(Kernel{})
}

// busyboxFor is k's busybox (a static one for foreign architectures) or the
// host's.
func busyboxFor(k Kernel) (files map[string]string, err error) {
	if k.Busybox != "" {
		return map[string]string{"bin/busybox": k.Busybox}, nil
	}
	bb, err := exec.LookPath("busybox")
	if err != nil {
		return nil, fmt.Errorf("guest: busybox not installed (Debian busybox or busybox-static)")
	}
	files = map[string]string{"bin/busybox": bb}
	e, err := elf.Open(bb)
	if err != nil {
		return nil, err
	}
	defer e.Close()
	if e.Section(".interp") == nil {
		return files, nil
	}
	out, err := exec.Command("ldd", bb).Output()
	if err != nil {
		return nil, fmt.Errorf("guest: ldd %s: %v", bb, err)
	}
	for _, line := range strings.Split(string(out), "\n") {
		for _, f := range strings.Fields(line) {
			if strings.HasPrefix(f, "/") {
				real, err := filepath.EvalSymlinks(f)
				if err != nil {
					return nil, err
				}
				// Keep the path the loader asks for.
				files[strings.TrimPrefix(f, "/")] = real
			}
		}
	}
	return files, nil
}

const initScript = `#!/bin/sh
# Initramfs of an ociboot test node: network up by DHCP, root over NFS.
export PATH=/bin
/bin/busybox --install -s /bin
mkdir -p /proc /sys /dev /newroot
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /etc/modules.order); do insmod /lib/modules/$m 2>/dev/null; done
ip link set lo up
iface=$(ls /sys/class/net | grep -v '^lo$' | head -n 1)
ip link set "$iface" up
echo "initramfs: DHCP on $iface"
udhcpc -i "$iface" -q -f -n -t 20 -T 1 -s /bin/dhcp-script || { echo "initramfs: no DHCP lease"; poweroff -f; }
nfsroot=
for arg in $(cat /proc/cmdline); do
  case "$arg" in nfsroot=*) nfsroot="${arg#nfsroot=}";; esac
done
[ -n "$nfsroot" ] || { echo "initramfs: no nfsroot= on the command line"; poweroff -f; }
export_path="${nfsroot%%,*}"
opts="${nfsroot#*,}"
[ "$opts" = "$nfsroot" ] && opts=
echo "initramfs: mounting $export_path ($opts)"
n=0
until mount -t nfs -o "nolock${opts:+,$opts}" "$export_path" /newroot; do
  n=$((n+1)); [ $n -ge 10 ] && { echo "initramfs: NFS mount failed"; poweroff -f; }
  sleep 1
done
mount --move /dev /newroot/dev 2>/dev/null
exec switch_root /newroot /sbin/init
`

const dhcpScript = `#!/bin/sh
case "$1" in
bound|renew)
  ip addr flush dev "$interface"
  ip addr add "$ip/${mask:-24}" dev "$interface"
  [ -n "$router" ] && ip route add default via "${router%% *}" dev "$interface"
  echo "initramfs: $interface $ip/${mask:-24} from ${serverid:-?}"
  ;;
esac
exit 0
`

// Initramfs builds a gzipped newc initramfs for k.
func Initramfs(k Kernel) ([]byte, error) {
	return InitramfsWith(k, initScript, Modules, map[string][]byte{"bin/dhcp-script": []byte(dhcpScript)})
}

// InitramfsWith builds an initramfs for k with busybox, init as /init, the
// named modules with their dependencies (listed in load order in
// /etc/modules.order) and files (path without leading slash → content,
// executable).
func InitramfsWith(k Kernel, init string, modules []string, files map[string][]byte) ([]byte, error) {
	mods, err := moduleOrder(k, modules)
	if err != nil {
		return nil, err
	}
	bb, err := busyboxFor(k)
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	c := &cpio{w: gz}
	dirs := map[string]bool{}
	mkdirs := func(p string) {
		parts := strings.Split(path.Dir(p), "/")
		for i := range parts {
			d := strings.Join(parts[:i+1], "/")
			if d != "." && d != "" && !dirs[d] {
				dirs[d] = true
				c.dir(d)
			}
		}
	}
	for _, d := range []string{"bin", "etc", "proc", "sys", "dev", "newroot", "lib64"} {
		mkdirs(d + "/x")
	}
	names := make([]string, 0, len(bb))
	for n := range bb {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		data, err := os.ReadFile(bb[n])
		if err != nil {
			return nil, err
		}
		mkdirs(n)
		c.file(n, data)
	}
	c.symlink("bin/sh", "busybox")
	c.file("init", []byte(init))
	extra := make([]string, 0, len(files))
	for n := range files {
		extra = append(extra, n)
	}
	sort.Strings(extra)
	for _, n := range extra {
		mkdirs(n)
		c.file(n, files[n])
	}
	for _, m := range mods {
		data, err := os.ReadFile(filepath.Join(k.Root, "lib", "modules", k.Release, m))
		if err != nil {
			return nil, err
		}
		p := "lib/modules/" + m
		mkdirs(p)
		c.file(p, data)
	}
	c.entry("etc/modules.order", 0o100644, []byte(strings.Join(mods, "\n")+"\n"))
	if err := c.close(); err != nil {
		return nil, err
	}
	if err := gz.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// nodeInit is /sbin/init of the node's root: it proves the root is the
// node's own and writable, then reports on the console.
const nodeInit = `#!/bin/sh
export PATH=/bin:/sbin
mount -t proc proc /proc 2>/dev/null
mount -t devtmpfs dev /dev 2>/dev/null
mount -t sysfs sys /sys 2>/dev/null
date > /var/booted-at || echo "node: root is not writable"
n=$(cat /var/boot-count 2>/dev/null || echo 0); n=$((n+1)); echo $n > /var/boot-count
echo "` + Marker + ` image=$(cat /etc/image-id) boots=$n root=$(awk '$2=="/"{r=$1} END{print r}' /proc/mounts)" > /dev/console
# The heartbeat proves the root keeps working (through restarts of the
# head node's services): write, flush, drop the caches, read back over NFS.
i=0
while true; do
  i=$((i+1))
  if echo "$i" > /var/heartbeat && sync && echo 3 > /proc/sys/vm/drop_caches && [ "$(cat /var/heartbeat)" = "$i" ] && ls /bin > /dev/null; then
    echo "` + AliveMarker + ` $i ok" > /dev/console
  else
    echo "` + AliveMarker + ` $i fail" > /dev/console
  fi
  sleep 3
done
`

type tarFile struct {
	name     string
	mode     int64
	data     []byte
	typeflag byte
	link     string
}

func layer(files []tarFile) (v1.Layer, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	mt := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, f := range files {
		hdr := &tar.Header{Name: f.name, Mode: f.mode, Size: int64(len(f.data)), Typeflag: f.typeflag, Linkname: f.link, ModTime: mt, Format: tar.FormatPAX}
		if hdr.Typeflag == 0 {
			hdr.Typeflag = tar.TypeReg
		}
		if hdr.Typeflag != tar.TypeReg {
			hdr.Size = 0
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, err
		}
		if hdr.Typeflag == tar.TypeReg {
			if _, err := tw.Write(f.data); err != nil {
				return nil, err
			}
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	b := buf.Bytes()
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil })
}

// Image is a linux/amd64 node image: layer 1 the boot directory (kernel and
// initramfs), layer 2 a busybox root whose init prints Marker and imageID.
func Image(k Kernel, imageID string) (v1.Image, error) {
	kernel, err := os.ReadFile(k.Path)
	if err != nil {
		return nil, err
	}
	initrd, err := Initramfs(k)
	if err != nil {
		return nil, err
	}
	boot, err := layer([]tarFile{
		{name: "boot/", mode: 0o755, typeflag: tar.TypeDir},
		{name: "boot/vmlinuz-" + k.Release, mode: 0o644, data: kernel},
		{name: "boot/initrd.img-" + k.Release, mode: 0o644, data: initrd},
	})
	if err != nil {
		return nil, err
	}
	root, err := RootLayer(k, imageID)
	if err != nil {
		return nil, err
	}
	img, err := mutate.AppendLayers(empty.Image, boot, root)
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", "amd64"
	cf.Config.Cmd = []string{"/sbin/init"}
	return mutate.ConfigFile(img, cf)
}

// RootLayer is a busybox root for k's architecture whose /sbin/init prints
// Marker (with imageID) and then heartbeats.
func RootLayer(k Kernel, imageID string) (v1.Layer, error) {
	bb, err := busyboxFor(k)
	if err != nil {
		return nil, err
	}
	files := []tarFile{
		{name: "bin/", mode: 0o755, typeflag: tar.TypeDir},
		{name: "sbin/", mode: 0o755, typeflag: tar.TypeDir},
		{name: "etc/", mode: 0o755, typeflag: tar.TypeDir},
		{name: "proc/", mode: 0o555, typeflag: tar.TypeDir},
		{name: "sys/", mode: 0o555, typeflag: tar.TypeDir},
		{name: "dev/", mode: 0o755, typeflag: tar.TypeDir},
		{name: "var/", mode: 0o755, typeflag: tar.TypeDir},
		{name: "tmp/", mode: 0o1777, typeflag: tar.TypeDir},
		{name: "lib64/", mode: 0o755, typeflag: tar.TypeDir},
		{name: "etc/image-id", mode: 0o644, data: []byte(imageID + "\n")},
		{name: "sbin/init", mode: 0o755, data: []byte(nodeInit)},
	}
	names := make([]string, 0, len(bb))
	for n := range bb {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		data, err := os.ReadFile(bb[n])
		if err != nil {
			return nil, err
		}
		if d := path.Dir(n); d != "bin" && d != "lib64" {
			files = append(files, tarFile{name: d + "/", mode: 0o755, typeflag: tar.TypeDir})
		}
		files = append(files, tarFile{name: n, mode: 0o755, data: data})
	}
	for _, tool := range []string{"sh", "mount", "awk", "cat", "date", "sleep", "ls", "echo", "mkdir", "sync", "[", "test", "tail", "grep"} {
		files = append(files, tarFile{name: "bin/" + tool, mode: 0o777, typeflag: tar.TypeSymlink, link: "busybox"})
	}
	return layer(files)
}
