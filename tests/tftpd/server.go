// Package tftpd runs the built tftpd for tests and benchmarks, and tests it
// against TFTP clients nobody here wrote: curl, tftp-hpa and atftp.
package tftpd

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ociboot/ociboot/appliance/images"
	"github.com/ociboot/ociboot/appliance/store"
)

const digest = "sha256:89abcdef0123456789abcdef0123456789abcdef0123456789abcdef01234567"

// Server is a running tftpd binary with a store holding one image.
type Server struct {
	Port  int
	NS    string // network namespace, "" for the host's
	Files map[string][]byte
	Store string
	cmd   *exec.Cmd
	out   *bytes.Buffer
}

func freeUDPPort(t testing.TB) int {
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).Port
}

// StartServer builds services/tftpd and runs it on a loopback port with an
// image whose boot directory holds sizes[name] random bytes per file.
func StartServer(t testing.TB, sizes map[string]int) *Server {
	t.Helper()
	return StartServerIn(t, sizes, "")
}

// StartServerIn is StartServer inside network namespace ns on port 69.
func StartServerIn(t testing.TB, sizes map[string]int, ns string) *Server {
	t.Helper()
	dir := t.TempDir()
	_, file, _, _ := runtime.Caller(0)
	repo := filepath.Join(filepath.Dir(file), "..", "..")
	bin := filepath.Join(dir, "tftpd")
	if out, err := exec.Command("go", "build", "-C", repo, "-o", bin, "./services/tftpd").CombinedOutput(); err != nil {
		t.Fatalf("go build tftpd: %v\n%s", err, out)
	}
	st, err := store.Open(filepath.Join(dir, "store"), store.Options{AllowTmpfs: true})
	if err != nil {
		t.Fatal(err)
	}
	root, _ := images.Root(st, digest)
	boot := filepath.Join(root, "boot", "firmware")
	os.MkdirAll(boot, 0o755)
	s := &Server{Files: map[string][]byte{}, Store: st.Root, out: &bytes.Buffer{}}
	for name, n := range sizes {
		b := make([]byte, n)
		rand.Read(b)
		s.Files[name] = b
		if err := os.WriteFile(filepath.Join(boot, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	os.WriteFile(filepath.Join(boot, "cmdline.txt"), []byte("console=serial0,115200 root=/dev/mmcblk0p2 rootwait\n"), 0o644)
	images.SaveIndex(st, images.Index{Entries: []images.Entry{{Ref: "registry.test/node:1", Platform: "linux/arm64", Digest: digest, BootDir: "boot/firmware", Kernel: "kernel8.img"}}})
	cfg := filepath.Join(dir, "config.json")
	os.WriteFile(cfg, []byte(`{"Netboot": {"DefaultImage": "registry.test/node:1"}}`), 0o644)
	s.Port, s.NS = 69, ns
	args := []string{bin, "-config", cfg, "-store", st.Root, "-status", "", "-port", "69"}
	if ns == "" {
		s.Port = freeUDPPort(t)
		args[len(args)-1] = fmt.Sprint(s.Port)
		// The boot log receiver stays on loopback too.
		args = append(args, "-netconsole", fmt.Sprintf("127.0.0.1:%d", freeUDPPort(t)))
	} else {
		args = append([]string{"ip", "netns", "exec", ns}, args...)
	}
	s.cmd = exec.Command(args[0], args[1:]...)
	s.cmd.Stdout, s.cmd.Stderr = s.out, s.out
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.cmd.Process.Signal(syscall.SIGKILL); s.cmd.Wait() })
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(s.out.String(), "serving TFTP") {
		if time.Now().After(deadline) {
			t.Fatalf("tftpd did not start:\n%s", s.out)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return s
}
