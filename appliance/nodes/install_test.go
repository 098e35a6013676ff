package nodes

import (
	"testing"
	"time"

	"github.com/ociboot/ociboot/appliance/config"
)

func TestInstallOf(t *testing.T) {
	cfg, err := config.Parse([]byte(`{"Netboot": {"Nodes": [
		{"Serial": "abcd0001", "Install": {"Device": "/dev/nvme0n1"}},
		{"Serial": "abcd0002", "Install": {"Device": "/dev/nvme0n1", "KeepNetboot": true}},
		{"Serial": "abcd0003"}]}}`))
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name    string
		key     string
		report  *Install
		pending bool
		local   bool
	}{
		{"configured, not yet run", "abcd0001", nil, true, false},
		{"failed", "abcd0001", &Install{Device: "/dev/nvme0n1", Error: "no such device"}, true, false},
		{"installed", "abcd0001", &Install{Device: "/dev/nvme0n1", OK: true}, false, true},
		{"installed to another device than configured now", "abcd0001", &Install{Device: "/dev/mmcblk0", OK: true}, true, false},
		{"installed, netboot kept", "abcd0002", &Install{Device: "/dev/nvme0n1", OK: true}, false, false},
		{"not configured, old report", "abcd0003", &Install{Device: "/dev/nvme0n1", OK: true}, false, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			st := openStore(t)
			if tt.report != nil {
				tt.report.Time = time.Now()
				if err := SaveInstall(st, tt.key, *tt.report); err != nil {
					t.Fatal(err)
				}
			}
			s := InstallOf(cfg, st, tt.key)
			if got, want := s.Pending, tt.pending; got != want {
				t.Errorf("Pending: got %v, want %v", got, want)
			}
			if got, want := s.Local, tt.local; got != want {
				t.Errorf("Local: got %v, want %v", got, want)
			}
		})
	}
}
