package tests

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ociboot/ociboot/tests/guest"
)

// The amd64 kernel gokrazy publishes; the Pi image uses kernel.rpi.
const kernelAmd64 = "github.com/gokrazy/kernel.amd64"
const kernelAmd64Version = "v0.0.0-20260705070735-de680abf072b"

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// vmInstance writes a gokrazy instance next to a temp builddir that builds
// this repository's config.json for amd64: same packages, same Netboot
// section, the amd64 kernel, no Pi firmware, serial console on ttyS0, and
// updates over a forwarded port.
func vmInstance(t *testing.T, parent, name string, httpPort int, marker string) string {
	t.Helper()
	root := repoRoot(t)
	var cfg map[string]any
	b, err := os.ReadFile(filepath.Join(root, "config.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &cfg); err != nil {
		t.Fatal(err)
	}
	cfg["Environment"] = []string{"GOOS=linux", "GOARCH=amd64"}
	cfg["KernelPackage"] = kernelAmd64
	cfg["FirmwarePackage"] = ""
	cfg["EEPROMPackage"] = ""
	cfg["SerialConsole"] = "ttyS0,115200"
	cfg["Update"] = map[string]any{
		"Hostname":     "127.0.0.1",
		"HTTPPort":     fmt.Sprint(httpPort),
		"HTTPPassword": "vmtest",
		"UseTLS":       "off",
	}
	pc := cfg["PackageConfig"].(map[string]any)
	dhcpd := pc["github.com/ociboot/ociboot/services/dhcpd"].(map[string]any)
	// ExtraFilePaths are relative to the instance: point at the repo's file.
	dhcpd["ExtraFilePaths"] = map[string]string{"/etc/ociboot/config.json": filepath.Join(root, "config.json")}
	dhcpd["ExtraFileContents"] = map[string]string{"/etc/ociboot/vm-marker": marker + "\n"}

	inst := filepath.Join(parent, name)
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

func gok(t *testing.T, inst string, args ...string) []byte {
	t.Helper()
	cmd := exec.Command("go", append([]string{"tool", "gok", "--parent_dir", filepath.Dir(inst), "--instance", filepath.Base(inst)}, args...)...)
	cmd.Dir = repoRoot(t) // go tool gok resolves from this module's go.mod
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("gok %v: %v\n%s", args, err, tail(out))
	}
	return out
}

// console collects a QEMU serial console and lets tests wait for lines.
type console struct {
	mu   sync.Mutex
	buf  strings.Builder
	cond *sync.Cond
}

func newConsole(r io.Reader, logTo io.Writer) *console {
	c := &console{}
	c.cond = sync.NewCond(&c.mu)
	go func() {
		sc := bufio.NewScanner(r)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			c.mu.Lock()
			c.buf.WriteString(sc.Text() + "\n")
			c.mu.Unlock()
			if logTo != nil {
				fmt.Fprintln(logTo, sc.Text())
			}
		}
	}()
	return c
}

func (c *console) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.buf.String()
}

// pollJSON fetches url until ok(decoded body) or the deadline.
func pollJSON(ctx context.Context, url string, v any, ok func() bool) error {
	var last error
	for ctx.Err() == nil {
		req, _ := http.NewRequestWithContext(ctx, "GET", url, nil)
		req.Header.Set("Accept", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			err = json.NewDecoder(resp.Body).Decode(v)
			resp.Body.Close()
			if err == nil && ok() {
				return nil
			}
		}
		last = err
		time.Sleep(time.Second)
	}
	return fmt.Errorf("%s: %v (last error %v)", url, ctx.Err(), last)
}

