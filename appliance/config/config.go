// Package config reads the "Netboot" section of the gokrazy instance's
// config.json. gok ignores keys it does not know, so the cluster settings live
// beside the instance settings in the one file users edit.
//
// Decoding is strict inside the section: an unknown key is an error, and every
// problem is reported (not just the first) as one line naming the field path
// and the bad value, e.g.
//
//	Netboot.Nodes[2].MAC: "zz:00" is not a MAC address
//
// An empty or missing section is valid and means: proxy DHCP on eth0, nodes
// enrol automatically and boot DefaultImage.
package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"golang.org/x/crypto/ssh"
)

// DefaultPath is where gokrazy places config.json inside the image
// (PackageConfig ExtraFilePaths in config.json).
const DefaultPath = "/etc/ociboot/config.json"

// Modes and enrolment policies.
const (
	ModeProxy = "proxy"
	ModeFull  = "full"

	EnrollAuto      = "auto"
	EnrollKnownOnly = "known-only"

	ReimageManual = "manual"
	ReimageOnBoot = "on-boot"
)

// Defaults for an empty section.
const (
	DefaultInterface    = "eth0"
	DefaultLeaseSeconds = 3600
	DefaultPlatform     = "linux/arm64"
)

// Node is one entry of Netboot.Nodes as written in config.json.
type Node struct {
	// Name is for humans (status page, logs). Defaults to the serial.
	Name string
	// Serial is the Pi's serial number: the 8 hex digits the bootloader
	// uses as TFTP prefix, or all 16 (only the low 8 are kept).
	Serial string
	// MAC of the node's Ethernet port.
	MAC string
	// IP is a reservation (full mode) and the address exports are answered to.
	IP string
	// Image overrides DefaultImage for this node.
	Image string
	// Platform overrides Netboot.Platform for this node, e.g. "linux/amd64"
	// for a QEMU machine.
	Platform string
	// Netconsole adds netconsole= to the node's generated cmdline.txt: the
	// kernel sends its log to the head node's UDP port 6666.
	Netconsole bool
	// Quota bounds what the node's writable root and its NBD disk may use
	// together on the head node's store, e.g. "10G" (overrides
	// Netboot.NodeQuota; "0": none). Writes past it fail on the node with
	// "Disk quota exceeded" (on the NBD disk: write errors).
	Quota string
	// Disk overrides Netboot.NodeDisk for this node ({"Off": true}: none).
	Disk *Disk
	// Install copies the netbooted system to a disk of the node, which
	// then boots from it; see Install.
	Install *Install
}

// Disk is local-filesystem storage for a node's container runtime:
// overlayfs refuses an NFS upper directory, so /var/lib/containerd and
// /var/lib/rancher need a block device. Either the head node serves one
// over NBD (a sparse file in the node's directory on the store; the node
// makes an ext4 on first use), or Device names a disk of the node itself.
type Disk struct {
	// Size of the NBD disk, e.g. "20G" (at least 1G; default 20G). Only
	// written blocks take space on the store, and they count against the
	// node's Quota.
	Size string
	// Mount lists where the node mounts the disk, before container
	// runtimes start (one ext4; each path is a directory on it, bind-
	// mounted). Default ["/var/lib/containerd", "/var/lib/rancher"].
	Mount []string
	// Device uses a disk of the node instead of NBD: "/dev/nvme0n1p1",
	// "/dev/disk/by-id/<serial>", "LABEL=data" or "UUID=...".
	Device string
	// Format makes an ext4 on Device when it holds no file system. Without
	// it a blank Device fails the mount and says so; a device with a file
	// system is never formatted. (NBD disks are always formatted on first use.)
	Format bool
	// KeepOnReset keeps the NBD disk when the node's root is reset or
	// reimaged (default: it is dropped with the root). Forgetting the node
	// always drops it.
	KeepOnReset bool
	// Off: no disk for this node even though Netboot.NodeDisk is set.
	Off bool
}

