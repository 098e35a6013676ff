package nodes

import (
	"fmt"

	"github.com/ociboot/ociboot/appliance/config"
)

// QuotaOf is node key's (already Canonical) quota on the store in bytes,
// for its root and NBD disk together: its Nodes[].Quota, or
// Netboot.NodeQuota for nodes the config does not list (0: none).
func QuotaOf(cfg *config.Config, key string) int64 {
	if nc, ok := configNode(cfg, key); ok {
		return nc.Quota
	}
	return cfg.NodeQuota
}

// DiskOf is node key's (already Canonical) disk for its container
// runtime: its Nodes[].Disk, else Netboot.NodeDisk (nil: none), and the
// config field that says so, for messages that tell what to change
// ("Netboot.Nodes[2].Disk", "Netboot.NodeDisk").
func DiskOf(cfg *config.Config, key string) (*config.DiskConfig, string) {
	i := configIndex(cfg, key)
	if i < 0 || cfg.Nodes[i].Disk == cfg.NodeDisk {
		return cfg.NodeDisk, "Netboot.NodeDisk"
	}
	return cfg.Nodes[i].Disk, fmt.Sprintf("Netboot.Nodes[%d].Disk", i)
}
