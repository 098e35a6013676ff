package nodes

import (
	"bytes"
	"net"
	"path/filepath"
	"strings"

	"github.com/ociboot/ociboot/appliance/config"
	"github.com/ociboot/ociboot/appliance/identity"
	"github.com/ociboot/ociboot/appliance/store"
)

// IdentityFile is nodes/<key>/identity.json: what nfsd wrote into the
// node's root when it made it (identity.Written), for the status page.
const IdentityFile = "identity.json"

// configNode finds key's Nodes[] entry (by serial, or by MAC key).
func configNode(cfg *config.Config, key string) (config.NodeConfig, bool) {
	if i := configIndex(cfg, key); i >= 0 {
		return cfg.Nodes[i], true
	}
	return config.NodeConfig{}, false
}

// configIndex is the index of key's Nodes[] entry, -1 if none.
func configIndex(cfg *config.Config, key string) int {
	var mac net.HardwareAddr
	if len(key) != 8 {
		m, err := net.ParseMAC(strings.ReplaceAll(key, "-", ":"))
		if err != nil {
			return -1
		}
		mac = m
	}
	for i, n := range cfg.Nodes {
		if mac == nil && n.Serial != "" && n.Serial == key || mac != nil && n.MAC != nil && bytes.Equal(n.MAC, mac) {
			return i
		}
	}
	return -1
}

// IdentityOf is what node key's root gets: the host name from its
// configured Name (when one was given), else "node-<key>", and the
// config's SSH keys.
func IdentityOf(cfg *config.Config, key string) identity.Identity {
	name := ""
	if nc, ok := configNode(cfg, key); ok && nc.Name != nc.Serial && (nc.MAC == nil || nc.Name != nc.MAC.String()) {
		name = nc.Name
	}
	return identity.Identity{Key: key, Hostname: identity.Hostname(name, key), AuthorizedKeys: cfg.AuthorizedKeys}
}

// Personalize writes node key's identity into its new root tree and
// records what it wrote. nfsd calls it before it serves the root.
func Personalize(cfg *config.Config, st *store.Store, key, root string) error {
	w, err := identity.Write(root, IdentityOf(cfg, key))
	if err != nil {
		return err
	}
	dir, err := st.NodeDir(key)
	if err != nil {
		return err
	}
	return store.WriteJSON(filepath.Join(dir, IdentityFile), w)
}

// LoadIdentity reads what Personalize recorded for key; the zero value if
// nothing was.
func LoadIdentity(st *store.Store, key string) identity.Written {
	var w identity.Written
	if dir, err := st.NodeDir(key); err == nil {
		store.ReadJSON(filepath.Join(dir, IdentityFile), &w)
	}
	return w
}
