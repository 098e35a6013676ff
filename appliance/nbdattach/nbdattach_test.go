package nbdattach

import (
	"bytes"
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ociboot/ociboot/appliance/nbd"
	"github.com/ociboot/ociboot/appliance/testenv"
)

func TestFromCmdline(t *testing.T) {
	tests := []struct {
		cmdline      string
		addr, export string
		ok           bool
		err          string
	}{
		{cmdline: "console=ttyAMA0 root=/dev/nfs", ok: false},
		{cmdline: "ociboot.disk=/dev/nvme0n1p1 ociboot.mount=/var/lib/containerd", ok: false},
		{cmdline: "ociboot.disk=LABEL=data", ok: false},
		{cmdline: "ro ociboot.disk=nbd://10.0.0.1:10809/abcd0001 quiet", addr: "10.0.0.1:10809", export: "abcd0001", ok: true},
		{cmdline: "ociboot.disk=nbd://10.0.0.1:1/old ociboot.disk=nbd://[fd00::1]:10809/n1", addr: "[fd00::1]:10809", export: "n1", ok: true},
		{cmdline: "ociboot.disk=nbd://10.0.0.1/abcd0001", err: "want nbd://<head>:<port>/<export>"},
		{cmdline: "ociboot.disk=nbd://10.0.0.1:10809/", err: "want nbd://"},
		{cmdline: "ociboot.disk=nbd://:10809/x", err: "want nbd://"},
	}
	for _, tt := range tests {
		addr, export, ok, err := FromCmdline(tt.cmdline)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("FromCmdline(%q): got err %v, want %q", tt.cmdline, err, tt.err)
			}
			continue
		}
		if err != nil || addr != tt.addr || export != tt.export || ok != tt.ok {
			t.Errorf("FromCmdline(%q): got %q %q %v %v, want %q %q %v", tt.cmdline, addr, export, ok, err, tt.addr, tt.export, tt.ok)
		}
	}
}

func TestAttrsRoundTrip(t *testing.T) {
	b := appendAttrs(nil, []attr{
		u32Attr(1, 7),
		strAttr(2, "abc"), // 4 bytes with NUL, then padding
		nestAttr(7, nestAttr(1, u32Attr(1, 42)), nestAttr(1, u32Attr(1, 43))),
		u64Attr(8, 3600),
	})
	if len(b)%4 != 0 {
		t.Fatalf("attributes of %d bytes: not aligned", len(b))
	}
	m := parseAttrs(b)
	if got := nativeU32(m[1]); got != 7 {
		t.Errorf("u32: got %d", got)
	}
	if got := string(m[2]); got != "abc\x00" {
		t.Errorf("string: got %q", got)
	}
	var fds []uint32
	for _, item := range parseAttrList(m[7]) {
		fds = append(fds, nativeU32(parseAttrs(item)[1]))
	}
	if len(fds) != 2 || fds[0] != 42 || fds[1] != 43 {
		t.Errorf("nested items: got %v, want [42 43]", fds)
	}
	if got := len(m[8]); got != 8 {
		t.Errorf("u64 of %d bytes", got)
	}
}

// TestParseMalformed: truncated and lying lengths end parsing without a
// panic.
func TestParseMalformed(t *testing.T) {
	good := appendAttrs(nil, []attr{u32Attr(1, 1), u32Attr(2, 2)})
	for i := range len(good) {
		parseAttrs(good[:i])
		parseAttrList(good[:i])
		parseMessages(good[:i])
	}
	bad := bytes.Clone(good)
	bad[0] = 0xff // length past the end
	if got := len(parseAttrs(bad)); got != 0 {
		t.Errorf("an attribute whose length runs past the end: %d parsed", got)
	}
	if _, err := parseMessages(append(make([]byte, 16), good...)); err == nil {
		t.Errorf("a netlink header with length 0: no error")
	}
}

