package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ociboot/ociboot/appliance/testenv"
	"github.com/ociboot/ociboot/tests/guest"
	testlab "github.com/ociboot/ociboot/tests/lab"
)

// The amd64 kernel gokrazy publishes; the Pi image uses kernel.rpi.
const (
	kernelAmd64        = "github.com/gokrazy/kernel.amd64"
	kernelAmd64Version = "v0.0.0-20260705070735-de680abf072b"
)

// vmInstance writes a gokrazy instance (beside a temp builddir) that builds
// this repository's config.json for amd64: the same packages, the amd64
// kernel, no Pi firmware, serial console on ttyS0, the head's static
// address set through gokrazy's dhcp as the README documents, netboot as
// the Netboot section, and updates over plain HTTP to addr. marker changes
// an extra file, so that two builds differ.
func vmInstance(t *testing.T, parent, name, addr string, netboot map[string]any, marker string) string {
	t.Helper()
	root := repoRoot()
	var cfg map[string]any
	b, err := os.ReadFile(filepath.Join(root, "config.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &cfg); err != nil {
		t.Fatal(err)
	}
	inst := filepath.Join(parent, name)
	cfg["Environment"] = []string{"GOOS=linux", "GOARCH=amd64"}
	cfg["KernelPackage"] = kernelAmd64
	cfg["FirmwarePackage"] = ""
	cfg["EEPROMPackage"] = ""
	cfg["SerialConsole"] = "ttyS0,115200"
	cfg["Update"] = map[string]any{"Hostname": addr, "HTTPPassword": "vmtest", "UseTLS": "off"}
	cfg["Netboot"] = netboot
	pc := cfg["PackageConfig"].(map[string]any)
	dhcpd := pc["github.com/ociboot/ociboot/services/dhcpd"].(map[string]any)
	// ExtraFilePaths are relative to the instance: this instance's own
	// config.json, which carries the Netboot section above.
	dhcpd["ExtraFilePaths"] = map[string]string{"/etc/ociboot/config.json": filepath.Join(inst, "config.json")}
	dhcpd["ExtraFileContents"] = map[string]string{"/etc/ociboot/vm-marker": marker + "\n"}
	pc["github.com/gokrazy/gokrazy/cmd/dhcp"] = map[string]any{"CommandLineFlags": []string{
		fmt.Sprintf(`-static_network_config={"IP":%q,"Netmask":"////AA=="}`, addr)}}
	bd := filepath.Join(inst, "builddir")
	if err := os.MkdirAll(bd, 0o755); err != nil {
		t.Fatal(err)
	}
	out, _ := json.MarshalIndent(cfg, "", "  ")
	if err := os.WriteFile(filepath.Join(inst, "config.json"), out, 0o644); err != nil {
		t.Fatal(err)
	}
	gomod, _ := os.ReadFile(filepath.Join(root, "builddir", "go.mod"))
	gomod = []byte(strings.Replace(string(gomod), "=> ../", "=> "+root, 1))
	gomod = append(gomod, []byte(fmt.Sprintf("\nrequire %s %s\n", kernelAmd64, kernelAmd64Version))...)
	gosum, _ := os.ReadFile(filepath.Join(root, "builddir", "go.sum"))
	os.WriteFile(filepath.Join(bd, "go.mod"), gomod, 0o644)
	os.WriteFile(filepath.Join(bd, "go.sum"), gosum, 0o644)
	dl := exec.Command("go", "mod", "download", kernelAmd64)
	dl.Dir = bd
	dl.Env = append(os.Environ(), "GOFLAGS=-mod=mod")
	if out, err := dl.CombinedOutput(); err != nil {
		t.Fatalf("go mod download %s: %v\n%s", kernelAmd64, err, out)
	}
	return inst
}

// gok runs the pinned gok on inst, in network namespace ns if not empty.
func gok(t *testing.T, ns, inst string, args ...string) []byte {
	t.Helper()
	argv := append([]string{"go", "tool", "gok", "--parent_dir", filepath.Dir(inst), "--instance", filepath.Base(inst)}, args...)
	if ns != "" {
		argv = append([]string{"ip", "netns", "exec", ns}, argv...)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = repoRoot() // go tool gok resolves from this module's go.mod
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("gok %v: %v\n%s", args, err, tail(string(out)))
	}
	return out
}

// getJSON fetches url from inside ns with curl.
func getJSON(ns, url string, v any) error {
	out, err := exec.Command("ip", "netns", "exec", ns, "curl", "-sf", "--max-time", "5", "-H", "Accept: application/json", url).Output()
	if err != nil {
		return err
	}
	return json.Unmarshal(out, v)
}

// poll calls f every second until it returns nil or timeout passes.
func poll(timeout time.Duration, f func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(time.Second)
	}
}