// Install is Nodes[].Install: on its next netboot the node partitions
// Device like an SD card (FAT boot, ext4 root), copies its boot files and
// root onto it, makes fstab and cmdline.txt local and reports back; from
// then on it boots from Device.
type Install struct {
	// Device is the node's whole disk: "/dev/mmcblk0", "/dev/nvme0n1".
	// Everything on it is lost.
	Device string
	// KeepNetboot keeps answering the node's netboot after the install
	// (a fallback when the local disk fails; on a Pi the boot order then
	// decides). Default: an installed node is no longer netbooted.
	KeepNetboot bool
}

// Netboot is the "Netboot" section of config.json as written by users.
type Netboot struct {
	// Interface the services answer on (dhcpd binds to it).
	Interface string
	// Mode is "proxy" (default: another DHCP server hands out addresses) or
	// "full" (dhcpd leases addresses on an isolated network).
	Mode string
	// ServerIP is the head node's address on Interface. Required in full
	// mode; in proxy mode it defaults to the interface's first IPv4 address.
	ServerIP string
	// Subnet in CIDR notation, e.g. "10.42.0.0/24" (full mode).
	Subnet string
	// Range of leased addresses, "first-last", inside Subnet (full mode).
	Range string
	// Router and DNS handed to clients in full mode.
	Router string
	DNS    []string
	// LeaseSeconds is the lease time in full mode (default 3600, minimum 60).
	LeaseSeconds int
	// ForceDHCP starts full mode even when another DHCP server answers on
	// the segment.
	ForceDHCP bool
	// Enroll is "auto" (unknown nodes boot DefaultImage) or "known-only".
	Enroll string
	// DefaultImage is the OCI reference every node without its own Image
	// boots, e.g. "registry.example:5000/rpi/node:bookworm".
	DefaultImage string
	// Reimage is what happens when a node's configured image changes
	// after its root was made: "manual" (default: the node keeps its root
	// until reset) or "on-boot" (its next boot gets a fresh root from the
	// new image; the previous root is kept until the new one has mounted).
	Reimage string
	// Platform of images, default "linux/arm64" (Pi 4 / CM4 / Pi 5).
	Platform string
	// BootDir is the boot directory inside images; empty means look for
	// boot/firmware, then boot.
	BootDir string
	// Nodes known by serial and/or MAC.
	Nodes []Node
	// KernelArgs are appended to every generated cmdline.txt.
	KernelArgs []string
	// ConfigTxt lines are appended to every node's config.txt.
	ConfigTxt []string
	// Netconsole adds netconsole= to every node's cmdline.txt (see
	// Nodes[].Netconsole).
	Netconsole bool
	// ExportTo lists extra CIDRs (beyond enrolled nodes' addresses) that
	// nfsd answers, e.g. for a test client.
	ExportTo []string
	// Upstreams are registries the head node mirrors pull-through on /v2/:
	// "registry.example:5000" relays only the repositories of the
	// configured images (DefaultImage, Nodes[].Image) on that registry;
	// "registry.example:5000/rpi" also every repository rpi/... there.
	Upstreams []string
	// InsecureRegistries are pulled over plain HTTP (local registries).
	InsecureRegistries []string
	// SSHAuthorizedKeys are OpenSSH public keys ("ssh-ed25519 AAAA... me@laptop")
	// that may log in as root on every node: nfsd writes them into each
	// node's root (and its cloud-init seed) when it makes the root.
	SSHAuthorizedKeys []string
	// NodeDisk gives every node a disk for its container runtime (see
	// Disk) unless Nodes[].Disk says otherwise, e.g.
	// {"Size": "20G", "Mount": ["/var/lib/containerd", "/var/lib/rancher"]}.
	NodeDisk *Disk
	// NodeQuota is every node's quota on the store unless Nodes[].Quota
	// says otherwise, e.g. "10G"; empty: none (nfsd's -reserve_mib still
	// keeps space for the head node's own state).
	NodeQuota string
}

