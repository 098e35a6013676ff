package config

import (
	"strings"
	"testing"
)

func TestParseSize(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
	}{
		{"0", 0},
		{"4096", 4096},
		{"10G", 10 << 30},
		{"10g", 10 << 30},
		{"10GiB", 10 << 30},
		{"10GB", 10 << 30},
		{"512M", 512 << 20},
		{"1.5T", 3 << 39},
		{"64K", 64 << 10},
		{" 2 G ", 2 << 30},
		{"100B", 100},
	} {
		got, err := ParseSize(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("ParseSize(%q): got %d, %v, want %d", tc.in, got, err, tc.want)
		}
	}
	for _, in := range []string{"", "G", "10Q", "ten", "-1G", "10 GB extra", "1e3", "10iB", "0x10", "9999999999T"} {
		if got, err := ParseSize(in); err == nil {
			t.Errorf("ParseSize(%q): got %d, want an error", in, got)
		}
	}
}

func TestQuotas(t *testing.T) {
	cfg, err := Parse([]byte(`{"Netboot": {"NodeQuota": "10G", "Nodes": [
	  {"Serial": "aabbccdd", "Quota": "512M"},
	  {"Serial": "aabbccde"},
	  {"Serial": "aabbccdf", "Quota": "0"}]}}`))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := cfg.NodeQuota, int64(10<<30); got != want {
		t.Errorf("NodeQuota: got %d, want %d", got, want)
	}
	for i, want := range []int64{512 << 20, 10 << 30, 0} {
		if got := cfg.Nodes[i].Quota; got != want {
			t.Errorf("Nodes[%d].Quota: got %d, want %d", i, got, want)
		}
	}
	_, err = Parse([]byte(`{"Netboot": {"NodeQuota": "10 gigs", "Nodes": [{"Serial": "aabbccdd", "Quota": "5X"}]}}`))
	for _, want := range []string{`Netboot.NodeQuota: "10 gigs" is not a size such as "10G"`, `Netboot.Nodes[0].Quota: "5X" is not a size`} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Parse with bad quotas: got %v, want an error containing %q", err, want)
		}
	}
}
