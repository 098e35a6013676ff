package config

import (
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"testing"
	"time"
)

func TestEmptySectionIsValid(t *testing.T) {
	for _, doc := range []string{
		`{"Hostname": "ociboot"}`,
		`{"Hostname": "ociboot", "Netboot": {}}`,
		`{"Netboot": null}`,
	} {
		cfg, err := Parse([]byte(doc))
		if err != nil {
			t.Fatalf("Parse(%s): %v", doc, err)
		}
		if got, want := cfg.Mode, ModeProxy; got != want {
			t.Errorf("Mode: got %q, want %q", got, want)
		}
		if got, want := cfg.Interface, "eth0"; got != want {
			t.Errorf("Interface: got %q, want %q", got, want)
		}
		if got, want := cfg.Enroll, EnrollAuto; got != want {
			t.Errorf("Enroll: got %q, want %q", got, want)
		}
		if got, want := cfg.Reimage, ReimageManual; got != want {
			t.Errorf("Reimage: got %q, want %q", got, want)
		}
		if got, want := cfg.Lease, time.Hour; got != want {
			t.Errorf("Lease: got %v, want %v", got, want)
		}
		if got, want := cfg.Platform, "linux/arm64"; got != want {
			t.Errorf("Platform: got %q, want %q", got, want)
		}
	}
}

func TestFullConfig(t *testing.T) {
	cfg, err := Parse([]byte(`{
	  "Hostname": "ociboot",
	  "Packages": ["x"],
	  "Netboot": {
	    "Interface": "eth1",
	    "Mode": "full",
	    "ServerIP": "10.42.0.1",
	    "Subnet": "10.42.0.0/24",
	    "Range": "10.42.0.100-10.42.0.199",
	    "Router": "10.42.0.1",
	    "DNS": ["10.42.0.1", "9.9.9.9"],
	    "LeaseSeconds": 600,
	    "Enroll": "known-only",
	    "DefaultImage": "localhost:5000/rpi/node:v1",
	    "Nodes": [
	      {"Name": "n1", "Serial": "10000000ABCD1234", "MAC": "DC:A6:32:01:02:03", "IP": "10.42.0.11"},
	      {"MAC": "dc:a6:32:01:02:04", "Image": "localhost:5000/other:v2", "Platform": "linux/amd64"}
	    ],
	    "KernelArgs": ["console=ttyAMA0"],
	    "ConfigTxt": ["arm_64bit=1"],
	    "ExportTo": ["10.42.0.250", "127.0.0.0/8"]
	  }
	}`))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := cfg.Nodes[0].Serial, "abcd1234"; got != want {
		t.Errorf("serial: got %q, want %q", got, want)
	}
	if got, want := cfg.Nodes[0].MAC.String(), "dc:a6:32:01:02:03"; got != want {
		t.Errorf("MAC: got %q, want %q", got, want)
	}
	if got, want := cfg.Nodes[0].Image, "localhost:5000/rpi/node:v1"; got != want {
		t.Errorf("default image: got %q, want %q", got, want)
	}
	if got, want := cfg.Nodes[1].Name, "dc:a6:32:01:02:04"; got != want {
		t.Errorf("name default: got %q, want %q", got, want)
	}
	if got, want := cfg.Lease, 10*time.Minute; got != want {
		t.Errorf("lease: got %v, want %v", got, want)
	}
	if got, want := cfg.ExportTo[0].String(), "10.42.0.250/32"; got != want {
		t.Errorf("ExportTo: got %q, want %q", got, want)
	}
	if !cfg.InRange(cfg.RangeStart) || !cfg.InRange(cfg.RangeEnd) || cfg.InRange(cfg.ServerIP) {
		t.Errorf("InRange wrong for %v-%v", cfg.RangeStart, cfg.RangeEnd)
	}
	imgs := cfg.Images()
	if got, want := len(imgs), 2; got != want {
		t.Errorf("Images: got %d, want %d (%v)", got, want, imgs)
	}
	if n, ok := cfg.NodeBySerial("abcd1234"); !ok || n.Name != "n1" {
		t.Errorf("NodeBySerial: got %v, %v", n, ok)
	}
}