// NodeConfig is a validated Node.
type NodeConfig struct {
	Name       string
	Serial     string           // 8 lowercase hex digits, or "" if only MAC is known
	MAC        net.HardwareAddr // nil if only the serial is known
	IP         netip.Addr       // invalid if none reserved
	Image      string           // the node's image (DefaultImage filled in)
	Platform   string
	Netconsole bool
	Quota      int64          // bytes the node's root and NBD disk may use; 0: no quota (NodeQuota filled in)
	Disk       *DiskConfig    // nil: none (NodeDisk filled in)
	Install    *InstallConfig // nil: netboot only
}

// DefaultDiskSize and DefaultDiskMounts are a Disk's defaults;
// MinDiskSize is the smallest NBD disk (an ext4 journal and a few images).
var (
	DefaultDiskSize   int64 = 20 << 30
	MinDiskSize       int64 = 1 << 30
	DefaultDiskMounts       = []string{"/var/lib/containerd", "/var/lib/rancher"}
)

// DiskConfig is a validated Disk.
type DiskConfig struct {
	Size        int64    // NBD disk size in bytes; 0 when Device is set
	Mount       []string // absolute, clean, without commas or spaces
	Device      string   // "" for NBD
	Format      bool
	KeepOnReset bool
}

// NBD reports whether the head node serves this disk.
func (d *DiskConfig) NBD() bool { return d != nil && d.Device == "" }

// InstallConfig is a validated Install.
type InstallConfig struct {
	Device      string
	KeepNetboot bool
}

// Config is the validated section with parsed values.
type Config struct {
	// Warnings are problems that do not stop a service but probably
	// are not what the user meant (see warnings); services log them at
	// start, make check prints them and the status page shows them.
	Warnings []string
	Raw      Netboot

	Interface    string
	Mode         string
	ServerIP     netip.Addr // may be invalid in proxy mode: use the interface's address
	Subnet       netip.Prefix
	RangeStart   netip.Addr
	RangeEnd     netip.Addr
	Router       netip.Addr
	DNS          []netip.Addr
	Lease        time.Duration
	ForceDHCP    bool
	Enroll       string
	Reimage      string
	DefaultImage string
	Platform     string
	BootDir      string
	Nodes        []NodeConfig
	KernelArgs   []string
	ConfigTxt    []string
	Netconsole   bool
	ExportTo     []netip.Prefix
	Upstreams    []string
	Insecure     []string
	// AuthorizedKeys are the validated SSHAuthorizedKeys.
	AuthorizedKeys []string
	// NodeQuota is the parsed Netboot.NodeQuota in bytes (0: none).
	NodeQuota int64
	// NodeDisk is the parsed Netboot.NodeDisk (nil: none).
	NodeDisk *DiskConfig
}

// Errors collects every problem found in the section; Error prints one per
// line.
type Errors []error

func (e Errors) Error() string {
	lines := make([]string, len(e))
	for i, err := range e {
		lines[i] = err.Error()
	}
	return strings.Join(lines, "\n")
}

// Load reads path (a gokrazy config.json) and returns its Netboot section.
func Load(path string) (*Config, error) {
	cfg, _, err := LoadBytes(path)
	return cfg, err
}

// LoadBytes is Load that also returns the bytes it parsed, so that a
// watcher compares later versions of the file with exactly what applies.
func LoadBytes(path string) (*Config, []byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("config: %v (pass -config with the path of config.json)", err)
	}
	cfg, err := Parse(b)
	if err != nil {
		return nil, b, fmt.Errorf("config: %s:\n%w", path, err)
	}
	return cfg, b, nil
}

// Parse decodes a whole config.json and validates its Netboot section.
func Parse(b []byte) (*Config, error) {
	var top map[string]json.RawMessage
	if err := json.Unmarshal(b, &top); err != nil {
		return nil, Errors{fmt.Errorf("config.json: %v", jsonErr(b, err))}
	}
	var raw Netboot
	var errs Errors
	if section, ok := top["Netboot"]; ok {
		decodeStrict("Netboot", section, reflect.ValueOf(&raw).Elem(), &errs)
	}
	// Validate even after decoding errors: a field that failed to decode
	// is left at its zero value (its default), so every other problem is
	// still reported in the same run.
	cfg := validate(raw, &errs)
	if len(errs) > 0 {
		return nil, errs
	}
	cfg.Warnings = warnings(top, cfg)
	return cfg, nil
}