// TestApplianceServesANodeThroughUpdate builds the amd64 gokrazy image of
// this repository's config.json in full mode, boots it in QEMU on the lab
// segment with its static address, waits until every service reports on the
// status page, and netboots a diskless QEMU node from it (the node image
// comes from a registry on the segment, pulled by the appliance's
// ocicache). Then it ships a changed build with `gok update`: the appliance
// writes its other root partition and reboots while the node keeps running
// from its NFS root, which works again once the appliance is back.
func TestApplianceServesANodeThroughUpdate(t *testing.T) {
	testenv.Short(t, "builds and boots the appliance in QEMU")
	testenv.NeedTool(t, "mkfs.ext4", "e2fsprogs")
	lab := NewLab(t)
	acc, slow := testlab.Accel()
	t.Logf("QEMU with %v", acc)
	head := lab.Addr(1)
	// The lab's head namespace is the admin's machine here: it holds the
	// registry and runs gok update; the head node is the appliance VM.
	exec.Command("ip", "-n", lab.Head, "addr", "flush", "dev", "eth0").Run()
	run(t, "ip", "-n", lab.Head, "addr", "add", lab.Addr(2)+"/24", "dev", "eth0")
	registry := lab.Addr(2) + ":5001"
	ref := StartRegistry(t, lab, lab.Head, registry)

	netboot := FullMode(lab)
	netboot["DefaultImage"], netboot["Platform"], netboot["InsecureRegistries"] = ref, "linux/amd64", []string{registry}
	parent := t.TempDir()
	inst := vmInstance(t, parent, "ociboot-vm", head, netboot, "first")
	img := filepath.Join(parent, "disk.img")
	out := gok(t, "", inst, "overwrite", "--full", img, "--target_storage_bytes=2147483648")
	var off, blocks string
	for _, line := range strings.Split(string(out), "\n") {
		if i := strings.Index(line, "mkfs.ext4 -F -E offset="); i >= 0 {
			f := strings.Fields(line[i:])
			off, blocks = strings.TrimPrefix(f[3], "offset="), f[5]
		}
	}
	if off == "" {
		t.Fatalf("gok did not print the perm partition:\n%s", tail(string(out)))
	}
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-L", "perm", "-E", "offset="+off, img, blocks).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v\n%s", err, out)
	}

	// Boot through UEFI with the OVMF build the pinned gok ships (as
	// `gok vm run` does).
	toolsDir, err := exec.Command("go", "list", "-C", repoRoot(), "-m", "-f", "{{.Dir}}", "github.com/gokrazy/tools").Output()
	if err != nil {
		t.Fatalf("locating github.com/gokrazy/tools: %v", err)
	}
	edk := filepath.Join(strings.TrimSpace(string(toolsDir)), "third_party", "edk2-2024.11-4")
	vars := filepath.Join(parent, "OVMF_VARS_4M.fd")
	varsData, err := os.ReadFile(filepath.Join(edk, "OVMF_VARS_4M.fd"))
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(vars, varsData, 0o644)
	tap := lab.Tap()
	// No -no-reboot: `gok update` reboots the appliance.
	args := append(append([]string{"qemu-system-x86_64"}, acc...),
		"-m", "1024", "-smp", "2", "-nographic", "-machine", "q35",
		"-drive", "if=pflash,format=raw,readonly=on,file="+filepath.Join(edk, "OVMF_CODE_4M.fd"),
		"-drive", "if=pflash,format=raw,file="+vars,
		"-drive", "file="+img+",format=raw,if=virtio")
	vm := lab.Start("appliance", lab.Hub, append(args, testlab.TapNIC(tap, "52:54:00:0a:00:01")...)...)
	defer func() {
		if t.Failed() {
			t.Logf("appliance console:\n%s", tail(vm.Output()))
		}
	}()

	allUp := func() error {
		var ov struct {
			Services []struct {
				Name  string
				Up    bool
				Error string
			}
			Images []struct{ Digest string }
		}
		if err := getJSON(lab.Head, "http://"+head+":8080/api/status", &ov); err != nil {
			return err
		}
		if len(ov.Services) != 5 {
			return fmt.Errorf("%d services on the status page", len(ov.Services))
		}
		for _, s := range ov.Services {
			if !s.Up {
				return fmt.Errorf("%s is not up: %s", s.Name, s.Error)
			}
		}
		return nil
	}
	if err := poll(slow*4*time.Minute, allUp); err != nil {
		t.Fatalf("services did not come up: %v", err)
	}
	gokrazyURL := "http://gokrazy:vmtest@" + head + "/"
	var before struct{ BuildTimestamp string }
	if err := poll(time.Minute, func() error { return getJSON(lab.Head, gokrazyURL, &before) }); err != nil || before.BuildTimestamp == "" {
		t.Fatalf("gokrazy web interface: %v", err)
	}

	node := lab.BootNode(t, macFor(1))
	line := node.WaitUp(t, slow*150*time.Second)
	t.Logf("node: %s", line)
	checkRootLine(t, lab, node, line)
	waitHeartbeats(t, []*Node{node}, []int{-2}, slow*time.Minute) // its root works before the update
	beat, _ := heartbeat(node.Proc.Output())

	// A second build with a different extra file: `gok update` writes the
	// inactive root partition, switches and reboots the appliance.
	time.Sleep(time.Second) // build timestamps have second resolution
	vmInstance(t, parent, "ociboot-vm", head, netboot, "second")
	gok(t, lab.Head, inst, "update")
	var after struct{ BuildTimestamp string }
	if err := poll(slow*4*time.Minute, func() error {
		if err := getJSON(lab.Head, gokrazyURL, &after); err != nil {
			return err
		}
		if after.BuildTimestamp == before.BuildTimestamp {
			return fmt.Errorf("still on build %s", before.BuildTimestamp)
		}
		return nil
	}); err != nil {
		t.Fatalf("appliance did not come back on the new build: %v", err)
	}
	if err := poll(slow*2*time.Minute, allUp); err != nil {
		t.Fatalf("services did not come up after the update: %v", err)
	}
	t.Logf("updated from build %s to %s", before.BuildTimestamp, after.BuildTimestamp)
	waitHeartbeats(t, []*Node{node}, []int{beat}, slow*2*time.Minute)
	if strings.Count(node.Proc.Output(), guest.Marker) != 1 {
		t.Errorf("the node booted again during the update:\n%s", tail(node.Proc.Output()))
	}
	last, _ := heartbeat(node.Proc.Output())
	t.Logf("node heartbeat %d before the update, %d after", beat, last)
}
