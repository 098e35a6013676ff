package lab

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
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

// DockerRegistry runs Debian's docker-registry (distribution) in namespace
// ns ("" for this one) on addr, storage in a temp dir, and waits until it
// answers /v2/; it returns its host:port. An empty addr is a free port on
// 127.0.0.1: docker-registry cannot take a socket handed down, so a port
// taken between the probe and its bind is retried with another.
func DockerRegistry(t testing.TB, ns, addr string) string {
	t.Helper()
	bin := testenv.NeedTool(t, "docker-registry", "docker-registry")
	for try := 0; ; try++ {
		a := addr
		if a == "" {
			l := ListenTCP(t)
			a = l.Addr
			l.File.Close()
		}
		dir := t.TempDir()
		cfg := fmt.Sprintf("version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: %s\n  delete:\n    enabled: true\nhttp:\n  addr: %s\n", filepath.Join(dir, "data"), a)
		cfgPath := filepath.Join(dir, "config.yml")
		if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
			t.Fatal(err)
		}
		p := Cmd{Name: "docker-registry", NS: ns, Args: []string{bin, "serve", cfgPath}}.Start(t)
		if err := waitHTTP(ns, "http://"+a+"/v2/", 30*time.Second, p); err == nil {
			return a
		} else if addr != "" || try == 5 || !strings.Contains(p.Output(), "address already in use") {
			t.Fatalf("docker-registry on %s: %v\n%s", a, err, p.Tail(3000))
		}
	}
}

// waitHTTP polls url (with curl inside ns, if set) until it answers with
// any status, p exits or timeout passes.
func waitHTTP(ns, url string, timeout time.Duration, p *Proc) error {
	deadline := time.Now().Add(timeout)
	for {
		args := []string{"curl", "-s", "-o", "/dev/null", "--max-time", "2", url}
		if ns != "" {
			args = append([]string{"ip", "netns", "exec", ns}, args...)
		}
		if exec.Command(args[0], args[1:]...).Run() == nil {
			return nil
		}
		if p.Exited() {
			return fmt.Errorf("exited (%v) before %s answered", p.Err(), url)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s did not answer within %v", url, timeout)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// WaitHTTP waits until url answers (curl inside ns, if set), failing t
// with p's output when p exits first or timeout passes.
func WaitHTTP(t testing.TB, ns, url string, timeout time.Duration, p *Proc) {
	t.Helper()
	if err := waitHTTP(ns, url, timeout, p); err != nil {
		t.Fatalf("%s: %v\n%s", p.Name, err, p.Tail(5000))
	}
}