// jsonErr adds the line number to a syntax error.
func jsonErr(b []byte, err error) error {
	var se *json.SyntaxError
	if errors.As(err, &se) {
		line := 1 + bytes.Count(b[:se.Offset], []byte("\n"))
		return fmt.Errorf("line %d: %v", line, err)
	}
	return err
}

// decodeStrict decodes raw into v (a struct, slice of structs or plain value)
// and records every unknown key and type mismatch under its path, so that one
// run reports all problems.
func decodeStrict(path string, raw json.RawMessage, v reflect.Value, errs *Errors) {
	switch {
	case v.Kind() == reflect.Pointer && v.Type().Elem().Kind() == reflect.Struct:
		if string(bytes.TrimSpace(raw)) == "null" {
			return
		}
		p := reflect.New(v.Type().Elem())
		decodeStrict(path, raw, p.Elem(), errs)
		// Not an object: the error above says so; a zero struct in its
		// place would only add errors about its empty fields.
		if bytes.HasPrefix(bytes.TrimSpace(raw), []byte("{")) {
			v.Set(p)
		}
	case v.Kind() == reflect.Struct:
		var obj map[string]json.RawMessage
		if err := json.Unmarshal(raw, &obj); err != nil || obj == nil {
			if string(bytes.TrimSpace(raw)) == "null" {
				return
			}
			*errs = append(*errs, fmt.Errorf("%s: want an object, got %s", path, short(raw)))
			return
		}
		t := v.Type()
		known := make([]string, 0, t.NumField())
		for i := 0; i < t.NumField(); i++ {
			known = append(known, t.Field(i).Name)
		}
		keys := make([]string, 0, len(obj))
		for k := range obj {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			f, ok := t.FieldByName(k)
			if !ok || !f.IsExported() {
				*errs = append(*errs, fmt.Errorf("%s.%s: unknown key (known keys: %s)", path, k, strings.Join(known, ", ")))
				continue
			}
			decodeStrict(path+"."+k, obj[k], v.FieldByIndex(f.Index), errs)
		}
	case v.Kind() == reflect.Slice && v.Type().Elem().Kind() == reflect.Struct:
		var items []json.RawMessage
		if err := json.Unmarshal(raw, &items); err != nil {
			*errs = append(*errs, fmt.Errorf("%s: want a list, got %s", path, short(raw)))
			return
		}
		s := reflect.MakeSlice(v.Type(), len(items), len(items))
		for i, item := range items {
			decodeStrict(fmt.Sprintf("%s[%d]", path, i), item, s.Index(i), errs)
		}
		v.Set(s)
	default:
		if err := json.Unmarshal(raw, v.Addr().Interface()); err != nil {
			*errs = append(*errs, fmt.Errorf("%s: want %s, got %s", path, kindName(v.Type()), short(raw)))
		}
	}
}

func kindName(t reflect.Type) string {
	switch t.Kind() {
	case reflect.String:
		return "a string"
	case reflect.Int:
		return "a whole number"
	case reflect.Bool:
		return "true or false"
	case reflect.Slice:
		return "a list of " + strings.TrimPrefix(kindName(t.Elem()), "a ") + "s"
	}
	return t.String()
}

func short(raw json.RawMessage) string {
	s := string(bytes.TrimSpace(raw))
	if len(s) > 40 {
		s = s[:37] + "..."
	}
	return s
}

