// Package dhcpd_test runs the real dhcpd binary in network namespaces
// against real DHCP peers: busybox udhcpc and ISC dhclient as clients,
// dnsmasq as the LAN's own DHCP server, and the Pi 4 emulator (appliance/piemu).
// Needs root; see tests/lab for the topology.
package dhcpd_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ociboot/ociboot/appliance/piemu"
	"github.com/ociboot/ociboot/appliance/testenv"
	"github.com/ociboot/ociboot/tests/lab"
)

func startDHCPD(t *testing.T, ns, netboot, store string, extra ...string) *lab.DHCPD {
	t.Helper()
	return lab.StartDHCPD(t, ns, netboot, store, extra...)
}

// startDnsmasq runs dnsmasq as the LAN's ordinary DHCP server (no PXE).
func startDnsmasq(t *testing.T, s *lab.Segment, ns string) *lab.Proc {
	t.Helper()
	return lab.Dnsmasq(t, ns, "--log-dhcp",
		fmt.Sprintf("--dhcp-range=%s,%s,255.255.255.0,1h", s.Addr(150), s.Addr(199)),
		"--dhcp-option=option:router,"+s.Addr(254))
}

func piDHCP(t *testing.T, ns string, p piemu.Pi, timeout time.Duration) (piemu.Lease, error) {
	t.Helper()
	var l piemu.Lease
	var err error
	lab.InNS(t, ns, func() {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		l, err = p.DHCP(ctx, "eth0")
	})
	return l, err
}

// udhcpcScript records the environment busybox udhcpc hands its script on
// "bound" in the file %[1]s.
const udhcpcScript = `#!/bin/sh
[ "$1" = bound ] || exit 0
env > '%[1]s.tmp' && mv '%[1]s.tmp' '%[1]s'
`

// dhclientScript does the same for ISC dhclient's BOUND (dhclient clears
// the environment, so the path is written into the script).
const dhclientScript = `#!/bin/sh
case "$reason" in BOUND|RENEW|REBOOT) env > '%[1]s.tmp' && mv '%[1]s.tmp' '%[1]s';; esac
exit 0
`

// writeScript writes a client script that records its environment in out.
func writeScript(t *testing.T, body, out string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "script")
	if err := os.WriteFile(p, []byte(fmt.Sprintf(body, out)), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func readEnv(t *testing.T, path string, timeout time.Duration) map[string]string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		b, err := os.ReadFile(path)
		if err == nil {
			env := map[string]string{}
			sc := bufio.NewScanner(bytes.NewReader(b))
			for sc.Scan() {
				k, v, _ := strings.Cut(sc.Text(), "=")
				env[k] = v
			}
			return env
		}
		if time.Now().After(deadline) {
			t.Fatalf("client recorded no lease in %v", timeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// udhcpc runs busybox udhcpc once in ns and returns what it was given.
func udhcpc(t *testing.T, ns string, extra ...string) map[string]string {
	t.Helper()
	testenv.NeedTool(t, "busybox", "busybox")
	out := filepath.Join(t.TempDir(), "env")
	args := append([]string{"busybox", "udhcpc", "-f", "-q", "-n", "-i", "eth0", "-t", "6", "-T", "1", "-A", "1",
		"-s", writeScript(t, udhcpcScript, out)}, extra...)
	p := lab.Start(t, ns, args...)
	select {
	case <-p.Done():
	case <-time.After(15 * time.Second):
		t.Fatalf("udhcpc did not finish:\n%s", p.Output())
	}
	return readEnv(t, out, time.Second)
}

// dhclient runs ISC dhclient in ns until it is bound.
func dhclient(t *testing.T, ns string) map[string]string {
	t.Helper()
	testenv.NeedTool(t, "dhclient", "isc-dhcp-client")
	dir := t.TempDir()
	out := filepath.Join(dir, "env")
	p := lab.Start(t, ns, "dhclient", "-4", "-d", "-1", "-cf", "/dev/null",
		"-sf", writeScript(t, dhclientScript, out), "-lf", filepath.Join(dir, "leases"), "-pf", filepath.Join(dir, "pid"), "eth0")
	env := readEnv(t, out, 20*time.Second)
	p.Kill(syscall.SIGKILL)
	return env
}

func check(t *testing.T, what, got, want string) {
	t.Helper()
	if got != want {
		t.Errorf("%s = %q, want %q", what, got, want)
	}
}
