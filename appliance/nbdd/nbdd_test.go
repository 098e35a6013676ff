package nbdd

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/ociboot/ociboot/appliance/metrics"

	"github.com/ociboot/ociboot/appliance/config"
	"github.com/ociboot/ociboot/appliance/nbd"
	"github.com/ociboot/ociboot/appliance/nodedisk"
	"github.com/ociboot/ociboot/appliance/nodes"
	"github.com/ociboot/ociboot/appliance/store"
	"github.com/ociboot/ociboot/appliance/testenv"
)

func newServer(t *testing.T, js string) (*Server, *store.Store, *metrics.Registry) {
	t.Helper()
	st, err := store.Open(t.TempDir(), store.Options{AllowTmpfs: true})
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Parse([]byte(js))
	if err != nil {
		t.Fatal(err)
	}
	reg := metrics.NewRegistry()
	return New(cfg, Options{Store: st, Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Metrics: reg}), st, reg
}

// TestLookup: a node gets its own disk, by its key or the MAC form of it,
// only from its own address; everyone else is refused by policy, and a
// node without an NBD disk is told the export is unknown.
func TestLookup(t *testing.T) {
	s, st, reg := newServer(t, `{"Netboot": {"NodeDisk": {"Size": "1G"}, "Nodes": [
		{"Serial": "abcd0001", "MAC": "dc:a6:32:00:00:01", "IP": "10.42.0.11"},
		{"Serial": "abcd0002", "IP": "10.42.0.12"},
		{"Serial": "abcd0003", "IP": "10.42.0.13", "Disk": {"Device": "LABEL=data"}},
		{"Serial": "abcd0004", "IP": "10.42.0.14", "Disk": {"Off": true}}]}}`)
	// A node known only by dhcpd's record: its leased address counts.
	nodes.Save(st, nodes.Record{Serial: "abcd0005", IP: "10.42.0.55"})
	for _, tt := range []struct {
		name, export, from string
		want               error
	}{
		{"own disk", "abcd0001", "10.42.0.11", nil},
		{"own disk by MAC", "dc-a6-32-00-00-01", "10.42.0.11", nil},
		{"own disk, v4-mapped peer", "abcd0001", "[::ffff:10.42.0.11]", nil},
		{"leased node", "abcd0005", "10.42.0.55", nil},
		{"another node's disk", "abcd0002", "10.42.0.11", nbd.ErrPolicy},
		{"not a node's address", "abcd0001", "10.42.0.99", nbd.ErrPolicy},
		{"a path", "../abcd0001", "10.42.0.11", nbd.ErrPolicy},
		{"the node's own device", "abcd0003", "10.42.0.13", nbd.ErrUnknownExport},
		{"disk off", "abcd0004", "10.42.0.14", nbd.ErrUnknownExport},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ap, err := netip.ParseAddrPort(strings.Trim(tt.from, "[]") + ":1023")
			if strings.HasPrefix(tt.from, "[") {
				ap, err = netip.ParseAddrPort(tt.from + ":1023")
			}
			if err != nil {
				t.Fatal(err)
			}
			exp, err := s.Lookup(context.Background(), tt.export, ap)
			if tt.want == nil {
				if err != nil {
					t.Fatalf("got %v, want the disk", err)
				}
				if got, want := exp.Size(), int64(1<<30); got != want {
					t.Errorf("Size: got %d, want %d", got, want)
				}
				exp.Close()
				return
			}
			if !errors.Is(err, tt.want) {
				t.Errorf("got %v, want %v", err, tt.want)
			}
		})
	}
	if got := value(s.refused.WithLabelValues("policy")); got != 3 {
		t.Errorf("refused_total{reason=policy}: got %v, want 3", got)
	}
	if got := value(s.refused.WithLabelValues("unknown")); got != 2 {
		t.Errorf("refused_total{reason=unknown}: got %v, want 2", got)
	}
	for _, tt := range []struct {
		from string
		want []string
	}{{"10.42.0.11", []string{"abcd0001"}}, {"10.42.0.13", nil}, {"10.42.0.99", nil}} {
		if got := s.List(netip.MustParseAddrPort(tt.from + ":1023")); strings.Join(got, ",") != strings.Join(tt.want, ",") {
			t.Errorf("List from %s: got %q, want %q", tt.from, got, tt.want)
		}
	}
	// Live config: the next Lookup follows it.
	cfg, _ := config.Parse([]byte(`{"Netboot": {"Nodes": [{"Serial": "abcd0001", "IP": "10.42.0.11"}]}}`))
	s.SetConfig(cfg)
	if _, err := s.Lookup(context.Background(), "abcd0001", netip.MustParseAddrPort("10.42.0.11:1023")); !errors.Is(err, nbd.ErrUnknownExport) {
		t.Errorf("after NodeDisk was removed: got %v, want ErrUnknownExport", err)
	}
	if n, err := count(reg, "disk_allocated_bytes"); err != nil || n == 0 {
		t.Errorf("disk_allocated_bytes series: %d, %v", n, err)
	}
}

