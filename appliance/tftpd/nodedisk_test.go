package tftpd

import (
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ociboot/ociboot/appliance/nodes"
)

// lockedBuffer collects a server's log; transfers log from their own
// goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestCmdlineDiskAndInstall: the node's Disk and a pending Install reach
// its cmdline.txt as the ociboot.* arguments the node image reads, after
// the root arguments and KernelArgs, and never twice.
func TestCmdlineDiskAndInstall(t *testing.T) {
	const root = "root=/dev/nfs nfsroot=127.0.0.1:/nodes/abcd1234,vers=3,tcp,port=2049 ip=dhcp rw rootwait cgroup_enable=memory"
	for _, tt := range []struct {
		name    string
		nodes   string // Netboot.Nodes
		extra   string // more Netboot keys
		report  *nodes.Install
		image   string // the image's cmdline.txt
		wantArg string // after root and KernelArgs
	}{
		{name: "no disk, no install", nodes: `[{"Serial": "abcd1234"}]`},
		{name: "NBD disk from NodeDisk, default mounts", nodes: `[{"Serial": "abcd1234"}]`, extra: `"NodeDisk": {"Size": "2G"}`,
			wantArg: "ociboot.disk=nbd://127.0.0.1:10809/abcd1234 ociboot.mount=/var/lib/containerd,/var/lib/rancher"},
		{name: "NodeDisk for a node the config does not list", extra: `"NodeDisk": {}`,
			wantArg: "ociboot.disk=nbd://127.0.0.1:10809/abcd1234 ociboot.mount=/var/lib/containerd,/var/lib/rancher"},
		{name: "node's own device, formatted", nodes: `[{"Serial": "abcd1234", "Disk": {"Device": "/dev/nvme0n1p1", "Format": true, "Mount": ["/var/lib/docker"]}}]`,
			wantArg: "ociboot.disk=/dev/nvme0n1p1 ociboot.format=1 ociboot.mount=/var/lib/docker"},
		{name: "device by label, never formatted", nodes: `[{"Serial": "abcd1234", "Disk": {"Device": "LABEL=data"}}]`,
			wantArg: "ociboot.disk=LABEL=data ociboot.mount=/var/lib/containerd,/var/lib/rancher"},
		{name: "Disk Off overrides NodeDisk", nodes: `[{"Serial": "abcd1234", "Disk": {"Off": true}}]`, extra: `"NodeDisk": {}`},
		{name: "install pending", nodes: `[{"Serial": "abcd1234", "Install": {"Device": "/dev/mmcblk0"}}]`,
			wantArg: "ociboot.install=/dev/mmcblk0 ociboot.report=http://127.0.0.1:9809/install"},
		{name: "install failed before: tried again", nodes: `[{"Serial": "abcd1234", "Install": {"Device": "/dev/mmcblk0"}}]`,
			report:  &nodes.Install{Device: "/dev/mmcblk0", Error: "no such device"},
			wantArg: "ociboot.install=/dev/mmcblk0 ociboot.report=http://127.0.0.1:9809/install"},
		{name: "installed, netboot kept: no installer, disk still", nodes: `[{"Serial": "abcd1234", "Install": {"Device": "/dev/mmcblk0", "KeepNetboot": true}}]`, extra: `"NodeDisk": {}`,
			report:  &nodes.Install{Device: "/dev/mmcblk0", OK: true},
			wantArg: "ociboot.disk=nbd://127.0.0.1:10809/abcd1234 ociboot.mount=/var/lib/containerd,/var/lib/rancher"},
		{name: "the image's own ociboot.* arguments are dropped", nodes: `[{"Serial": "abcd1234"}]`,
			image: "console=ttyAMA0 ociboot.disk=/dev/sda1 ociboot.install=/dev/sda quiet"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			netboot := `{"DefaultImage": "` + imageRef + `", "KernelArgs": ["cgroup_enable=memory"]`
			if tt.nodes != "" {
				netboot += `, "Nodes": ` + tt.nodes
			}
			if tt.extra != "" {
				netboot += ", " + tt.extra
			}
			f := newFixture(t, netboot+"}")
			if tt.report != nil {
				tt.report.Time = time.Now()
				if err := nodes.SaveInstall(f.st, "abcd1234", *tt.report); err != nil {
					t.Fatal(err)
				}
			}
			image := strings.TrimSpace(imgCmdline)
			want := "console=serial0,115200 console=tty1 fsck.repair=yes quiet " + root
			if tt.image != "" {
				writeBootFile(t, f, "cmdline.txt", tt.image)
				image = tt.image
				want = "console=ttyAMA0 quiet " + root
			}
			if tt.wantArg != "" {
				want += " " + tt.wantArg
			}
			got, err := get(t, f, "abcd1234/cmdline.txt")
			if err != nil {
				t.Fatal(err)
			}
			if got := strings.TrimSpace(string(got)); got != want {
				t.Errorf("cmdline.txt of image %q:\ngot  %q\nwant %q", image, got, want)
			}
		})
	}
}

// TestInstalledNodeNotNetbooted: once a node has reported a successful
// install to its configured device, tftpd refuses every file of its
// netboot and says why once; with KeepNetboot, or a report for another
// device, it is served.
func TestInstalledNodeNotNetbooted(t *testing.T) {
	for _, tt := range []struct {
		name    string
		install string
		report  nodes.Install
		served  bool
	}{
		{"installed", `{"Device": "/dev/nvme0n1"}`, nodes.Install{Device: "/dev/nvme0n1", OK: true}, false},
		{"installed, KeepNetboot", `{"Device": "/dev/nvme0n1", "KeepNetboot": true}`, nodes.Install{Device: "/dev/nvme0n1", OK: true}, true},
		{"install failed", `{"Device": "/dev/nvme0n1"}`, nodes.Install{Device: "/dev/nvme0n1", Error: "mkfs.vfat: no such device"}, true},
		{"installed to a device no longer configured", `{"Device": "/dev/nvme0n1"}`, nodes.Install{Device: "/dev/mmcblk0", OK: true}, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var logs lockedBuffer
			f := newFixture(t, `{"DefaultImage": "`+imageRef+`", "Nodes": [{"Serial": "abcd1234", "Install": `+tt.install+`}]}`,
				func(o *Options) { o.Log = slog.New(slog.NewTextHandler(&logs, nil)) })
			tt.report.Time = time.Now()
			if err := nodes.SaveInstall(f.st, "abcd1234", tt.report); err != nil {
				t.Fatal(err)
			}
			for _, file := range []string{"abcd1234/start4.elf", "abcd1234/config.txt", "abcd1234/cmdline.txt", "abcd1234/kernel8.img"} {
				_, err := get(t, f, file)
				if got, want := err == nil, tt.served; got != want {
					t.Errorf("%s: served %v (err %v), want %v", file, got, err, want)
				}
			}
			const line = "node abcd1234 installed to /dev/nvme0n1; not netbooting it (set Install.KeepNetboot to keep netboot as fallback)"
			want := 0
			if !tt.served {
				want = 1
			}
			if got := strings.Count(logs.String(), line); got != want {
				t.Errorf("log has %q %d times, want %d:\n%s", line, got, want, logs.String())
			}
			if !tt.served {
				if got, want := f.srv.Status().Nodes["abcd1234"].NotFound, 4; got != want {
					t.Errorf("status: %d refused requests, want %d", got, want)
				}
			}
		})
	}
}

// writeBootFile replaces a file of the fixture's image boot directory.
func writeBootFile(t testing.TB, f *fixture, name, data string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(f.root, "boot", "firmware", name), []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}
