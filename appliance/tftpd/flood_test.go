package tftpd

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/ociboot/ociboot/appliance/metrics"

	"github.com/ociboot/ociboot/appliance/config"
	"github.com/ociboot/ociboot/appliance/piemu"
	"github.com/ociboot/ociboot/appliance/store"
)

// A host floods tftpd with requests naming invented serials (issue 14):
// they are answered as any unknown node is, but add no node directory to
// the store, no entry to /status and no metric label beyond "other".
func TestInventedSerialsAddNoStateOrLabels(t *testing.T) {
	f := newFixture(t, defaultNetboot)
	reg := metrics.NewRegistry()
	cfg, err := config.Parse([]byte(`{"Netboot": ` + defaultNetboot + `}`))
	if err != nil {
		t.Fatal(err)
	}
	srv := New(Options{Config: cfg, Store: f.st, Metrics: reg, Timeout: 200 * time.Millisecond})
	conn, err := Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(conn)
	t.Cleanup(srv.Shutdown)
	addr := conn.LocalAddr().String()

	before, _ := os.ReadDir(f.st.Path(store.NodesDir))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for i := 0; i < 150; i++ {
		file := fmt.Sprintf("%08x/no-such-file", 0x90000000+i)
		if i%5 != 0 {
			piemu.TFTPGet(ctx, addr, file, nil, false)
			continue
		}
		// Served (Enroll auto): a firmware stage.
		file = fmt.Sprintf("%08x/config.txt", 0x90000000+i)
		if _, err := piemu.TFTPGet(ctx, addr, file, nil, false); err != nil {
			t.Fatalf("%s: %v", file, err)
		}
	}
	// A recorded node keeps its own label and stage.
	if _, err := piemu.TFTPGet(ctx, addr, "abcd1234/config.txt", nil, false); err != nil {
		t.Fatal(err)
	}
	after, _ := os.ReadDir(f.st.Path(store.NodesDir))
	if got, want := len(after), len(before); got != want {
		t.Errorf("node directories: %d after the flood, want %d", got, want)
	}
	// The server counts a transfer once its last ACK is in, after the
	// client is done.
	var st Status
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if st = srv.Status(); st.Nodes["abcd1234"].Transfers > 0 {
			break
		}
	}
	if _, ok := st.Nodes["abcd1234"]; !ok || len(st.Nodes) != 2 {
		t.Errorf("/status nodes: %d entries (%v), want abcd1234 and %q", len(st.Nodes), keys(st.Nodes), OtherNode)
	}
	if got, want := st.Nodes[OtherNode].Transfers, 150; got != want {
		t.Errorf("transfers counted under %q: %d, want %d", OtherNode, got, want)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	labels := map[string]bool{}
	for _, mf := range mfs {
		for _, m := range mf.Samples {
			if v, ok := m.Labels["node"]; ok {
				labels[v] = true
			}
		}
	}
	if len(labels) != 2 || !labels["abcd1234"] || !labels[OtherNode] {
		t.Errorf("node label values: %v, want abcd1234 and %q", labels, OtherNode)
	}
}

func keys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}
