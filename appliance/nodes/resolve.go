package nodes

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/ociboot/ociboot/appliance/config"
	"github.com/ociboot/ociboot/appliance/images"
	"github.com/ociboot/ociboot/appliance/store"
)

// ErrNoImage means a node cannot be served (yet): unknown with Enroll
// known-only, no image configured, or its image not in the cache.
var ErrNoImage = errors.New("no image for the node")

// MACKey is the dash form of a MAC ("dc-a6-32-01-02-03"): the key of a
// node known by MAC only, as the Pi bootloader's TFTP_PREFIX=2 spells it.
func MACKey(mac net.HardwareAddr) string { return strings.ReplaceAll(mac.String(), ":", "-") }

// Canonical returns the key under which the node named by key is kept. A
// Pi with TFTP_PREFIX=2 names itself by MAC ("dc-a6-32-01-02-03") while
// dhcpd records it under the serial from option 97, and nfsd exports
// /nodes/<serial>: the MAC resolves to that serial through the config
// (a node listed with both) or the record whose MAC it is. Any other key is
// returned unchanged.
func Canonical(cfg *config.Config, st *store.Store, key string) string {
	mac, err := net.ParseMAC(strings.ReplaceAll(key, "-", ":"))
	if err != nil || len(key) != 17 {
		return key
	}
	if nc, ok := cfg.NodeByMAC(mac); ok && nc.Serial != "" {
		return nc.Serial
	}
	recs, _ := List(st)
	for _, rec := range recs {
		if rec.Serial == key {
			continue
		}
		if m, err := net.ParseMAC(rec.MAC); err == nil && bytes.Equal(m, mac) {
			return rec.Serial
		}
	}
	return key
}

// Image is the image a node boots.
type Image struct {
	Ref      string // as in config.json
	Platform string
	Entry    images.Entry // the cached tree
}

// Netconsole reports whether node key's cmdline.txt gets netconsole=:
// Netboot.Netconsole or its Nodes[].Netconsole.
func Netconsole(cfg *config.Config, key string) bool {
	nc, ok := configNode(cfg, key)
	return cfg.Netconsole || ok && nc.Netconsole
}

// ImageOf finds node key's image: its Nodes[] entry, else the image dhcpd
// recorded, else (Enroll auto) DefaultImage; and the tree ocicache holds for
// it. Errors wrap ErrNoImage and say what to change.
func ImageOf(cfg *config.Config, st *store.Store, key string) (Image, error) {
	var img Image
	nc, configured := configNode(cfg, key)
	rec, recErr := Load(st, key)
	switch {
	case configured:
		img.Ref, img.Platform = nc.Image, nc.Platform
	case recErr == nil && rec.Image != "":
		img.Ref, img.Platform = rec.Image, rec.Platform
	case cfg.Enroll == config.EnrollAuto:
		img.Ref = cfg.DefaultImage
	default:
		return Image{}, fmt.Errorf("%w: node %s is not in Netboot.Nodes and Enroll is known-only", ErrNoImage, key)
	}
	if img.Platform == "" {
		img.Platform = cfg.Platform
	}
	if img.Ref == "" {
		return Image{}, fmt.Errorf("%w: node %s has no image; set Netboot.DefaultImage or its Nodes[].Image", ErrNoImage, key)
	}
	ix, err := images.LoadIndex(st)
	if err != nil {
		return Image{}, err
	}
	e, ok := ix.Lookup(img.Ref, img.Platform)
	if !ok {
		return Image{}, fmt.Errorf("%w: image %s (%s) for node %s is not in the cache yet; see ocicache's status", ErrNoImage, img.Ref, img.Platform, key)
	}
	img.Entry = e
	return img, nil
}

// KeyByIP finds the node whose address is ip: a reservation in the config
// or the address dhcpd recorded.
func KeyByIP(cfg *config.Config, st *store.Store, ip netip.Addr) (string, bool) {
	for _, n := range cfg.Nodes {
		if n.IP == ip {
			if n.Serial != "" {
				return n.Serial, true
			}
			return MACKey(n.MAC), true
		}
	}
	recs, _ := List(st)
	for _, rec := range recs {
		if rec.IP == ip.String() {
			return rec.Serial, true
		}
	}
	return "", false
}

// Known reports whether key (already Canonical) is a node the head node
// knows: listed in Netboot.Nodes or recorded by dhcpd. Only known nodes get
// state in the store and their own metric labels; anyone can name an
// invented serial in a TFTP request, and those must not grow either.
func Known(cfg *config.Config, st *store.Store, key string) bool {
	if _, ok := configNode(cfg, key); ok {
		return true
	}
	_, err := Load(st, key)
	return err == nil
}
