package statuspage

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/ociboot/ociboot/appliance/nfs"
)

// TestStoreUsage: each node's use of the store and its quota, as nfsd
// reports them, are on the node's row; a store down to nfsd's reserve and
// a leases.json dhcpd cannot save are problems at the top of the page.
func TestStoreUsage(t *testing.T) {
	p, _ := fixture(t)
	status := func(v any) *httptest.Server {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { json.NewEncoder(w).Encode(v) }))
		t.Cleanup(srv.Close)
		return srv
	}
	nfsd := status(nfs.Status{
		Exports:      []nfs.ExportStatus{{Node: "abcd0002", Used: 3 << 29, Quota: 10 << 30}, {Node: "abcd0003", Used: 5 << 20}},
		ReserveBytes: 64 << 20, FreeBytes: 10 << 20})
	dhcpd := status(map[string]string{"Service": "dhcpd", "LeaseSaveError": "write leases.json: no space left on device"})
	p.Services = []Service{{Name: "nfsd", URL: nfsd.URL}, {Name: "dhcpd", URL: dhcpd.URL}}
	ov := p.Collect(context.Background(), "")
	want := map[string][2]int64{"abcd0002": {3 << 29, 10 << 30}, "abcd0003": {5 << 20, 0}, "abcd0009": {0, 0}}
	for _, n := range ov.Nodes {
		if got := [2]int64{n.RootUsed, n.RootQuota}; got != want[n.Serial] {
			t.Errorf("node %s: used, quota %v, want %v", n.Serial, got, want[n.Serial])
		}
	}
	problems := strings.Join(ov.Problems, "\n")
	for _, w := range []string{"the store is full: 10.0M free, nfsd keeps 64.0M", "dhcpd cannot save leases.json: write leases.json: no space left on device"} {
		if !strings.Contains(problems, w) {
			t.Errorf("problems lack %q:\n%s", w, problems)
		}
	}
	var html strings.Builder
	if err := pageTmpl.Execute(&html, ov); err != nil {
		t.Fatal(err)
	}
	for _, w := range []string{"root uses 1.5G of its 10.0G quota", "root uses 5.0M</small>"} {
		if !strings.Contains(html.String(), w) {
			t.Errorf("page lacks %q", w)
		}
	}
}
