package nodes

import (
	"errors"
	"net"
	"net/netip"
	"testing"

	"github.com/ociboot/ociboot/appliance/config"
	"github.com/ociboot/ociboot/appliance/images"
	"github.com/ociboot/ociboot/appliance/store"
)

func TestImageOf(t *testing.T) {
	st, err := store.Open(t.TempDir(), store.Options{AllowTmpfs: true})
	if err != nil {
		t.Fatal(err)
	}
	d1 := "sha256:1111111111111111111111111111111111111111111111111111111111111111"
	d2 := "sha256:2222222222222222222222222222222222222222222222222222222222222222"
	images.SaveIndex(st, images.Index{Entries: []images.Entry{
		{Ref: "r/default:1", Platform: "linux/arm64", Digest: d1},
		{Ref: "r/special:1", Platform: "linux/amd64", Digest: d2},
	}})
	Save(st, Record{Serial: "0000000c", Image: "r/special:1", Platform: "linux/amd64"})
	parse := func(s string) *config.Config {
		cfg, err := config.Parse([]byte(s))
		if err != nil {
			t.Fatal(err)
		}
		return cfg
	}
	auto := parse(`{"Netboot": {"DefaultImage": "r/default:1", "Nodes": [
		{"Serial": "0000000a", "Image": "r/special:1", "Platform": "linux/amd64"},
		{"MAC": "52:54:00:00:00:0b", "Image": "r/missing:1", "IP": "10.0.0.11"}]}}`)
	known := parse(`{"Netboot": {"Enroll": "known-only", "DefaultImage": "r/default:1"}}`)
	none := parse(`{"Netboot": {}}`)
	for _, tc := range []struct {
		name   string
		cfg    *config.Config
		key    string
		digest string // "" = ErrNoImage
	}{
		{"configured by serial", auto, "0000000a", d2},
		{"configured by MAC, image not pulled", auto, "52-54-00-00-00-0b", ""},
		{"recorded by dhcpd", auto, "0000000c", d2},
		{"enrolled automatically", auto, "0000000d", d1},
		{"unknown with known-only", known, "0000000d", ""},
		{"no image anywhere", none, "0000000d", ""},
	} {
		img, err := ImageOf(tc.cfg, st, tc.key)
		if tc.digest == "" {
			if !errors.Is(err, ErrNoImage) {
				t.Errorf("%s: got %+v, %v; want ErrNoImage", tc.name, img, err)
			}
			continue
		}
		if err != nil || img.Entry.Digest != tc.digest {
			t.Errorf("%s: got %s, %v; want %s", tc.name, img.Entry.Digest, err, tc.digest)
		}
	}
	if key, ok := KeyByIP(auto, st, netip.MustParseAddr("10.0.0.11")); !ok || key != "52-54-00-00-00-0b" {
		t.Errorf("KeyByIP of a reservation: %q, %v", key, ok)
	}
	Save(st, Record{Serial: "5b154510", MAC: "dc:a6:32:10:20:01"})
	withMAC := parse(`{"Netboot": {"Nodes": [{"Serial": "0000000e", "MAC": "dc:a6:32:10:20:0e"}]}}`)
	for _, tc := range []struct{ key, want string }{
		{"dc-a6-32-10-20-01", "5b154510"}, // recorded by dhcpd under its serial
		{"dc-a6-32-10-20-0e", "0000000e"}, // configured with both
		{"dc-a6-32-10-20-99", "dc-a6-32-10-20-99"},
		{"5b154510", "5b154510"},
	} {
		if got := Canonical(withMAC, st, tc.key); got != tc.want {
			t.Errorf("Canonical(%q) = %q, want %q", tc.key, got, tc.want)
		}
	}
	if got := MACKey(net.HardwareAddr{0xdc, 0xa6, 0x32, 1, 2, 3}); got != "dc-a6-32-01-02-03" {
		t.Errorf("MACKey = %q", got)
	}
}
