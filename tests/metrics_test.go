package tests

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/ociboot/ociboot/appliance/testenv"
	"github.com/ociboot/ociboot/tests/lab"
)

// TestDashboardMetricsExist starts every service and checks that each
// metric the Grafana dashboard in the repository queries is one a service
// registers (GET /metrics/names, which lists metrics before their first
// sample too), and that every service names its metrics
// ociboot_<service>_.
func TestDashboardMetricsExist(t *testing.T) {
	testenv.Short(t, "starts every service")
	lab.NeedNetns(t)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "config.json")
	os.WriteFile(cfg, []byte(`{"Netboot": {"DefaultImage": "127.0.0.1:1/node:v1"}}`), 0o644)
	store := filepath.Join(dir, "store")
	common := []string{"-config", cfg, "-store", store, "-allow_tmpfs"}
	seg := lab.NewSegment(t)
	ns := seg.NewNS("head", 1)
	d := lab.StartDHCPD(t, ns, `{"Interface": "eth0"}`, store)
	d.WaitFor(t, "status listening", 20*time.Second)
	start := func(name string, args ...string) string {
		ln := lab.ListenTCP(t)
		p := lab.Cmd{Name: name, NS: ns, Args: append(append([]string{lab.Binary(t, name)}, common...), append([]string{"-status", ln.Addr}, args...)...)}.Start(t)
		ln.File.Close() // bound again inside the namespace, same address
		p.WaitFor(t, "status listening", 20*time.Second)
		return "http://" + ln.Addr
	}
	urls := map[string]string{
		"dhcpd":    "http://127.0.0.1:9067",
		"tftpd":    start("tftpd", "-port", "10069", "-netconsole", ""),
		"ocicache": start("ocicache", "-registry", ""),
		"nfsd":     start("nfsd", "-nfs_addr", "127.0.0.1:0", "-portmap_addr", ""),
	}
	urls["nbdd"] = start("nbdd", "-nbd_addr", "127.0.0.1:0", "-nfsd", urls["nfsd"])
	urls["status"] = start("status", "-dhcpd", urls["dhcpd"], "-tftpd", urls["tftpd"], "-ocicache", urls["ocicache"], "-nfsd", urls["nfsd"], "-nbdd", urls["nbdd"])

	have := map[string]bool{}
	for svc, u := range urls {
		var names []string
		if err := json.Unmarshal(lab.GetIn(t, ns, u+"/metrics/names"), &names); err != nil || len(names) == 0 {
			t.Errorf("%s /metrics/names: %v %q", svc, err, names)
		}
		for _, n := range names {
			if !strings.HasPrefix(n, "ociboot_"+svc+"_") {
				t.Errorf("%s exports %s: want the prefix ociboot_%s_", svc, n, svc)
			}
			have[n] = true
			// Histograms are queried by their series.
			for _, s := range []string{"_bucket", "_sum", "_count"} {
				have[n+s] = true
			}
		}
	}
	dash, err := os.ReadFile(filepath.Join(lab.RepoRoot(), "appliance/service/monitoring/grafana-dashboard.json"))
	if err != nil {
		t.Fatal(err)
	}
	var board struct {
		Panels []struct {
			Title   string
			Targets []struct{ Expr string }
		}
	}
	if err := json.Unmarshal(dash, &board); err != nil {
		t.Fatalf("grafana-dashboard.json: %v", err)
	}
	used := map[string]bool{}
	for _, p := range board.Panels {
		for _, tg := range p.Targets {
			for _, m := range regexp.MustCompile(`ociboot_[a-z0-9_]+`).FindAllString(tg.Expr, -1) {
				used[m] = true
				if !have[m] {
					t.Errorf("dashboard panel %q uses %s, which no service exports", p.Title, m)
				}
			}
		}
	}
	if len(used) < 15 {
		t.Errorf("the dashboard uses only %d metrics", len(used))
	}
	// The scrape example names every service's status port.
	prom, err := os.ReadFile(filepath.Join(lab.RepoRoot(), "appliance/service/monitoring/prometheus.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var missing []string
	for svc, port := range map[string]string{"dhcpd": "9067", "tftpd": "9069", "ocicache": "9050", "nfsd": "9049", "nbdd": "9809", "status": "8080"} {
		if !strings.Contains(string(prom), ":"+port+" # "+svc) {
			missing = append(missing, svc)
		}
	}
	sort.Strings(missing)
	if len(missing) > 0 {
		t.Errorf("prometheus.yml lacks targets for %v", missing)
	}
}