// TestFamilyFromKernel resolves the generic netlink controller's own
// family and its multicast group from this machine's kernel, the request
// Attach makes for "nbd", and names the module when nbd is missing.
func TestFamilyFromKernel(t *testing.T) {
	g, err := openGenl()
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	id, group, err := g.family("nlctrl", "notify")
	if err != nil {
		t.Fatalf("resolving nlctrl: %v", err)
	}
	if id != unix.GENL_ID_CTRL || group == 0 {
		t.Errorf("nlctrl: got family %d group %d, want %d and a group", id, group, unix.GENL_ID_CTRL)
	}
	// Every family this kernel has, as iproute2's genl lists them: the
	// reply must survive the acknowledgement that follows it.
	genlTool := testenv.NeedTool(t, "genl", "iproute2")
	out, err := exec.Command(genlTool, "ctrl", "list").Output()
	if err != nil {
		t.Fatalf("genl ctrl list: %v", err)
	}
	var name string
	checked := 0
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) == 2 && f[0] == "Name:":
			name = f[1]
		case len(f) >= 2 && f[0] == "ID:" && name != "":
			want, _ := strconv.ParseUint(f[1], 0, 16)
			got, _, err := g.family(name, "")
			if err != nil || uint64(got) != want {
				t.Errorf("family %s: got %d, %v; genl says %d", name, got, err, want)
			}
			checked++
			name = ""
		}
	}
	if checked < 3 {
		t.Errorf("genl ctrl list named %d families:\n%s", checked, out)
	}
	if _, _, err := g.family("no-such-family", ""); err == nil {
		t.Errorf("resolving a family that does not exist: no error")
	}
	if _, err := os.Stat("/sys/module/nbd"); err == nil {
		return // this kernel has nbd loaded: the error below cannot happen
	}
	_, err = Attach(context.Background(), Config{Addr: "127.0.0.1:1", Export: "x"})
	if err == nil || !strings.Contains(err.Error(), "modprobe nbd") {
		t.Errorf("Attach without the nbd module: got %v, want it to say modprobe nbd", err)
	}
}

func TestSame(t *testing.T) {
	d := &Device{info: nbd.ExportInfo{Size: 1 << 30, Description: "ociboot disk n1 id 1c-5f.1"}}
	tests := []struct {
		info nbd.ExportInfo
		ok   bool
	}{
		{nbd.ExportInfo{Size: 1 << 30, Description: "ociboot disk n1 id 1c-5f.1"}, true},
		{nbd.ExportInfo{Size: 2 << 30, Description: "ociboot disk n1 id 1c-5f.1"}, true}, // grown by the config
		{nbd.ExportInfo{Size: 1 << 29, Description: "ociboot disk n1 id 1c-5f.1"}, false},
		{nbd.ExportInfo{Size: 1 << 30, Description: "ociboot disk n1 id 1c-60.2"}, false}, // dropped and remade
		{nbd.ExportInfo{Size: 1 << 30}, false},
	}
	for _, tt := range tests {
		if err := d.same(tt.info); (err == nil) != tt.ok {
			t.Errorf("same(%+v): got %v, want ok %v", tt.info, err, tt.ok)
		}
	}
}

// TestNotify: the READY line reaches a listener at $NOTIFY_SOCKET as
// systemd's.
func TestNotify(t *testing.T) {
	p := filepath.Join(t.TempDir(), "notify")
	ln, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: p, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	t.Setenv("NOTIFY_SOCKET", p)
	if err := Notify("READY=1"); err != nil {
		t.Fatal(err)
	}
	ln.SetDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 64)
	n, err := ln.Read(buf)
	if err != nil || string(buf[:n]) != "READY=1" {
		t.Errorf("got %q, %v; want READY=1", buf[:n], err)
	}
}

func TestFindMount(t *testing.T) {
	mi := `22 1 0:21 / / rw,relatime shared:1 - nfs 10.0.0.1:/nodes/n1 rw,vers=3
35 22 43:0 / /var/lib/ociboot/disk rw,noatime shared:12 - ext4 /dev/nbd0 rw
36 22 43:0 /var_lib_containerd /var/lib/containerd rw,noatime shared:12 - ext4 /dev/nbd0 rw
`
	if got, want := findMount(mi, "43:0"), "/var/lib/ociboot/disk"; got != want {
		t.Errorf("findMount 43:0: got %q, want %q", got, want)
	}
	if got := findMount(mi, "43:32"); got != "" {
		t.Errorf("findMount of a device nothing is mounted from: got %q", got)
	}
}
