package tftpd

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ociboot/ociboot/appliance/piemu"
	"github.com/ociboot/ociboot/appliance/testenv"
)

// packages name the Debian package of each client.
var packages = map[string]string{"curl": "curl", "tftp": "tftp-hpa", "atftp": "atftp"}

func need(t *testing.T, tool string) {
	t.Helper()
	testenv.NeedTool(t, tool, packages[tool])
}

var sizes = map[string]int{"start4.elf": 2_200_000, "kernel8.img": 9_500_000, "fixup4.dat": 5_400, "exact.bin": 1468 * 10}

func TestClients(t *testing.T) {
	testenv.Short(t, "builds and runs tftpd")
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
			if want := "console=serial0,115200 root=/dev/nfs nfsroot=127.0.0.1:/nodes/abcd1234,vers=3,tcp,port=2049 ip=dhcp rw rootwait\n"; string(got) != want {
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

// TestPi5AndEarlyTerminate runs the built tftpd against the Pi emulator:
// a Pi 5 and a CM5 sequence (no start4.elf in the image), and a Pi 4's
// size probe whose ERROR 0 must go unanswered.
func TestPi5AndEarlyTerminate(t *testing.T) {
	testenv.Short(t, "builds and runs tftpd")
	s := StartServer(t, map[string]int{"bcm2712-rpi-5-b.dtb": 70_000, "bcm2712-rpi-cm5-cm5io.dtb": 71_000, "kernel_2712.img": 4_000_000, "start4.elf": 100_000})
	server := fmt.Sprintf("127.0.0.1:%d", s.Port)
	for _, board := range []string{"pi5", "cm5"} {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		rep, err := piemu.TFTPBootPi5(ctx, server, "bd989ae1", board)
		cancel()
		if err != nil {
			t.Fatalf("%s: %v", board, err)
		}
		for _, f := range []string{piemu.Pi5DTBs[board], "kernel_2712.img"} {
			if !bytes.Equal(rep.Files[f], s.Files[f]) {
				t.Errorf("%s: %s: %d bytes, want %d identical", board, f, len(rep.Files[f]), len(s.Files[f]))
			}
		}
	}
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	srv, _ := net.ResolveUDPAddr("udp4", server)
	conn.WriteToUDP([]byte("\x00\x01abcd1234/start4.elf\x00octet\x00tsize\x000\x00blksize\x001468\x00"), srv)
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 2000)
	n, tid, err := conn.ReadFromUDP(buf)
	if err != nil || n < 2 || buf[1] != 6 {
		t.Fatalf("RRQ: got % x, %v; want an OACK", buf[:n], err)
	}
	conn.WriteToUDP([]byte("\x00\x05\x00\x00Early terminate\x00"), tid)
	conn.SetReadDeadline(time.Now().Add(3 * time.Second)) // tftpd's retransmission timeout is 1 s
	if n, from, err := conn.ReadFromUDP(buf); err == nil {
		t.Errorf("after ERROR 0: got % x from %v; want nothing", buf[:n], from)
	}
}