func TestErrors(t *testing.T) {
	for _, tt := range []struct {
		name    string
		section string
		want    []string // each must be one line of the error
	}{
		{"unknown key", `{"Modus": "full"}`,
			[]string{`Netboot.Modus: unknown key (known keys: Interface, Mode,`}},
		{"unknown node key", `{"Nodes": [{"Serial": "abcd1234", "Mack": "x"}]}`,
			[]string{`Netboot.Nodes[0].Mack: unknown key`}},
		{"wrong type", `{"LeaseSeconds": "3600"}`,
			[]string{`Netboot.LeaseSeconds: want a whole number, got "3600"`}},
		{"wrong list type", `{"DNS": "1.1.1.1"}`,
			[]string{`Netboot.DNS: want a list of strings, got "1.1.1.1"`}},
		{"section not object", `[1]`,
			[]string{`Netboot: want an object, got [1]`}},
		{"nodes not list", `{"Nodes": {}}`,
			[]string{`Netboot.Nodes: want a list, got {}`}},
		{"bad mode", `{"Mode": "dhcp"}`,
			[]string{`Netboot.Mode: "dhcp" is not a mode; use "proxy" or "full"`}},
		{"bad enroll", `{"Enroll": "never"}`,
			[]string{`Netboot.Enroll: "never" is not a policy`}},
		{"bad reimage", `{"Reimage": "always"}`,
			[]string{`Netboot.Reimage: "always" is not a policy; use "manual" or "on-boot"`}},
		{"bad interface", `{"Interface": "eth0/1"}`,
			[]string{`Netboot.Interface: "eth0/1" is not a network interface name`}},
		{"full needs addresses", `{"Mode": "full"}`,
			[]string{"Netboot.ServerIP: required in full mode", "Netboot.Subnet: required in full mode", "Netboot.Range: required in full mode"}},
		{"bad server ip", `{"ServerIP": "10.0.0.300"}`,
			[]string{`Netboot.ServerIP: "10.0.0.300" is not an IPv4 address`}},
		{"ipv6 server", `{"ServerIP": "fe80::1"}`,
			[]string{`Netboot.ServerIP: "fe80::1" is not an IPv4 address`}},
		{"bad subnet", `{"Subnet": "10.0.0.0"}`,
			[]string{`Netboot.Subnet: "10.0.0.0" is not an IPv4 CIDR`}},
		{"server outside subnet", `{"ServerIP": "10.1.0.1", "Subnet": "10.0.0.0/24"}`,
			[]string{`Netboot.ServerIP: 10.1.0.1 is outside Netboot.Subnet 10.0.0.0/24`}},
		{"bad range", `{"Range": "10.0.0.1"}`,
			[]string{`Netboot.Range: "10.0.0.1" is not a range`}},
		{"backwards range", `{"Range": "10.0.0.9-10.0.0.1"}`,
			[]string{`Netboot.Range: "10.0.0.9-10.0.0.1" ends before it starts`}},
		{"range outside subnet", `{"Subnet": "10.0.0.0/24", "Range": "10.0.0.10-10.0.1.10"}`,
			[]string{`Netboot.Range: 10.0.1.10 is outside Netboot.Subnet 10.0.0.0/24`}},
		{"range holds server", `{"ServerIP": "10.0.0.10", "Range": "10.0.0.1-10.0.0.20"}`,
			[]string{`Netboot.Range: "10.0.0.1-10.0.0.20" contains Netboot.ServerIP 10.0.0.10`}},
		{"bad router", `{"Router": "gw"}`,
			[]string{`Netboot.Router: "gw" is not an IPv4 address`}},
		{"bad dns", `{"DNS": ["1.1.1.1", "dns"]}`,
			[]string{`Netboot.DNS[1]: "dns" is not an IPv4 address`}},
		{"short lease", `{"LeaseSeconds": 5}`,
			[]string{`Netboot.LeaseSeconds: 5 is too short; use at least 60`}},
		{"bad image", `{"DefaultImage": "UPPER/Case::"}`,
			[]string{`Netboot.DefaultImage: "UPPER/Case::" is not an image reference`}},
		{"bad platform", `{"Platform": "arm64"}`,
			[]string{`Netboot.Platform: "arm64" is not a platform such as "linux/arm64"`}},
		{"bootdir escapes", `{"BootDir": "../etc"}`,
			[]string{`Netboot.BootDir: "../etc" leaves the image`}},
		{"bad export", `{"ExportTo": ["everyone"]}`,
			[]string{`Netboot.ExportTo[0]: "everyone" is not an address or CIDR`}},
		{"bad upstream", `{"Upstreams": ["http://x/y"]}`,
			[]string{`Netboot.Upstreams[0]: "http://x/y" is not a registry host or repository prefix`}},
		{"bad insecure", `{"InsecureRegistries": ["a/b"]}`,
			[]string{`Netboot.InsecureRegistries[0]: "a/b" is not a registry host`}},
		{"bad mac", `{"Nodes": [{"Serial": "abcd1234"}, {"Serial": "abcd1235"}, {"MAC": "zz:00"}]}`,
			[]string{`Netboot.Nodes[2].MAC: "zz:00" is not a MAC address`}},
		{"bad serial", `{"Nodes": [{"Serial": "xyz"}]}`,
			[]string{`Netboot.Nodes[0].Serial: "xyz" is not a Pi serial`}},
		{"node without id", `{"Nodes": [{"Name": "lost"}]}`,
			[]string{`Netboot.Nodes[0]: needs a Serial or a MAC`}},
		{"duplicate serial", `{"Nodes": [{"Serial": "abcd1234"}, {"Serial": "100000ABABCD1234"}]}`,
			[]string{`Netboot.Nodes[1].Serial: serial "abcd1234" is also used by Netboot.Nodes[0].Serial`}},
		{"duplicate mac", `{"Nodes": [{"MAC": "dc:a6:32:00:00:01"}, {"MAC": "DC-A6-32-00-00-01"}]}`,
			[]string{`Netboot.Nodes[1].MAC: MAC "dc:a6:32:00:00:01" is also used by Netboot.Nodes[0].MAC`}},
		{"duplicate ip", `{"Nodes": [{"MAC": "dc:a6:32:00:00:01", "IP": "10.0.0.5"}, {"MAC": "dc:a6:32:00:00:02", "IP": "10.0.0.5"}]}`,
			[]string{`Netboot.Nodes[1].IP: IP "10.0.0.5" is also used by Netboot.Nodes[0].IP`}},
		{"node ip is server", `{"ServerIP": "10.0.0.1", "Nodes": [{"MAC": "dc:a6:32:00:00:01", "IP": "10.0.0.1"}]}`,
			[]string{`Netboot.Nodes[0].IP: 10.0.0.1 is Netboot.ServerIP`}},
		{"node ip outside subnet", `{"Subnet": "10.0.0.0/24", "Nodes": [{"MAC": "dc:a6:32:00:00:01", "IP": "10.9.0.1"}]}`,
			[]string{`Netboot.Nodes[0].IP: 10.9.0.1 is outside Netboot.Subnet 10.0.0.0/24`}},
		{"bad node image", `{"Nodes": [{"Serial": "abcd1234", "Image": "a b"}]}`,
			[]string{`Netboot.Nodes[0].Image: "a b" is not an image reference`}},
		{"bad ssh key", `{"SSHAuthorizedKeys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFxuY3y0p1mY0h2kM1hQm0d7c0xXeW0pQ2g0YlQvZ2Zs ok", "my key"]}`,
			[]string{`Netboot.SSHAuthorizedKeys[1]: "my key" is not one OpenSSH public key line`}},
		{"two ssh keys in one line", `{"SSHAuthorizedKeys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFxuY3y0p1mY0h2kM1hQm0d7c0xXeW0pQ2g0YlQvZ2Zs a\nssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFxuY3y0p1mY0h2kM1hQm0d7c0xXeW0pQ2g0YlQvZ2Zs b"]}`,
			[]string{`Netboot.SSHAuthorizedKeys[0]: `}},
		{"disk key typo", `{"NodeDisk": {"Sise": "20G"}}`,
			[]string{`Netboot.NodeDisk.Sise: unknown key (known keys: Size, Mount,`}},
		{"disk too small", `{"NodeDisk": {"Size": "100M"}}`,
			[]string{`Netboot.NodeDisk.Size: "100M" is below the smallest disk, 1G`}},
		{"disk size typo", `{"NodeDisk": {"Size": "20 gigs"}}`,
			[]string{`Netboot.NodeDisk.Size: `}},
		{"disk mount relative", `{"NodeDisk": {"Mount": ["var/lib/containerd", "/"]}}`,
			[]string{`Netboot.NodeDisk.Mount[0]: "var/lib/containerd" is not an absolute`, `Netboot.NodeDisk.Mount[1]: "/" is not an absolute`}},
		{"disk mount comma", `{"NodeDisk": {"Mount": ["/a,b", "/c", "/c"]}}`,
			[]string{`Netboot.NodeDisk.Mount[0]: "/a,b" has a comma`, `Netboot.NodeDisk.Mount[2]: "/c" is listed twice`}},
		{"disk device and size", `{"Nodes": [{"Serial": "abcd1234", "Disk": {"Device": "/dev/nvme0n1p1", "Size": "20G"}}]}`,
			[]string{`Netboot.Nodes[0].Disk: Size is for disks the head node serves`}},
		{"disk bad device", `{"Nodes": [{"Serial": "abcd1234", "Disk": {"Device": "nvme0n1"}}]}`,
			[]string{`Netboot.Nodes[0].Disk.Device: "nvme0n1" is not a device of the node`}},
		{"disk format without device", `{"NodeDisk": {"Format": true}}`,
			[]string{`Netboot.NodeDisk: Format is for a Device`}},
		{"install without device", `{"Nodes": [{"Serial": "abcd1234", "Install": {}}]}`,
			[]string{`Netboot.Nodes[0].Install.Device: "" is not a whole disk`}},
		{"install not an object", `{"Nodes": [{"Serial": "abcd1234", "Install": "/dev/sda"}]}`,
			[]string{`Netboot.Nodes[0].Install: want an object, got "/dev/sda"`}},
		{"several problems at once", `{"Mode": "x", "Enroll": "y", "Nodes": [{"MAC": "q"}]}`,
			[]string{`Netboot.Mode: "x"`, `Netboot.Enroll: "y"`, `Netboot.Nodes[0].MAC: "q"`}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse([]byte(`{"Hostname": "h", "Netboot": ` + tt.section + `}`))
			if err == nil {
				t.Fatalf("Parse(%s): got nil error, want %q", tt.section, tt.want)
			}
			lines := strings.Split(err.Error(), "\n")
			if got, want := len(lines), len(tt.want); got != want {
				t.Errorf("got %d error lines, want %d:\n%v", got, want, err)
			}
			for _, w := range tt.want {
				found := false
				for _, l := range lines {
					if strings.HasPrefix(l, w) {
						found = true
					}
				}
				if !found {
					t.Errorf("error lacks a line starting %q; got:\n%v", w, err)
				}
			}
		})
	}
}

