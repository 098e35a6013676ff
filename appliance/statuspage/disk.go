package statuspage

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/ociboot/ociboot/appliance/nodedisk"
	"github.com/ociboot/ociboot/appliance/nodes"
)

// What each node has for its container runtime (Netboot.NodeDisk,
// Nodes[].Disk) and what became of its install to its own disk
// (Nodes[].Install): the disk's use from the store (nodedisk), who is
// connected from nbdd's /status, the install from nodes.InstallOf.

// NodeDisk is a node's disk on the page.
type NodeDisk struct {
	// NBD: the head node serves it; else Device is the node's own.
	NBD    bool
	Device string `json:",omitempty"`
	Mount  []string
	// Size is the NBD disk's configured size, Allocated what it takes on
	// the store now (0 before the node first wrote).
	Size, Allocated int64 `json:",omitempty"`
	KeepOnReset     bool  `json:",omitempty"`
	// Connected are the addresses nbdd serves the disk to now.
	Connected []string `json:",omitempty"`
}

// Text is the disk in words: "disk: 2.1 GiB used of 20 GiB (NBD,
// connected from 10.42.0.11)", "disk: LABEL=data (node's own)".
func (d *NodeDisk) Text() string {
	if !d.NBD {
		return "disk: " + d.Device + " (node's own)"
	}
	conn := "not connected"
	if len(d.Connected) > 0 {
		conn = "connected from " + strings.Join(d.Connected, ", ")
	}
	return fmt.Sprintf("disk: %s used of %s (NBD, %s)", gib(d.Allocated), gib(d.Size), conn)
}

// gib prints n in binary units with one decimal where it matters:
// "20 GiB", "2.1 GiB", "512 MiB".
func gib(n int64) string {
	units := []string{"B", "KiB", "MiB", "GiB", "TiB"}
	f, i := float64(n), 0
	for f >= 1024 && i < len(units)-1 {
		f, i = f/1024, i+1
	}
	if f == float64(int64(f)) || f >= 100 {
		return fmt.Sprintf("%.0f %s", f, units[i])
	}
	return fmt.Sprintf("%.1f %s", f, units[i])
}

// nbddStatus is the part of nbdd's /status (nbdd.Status) the page uses.
type nbddStatus struct {
	Conns []struct{ Node, Remote string }
}

// connectedDisks maps each node to the addresses its disk is served to,
// from nbdd's status (empty when nbdd is down: nothing is connected).
func connectedDisks(states []ServiceState) map[string][]string {
	out := map[string][]string{}
	for _, s := range states {
		if s.Name != "nbdd" || !s.Up {
			continue
		}
		var st nbddStatus
		if json.Unmarshal(s.Status, &st) != nil {
			continue
		}
		for _, c := range st.Conns {
			host := c.Remote
			if ap, err := netip.ParseAddrPort(c.Remote); err == nil {
				host = ap.Addr().Unmap().String()
			}
			out[c.Node] = append(out[c.Node], host)
		}
	}
	return out
}

// diskDetail fills in n's disk and install.
func (p *Page) diskDetail(n *Node, connected map[string][]string) {
	if dc, _ := nodes.DiskOf(p.Config, n.Serial); dc != nil {
		d := &NodeDisk{NBD: dc.NBD(), Device: dc.Device, Mount: dc.Mount, Size: dc.Size, KeepOnReset: dc.KeepOnReset}
		if d.NBD {
			d.Allocated = nodedisk.Usage(p.Store, n.Serial)
			d.Connected = connected[n.Serial]
			// A reset would pull the disk from under the node: it needs
			// force, as for a root in use.
			if len(d.Connected) > 0 && !d.KeepOnReset {
				n.InUse = true
			}
		}
		n.Disk = d
	}
	is := nodes.InstallOf(p.Config, p.Store, n.Serial)
	n.Install = installText(is)
	n.InstallFailed = is.Pending && is.Reported && !is.Report.OK
}

// installText is a node's install in words, "" when none is configured.
func installText(s nodes.InstallState) string {
	switch {
	case s.Want == nil:
		return ""
	case s.Installed && s.Local:
		return fmt.Sprintf("installed to %s at %s, boots locally", s.Report.Device, s.Report.Time.Format(time.DateTime))
	case s.Installed:
		return fmt.Sprintf("installed to %s at %s; its netboot is still answered (KeepNetboot), the boot order decides", s.Report.Device, s.Report.Time.Format(time.DateTime))
	case s.Reported && !s.Report.OK && s.Report.Device == s.Want.Device:
		return "install failed: " + s.Report.Error + "; the node keeps netbooting (its next netboot tries again)"
	default:
		return "installing to " + s.Want.Device + "…"
	}
}
