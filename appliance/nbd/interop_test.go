package nbd

// Interoperability with real clients on 127.0.0.1: libnbd's tools
// (nbdinfo, nbdcopy, nbdsh from libnbd-bin, python3-libnbd) and
// nbd-client's userspace negotiation (its -l listing; attaching a device
// needs the kernel's nbd module and is tested in QEMU).

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ociboot/ociboot/appliance/testenv"
)

func (l *lab) uri(export string) string { return fmt.Sprintf("nbd://%s/%s", l.addr, export) }

// run runs a client program with a time limit and returns its output.
func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	return runCmd(t, exec.Command(name, args...))
}

func runCmd(t *testing.T, cmd *exec.Cmd) string {
	t.Helper()
	name, args := cmd.Path, cmd.Args[1:]
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	timer := time.AfterFunc(2*time.Minute, func() { cmd.Process.Kill() })
	defer timer.Stop()
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %s: %v\nstdout: %s\nstderr: %s", name, strings.Join(args, " "), err, out, stderr.String())
	}
	return string(out)
}

// nbdinfo's --json output, the fields tested.
type nbdinfoJSON struct {
	Protocol   string `json:"protocol"`
	TLS        bool   `json:"TLS"`
	Structured bool   `json:"structured"`
	Exports    []struct {
		Name         string `json:"export-name"`
		Size         int64  `json:"export-size"`
		ReadOnly     bool   `json:"is_read_only"`
		CanFlush     bool   `json:"can_flush"`
		CanFUA       bool   `json:"can_fua"`
		CanTrim      bool   `json:"can_trim"`
		CanZero      bool   `json:"can_zero"`
		CanMultiConn bool   `json:"can_multi_conn"`
		CanCache     bool   `json:"can_cache"`
		CanFastZero  bool   `json:"can_fast_zero"`
		MinBlock     int64  `json:"block_size_minimum"`
		PrefBlock    int64  `json:"block_size_preferred"`
		MaxBlock     int64  `json:"block_size_maximum"`
	} `json:"exports"`
}

func TestNbdinfo(t *testing.T) {
	testenv.Short(t, "runs libnbd's nbdinfo")
	nbdinfo := testenv.NeedTool(t, "nbdinfo", "libnbd-bin")
	l := newLab(t, nil)

	var got nbdinfoJSON
	if err := json.Unmarshal([]byte(run(t, nbdinfo, "--json", l.uri("disk"))), &got); err != nil {
		t.Fatalf("nbdinfo --json: %v", err)
	}
	if got.Protocol != "newstyle-fixed" || got.TLS || got.Structured {
		t.Errorf("protocol: got %q TLS %v structured %v, want newstyle-fixed without TLS and structured replies", got.Protocol, got.TLS, got.Structured)
	}
	if len(got.Exports) != 1 {
		t.Fatalf("nbdinfo: got %d exports, want 1", len(got.Exports))
	}
	e := got.Exports[0]
	for _, c := range []struct {
		what      string
		got, want any
	}{
		{"export-name", e.Name, "disk"},
		{"export-size", e.Size, labSizes["disk"]},
		{"is_read_only", e.ReadOnly, false},
		{"can_flush", e.CanFlush, true},
		{"can_fua", e.CanFUA, true},
		{"can_trim", e.CanTrim, true},
		{"can_zero", e.CanZero, true},
		{"can_multi_conn", e.CanMultiConn, true},
		{"can_cache", e.CanCache, false},
		{"can_fast_zero", e.CanFastZero, false},
		{"block_size_minimum", e.MinBlock, int64(1)},
		{"block_size_preferred", e.PrefBlock, int64(4096)},
		{"block_size_maximum", e.MaxBlock, int64(MaxPayload)},
	} {
		if c.got != c.want {
			t.Errorf("nbdinfo %s: got %v, want %v", c.what, c.got, c.want)
		}
	}

	// The listing shows what List allows, with the details of each.
	var list nbdinfoJSON
	if err := json.Unmarshal([]byte(run(t, nbdinfo, "--list", "--json", fmt.Sprintf("nbd://%s", l.addr))), &list); err != nil {
		t.Fatalf("nbdinfo --list --json: %v", err)
	}
	var names []string
	for _, e := range list.Exports {
		names = append(names, fmt.Sprintf("%s:%d", e.Name, e.Size))
	}
	if got, want := strings.Join(names, " "), "disk:1048576 other:65536"; got != want {
		t.Errorf("nbdinfo --list: got %q, want %q", got, want)
	}

	// A refusal reaches the user as libnbd's errno for the reply type,
	// and the server's reason in libnbd's debug output.
	for _, tc := range []struct{ export, errno, reason string }{
		{"nope", "No such file or directory", `no disk "nope"`},
		{"denied", "Operation not supported", "is for another node"},
	} {
		cmd := exec.Command(nbdinfo, l.uri(tc.export))
		cmd.Env = append(os.Environ(), "LIBNBD_DEBUG=1")
		out, err := cmd.CombinedOutput()
		if err == nil || !strings.Contains(string(out), tc.errno) || !strings.Contains(string(out), tc.reason) {
			t.Errorf("nbdinfo %s: got %v\n%s\nwant a failure with %q and %q", tc.export, err, out, tc.errno, tc.reason)
		}
	}
}