// TestServe: a real NBD client (libnbd's nbdsh) writes and reads the
// node's disk through the server; the status and metrics count it; a
// forced drop closes the connection and the next one gets a fresh disk.
func TestServe(t *testing.T) {
	testenv.Short(t, "runs libnbd's nbdsh")
	nbdsh := testenv.NeedTool(t, "nbdsh", "libnbd-bin and python3-libnbd")
	// nbdsh runs python3 from PATH; python3-libnbd is Debian's.
	env := append(os.Environ(), "PATH=/usr/bin:/bin:"+os.Getenv("PATH"))
	s, st, reg := newServer(t, `{"Netboot": {"Nodes": [{"Serial": "abcd0001", "IP": "127.0.0.1", "Disk": {"Size": "1G"}}]}}`)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go s.NBD.Serve(ln)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		s.NBD.Shutdown(ctx)
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go s.Watch(ctx, 50*time.Millisecond)
	uri := "nbd://" + ln.Addr().String() + "/abcd0001"

	// Write, flush, read back; then wait (reading) until the connection
	// is closed under the client.
	script := `
import sys, time
h.pwrite(b"ociboot" * 4096, 1 << 20)
h.flush()
assert h.pread(7, 1 << 20) == b"ociboot", "read back"
print("written", flush=True)
sys.stdin.readline()
try:
    for i in range(1000):
        h.pread(512, 0)
        time.sleep(0.05)
    print("still connected")
except nbd.Error as e:
    print("closed:", e)
`
	cmd := exec.Command(nbdsh, "-u", uri, "-c", script)
	cmd.Env = env
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	buf := make([]byte, 64)
	n, _ := stdout.Read(buf)
	if got := string(buf[:n]); !strings.Contains(got, "written") {
		cmd.Wait()
		t.Fatalf("nbdsh: %q; stderr: %s", got, stderr.String())
	}
	stat := s.Status()
	if len(stat.Conns) != 1 || stat.Conns[0].Node != "abcd0001" || !strings.HasPrefix(stat.Conns[0].Remote, "127.0.0.1:") {
		t.Errorf("status connections: %+v, want one of abcd0001 from 127.0.0.1", stat.Conns)
	}
	if len(stat.Disks) != 1 || stat.Disks[0].Allocated < 7*4096 || stat.Disks[0].Size != 1<<30 {
		t.Errorf("status disks: %+v, want abcd0001 of 1 GiB with its written blocks", stat.Disks)
	}
	if got := value(s.written.WithLabelValues("abcd0001")); got != 7*4096 {
		t.Errorf("written_bytes_total: got %v, want %d", got, 7*4096)
	}
	if n, _ := count(reg, "connections"); n != 1 {
		t.Errorf("connections gauge: %d series", n)
	}
	if !nodedisk.InUse(st, "abcd0001") {
		t.Errorf("the served disk is not in use")
	}
	if _, err := nodedisk.Drop(st, "abcd0001", false); !errors.Is(err, nodedisk.ErrInUse) {
		t.Errorf("unforced drop of the served disk: got %v, want ErrInUse", err)
	}
	if _, err := nodedisk.Drop(st, "abcd0001", true); err != nil {
		t.Fatal(err)
	}
	stdin.Write([]byte("\n"))
	rest, _ := io.ReadAll(stdout)
	cmd.Wait()
	if !strings.Contains(string(rest), "closed:") {
		t.Errorf("after the drop nbdsh says %q, want the connection closed", rest)
	}
	again := exec.Command(nbdsh, "-u", uri, "-c", `print(h.pread(7, 1 << 20) == bytes(7))`)
	again.Env = env
	out, err := again.CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "True" {
		t.Errorf("a new connection after the drop: %q, %v; want a fresh (zero) disk", out, err)
	}
}

