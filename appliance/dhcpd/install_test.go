package dhcpd

import (
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"

	"github.com/ociboot/ociboot/appliance/nodes"
)

// TestInstalledNodeGetsNoBoot: a node that reported a successful install
// to its configured Install.Device boots from its disk. In proxy mode its
// bootloader's DISCOVER is not answered at all, in full mode the OFFER and
// the ACK carry its reserved address but none of the boot options; the
// reason is logged once. KeepNetboot, a failed install or one to another
// device keep the netboot.
func TestInstalledNodeGetsNoBoot(t *testing.T) {
	const serial = "6a100007"
	p := pi(0x07, 0x6a100007)
	for _, tt := range []struct {
		name    string
		mode    string
		install string
		report  *nodes.Install
		boot    bool // the replies carry boot options
	}{
		{"proxy, installed", "proxy", `{"Device": "/dev/nvme0n1"}`, &nodes.Install{Device: "/dev/nvme0n1", OK: true}, false},
		{"full, installed", "full", `{"Device": "/dev/nvme0n1"}`, &nodes.Install{Device: "/dev/nvme0n1", OK: true}, false},
		{"proxy, not yet installed", "proxy", `{"Device": "/dev/nvme0n1"}`, nil, true},
		{"full, install failed", "full", `{"Device": "/dev/nvme0n1"}`, &nodes.Install{Device: "/dev/nvme0n1", Error: "sfdisk: no such device"}, true},
		{"full, installed, KeepNetboot", "full", `{"Device": "/dev/nvme0n1", "KeepNetboot": true}`, &nodes.Install{Device: "/dev/nvme0n1", OK: true}, true},
		{"proxy, installed to a device no longer configured", "proxy", `{"Device": "/dev/nvme0n1"}`, &nodes.Install{Device: "/dev/mmcblk0", OK: true}, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			netboot := `{"Interface": "obd0", "ServerIP": "10.67.0.1", "DefaultImage": "registry.test:5000/pi/node:1"`
			if tt.mode == "full" {
				netboot += `, "Mode": "full", "Subnet": "10.67.0.0/24", "Range": "10.67.0.100-10.67.0.109"`
			}
			netboot += `, "Nodes": [{"Name": "cm4-7", "Serial": "` + serial + `", "IP": "10.67.0.27", "Install": ` + tt.install + `}]}`
			f := newFixture(t, netboot, nil, nil)
			var logs strings.Builder
			f.s.log = slog.New(slog.NewTextHandler(&logs, nil))
			if tt.report != nil {
				tt.report.Time = time.Now()
				if err := nodes.SaveInstall(f.st, serial, *tt.report); err != nil {
					t.Fatal(err)
				}
			}
			// Two power-ons: the reason is logged once.
			for i := 0; i < 2; i++ {
				xid := dhcpv4.TransactionID{9, 0, 0, byte(i)}
				offer, _ := f.s.Handle(p.Discover(xid))
				replies := []*dhcpv4.DHCPv4{offer}
				if tt.mode == "full" && offer != nil {
					ack, _ := f.s.Handle(p.Request(xid, offer))
					replies = append(replies, ack)
				}
				for _, m := range replies {
					if tt.mode == "proxy" && !tt.boot {
						if m != nil {
							t.Errorf("proxy mode answered an installed node's DISCOVER: %v", m)
						}
						continue
					}
					if m == nil {
						t.Fatalf("no reply")
					}
					if tt.mode == "full" {
						if got, want := yiaddr(m).String(), "10.67.0.27"; got != want {
							t.Errorf("%s: address %s, want the reservation %s", m.MessageType(), got, want)
						}
					}
					gotBoot := m.ClassIdentifier() == PXEClass || m.GetOneOption(dhcpv4.OptionVendorSpecificInformation) != nil || m.TFTPServerName() != ""
					if gotBoot != tt.boot {
						t.Errorf("%s carries boot options: %v, want %v (option 60 %q, 66 %q)", m.MessageType(), gotBoot, tt.boot, m.ClassIdentifier(), m.TFTPServerName())
					}
				}
			}
			const line = "node " + serial + " installed to /dev/nvme0n1; not netbooting it (set Install.KeepNetboot to keep netboot as fallback)"
			want := 0
			if !tt.boot {
				want = 1
			}
			if got := strings.Count(logs.String(), line); got != want {
				t.Errorf("log has %q %d times, want %d:\n%s", line, got, want, logs.String())
			}
		})
	}
}
