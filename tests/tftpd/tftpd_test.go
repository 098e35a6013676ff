// Package tftpd tests the built tftpd against TFTP clients nobody here
// wrote: curl, tftp-hpa and atftp, on loopback.
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
	s.Port = freeUDPPort(t)
	s.cmd = exec.Command(bin, "-config", cfg, "-store", st.Root, "-status", "", "-port", fmt.Sprint(s.Port))
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

func need(t *testing.T, tool string) {
	if _, err := exec.LookPath(tool); err != nil {
		t.Skipf("%s not installed (see .ci/run)", tool)
	}
}

var sizes = map[string]int{"start4.elf": 2_200_000, "kernel8.img": 9_500_000, "fixup4.dat": 5_400, "exact.bin": 1468 * 10}

func TestClients(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs tftpd")
	}
	s := StartServer(t, sizes)
	dir := t.TempDir()
	host := "127.0.0.1"
	port := fmt.Sprint(s.Port)
	clients := []struct {
		name string
		tool string
		cmd  func(remote, local string) []string
	}{
		{"curl blksize 1468", "curl", func(r, l string) []string {
			return []string{"curl", "-sS", "--tftp-blksize", "1468", "-o", l, "tftp://" + host + ":" + port + "/" + r}
		}},
		{"curl default blksize", "curl", func(r, l string) []string {
			return []string{"curl", "-sS", "--tftp-no-options", "-o", l, "tftp://" + host + ":" + port + "/" + r}
		}},
		{"tftp-hpa", "tftp", func(r, l string) []string {
			return []string{"tftp", "-m", "binary", host, port, "-c", "get", r, l}
		}},
		{"atftp blksize+tsize", "atftp", func(r, l string) []string {
			return []string{"atftp", "--option", "blksize 1468", "--option", "tsize", "-g", "-r", r, "-l", l, host, port}
		}},
	}
	for _, c := range clients {
		t.Run(c.name, func(t *testing.T) {
			need(t, c.tool)
			for name, want := range s.Files {
				local := filepath.Join(dir, strings.ReplaceAll(c.name, " ", "_")+"-"+name)
				args := c.cmd("abcd1234/"+name, local)
				out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
				if err != nil {
					t.Errorf("%v: %v\n%s", args, err, out)
					continue
				}
				got, _ := os.ReadFile(local)
				if !bytes.Equal(got, want) {
					t.Errorf("%s via %s: got %d bytes, want %d identical bytes", name, c.name, len(got), len(want))
				}
			}
			// The generated cmdline.txt, seen by a real client.
			local := filepath.Join(dir, strings.ReplaceAll(c.name, " ", "_")+"-cmdline.txt")
			args := c.cmd("abcd1234/cmdline.txt", local)
			if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
				t.Fatalf("%v: %v\n%s", args, err, out)
			}
			got, _ := os.ReadFile(local)
			if want := "console=serial0,115200 root=/dev/nfs nfsroot=127.0.0.1:/nodes/abcd1234,vers=3,tcp,port=2049,mountport=2049 ip=dhcp rw rootwait\n"; string(got) != want {
				t.Errorf("cmdline.txt via %s:\ngot  %q\nwant %q", c.name, got, want)
			}
			// Traversal and missing files are refused to real clients too.
			for _, bad := range []string{"abcd1234/../../../../etc/passwd", "abcd1234/missing.dtb"} {
				local := filepath.Join(dir, "bad")
				os.Remove(local)
				args := c.cmd(bad, local)
				out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
				got, _ := os.ReadFile(local)
				if (err == nil && c.tool != "tftp") || len(got) > 0 {
					t.Errorf("%s via %s: got %d bytes, exit %v (%s); want a refusal", bad, c.name, len(got), err, out)
				}
			}
		})
	}
	// WRQ from a real client is refused and writes nothing.
	t.Run("tftp-hpa put", func(t *testing.T) {
		need(t, "tftp")
		src := filepath.Join(dir, "upload")
		os.WriteFile(src, []byte("evil"), 0o644)
		out, _ := exec.Command("tftp", "-m", "binary", host, port, "-c", "put", src, "abcd1234/config.txt").CombinedOutput()
		if !strings.Contains(strings.ToLower(string(out)), "error") {
			t.Errorf("put: want an error from the server, got %q", out)
		}
		matches, _ := filepath.Glob(filepath.Join(s.Store, "images", "*", "boot", "firmware", "config.txt"))
		if len(matches) != 0 {
			t.Errorf("a put created %v", matches)
		}
	})
}