func validate(raw Netboot, errs *Errors) *Config {
	add := func(format string, args ...any) { *errs = append(*errs, fmt.Errorf(format, args...)) }
	cfg := &Config{
		Raw:          raw,
		Interface:    raw.Interface,
		Mode:         raw.Mode,
		Enroll:       raw.Enroll,
		Reimage:      raw.Reimage,
		ForceDHCP:    raw.ForceDHCP,
		DefaultImage: raw.DefaultImage,
		Platform:     raw.Platform,
		BootDir:      raw.BootDir,
		KernelArgs:   raw.KernelArgs,
		ConfigTxt:    raw.ConfigTxt,
		Netconsole:   raw.Netconsole,
		Upstreams:    raw.Upstreams,
		Insecure:     raw.InsecureRegistries,
	}
	if cfg.Interface == "" {
		cfg.Interface = DefaultInterface
	} else if len(cfg.Interface) > 15 || strings.ContainsAny(cfg.Interface, "/ \t") {
		add("Netboot.Interface: %q is not a network interface name", cfg.Interface)
	}
	switch cfg.Mode {
	case "":
		cfg.Mode = ModeProxy
	case ModeProxy, ModeFull:
	default:
		add("Netboot.Mode: %q is not a mode; use %q or %q", raw.Mode, ModeProxy, ModeFull)
	}
	switch cfg.Enroll {
	case "":
		cfg.Enroll = EnrollAuto
	case EnrollAuto, EnrollKnownOnly:
	default:
		add("Netboot.Enroll: %q is not a policy; use %q or %q", raw.Enroll, EnrollAuto, EnrollKnownOnly)
	}
	switch cfg.Reimage {
	case "":
		cfg.Reimage = ReimageManual
	case ReimageManual, ReimageOnBoot:
	default:
		add("Netboot.Reimage: %q is not a policy; use %q or %q", raw.Reimage, ReimageManual, ReimageOnBoot)
	}
	full := cfg.Mode == ModeFull

	ipv4 := func(field, s string) netip.Addr {
		a, err := netip.ParseAddr(s)
		if err != nil || !a.Is4() {
			add("%s: %q is not an IPv4 address", field, s)
			return netip.Addr{}
		}
		return a
	}
	if raw.ServerIP != "" {
		cfg.ServerIP = ipv4("Netboot.ServerIP", raw.ServerIP)
	} else if full {
		add("Netboot.ServerIP: required in full mode (the head node's static address on %s)", cfg.Interface)
	}
	if raw.Subnet != "" {
		p, err := netip.ParsePrefix(raw.Subnet)
		if err != nil || !p.Addr().Is4() {
			add("Netboot.Subnet: %q is not an IPv4 CIDR such as \"10.42.0.0/24\"", raw.Subnet)
		} else {
			cfg.Subnet = p.Masked()
		}
	} else if full {
		add("Netboot.Subnet: required in full mode, e.g. \"10.42.0.0/24\"")
	}
	inSubnet := func(field string, a netip.Addr) {
		if a.IsValid() && cfg.Subnet.IsValid() && !cfg.Subnet.Contains(a) {
			add("%s: %s is outside Netboot.Subnet %s", field, a, cfg.Subnet)
		}
	}
	inSubnet("Netboot.ServerIP", cfg.ServerIP)
	if raw.Range != "" {
		first, last, ok := strings.Cut(raw.Range, "-")
		a, errA := netip.ParseAddr(strings.TrimSpace(first))
		b, errB := netip.ParseAddr(strings.TrimSpace(last))
		switch {
		case !ok || errA != nil || errB != nil || !a.Is4() || !b.Is4():
			add("Netboot.Range: %q is not a range such as \"10.42.0.100-10.42.0.199\"", raw.Range)
		case b.Less(a):
			add("Netboot.Range: %q ends before it starts", raw.Range)
		default:
			cfg.RangeStart, cfg.RangeEnd = a, b
			inSubnet("Netboot.Range", a)
			inSubnet("Netboot.Range", b)
			if cfg.ServerIP.IsValid() && cfg.InRange(cfg.ServerIP) {
				add("Netboot.Range: %q contains Netboot.ServerIP %s", raw.Range, cfg.ServerIP)
			}
		}
	} else if full {
		add("Netboot.Range: required in full mode, e.g. \"10.42.0.100-10.42.0.199\"")
	}
	if raw.Router != "" {
		cfg.Router = ipv4("Netboot.Router", raw.Router)
		inSubnet("Netboot.Router", cfg.Router)
	}
	for i, s := range raw.DNS {
		if a := ipv4(fmt.Sprintf("Netboot.DNS[%d]", i), s); a.IsValid() {
			cfg.DNS = append(cfg.DNS, a)
		}
	}
	switch {
	case raw.LeaseSeconds == 0:
		cfg.Lease = DefaultLeaseSeconds * time.Second
	case raw.LeaseSeconds < 60:
		add("Netboot.LeaseSeconds: %d is too short; use at least 60", raw.LeaseSeconds)
	default:
		cfg.Lease = time.Duration(raw.LeaseSeconds) * time.Second
	}
	checkImage := func(field, ref string) {
		if _, err := name.ParseReference(ref); err != nil {
			add("%s: %q is not an image reference such as \"registry:5000/repo/name:tag\": %v", field, ref, err)
		}
	}
	if raw.DefaultImage != "" {
		checkImage("Netboot.DefaultImage", raw.DefaultImage)
	}
	if cfg.Platform == "" {
		cfg.Platform = DefaultPlatform
	} else {
		checkPlatform("Netboot.Platform", cfg.Platform, add)
	}
	if raw.BootDir != "" {
		if strings.HasPrefix(raw.BootDir, "/") {
			cfg.BootDir = strings.TrimLeft(raw.BootDir, "/")
		}
		for _, el := range strings.Split(cfg.BootDir, "/") {
			if el == ".." {
				add("Netboot.BootDir: %q leaves the image; name a directory inside it such as \"boot/firmware\"", raw.BootDir)
				break
			}
		}
	}
	for i, s := range raw.ExportTo {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			if a, err2 := netip.ParseAddr(s); err2 == nil {
				p, err = netip.PrefixFrom(a, a.BitLen()), nil
			}
		}
		if err != nil {
			add("Netboot.ExportTo[%d]: %q is not an address or CIDR", i, s)
			continue
		}
		cfg.ExportTo = append(cfg.ExportTo, p.Masked())
	}
	for i, s := range raw.Upstreams {
		host, path, _ := strings.Cut(s, "/")
		if _, err := name.NewRegistry(host); err != nil || host == "" || strings.HasSuffix(host, ":") || path != "" && !validRepoPath(path) {
			add("Netboot.Upstreams[%d]: %q is not a registry host or repository prefix such as \"registry.example:5000\" or \"registry.example:5000/rpi\"", i, s)
		}
	}
	for i, s := range raw.InsecureRegistries {
		if _, err := name.NewRegistry(s); err != nil || strings.Contains(s, "/") {
			add("Netboot.InsecureRegistries[%d]: %q is not a registry host such as \"localhost:5000\"", i, s)
		}
	}

	for i, k := range raw.SSHAuthorizedKeys {
		if _, _, _, _, err := ssh.ParseAuthorizedKey([]byte(k)); err != nil || strings.ContainsAny(strings.TrimSpace(k), "\n\r") {
			add("Netboot.SSHAuthorizedKeys[%d]: %q is not one OpenSSH public key line such as \"ssh-ed25519 AAAA... me@laptop\" (the contents of ~/.ssh/id_ed25519.pub)", i, short(json.RawMessage(k)))
			continue
		}
		cfg.AuthorizedKeys = append(cfg.AuthorizedKeys, strings.TrimSpace(k))
	}

	quota := func(field, s string) int64 {
		if s == "" {
			return 0
		}
		n, err := ParseSize(s)
		if err != nil {
			add("%s: %v", field, err)
		}
		return n
	}
	cfg.NodeQuota = quota("Netboot.NodeQuota", raw.NodeQuota)
	cfg.NodeDisk = checkDisk("Netboot.NodeDisk", raw.NodeDisk, add)

	seen := map[string]string{}
	dup := func(field, kind, v string) {
		key := kind + "\x00" + v
		if prev, ok := seen[key]; ok {
			add("%s: %s %q is also used by %s", field, kind, v, prev)
			return
		}
		seen[key] = field
	}
	for i, n := range raw.Nodes {
		p := fmt.Sprintf("Netboot.Nodes[%d]", i)
		nc := NodeConfig{Name: n.Name, Image: n.Image, Platform: n.Platform, Netconsole: n.Netconsole, Quota: cfg.NodeQuota}
		if n.Quota != "" {
			nc.Quota = quota(p+".Quota", n.Quota)
		}
		nc.Disk = cfg.NodeDisk
		if n.Disk != nil {
			nc.Disk = checkDisk(p+".Disk", n.Disk, add)
		}
		nc.Install = checkInstall(p+".Install", n.Install, add)
		if n.Serial != "" {
			s, err := NormalizeSerial(n.Serial)
			if err != nil {
				add("%s.Serial: %q is not a Pi serial (8 or 16 hex digits, as printed by `cat /proc/cpuinfo`)", p, n.Serial)
			} else {
				nc.Serial = s
				dup(p+".Serial", "serial", s)
			}
		}
		if n.MAC != "" {
			mac, err := net.ParseMAC(n.MAC)
			if err != nil || len(mac) != 6 {
				add("%s.MAC: %q is not a MAC address", p, n.MAC)
			} else {
				nc.MAC = mac
				dup(p+".MAC", "MAC", mac.String())
			}
		}
		if n.Serial == "" && n.MAC == "" {
			add("%s: needs a Serial or a MAC to recognise the node", p)
		}
		if n.IP != "" {
			nc.IP = ipv4(p+".IP", n.IP)
			inSubnet(p+".IP", nc.IP)
			if nc.IP.IsValid() {
				if nc.IP == cfg.ServerIP {
					add("%s.IP: %s is Netboot.ServerIP", p, nc.IP)
				}
				dup(p+".IP", "IP", nc.IP.String())
			}
		}
		if nc.Image != "" {
			checkImage(p+".Image", nc.Image)
		} else {
			nc.Image = cfg.DefaultImage
		}
		if nc.Platform != "" {
			checkPlatform(p+".Platform", nc.Platform, add)
		} else {
			nc.Platform = cfg.Platform
		}
		if nc.Name == "" {
			nc.Name = nc.Serial
			if nc.Name == "" {
				nc.Name = nc.MAC.String()
			}
		} else {
			dup(p+".Name", "name", nc.Name)
		}
		cfg.Nodes = append(cfg.Nodes, nc)
	}
	return cfg
}