func TestDisks(t *testing.T) {
	cfg, err := Parse([]byte(`{"Netboot": {"NodeDisk": {"Size": "8G"}, "Nodes": [
		{"Serial": "abcd0001"},
		{"Serial": "abcd0002", "Disk": {"Off": true}},
		{"Serial": "abcd0003", "Disk": {"Device": "LABEL=data", "Format": true, "Mount": ["/var/lib/docker"]}},
		{"Serial": "abcd0004", "Disk": {"KeepOnReset": true}, "Install": {"Device": "/dev/nvme0n1", "KeepNetboot": true}}]}}`))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := *cfg.NodeDisk, (DiskConfig{Size: 8 << 30, Mount: DefaultDiskMounts}); !reflect.DeepEqual(got, want) {
		t.Errorf("NodeDisk: got %+v, want %+v", got, want)
	}
	for i, want := range []*DiskConfig{
		{Size: 8 << 30, Mount: DefaultDiskMounts},
		nil,
		{Device: "LABEL=data", Format: true, Mount: []string{"/var/lib/docker"}},
		{Size: DefaultDiskSize, Mount: DefaultDiskMounts, KeepOnReset: true},
	} {
		if got := cfg.Nodes[i].Disk; !reflect.DeepEqual(got, want) {
			t.Errorf("Nodes[%d].Disk: got %+v, want %+v", i, got, want)
		}
	}
	if got, want := cfg.Nodes[2].Disk.NBD(), false; got != want {
		t.Errorf("a Device disk: NBD() = %v, want %v", got, want)
	}
	if got, want := cfg.Nodes[3].Install, (&InstallConfig{Device: "/dev/nvme0n1", KeepNetboot: true}); !reflect.DeepEqual(got, want) {
		t.Errorf("Install: got %+v, want %+v", got, want)
	}
	if cfg.Nodes[0].Install != nil {
		t.Errorf("Install without the key: got %+v, want nil", cfg.Nodes[0].Install)
	}
}

