package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/ociboot/ociboot/appliance/testenv"
)

// TestDemo is `make demo`: a small simulated cluster (a head node and three
// QEMU nodes in full mode) that stays up until Ctrl-C, printing where to
// look. It is skipped unless OCIBOOT_DEMO=1.
func TestDemo(t *testing.T) {
	testenv.OptIn(t, "OCIBOOT_DEMO", "the demo cluster (`make demo`)")
	lab := NewLab(t)
	h := NewHead(t, lab, FullMode(lab))
	h.Start(t)
	fmt.Printf("\nociboot demo: head node in network namespace %s (eth0 %s)\n", lab.Head, lab.Addr(1))
	fmt.Printf("  store:   %s\n  config:  %s\n", h.Store, h.Config)
	h.WaitImage(t, 2*time.Minute)
	fmt.Println("  image pulled and unpacked; booting three nodes (QEMU, iPXE → TFTP → kernel → NFS root)")
	nodes := bootNodes(t, lab, 3)

	shot := filepath.Join(repoRoot(), ".build", "demo-status.png")
	os.MkdirAll(filepath.Dir(shot), 0o755)
	if _, err := exec.LookPath("chromium"); err == nil {
		exec.Command("ip", "netns", "exec", lab.Head, "chromium", "--headless", "--no-sandbox", "--disable-gpu",
			"--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
			"--user-data-dir="+filepath.Join(lab.Dir, "chromium"), "--window-size=1280,900",
			"--screenshot="+shot, "http://127.0.0.1:8080/").Run()
	}
	fmt.Printf("\nWhere to look:\n")
	fmt.Printf("  status page (screenshot): %s\n", shot)
	fmt.Printf("  status page (live):  ip netns exec %s curl -s http://127.0.0.1:8080/api/status\n", lab.Head)
	for _, s := range []struct{ name, port string }{{"dhcpd", "9067"}, {"tftpd", "9069"}, {"ocicache", "9050"}, {"nfsd", "9049"}, {"nbdd", "9809"}} {
		fmt.Printf("  %-8s metrics:    ip netns exec %s curl -s http://127.0.0.1:%s/metrics\n", s.name, lab.Head, s.port)
	}
	fmt.Printf("  node roots:          %s/nodes/*/root\n", h.Store)
	for _, n := range nodes {
		fmt.Printf("  node %s: %s\n", n.MAC, n.WaitUp(t, time.Second))
	}
	secs, _ := strconv.Atoi(os.Getenv("OCIBOOT_DEMO_SECONDS"))
	fmt.Printf("\nThe cluster stays up until Ctrl-C")
	var timeout <-chan time.Time
	if secs > 0 {
		fmt.Printf(" (or %d s)", secs)
		timeout = time.After(time.Duration(secs) * time.Second)
	}
	fmt.Println(".")
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	select {
	case <-sig:
	case <-timeout:
	}
	fmt.Println("stopping the demo cluster")
}