// checkDisk validates a Disk; nil (no disk) for nil or Off.
func checkDisk(field string, d *Disk, add func(string, ...any)) *DiskConfig {
	if d == nil || d.Off {
		return nil
	}
	dc := &DiskConfig{Device: d.Device, Format: d.Format, KeepOnReset: d.KeepOnReset}
	if d.Device != "" {
		if !validDevice(d.Device) {
			add("%s.Device: %q is not a device of the node; use a path such as \"/dev/nvme0n1p1\" or \"/dev/disk/by-id/...\", or \"LABEL=...\" or \"UUID=...\"", field, d.Device)
		}
		if d.Size != "" {
			add("%s: Size is for disks the head node serves; a Device has its own size (drop Size or Device)", field)
		}
		if d.KeepOnReset {
			add("%s: KeepOnReset is for disks the head node serves; a Device is never dropped (drop KeepOnReset)", field)
		}
	} else {
		if d.Format {
			add("%s: Format is for a Device; the head node's disks are always formatted on first use (drop Format)", field)
		}
		dc.Size = DefaultDiskSize
		if d.Size != "" {
			n, err := ParseSize(d.Size)
			switch {
			case err != nil:
				add("%s.Size: %v", field, err)
			case n < MinDiskSize:
				add("%s.Size: %q is below the smallest disk, 1G", field, d.Size)
			default:
				dc.Size = n
			}
		}
	}
	mounts := d.Mount
	if mounts == nil {
		mounts = DefaultDiskMounts
	}
	if len(mounts) == 0 {
		add("%s.Mount: empty; name where the disk goes, e.g. [\"/var/lib/containerd\"]", field)
	}
	seen := map[string]bool{}
	for i, m := range mounts {
		switch {
		case !strings.HasPrefix(m, "/") || path.Clean(m) != m || m == "/":
			add("%s.Mount[%d]: %q is not an absolute, clean directory other than /", field, i, m)
		case strings.ContainsAny(m, ", \t\n\"'\\"):
			add("%s.Mount[%d]: %q has a comma, quote, backslash or space; the node gets the list on its kernel command line", field, i, m)
		case seen[m]:
			add("%s.Mount[%d]: %q is listed twice", field, i, m)
		}
		seen[m] = true
	}
	dc.Mount = append([]string(nil), mounts...)
	return dc
}

