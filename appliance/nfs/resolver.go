package nfs

import (
	"net/netip"
	"os"
	"sort"

	"github.com/ociboot/ociboot/appliance/config"
	"github.com/ociboot/ociboot/appliance/nodes"
	"github.com/ociboot/ociboot/appliance/store"
)

// NodeResolver answers for the nodes of a config and store: a node's image
// is nodes.ImageOf (config, dhcpd's record, DefaultImage), and
// its export is open to its own address (reserved in the config or leased
// and recorded by dhcpd) and to Netboot.ExportTo.
type NodeResolver struct {
	Config *config.Config
	Store  *store.Store
}

// Image returns the digest of the cached image of node key.
func (r NodeResolver) Image(key string) (string, error) {
	img, err := nodes.ImageOf(r.Config, r.Store, key)
	if err != nil {
		return "", err
	}
	return img.Entry.Digest, nil
}

// Allowed reports whether client may use node key's export: it is one of
// Clients(key).
func (r NodeResolver) Allowed(key string, client netip.Addr) bool {
	for _, c := range r.Clients(key) {
		if p, err := netip.ParsePrefix(c); err == nil && p.Contains(client) || c == client.String() {
			return true
		}
	}
	return false
}

// Clients lists who may mount key: the node's own address (reserved or
// recorded) and the ExportTo CIDRs.
func (r NodeResolver) Clients(key string) []string {
	out := r.own(key)
	for _, p := range r.Config.ExportTo {
		out = append(out, p.String())
	}
	return out
}

// own lists the node's own addresses: reserved, then recorded by dhcpd.
func (r NodeResolver) own(key string) []string {
	var out []string
	for _, n := range r.Config.Nodes {
		if n.IP.IsValid() && (n.Serial == key || n.MAC != nil && nodes.MACKey(n.MAC) == key) {
			out = append(out, n.IP.String())
		}
	}
	if rec, err := nodes.Load(r.Store, key); err == nil && rec.IP != "" && (len(out) == 0 || out[0] != rec.IP) {
		out = append(out, rec.IP)
	}
	return out
}

// ownAddress reports whether client is one of the node's own addresses.
func (r NodeResolver) ownAddress(key string, client netip.Addr) bool {
	for _, a := range r.own(key) {
		if a == client.Unmap().String() {
			return true
		}
	}
	return false
}

// Keys lists the nodes in the config and in the store.
func (r NodeResolver) Keys() []string {
	seen := map[string]bool{}
	for _, n := range r.Config.Nodes {
		if n.Serial != "" {
			seen[n.Serial] = true
		} else if n.MAC != nil {
			seen[nodes.MACKey(n.MAC)] = true
		}
	}
	ents, _ := os.ReadDir(r.Store.Path(store.NodesDir))
	for _, e := range ents {
		if e.IsDir() && store.ValidName(e.Name()) {
			seen[e.Name()] = true
		}
	}
	keys := make([]string, 0, len(seen))
	for k := range seen {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
