package dhcpd

import (
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/insomniacslk/dhcp/dhcpv4"

	"github.com/ociboot/ociboot/appliance/store"
	"github.com/ociboot/ociboot/appliance/testenv"
)

// The store on a real tmpfs (in a mount namespace of its own) that a
// node's big file fills: the renewal of an existing lease is still ACKed.
func TestRenewalACKedOnFullTmpfs(t *testing.T) {
	dir, _ := testenv.InTmpfs(t, 2)
	if dir == "" {
		return
	}
	st, err := store.Open(dir, store.Options{AllowTmpfs: true})
	if err != nil {
		t.Fatal(err)
	}
	f := newFixture(t, fullConfig, st, nil)
	var logs strings.Builder
	f.s.log = slog.New(slog.NewTextHandler(&logs, nil))
	mac := net.HardwareAddr{0x02, 0, 0, 0, 0, 0x41}
	ip := f.lease(mac)

	// A node writes until the disk is full.
	big, err := os.Create(filepath.Join(st.Root, store.NodesDir, "bigfile"))
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64<<10)
	for {
		if _, err := big.Write(buf); err != nil {
			t.Logf("filled the store: %v", err)
			break
		}
	}
	big.Close()

	ack, _ := f.s.Handle(request(mac, ip, netip.Addr{}))
	if ack == nil || ack.MessageType() != dhcpv4.MessageTypeAck || yiaddr(ack) != ip {
		t.Fatalf("renewal on a full store: got %v, want an ACK of %s", ack, ip)
	}
	if got := f.s.Status().LeaseSaveError; !strings.Contains(got, "no space left on device") {
		t.Errorf("LeaseSaveError: got %q, want ENOSPC", got)
	}
	// Loudly: an error line that says what is not saved, where, and what
	// to do.
	for _, want := range []string{"level=ERROR", "ACKing renewal although the lease could not be saved", "only in memory", "free space on the store", "path=" + LeasesPath(st), "ip=" + ip.String(), "no space left on device"} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("log lacks %q:\n%s", want, logs.String())
		}
	}
	left, _ := filepath.Glob(filepath.Join(st.Root, store.DHCPDir, ".*tmp*"))
	if len(left) != 0 {
		t.Errorf("temp files left by the failed save: %v", left)
	}
}
