package lab

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/ociboot/ociboot/appliance/dhcpd"
	"github.com/ociboot/ociboot/appliance/testenv"
)

// Dnsmasq runs Debian's dnsmasq in ns on eth0 with DNS off, leases in a
// temp dir and the extra arguments (ranges, PXE services, relay), and
// waits until it serves DHCP (or relays).
func Dnsmasq(t testing.TB, ns string, extra ...string) *Proc {
	t.Helper()
	testenv.NeedTool(t, "dnsmasq", "dnsmasq")
	dir := t.TempDir()
	args := append([]string{"dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--port=0", "--user=root",
		"--no-resolv", "--no-hosts", "--interface=eth0", "--bind-interfaces", "--log-facility=-",
		"--dhcp-leasefile=" + filepath.Join(dir, "leases"), "--pid-file=" + filepath.Join(dir, "pid")}, extra...)
	p := Cmd{Name: "dnsmasq", NS: ns, Args: args}.Start(t)
	if _, err := p.WaitLine(10*time.Second, "DHCP, ", "DHCP relay"); err != nil {
		t.Fatalf("dnsmasq: %v:\n%s", err, p.Tail(3000))
	}
	return p
}

// GetIn fetches url with curl inside namespace ns (where the services'
// status ports are on loopback) and fails t if that does not work.
func GetIn(t testing.TB, ns, url string) []byte {
	t.Helper()
	out, err := exec.Command("ip", "netns", "exec", ns, "curl", "-sf", "--max-time", "5", url).Output()
	if err != nil {
		t.Fatalf("curl %s in %s: %v", url, ns, err)
	}
	return out
}

// DHCPD is services/dhcpd running in a namespace, its status port on
// 127.0.0.1:9067 there.
type DHCPD struct {
	*Proc
	NS    string
	Store string
}

// StartDHCPD runs the built dhcpd in ns with a config.json whose Netboot
// section is netboot, on store (a new temp dir if empty), with extra flags.
func StartDHCPD(t testing.TB, ns, netboot, store string, extra ...string) *DHCPD {
	t.Helper()
	bin := Binary(t, "dhcpd")
	dir := t.TempDir()
	if store == "" {
		store = filepath.Join(dir, "store")
	}
	cfg := filepath.Join(dir, "config.json")
	if err := os.WriteFile(cfg, []byte(`{"Hostname": "head", "Netboot": `+netboot+`}`), 0o644); err != nil {
		t.Fatal(err)
	}
	args := append([]string{bin, "-config", cfg, "-store", store, "-allow_tmpfs", "-status", "127.0.0.1:9067"}, extra...)
	return &DHCPD{Proc: Cmd{Name: "dhcpd", NS: ns, Args: args}.Start(t), NS: ns, Store: store}
}

// Status is dhcpd's /status.
func (d *DHCPD) Status(t testing.TB) dhcpd.Status {
	t.Helper()
	var st dhcpd.Status
	b := GetIn(t, d.NS, "http://127.0.0.1:9067/status")
	if err := json.Unmarshal(b, &st); err != nil {
		t.Fatalf("dhcpd /status: %v\n%s", err, b)
	}
	return st
}

// Metrics is dhcpd's /metrics.
func (d *DHCPD) Metrics(t testing.TB) string {
	t.Helper()
	return string(GetIn(t, d.NS, "http://127.0.0.1:9067/metrics"))
}
