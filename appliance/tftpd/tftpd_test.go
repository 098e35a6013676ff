package tftpd

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ociboot/ociboot/appliance/config"
	"github.com/ociboot/ociboot/appliance/images"
	"github.com/ociboot/ociboot/appliance/nfs"
	"github.com/ociboot/ociboot/appliance/nodes"
	"github.com/ociboot/ociboot/appliance/piemu"
	"github.com/ociboot/ociboot/appliance/store"
)

const (
	imageRef   = "registry.test:5000/rpi/node:1"
	testDigest = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	imgCmdline = "console=serial0,115200 console=tty1 root=PARTUUID=1234-02 rootfstype=ext4 fsck.repair=yes rootwait quiet\n"
)

func random(t testing.TB, n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// fixture is a store holding one unpacked Pi image with hostile extras,
// and a running server on loopback.
type fixture struct {
	st    *store.Store
	srv   *Server
	addr  string
	files map[string][]byte
	root  string
}

func newFixture(t testing.TB, netboot string, opts ...func(*Options)) *fixture {
	t.Helper()
	st, err := store.Open(t.TempDir(), store.Options{AllowTmpfs: true})
	if err != nil {
		t.Fatal(err)
	}
	root, _ := images.Root(st, testDigest)
	boot := filepath.Join(root, "boot", "firmware")
	os.MkdirAll(filepath.Join(boot, "overlays"), 0o755)
	os.MkdirAll(filepath.Join(root, "etc"), 0o755)
	files := map[string][]byte{
		"start4.elf":               random(t, 300_000),
		"fixup4.dat":               random(t, 5_000),
		"bcm2711-rpi-4-b.dtb":      random(t, 50_000),
		"overlays/overlay_map.dtb": random(t, 3_000),
		"kernel8.img":              random(t, 2_000_000),
		"cmdline.txt":              []byte(imgCmdline),
		"config.txt":               []byte("arm_64bit=1\nenable_uart=1"),
		"exact1468.bin":            random(t, 1468*3), // ends on a block boundary
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(boot, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	os.WriteFile(filepath.Join(root, "etc", "shadow"), []byte("secret"), 0o600)
	os.Symlink("/etc/passwd", filepath.Join(boot, "abs-link"))
	os.Symlink("../../etc/shadow", filepath.Join(boot, "rel-link"))
	os.Symlink("../..", filepath.Join(boot, "up"))
	os.Symlink("rel-link", filepath.Join(boot, "chain-link"))
	os.Symlink("kernel8.img", filepath.Join(boot, "kernel-link.img"))
	images.SaveIndex(st, images.Index{Entries: []images.Entry{{Ref: imageRef, Platform: "linux/arm64", Digest: testDigest, BootDir: "boot/firmware", Kernel: "kernel8.img"}}})

	cfg, err := config.Parse([]byte(`{"Netboot": ` + netboot + `}`))
	if err != nil {
		t.Fatal(err)
	}
	// The Pis the tests boot, recorded as dhcpd does before their TFTP.
	for _, serial := range recordedSerials {
		if err := nodes.Save(st, nodes.Record{Serial: serial}); err != nil {
			t.Fatal(err)
		}
	}
	o := Options{Config: cfg, Store: st, Timeout: 200 * time.Millisecond}
	for _, f := range opts {
		f(&o)
	}
	srv := New(o)
	conn, err := Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(conn)
	t.Cleanup(srv.Shutdown)
	return &fixture{st: st, srv: srv, addr: conn.LocalAddr().String(), files: files, root: root}
}

var recordedSerials = []string{"abcd1234", "bd989ae1", "da591740"}

const defaultNetboot = `{"DefaultImage": "` + imageRef + `", "KernelArgs": ["cgroup_enable=memory"], "ConfigTxt": ["dtoverlay=disable-wifi"]}`

func get(t testing.TB, f *fixture, file string) ([]byte, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	r, err := piemu.TFTPGet(ctx, f.addr, file, []string{"tsize", "0", "blksize", "1468"}, false)
	return r.Data, err
}

func TestPiBootSequence(t *testing.T) {
	for _, blksize := range []int{1024, 1468} {
		f := newFixture(t, defaultNetboot)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		rep, err := piemu.TFTPBoot(ctx, f.addr, "abcd1234", blksize)
		cancel()
		if err != nil {
			t.Fatalf("blksize %d: %v", blksize, err)
		}
		for _, name := range []string{"start4.elf", "fixup4.dat", "bcm2711-rpi-4-b.dtb", "kernel8.img"} {
			if got, want := sha256.Sum256(rep.Files[name]), sha256.Sum256(f.files[name]); got != want {
				t.Errorf("blksize %d: %s differs from the image's (%d bytes, want %d)", blksize, name, len(rep.Files[name]), len(f.files[name]))
			}
		}
		if got, want := rep.Sizes["kernel8.img"], "2000000"; got != want {
			t.Errorf("tsize of kernel8.img: got %q, want %q", got, want)
		}
		wantCmd := "console=serial0,115200 console=tty1 fsck.repair=yes quiet root=/dev/nfs nfsroot=127.0.0.1:/nodes/abcd1234,vers=3,tcp,port=2049 ip=dhcp rw rootwait cgroup_enable=memory\n"
		if got := string(rep.Files["cmdline.txt"]); got != wantCmd {
			t.Errorf("cmdline.txt:\ngot  %q\nwant %q", got, wantCmd)
		}
		if got := string(rep.Files["config.txt"]); !strings.HasPrefix(got, "arm_64bit=1\nenable_uart=1\n") || !strings.HasSuffix(got, "dtoverlay=disable-wifi\n") {
			t.Errorf("config.txt: got %q", got)
		}
		if got, want := strings.Join(rep.Missing, ","), "pieeprom.sig,recover4.elf,dt-blob.bin,armstub8-gic.bin"; got != want {
			t.Errorf("missing probes: got %q, want %q", got, want)
		}
		st := f.srv.Status().Nodes["abcd1234"]
		if got, want := st.EarlyTerminates, 2; got != want {
			t.Errorf("early terminates: got %d, want %d", got, want)
		}
		if st.Failures != 0 {
			t.Errorf("failures: got %d (%s), want 0", st.Failures, st.LastError)
		}
		p, err := nodes.Progress(f.st, "abcd1234")
		if err != nil || p.Stage != nodes.StageKernel || p.Detail != "kernel8.img" {
			t.Errorf("stage: got %+v, %v; want kernel via kernel8.img", p, err)
		}
	}
}

func TestBlockBoundaryAndSymlinkInside(t *testing.T) {
	f := newFixture(t, defaultNetboot)
	got, err := get(t, f, "abcd1234/exact1468.bin")
	if err != nil || !bytes.Equal(got, f.files["exact1468.bin"]) {
		t.Errorf("file of exactly 3 blocks: %d bytes, %v", len(got), err)
	}
	got, err = get(t, f, "ABCD1234/kernel-link.img")
	if err != nil || !bytes.Equal(got, f.files["kernel8.img"]) {
		t.Errorf("symlink inside the boot dir, upper-case prefix: %d bytes, %v", len(got), err)
	}
	got, err = get(t, f, "//abcd1234/overlays/overlay_map.dtb")
	if err != nil || !bytes.Equal(got, f.files["overlays/overlay_map.dtb"]) {
		t.Errorf("leading slashes and a subdirectory: %d bytes, %v", len(got), err)
	}
}

func TestTraversalRefused(t *testing.T) {
	f := newFixture(t, defaultNetboot)
	for _, name := range []string{
		"../../etc/shadow",
		"abcd1234/../../etc/shadow",
		"abcd1234/../../../../../../etc/passwd",
		"/etc/passwd",
		"abcd1234//etc/passwd",
		"abcd1234/abs-link",
		"abcd1234/rel-link",
		"abcd1234/chain-link",
		"abcd1234/up/etc/shadow",
		"abcd1234/./config.txt",
		"abcd1234\\..\\..\\etc\\shadow",
		"abcd1234/overlays",
	} {
		data, err := get(t, f, name)
		var te *piemu.TFTPError
		if !errors.As(err, &te) || te.Code != 1 {
			t.Errorf("%q: got %d bytes, %v; want TFTP error 1", name, len(data), err)
		}
	}
}

func TestWriteRefused(t *testing.T) {
	f := newFixture(t, defaultNetboot)
	conn, err := net.ListenUDP("udp4", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	srv, _ := net.ResolveUDPAddr("udp4", f.addr)
	conn.WriteToUDP([]byte("\x00\x02abcd1234/config.txt\x00octet\x00"), srv)
	conn.SetReadDeadline(time.Now().Add(3 * time.Second))
	buf := make([]byte, 600)
	n, _, err := conn.ReadFromUDP(buf)
	if err != nil || n < 4 || buf[1] != 5 {
		t.Fatalf("WRQ: got % x, %v; want an ERROR packet", buf[:n], err)
	}
	cfg, _ := os.ReadFile(filepath.Join(f.root, "boot/firmware/config.txt"))
	if string(cfg) != "arm_64bit=1\nenable_uart=1" {
		t.Errorf("config.txt changed: %q", cfg)
	}
}

func TestNotFoundIsFast(t *testing.T) {
	f := newFixture(t, defaultNetboot)
	start := time.Now()
	for i := 0; i < 20; i++ {
		if _, err := get(t, f, "abcd1234/nonexistent.bin"); err == nil {
			t.Fatal("missing file: got nil error")
		}
	}
	if per := time.Since(start) / 20; per > 50*time.Millisecond {
		t.Errorf("not-found answers take %v each, want < 50ms", per)
	}
}

func TestNodeResolution(t *testing.T) {
	f := newFixture(t, `{"DefaultImage": "`+imageRef+`", "Enroll": "known-only",
		"Nodes": [{"Serial": "c0ffee01"}, {"MAC": "52:54:00:12:34:56", "IP": "10.99.0.7"}]}`)
	if _, err := get(t, f, "c0ffee01/config.txt"); err != nil {
		t.Errorf("configured serial: %v", err)
	}
	if _, err := get(t, f, "abcd1234/config.txt"); err == nil {
		t.Errorf("unknown serial with known-only: got nil error")
	}
	if _, err := get(t, f, "52-54-00-12-34-56/config.txt"); err != nil {
		t.Errorf("configured MAC: %v", err)
	}
	// No prefix: the node is found by its source address.
	if _, err := get(t, f, "config.txt"); err == nil {
		t.Errorf("no prefix from an unknown address: got nil error")
	}
	nodes.Save(f.st, nodes.Record{Serial: "c0ffee01", IP: "127.0.0.1", Image: imageRef})
	data, err := get(t, f, "cmdline.txt")
	if err != nil || !strings.Contains(string(data), "nfsroot=127.0.0.1:/nodes/c0ffee01,") {
		t.Errorf("no prefix from a recorded address: %q, %v", data, err)
	}
}

func TestImageNotCachedYet(t *testing.T) {
	f := newFixture(t, `{"DefaultImage": "registry.test:5000/other:1"}`)
	if _, err := get(t, f, "abcd1234/start4.elf"); err == nil {
		t.Error("image not in the cache: got nil error")
	}
}

func TestIPXE(t *testing.T) {
	f := newFixture(t, defaultNetboot)
	data, err := get(t, f, "boot.ipxe")
	if err != nil || string(data) != IPXEChain {
		t.Errorf("root boot.ipxe: got %q, %v", data, err)
	}
	data, err = get(t, f, "52-54-00-ab-cd-ef/boot.ipxe")
	want := "#!ipxe\n:fetch\nkernel kernel8.img console=serial0,115200 console=tty1 fsck.repair=yes quiet " +
		"root=/dev/nfs nfsroot=127.0.0.1:/nodes/52-54-00-ab-cd-ef,vers=3,tcp,port=2049 ip=dhcp rw rootwait cgroup_enable=memory || goto retry\n" +
		"boot || goto retry\n:retry\necho ociboot: boot files not fetched, trying again in 3 s\nimgfree\nsleep 3\ngoto fetch\n"
	if err != nil || string(data) != want {
		t.Errorf("node boot.ipxe:\ngot  %q (%v)\nwant %q", data, err, want)
	}
}

func TestParseRequest(t *testing.T) {
	for _, tt := range []struct {
		in, key, file string
		ok            bool
	}{
		{"abcd1234/start4.elf", "abcd1234", "start4.elf", true},
		{"ABCD1234/start4.elf", "abcd1234", "start4.elf", true},
		{"/abcd1234/overlays/x.dtbo", "abcd1234", "overlays/x.dtbo", true},
		{"dc-a6-32-01-02-03/start4.elf", "dc-a6-32-01-02-03", "start4.elf", true},
		{"start4.elf", "", "start4.elf", true},
		{"overlays/x.dtbo", "", "overlays/x.dtbo", true},
		{"abcd123/start4.elf", "", "abcd123/start4.elf", true},
		{"a/../b", "", "", false},
		{"", "", "", false},
		{"a//b", "", "", false},
		{"a\x00b", "", "", false},
	} {
		r, err := ParseRequest(tt.in)
		if (err == nil) != tt.ok || r.Key != tt.key || r.File != tt.file {
			t.Errorf("ParseRequest(%q) = %+v, %v; want key %q file %q ok %v", tt.in, r, err, tt.key, tt.file, tt.ok)
		}
	}
}

func TestCmdline(t *testing.T) {
	head := netipMust("10.42.0.1")
	got := Cmdline([]byte("console=ttyAMA0 root=/dev/mmcblk0p2 ro init=/sbin/init quiet"), head, "abcd1234", nil)
	want := "console=ttyAMA0 quiet root=/dev/nfs nfsroot=10.42.0.1:/nodes/abcd1234,vers=3,tcp,port=2049 ip=dhcp rw rootwait"
	if got != want {
		t.Errorf("Cmdline:\ngot  %q\nwant %q", got, want)
	}
}

func netipMust(s string) netip.Addr { return netip.MustParseAddr(s) }

// TestEarlyTerminateNotAnswered: after the OACK the Pi answers ERROR 0
// "Early terminate" and closes its port. RFC 1350 §7: an ERROR is never
// acknowledged or answered, so nothing may come back.
func TestEarlyTerminateNotAnswered(t *testing.T) {
	f := newFixture(t, defaultNetboot)
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	srv, _ := net.ResolveUDPAddr("udp4", f.addr)
	conn.WriteToUDP([]byte("\x00\x01abcd1234/start4.elf\x00octet\x00tsize\x000\x00blksize\x001468\x00"), srv)
	conn.SetReadDeadline(time.Now().Add(3 * time.Second))
	buf := make([]byte, 2000)
	n, tid, err := conn.ReadFromUDP(buf)
	if err != nil || n < 2 || buf[1] != 6 {
		t.Fatalf("RRQ: got % x, %v; want an OACK", buf[:n], err)
	}
	if got, want := string(buf[2:n]), "blksize\x001468\x00tsize\x00300000\x00"; got != want && got != "tsize\x00300000\x00blksize\x001468\x00" {
		t.Errorf("OACK: got %q, want %q", got, want)
	}
	conn.WriteToUDP([]byte("\x00\x05\x00\x00Early terminate\x00"), tid)
	// Longer than the server's retransmission timeout (200 ms) times two.
	conn.SetReadDeadline(time.Now().Add(time.Second))
	if n, from, err := conn.ReadFromUDP(buf); err == nil {
		t.Errorf("after ERROR 0: got % x from %v; want nothing", buf[:n], from)
	}
	deadline := time.Now().Add(2 * time.Second)
	for f.srv.Status().Nodes["abcd1234"].EarlyTerminates != 1 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if got := f.srv.Status().Nodes["abcd1234"]; got.EarlyTerminates != 1 || got.Failures != 0 {
		t.Errorf("stats: got %+v, want one early terminate and no failure", got)
	}
}

// TestMACPrefixIsTheRecordedNode: a Pi with TFTP_PREFIX=2 asks under its
// MAC, while dhcpd recorded it under its serial (option 97). Its boot files
// must name the export nfsd answers for that record, /nodes/<serial>.
func TestMACPrefixIsTheRecordedNode(t *testing.T) {
	for _, tc := range []struct {
		name, netboot string
		record        bool
	}{
		{"recorded by dhcpd", defaultNetboot, true},
		{"configured with serial and MAC", `{"DefaultImage": "` + imageRef + `", "Nodes": [{"Serial": "5b154510", "MAC": "dc:a6:32:10:20:01"}]}`, false},
	} {
		f := newFixture(t, tc.netboot)
		if tc.record {
			nodes.Save(f.st, nodes.Record{Serial: "5b154510", MAC: "dc:a6:32:10:20:01", IP: "127.0.0.1", Model: "RPi4"})
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		rep, err := piemu.TFTPBoot(ctx, f.addr, "dc-a6-32-10-20-01", 1468)
		cancel()
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if got, want := string(rep.Files["cmdline.txt"]), "nfsroot=127.0.0.1:/nodes/5b154510,"; !strings.Contains(got, want) {
			t.Errorf("%s: cmdline.txt %q does not contain %q", tc.name, got, want)
		}
		if p, _ := nodes.Progress(f.st, "5b154510"); p.Stage != nodes.StageKernel {
			t.Errorf("%s: stage of the serial's record: got %+v, want %q", tc.name, p, nodes.StageKernel)
		}
		if tc.record && !(nfs.NodeResolver{Config: f.srv.res.Config, Store: f.st}).Allowed("5b154510", netip.MustParseAddr("127.0.0.1")) {
			t.Errorf("%s: nfsd would refuse the export cmdline.txt names to the node's address", tc.name)
		}
		if _, err := os.Stat(f.st.Path(store.NodesDir, "dc-a6-32-10-20-01")); err == nil {
			t.Errorf("%s: a second record was made under the MAC", tc.name)
		}
	}
}

// TestBootFilesFollowTheNodesRoot: once nfsd made a node's root, its boot
// files come from the root's boot directory, not from the configured
// image, even after the image moved on: the kernel must match the root's
// /lib/modules, and a kernel the node upgraded itself is the one it boots.
func TestBootFilesFollowTheNodesRoot(t *testing.T) {
	f := newFixture(t, defaultNetboot)
	const key = "abcd1234"
	// Before the root exists: the image.
	got, err := get(t, f, key+"/kernel8.img")
	if err != nil || !bytes.Equal(got, f.files["kernel8.img"]) {
		t.Fatalf("before the root exists: %d bytes, %v; want the image's kernel", len(got), err)
	}
	// nfsd made the root from the image (as nodes/<key>/view.json and
	// root/ record it); then the node upgraded its kernel and the
	// configured tag moved to a new image.
	nodeDir := f.st.Path(store.NodesDir, key)
	rootBoot := filepath.Join(nodeDir, "root", "boot", "firmware")
	os.MkdirAll(filepath.Join(rootBoot, "overlays"), 0o755)
	os.MkdirAll(filepath.Join(nodeDir, "root", "etc"), 0o755)
	os.WriteFile(filepath.Join(nodeDir, "root", "etc", "secret"), []byte("node-secret"), 0o600)
	upgraded := random(t, 1_000_000)
	os.WriteFile(filepath.Join(rootBoot, "kernel8.img"), upgraded, 0o644)
	os.WriteFile(filepath.Join(rootBoot, "cmdline.txt"), []byte("console=ttyAMA0 root=/dev/mmcblk0p2 node-own-arg\n"), 0o644)
	os.WriteFile(filepath.Join(rootBoot, "config.txt"), []byte("arm_64bit=1\n[cm5]\n"), 0o644)
	os.Symlink("/etc/passwd", filepath.Join(rootBoot, "abs-link"))
	os.Symlink("../../../../../../../etc/passwd", filepath.Join(rootBoot, "rel-link"))
	os.Symlink("../../etc/secret", filepath.Join(rootBoot, "up-link"))
	store.WriteJSON(filepath.Join(nodeDir, nodes.ViewFile), map[string]string{"Key": key, "Digest": testDigest})
	newDigest := "sha256:" + strings.Repeat("f", 64)
	newBoot := filepath.Join(f.st.Path(store.ImagesDir, "sha256-"+strings.Repeat("f", 64)), "boot", "firmware")
	os.MkdirAll(newBoot, 0o755)
	os.WriteFile(filepath.Join(newBoot, "kernel8.img"), []byte("new image kernel"), 0o644)
	images.SaveIndex(f.st, images.Index{Entries: []images.Entry{{Ref: imageRef, Platform: "linux/arm64", Digest: newDigest, BootDir: "boot/firmware", Kernel: "kernel8.img"}}})

	got, err = get(t, f, key+"/kernel8.img")
	if err != nil || !bytes.Equal(got, upgraded) {
		t.Errorf("kernel8.img after the root exists: %d bytes, %v; want the root's upgraded kernel", len(got), err)
	}
	got, err = get(t, f, key+"/cmdline.txt")
	if want := "console=ttyAMA0 node-own-arg root=/dev/nfs nfsroot=127.0.0.1:/nodes/abcd1234,vers=3,tcp,port=2049 ip=dhcp rw rootwait cgroup_enable=memory\n"; err != nil || string(got) != want {
		t.Errorf("cmdline.txt from the root:\ngot  %q (%v)\nwant %q", got, err, want)
	}
	got, err = get(t, f, key+"/config.txt")
	if want := "arm_64bit=1\n[cm5]\n\n# ociboot: Netboot.ConfigTxt, for every board\n[all]\ndtoverlay=disable-wifi\n"; err != nil || string(got) != want {
		t.Errorf("config.txt from the root:\ngot  %q (%v)\nwant %q", got, err, want)
	}
	if _, err := get(t, f, key+"/start4.elf"); err == nil {
		t.Errorf("start4.elf, which the root lacks: served (from the image?), want not found")
	}
	// The node writes its root: nothing it puts there leads out of it.
	for _, name := range []string{"abs-link", "rel-link", "up-link"} {
		if data, err := get(t, f, key+"/"+name); err == nil {
			t.Errorf("%s in the node's root: served %q, want refused", name, data)
		}
	}
	os.RemoveAll(filepath.Join(nodeDir, "root", "boot"))
	os.Symlink("/", filepath.Join(nodeDir, "root", "boot"))
	os.MkdirAll(filepath.Join(nodeDir, "root", "firmware"), 0o755)
	if data, err := get(t, f, key+"/etc/passwd"); err == nil {
		t.Errorf("boot dir replaced by a symlink to /: served %d bytes, want refused", len(data))
	}
}

// TestPi5BootSequence: a Pi 5 and a CM5 boot from an image with Pi 5 boot
// files (no start4.elf needed), in the order their bootloader asks.
func TestPi5BootSequence(t *testing.T) {
	f := newFixture(t, defaultNetboot)
	boot := filepath.Join(f.root, "boot", "firmware")
	pi5 := map[string][]byte{
		piemu.Pi5DTBs["pi5"]: random(t, 80_000),
		piemu.Pi5DTBs["cm5"]: random(t, 81_000),
		"kernel_2712.img":    random(t, 3_000_000),
		"initramfs_2712":     random(t, 1_500_000),
		"config.txt":         []byte("arm_64bit=1\nauto_initramfs=1\n[pi4]\narm_boost=1\n"),
	}
	for name, data := range pi5 {
		os.WriteFile(filepath.Join(boot, name), data, 0o644)
	}
	for _, tc := range []struct{ serial, board string }{{"bd989ae1", "pi5"}, {"da591740", "cm5"}} {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		rep, err := piemu.TFTPBootPi5(ctx, f.addr, tc.serial, tc.board)
		cancel()
		if err != nil {
			t.Fatalf("%s: %v", tc.serial, err)
		}
		if rep.Kernel != "kernel_2712.img" || rep.Initramfs != "initramfs_2712" {
			t.Errorf("%s: kernel %q, initramfs %q; want kernel_2712.img, initramfs_2712", tc.serial, rep.Kernel, rep.Initramfs)
		}
		for _, name := range []string{piemu.Pi5DTBs[tc.board], "kernel_2712.img", "initramfs_2712"} {
			if !bytes.Equal(rep.Files[name], pi5[name]) {
				t.Errorf("%s: %s: %d bytes, want the image's %d", tc.serial, name, len(rep.Files[name]), len(pi5[name]))
			}
		}
		if !bytes.Equal(rep.Files["overlays/overlay_map.dtb"], f.files["overlays/overlay_map.dtb"]) {
			t.Errorf("%s: overlay_map.dtb differs from the image's", tc.serial)
		}
		if got, want := string(rep.Files["cmdline.txt"]), "nfsroot=127.0.0.1:/nodes/"+tc.serial+","; !strings.Contains(got, want) {
			t.Errorf("%s: cmdline.txt %q lacks %q", tc.serial, got, want)
		}
		if got := piemu.ParseConfigTxt(rep.Files["config.txt"], tc.board).Settings["dtoverlay"]; got != "disable-wifi" {
			t.Errorf("%s: config.txt %q: the board applies dtoverlay=%q, want Netboot.ConfigTxt's disable-wifi", tc.serial, rep.Files["config.txt"], got)
		}
		if got, want := strings.Join(rep.Missing, ","), "pieeprom.sig"; got != want {
			t.Errorf("%s: missing: got %q, want %q", tc.serial, got, want)
		}
		if p, _ := nodes.Progress(f.st, tc.serial); p.Stage != nodes.StageKernel || p.Detail != "kernel_2712.img" {
			t.Errorf("%s: stage %+v, want kernel via kernel_2712.img", tc.serial, p)
		}
	}
}

// TestEEPROMSelfUpdate: a node whose boot files carry a bootloader update
// gets it under its own prefix, and its record says what it fetched.
func TestEEPROMSelfUpdate(t *testing.T) {
	f := newFixture(t, defaultNetboot)
	boot := filepath.Join(f.root, "boot", "firmware")
	upd := random(t, 512*1024)
	sum := sha256.Sum256(upd)
	os.WriteFile(filepath.Join(boot, "pieeprom.upd"), upd, 0o644)
	os.WriteFile(filepath.Join(boot, "pieeprom.sig"), []byte(hex.EncodeToString(sum[:])+"\nts: 1700000000\n"), 0o644)
	os.WriteFile(filepath.Join(boot, "recovery.bin"), random(t, 100_000), 0o644)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	rep, err := piemu.TFTPBoot(ctx, f.addr, "abcd1234", 1468)
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	if !rep.EEPROMUpdate || !bytes.Equal(rep.Files["pieeprom.upd"], upd) {
		t.Fatalf("pieeprom.upd: update %v, %d bytes; want the image's %d", rep.EEPROMUpdate, len(rep.Files["pieeprom.upd"]), len(upd))
	}
	u, ok := nodes.LoadEEPROMUpdate(f.st, "abcd1234")
	if !ok {
		t.Fatal("no bootloader update recorded for the node")
	}
	if got, want := u.SHA256, hex.EncodeToString(sum[:]); got != want {
		t.Errorf("recorded sha256: got %s, want %s", got, want)
	}
	if got, want := u.Size, int64(len(upd)); got != want {
		t.Errorf("recorded size: got %d, want %d", got, want)
	}
	if got, want := u.File, "abcd1234/pieeprom.upd"; got != want {
		t.Errorf("recorded file: got %q, want %q", got, want)
	}
}

func TestNetconsoleOptIn(t *testing.T) {
	f := newFixture(t, `{"DefaultImage": "`+imageRef+`", "Nodes": [{"Serial": "c0ffee01", "Netconsole": true}, {"Serial": "c0ffee02"}]}`)
	for _, tc := range []struct {
		key  string
		want bool
	}{{"c0ffee01", true}, {"c0ffee02", false}, {"abcd1234", false}} {
		got, err := get(t, f, tc.key+"/cmdline.txt")
		if err != nil {
			t.Fatal(err)
		}
		if has := strings.Contains(string(got), " netconsole=@/,6666@127.0.0.1/"); has != tc.want {
			t.Errorf("%s: cmdline.txt %q: netconsole= %v, want %v", tc.key, got, has, tc.want)
		}
	}
}
