package nodes

import (
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/ociboot/ociboot/appliance/config"
	"github.com/ociboot/ociboot/appliance/store"
)

// Install is what a node reported about installing itself to its own disk
// (Nodes[].Install): nodes/<key>/install.json, written by the service that
// receives the node's report.
type Install struct {
	Device string
	Time   time.Time
	OK     bool
	// Error is the installer's reason when OK is false, in its words.
	Error string `json:",omitempty"`
}

const installFile = "install.json"

// SaveInstall records a node's install report.
func SaveInstall(st *store.Store, key string, in Install) error {
	dir, err := st.NodeDir(key)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("nodes: %v", err)
	}
	return store.WriteJSON(filepath.Join(dir, installFile), in)
}

// LoadInstall returns the node's last install report, ok false if none.
func LoadInstall(st *store.Store, key string) (Install, bool) {
	dir, err := st.NodeDir(key)
	if err != nil {
		return Install{}, false
	}
	var in Install
	return in, store.ReadJSON(filepath.Join(dir, installFile), &in) == nil
}

// InstallState is the one answer to "does node key install itself, or
// boot from its own disk": tftpd asks it for the cmdline and whether to
// answer, dhcpd whether to offer a netboot, the status page what to show.
type InstallState struct {
	// Want is the configured install (nil: none).
	Want *config.InstallConfig
	// Report is the node's last report, if any.
	Report    Install
	Reported  bool
	Installed bool // a successful report for the configured device
	// Pending: the next netboot runs the installer (configured, and not
	// yet installed to that device).
	Pending bool
	// Local: installed and not KeepNetboot, so ociboot no longer answers
	// the node's netboot; it boots from Want.Device.
	Local bool
}

// InstallOf decides node key's (already Canonical) install state.
func InstallOf(cfg *config.Config, st *store.Store, key string) InstallState {
	var s InstallState
	if nc, ok := configNode(cfg, key); ok {
		s.Want = nc.Install
	}
	s.Report, s.Reported = LoadInstall(st, key)
	if s.Want == nil {
		return s
	}
	s.Installed = s.Reported && s.Report.OK && s.Report.Device == s.Want.Device
	s.Pending = !s.Installed
	s.Local = s.Installed && !s.Want.KeepNetboot
	return s
}

// NotNetbooted is the one line dhcpd and tftpd log when they stop
// answering node key's netboot because it is Local.
func (s InstallState) NotNetbooted(key string) string {
	return fmt.Sprintf("node %s installed to %s; not netbooting it (set Install.KeepNetboot to keep netboot as fallback)", key, s.Report.Device)
}