func checkInstall(field string, in *Install, add func(string, ...any)) *InstallConfig {
	if in == nil {
		return nil
	}
	if in.Device == "" || !strings.HasPrefix(in.Device, "/dev/") || path.Clean(in.Device) != in.Device || strings.ContainsAny(in.Device, ", \t\n\"'\\") {
		add("%s.Device: %q is not a whole disk of the node such as \"/dev/mmcblk0\" or \"/dev/nvme0n1\" (everything on it is lost)", field, in.Device)
	}
	return &InstallConfig{Device: in.Device, KeepNetboot: in.KeepNetboot}
}

func validDevice(s string) bool {
	if strings.ContainsAny(s, ", \t\n\"'\\") {
		return false
	}
	for _, p := range []string{"LABEL=", "UUID=", "PARTUUID=", "PARTLABEL="} {
		if v, ok := strings.CutPrefix(s, p); ok {
			return v != ""
		}
	}
	return strings.HasPrefix(s, "/dev/") && len(s) > 5 && path.Clean(s) == s
}

func checkPlatform(field, s string, add func(string, ...any)) {
	os, arch, ok := strings.Cut(s, "/")
	if !ok || os != "linux" || arch == "" || strings.Count(s, "/") > 2 {
		add("%s: %q is not a platform such as \"linux/arm64\"", field, s)
	}
}