func TestSyntaxErrorNamesLine(t *testing.T) {
	_, err := Parse([]byte("{\n\"Hostname\": \"x\",\n\"Netboot\": {,}\n}"))
	if err == nil || !strings.Contains(err.Error(), "line 3") {
		t.Errorf("got %v, want an error naming line 3", err)
	}
}

func TestNormalizeSerial(t *testing.T) {
	for _, tt := range []struct{ in, want string }{
		{"abcd1234", "abcd1234"},
		{"ABCD1234", "abcd1234"},
		{"10000000abcd1234", "abcd1234"},
		{"0x0c8f7e5cbd989ae1", "bd989ae1"},
	} {
		got, err := NormalizeSerial(tt.in)
		if err != nil || got != tt.want {
			t.Errorf("NormalizeSerial(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
	for _, bad := range []string{"", "abc", "abcd123g", "abcd12345"} {
		if _, err := NormalizeSerial(bad); err == nil {
			t.Errorf("NormalizeSerial(%q): got nil error", bad)
		}
	}
}

// The repository's own config.json must always be valid.
func TestRepoConfig(t *testing.T) {
	_, file, _, _ := runtime.Caller(0)
	path := filepath.Join(filepath.Dir(file), "..", "..", "config.json")
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("the repository's config.json: %v", err)
	}
	if _, err := Load(path); err != nil {
		t.Fatal(err)
	}
}