// TestNbdcopy writes a random 64 MiB image with nbdcopy (which keeps many
// requests in flight over several connections, as the export allows
// multi-conn) and reads it back.
func TestNbdcopy(t *testing.T) {
	testenv.Short(t, "copies 64 MiB with libnbd's nbdcopy")
	nbdcopy := testenv.NeedTool(t, "nbdcopy", "libnbd-bin")
	l := newLab(t, nil)
	dir := t.TempDir()
	src, back := filepath.Join(dir, "src.img"), filepath.Join(dir, "back.img")
	data := make([]byte, labSizes["big"])
	rand.Read(data)
	// A zero stretch, which nbdcopy sends as WRITE_ZEROES.
	clear(data[8<<20 : 12<<20])
	if err := os.WriteFile(src, data, 0o644); err != nil {
		t.Fatal(err)
	}
	run(t, nbdcopy, "--flush", src, l.uri("big"))
	stored, err := os.ReadFile(filepath.Join(l.dir, "big"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(stored, data) {
		t.Fatalf("export file after nbdcopy differs from the source (first difference at %d)", firstDiff(stored, data))
	}
	run(t, nbdcopy, l.uri("big"), back)
	got, err := os.ReadFile(back)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("read back differs from the source (first difference at %d)", firstDiff(got, data))
	}
	flushes := int32(0)
	for _, e := range l.exports() {
		flushes += e.flushes.Load()
	}
	if flushes == 0 {
		t.Error("nbdcopy --flush: no FLUSH reached the export")
	}
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// TestNbdsh drives FLUSH, FUA writes, TRIM and WRITE_ZEROES from libnbd's
// Python API and checks them from both sides: the data read back, and the
// file's allocation and the export's flush count.
func TestNbdsh(t *testing.T) {
	testenv.Short(t, "runs libnbd's nbdsh")
	nbdsh := testenv.NeedTool(t, "nbdsh", "libnbd-bin and python3-libnbd")
	l := newLab(t, nil)
	script := `
import nbd
mib = 1 << 20
assert h.get_size() == 1 << 20, h.get_size()
assert h.can_flush() and h.can_fua() and h.can_trim() and h.can_zero()
buf = bytes(range(256)) * 1024          # 256 KiB
h.pwrite(buf, 0)
h.pwrite(buf, 256 * 1024, nbd.CMD_FLAG_FUA)
h.flush()
assert h.pread(512 * 1024, 0) == buf + buf
h.trim(512 * 1024, 0)                   # all holes now
h.zero(128 * 1024, 384 * 1024, nbd.CMD_FLAG_NO_HOLE)
assert h.pread(128 * 1024, 384 * 1024) == bytes(128 * 1024)
h.pwrite(buf, 0)
h.zero(128 * 1024, 0)                   # a hole in the data
assert h.pread(256 * 1024, 0) == bytes(128 * 1024) + buf[128 * 1024:]
h.flush()
try:
    h.pread(4096, mib - 1024)
    raise Exception("read past the end succeeded")
except nbd.Error as e:
    print("past-end:", e.errnum)
print("ok")
`
	cmd := exec.Command(nbdsh, "-u", l.uri("disk"), "-c", script)
	// nbdsh runs python3 from PATH; python3-libnbd is Debian's.
	cmd.Env = append(os.Environ(), "PATH=/usr/bin:/bin:"+os.Getenv("PATH"))
	out := runCmd(t, cmd)
	if !strings.Contains(out, "ok") {
		t.Fatalf("nbdsh: %s", out)
	}
	e := l.exports()[0]
	if got := e.flushes.Load(); got < 3 { // the FUA write and two FLUSHes
		t.Errorf("flushes: got %d, want >= 3", got)
	}
	// Allocated: the data at 128-256 KiB and the NO_HOLE zeroes at
	// 384-512 KiB; the rest of the first 512 KiB are holes.
	if got, want := allocated(t, filepath.Join(l.dir, "disk")), int64(256<<10); got != want {
		t.Errorf("allocated after trim and zero: got %d bytes, want %d", got, want)
	}
}

// TestNbdClientList: nbd-client (Debian's, as the kernel's nodes run it)
// negotiates and lists the exports.
func TestNbdClientList(t *testing.T) {
	testenv.Short(t, "runs nbd-client -l")
	nbdClient := testenv.NeedTool(t, "nbd-client", "nbd-client")
	l := newLab(t, nil)
	host, port, _ := strings.Cut(l.addr, ":")
	out := run(t, nbdClient, "-l", host, port)
	lines := strings.Fields(out)
	if got, want := strings.Join(lines[len(lines)-2:], " "), "disk other"; got != want {
		t.Errorf("nbd-client -l: got %q, want the exports %q", out, want)
	}
}