// TestApplianceInQEMU builds the amd64 gokrazy image of this repository's
// config, boots it in QEMU, waits until every service reports on the status
// page, then ships a changed build with `gok update` and checks the
// appliance comes back on the new build.
func TestApplianceInQEMU(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and boots the appliance in QEMU")
	}
	need(t, "qemu-system-x86_64", "mkfs.ext4")
	acc, slow := guest.Accel()
	t.Logf("QEMU with %v", acc)
	parent := t.TempDir()
	httpPort, statusPort := freePort(t), freePort(t)
	inst := vmInstance(t, parent, "ociboot-vm", httpPort, "first")
	img := filepath.Join(parent, "disk.img")
	out := gok(t, inst, "overwrite", "--full", img, "--target_storage_bytes=2147483648")
	var off, blocks string
	for _, line := range strings.Split(string(out), "\n") {
		if i := strings.Index(line, "mkfs.ext4 -F -E offset="); i >= 0 {
			f := strings.Fields(line[i:])
			off, blocks = strings.TrimPrefix(f[3], "offset="), f[5]
		}
	}
	if off == "" {
		t.Fatalf("gok did not print the perm partition:\n%s", tail(out))
	}
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-L", "perm", "-E", "offset="+off, img, blocks).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v\n%s", err, out)
	}

	// Boot through UEFI with the OVMF build that the pinned gok ships (as
	// `gok vm run` does).
	toolsDir, err := exec.Command("go", "list", "-C", repoRoot(t), "-m", "-f", "{{.Dir}}", "github.com/gokrazy/tools").Output()
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

	ctx, cancel := context.WithTimeout(context.Background(), slow*4*time.Minute)
	defer cancel()
	qemu := exec.CommandContext(ctx, "qemu-system-x86_64", append(acc,
		"-m", "1024", "-smp", "2", "-nographic", "-machine", "q35",
		"-drive", "if=pflash,format=raw,readonly=on,file="+filepath.Join(edk, "OVMF_CODE_4M.fd"),
		"-drive", "if=pflash,format=raw,file="+vars,
		"-drive", "file="+img+",format=raw,if=virtio",
		"-netdev", fmt.Sprintf("user,id=net0,hostfwd=tcp:127.0.0.1:%d-:%d,hostfwd=tcp:127.0.0.1:%d-:8080", httpPort, httpPort, statusPort),
		"-device", "virtio-net-pci,netdev=net0",
		"-serial", "stdio", "-monitor", "none")...)
	stdout, _ := qemu.StdoutPipe()
	qemu.Stderr = qemu.Stdout
	if err := qemu.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { qemu.Process.Kill(); qemu.Wait() })
	var logTo io.Writer
	if p := os.Getenv("OCIBOOT_VM_CONSOLE"); p != "" {
		f, err := os.Create(p)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		logTo = f
	}
	con := newConsole(stdout, logTo)
	defer func() {
		if t.Failed() {
			t.Logf("serial console:\n%s", tailStr(con.String(), 6000))
		}
	}()

	statusURL := fmt.Sprintf("http://127.0.0.1:%d/api/status", statusPort)
	allUp := func() error {
		var ov struct {
			Services []struct {
				Name  string
				Up    bool
				Error string
			}
		}
		return pollJSON(ctx, statusURL, &ov, func() bool {
			if len(ov.Services) != 4 {
				return false
			}
			for _, s := range ov.Services {
				if !s.Up {
					return false
				}
			}
			return true
		})
	}
	if err := allUp(); err != nil {
		t.Fatalf("services did not come up: %v", err)
	}

	gokrazyURL := fmt.Sprintf("http://gokrazy:vmtest@127.0.0.1:%d/", httpPort)
	var before struct{ BuildTimestamp string }
	if err := pollJSON(ctx, gokrazyURL, &before, func() bool { return before.BuildTimestamp != "" }); err != nil {
		t.Fatalf("gokrazy web interface: %v", err)
	}

	// A second build with a different extra file: `gok update` writes the
	// inactive root partition, switches and reboots.
	time.Sleep(time.Second) // build timestamps have second resolution
	vmInstance(t, parent, "ociboot-vm", httpPort, "second")
	gok(t, inst, "update")
	var after struct{ BuildTimestamp string }
	if err := pollJSON(ctx, gokrazyURL, &after, func() bool {
		return after.BuildTimestamp != "" && after.BuildTimestamp != before.BuildTimestamp
	}); err != nil {
		t.Fatalf("appliance did not come back on the new build (was %q): %v", before.BuildTimestamp, err)
	}
	if err := allUp(); err != nil {
		t.Fatalf("services did not come up after the update: %v", err)
	}
	t.Logf("updated from build %s to %s", before.BuildTimestamp, after.BuildTimestamp)
}

func tailStr(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}
