// Package tftpd runs the built tftpd for tests and benchmarks, and tests it
// against TFTP clients nobody here wrote: curl, tftp-hpa and atftp.
package tftpd

import (
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ociboot/ociboot/appliance/images"
	"github.com/ociboot/ociboot/appliance/store"
	"github.com/ociboot/ociboot/tests/lab"
)

const digest = "sha256:89abcdef0123456789abcdef0123456789abcdef0123456789abcdef01234567"

// Server is a running tftpd binary with a store holding one image.
type Server struct {
	Port  int
	NS    string // network namespace, "" for the host's loopback
	Files map[string][]byte
	Store string
	Proc  *lab.Proc
}

// StartServer runs the built tftpd on a loopback port (a socket the test
// binds and hands down) with an image whose boot directory holds
// sizes[name] random bytes per file.
func StartServer(t testing.TB, sizes map[string]int) *Server {
	t.Helper()
	return StartServerIn(t, sizes, "")
}

// StartServerIn is StartServer inside network namespace ns on port 69.
func StartServerIn(t testing.TB, sizes map[string]int, ns string) *Server {
	t.Helper()
	bin := lab.Binary(t, "tftpd")
	dir := t.TempDir()
	st, err := store.Open(filepath.Join(dir, "store"), store.Options{AllowTmpfs: true})
	if err != nil {
		t.Fatal(err)
	}
	root, _ := images.Root(st, digest)
	boot := filepath.Join(root, "boot", "firmware")
	os.MkdirAll(boot, 0o755)
	s := &Server{Files: map[string][]byte{}, Store: st.Root}
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
	c := lab.Cmd{Name: "tftpd", NS: ns, Args: []string{bin, "-config", cfg, "-store", st.Root, "-status", "", "-port", "69"}}
	s.Port, s.NS = 69, ns
	if ns == "" {
		l := lab.ListenUDP(t)
		s.Port = l.Port
		c.Args[len(c.Args)-1] = fmt.Sprint(l.Port)
		// The boot log receiver stays on loopback too.
		logs := lab.ListenUDP(t)
		c.Args = append(c.Args, "-netconsole", logs.Addr)
		c.Files = append(l.Files(), logs.Files()...)
	}
	s.Proc = c.Start(t)
	s.Proc.WaitFor(t, "serving TFTP", 10*time.Second)
	return s
}