// TestServeQuota: over NBD, writes past the node's quota (root and disk
// together) fail with ENOSPC, overwrites still work, and a TRIM makes room.
func TestServeQuota(t *testing.T) {
	testenv.Short(t, "runs libnbd's nbdsh")
	nbdsh := testenv.NeedTool(t, "nbdsh", "libnbd-bin and python3-libnbd")
	s, st, _ := newServer(t, `{"Netboot": {"Nodes": [{"Serial": "abcd0001", "IP": "127.0.0.1", "Quota": "8M", "Disk": {"Size": "1G"}}]}}`)
	s.opts.RootUsed = func(string) int64 { return 3 << 20 }
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go s.NBD.Serve(ln)
	t.Cleanup(func() { s.NBD.Shutdown(context.Background()) })
	script := `
import errno
mib = 1 << 20
n = 0
try:
    for i in range(64):
        h.pwrite(b"x" * mib, i * mib)
        n += 1
except nbd.Error as e:
    print("refused after", n, "MiB, errno", e.errnum == errno.ENOSPC)
h.pwrite(b"y" * mib, 0)
h.trim(2 * mib, 0)
h.pwrite(b"z" * mib, 40 * mib)
print("ok")
`
	cmd := exec.Command(nbdsh, "-u", "nbd://"+ln.Addr().String()+"/abcd0001", "-c", script)
	cmd.Env = append(os.Environ(), "PATH=/usr/bin:/bin:"+os.Getenv("PATH"))
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("nbdsh: %v\n%s", err, out)
	}
	// 8 MiB quota, 3 in the root: 5 MiB of disk.
	for _, want := range []string{"refused after 5 MiB, errno True", "ok"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("nbdsh says %q, want %q", out, want)
		}
	}
	if got := nodedisk.Usage(st, "abcd0001"); got > 5<<20 {
		t.Errorf("the disk takes %d bytes, more than the 5 MiB the quota leaves", got)
	}
}

// TestRootUsage: the quota counts nfsd's root as its /status says.
func TestRootUsage(t *testing.T) {
	nfsd := newStatusServer(t, `{"Exports": [{"Node": "abcd0001", "Used": 12345}, {"Node": "abcd0002", "Used": 7}]}`)
	r := &RootUsage{URL: nfsd}
	if err := r.Poll(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := r.Used("abcd0001"); got != 12345 {
		t.Errorf("Used: got %d, want 12345", got)
	}
	r.URL = "http://127.0.0.1:1"
	if err := r.Poll(context.Background()); err == nil {
		t.Errorf("Poll of a closed port: no error")
	}
	if got := r.Used("abcd0001"); got != 12345 {
		t.Errorf("Used after nfsd went away: got %d, want the last count 12345", got)
	}
	if st := r.State(); st.Fetched.IsZero() || st.Error == "" {
		t.Errorf("State after a failed poll: %+v, want the last answer's time and the error", st)
	}
}

func newStatusServer(t *testing.T, body string) string {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/status" {
			http.NotFound(w, r)
			return
		}
		io.WriteString(w, body)
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

// value is the counter of c's one series.
func value(c metrics.Counter) float64 {
	reg := metrics.NewRegistry()
	reg.MustRegister(c)
	mfs, _ := reg.Gather()
	for _, mf := range mfs {
		for _, m := range mf.Samples {
			return m.Value
		}
	}
	return -1
}

// count is the number of series of the metric name in reg.
func count(reg *metrics.Registry, name string) (int, error) {
	mfs, err := reg.Gather()
	for _, mf := range mfs {
		if mf.Name == name {
			return len(mf.Samples), err
		}
	}
	return 0, err
}