// NormalizeSerial returns the low 8 hex digits of a Pi serial in lower case:
// the bootloader uses exactly those as its TFTP prefix.
func NormalizeSerial(s string) (string, error) {
	s = strings.ToLower(strings.TrimPrefix(strings.TrimPrefix(s, "0x"), "0X"))
	if len(s) != 8 && len(s) != 16 {
		return "", fmt.Errorf("serial %q: want 8 or 16 hex digits", s)
	}
	for _, c := range s {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return "", fmt.Errorf("serial %q: %q is not a hex digit", s, c)
		}
	}
	return s[len(s)-8:], nil
}

// InRange reports whether a lies in the lease range.
func (c *Config) InRange(a netip.Addr) bool {
	return c.RangeStart.IsValid() && !a.Less(c.RangeStart) && !c.RangeEnd.Less(a)
}

// NodeBySerial returns the configured node with that (normalized) serial.
func (c *Config) NodeBySerial(serial string) (NodeConfig, bool) {
	for _, n := range c.Nodes {
		if n.Serial != "" && n.Serial == serial {
			return n, true
		}
	}
	return NodeConfig{}, false
}

// NodeByMAC returns the configured node with that MAC.
func (c *Config) NodeByMAC(mac net.HardwareAddr) (NodeConfig, bool) {
	for _, n := range c.Nodes {
		if n.MAC != nil && bytes.Equal(n.MAC, mac) {
			return n, true
		}
	}
	return NodeConfig{}, false
}

// Images returns every distinct image the config names, each with the
// platforms it is needed for.
func (c *Config) Images() map[string][]string {
	out := map[string][]string{}
	addImg := func(ref, platform string) {
		if ref == "" {
			return
		}
		for _, p := range out[ref] {
			if p == platform {
				return
			}
		}
		out[ref] = append(out[ref], platform)
	}
	addImg(c.DefaultImage, c.Platform)
	for _, n := range c.Nodes {
		addImg(n.Image, n.Platform)
	}
	return out
}

// validRepoPath reports whether p is a repository path (lower-case
// components separated by slashes, as the distribution spec has them).
func validRepoPath(p string) bool {
	for _, c := range strings.Split(p, "/") {
		if !repoComponent.MatchString(c) {
			return false
		}
	}
	return true
}

var repoComponent = regexp.MustCompile(`^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*$`)
