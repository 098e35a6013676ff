package nbd

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ociboot/ociboot/appliance/testenv"
)

func TestHandshake(t *testing.T) {
	l := newLab(t, nil)
	tests := []struct {
		export    string
		size      int64
		refused   uint32 // NBD_REP_ERR_* or 0
		permanent bool
	}{
		{export: "disk", size: 1 << 20},
		{export: "big", size: 64 << 20},
		{export: "nosuch", refused: repErrUnknown, permanent: true},
		{export: "denied", refused: repErrPolicy, permanent: true},
	}
	for _, tt := range tests {
		t.Run(tt.export, func(t *testing.T) {
			nc, err := net.Dial("tcp", l.addr)
			if err != nil {
				t.Fatal(err)
			}
			defer nc.Close()
			info, err := Handshake(nc, tt.export, 10*time.Second)
			if tt.refused != 0 {
				var re *RefusedError
				if !errors.As(err, &re) || re.Reply != tt.refused || re.Permanent() != tt.permanent {
					t.Fatalf("Handshake(%q): got %v, want refusal %#x (permanent %v)", tt.export, err, tt.refused, tt.permanent)
				}
				return
			}
			if err != nil {
				t.Fatalf("Handshake(%q): %v", tt.export, err)
			}
			if got, want := info.Size, tt.size; got != want {
				t.Errorf("size: got %d, want %d", got, want)
			}
			if info.Flags&flagHasFlags == 0 || info.Flags&flagSendFlush == 0 {
				t.Errorf("flags %#x lack HAS_FLAGS or SEND_FLUSH", info.Flags)
			}
			// The connection is in transmission: a FLUSH is answered.
			c := &client{t: t, nc: nc, br: bufio.NewReader(nc)}
			if errno, _ := c.do(cmdFlush, 0, 0, 0, nil); errno != 0 {
				t.Errorf("FLUSH after the handshake: error %d", errno)
			}
		})
	}
}

// TestHandshakeNotNBD: a server that is not an NBD server gets a clear
// error, not a hang.
func TestHandshakeNotNBD(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			c.Write([]byte("SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n"))
			time.Sleep(time.Second)
			c.Close()
		}
	}()
	nc, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if _, err := Handshake(nc, "disk", 5*time.Second); err == nil || !strings.Contains(err.Error(), "not an NBD server") {
		t.Errorf("Handshake with an SSH server: got %v, want not an NBD server", err)
	}
}

// TestHandshakeNbdServer: the handshake against Debian's nbd-server.
func TestHandshakeNbdServer(t *testing.T) {
	testenv.Short(t, "runs nbd-server")
	bin := testenv.NeedTool(t, "nbd-server", "nbd-server")
	dir := t.TempDir()
	file := filepath.Join(dir, "disk.img")
	os.WriteFile(file, nil, 0o644)
	os.Truncate(file, 3<<20)
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	conf, pidFile := filepath.Join(dir, "config"), filepath.Join(dir, "pid")
	os.WriteFile(conf, []byte(fmt.Sprintf("[generic]\n\tlistenaddr = 127.0.0.1\n\tport = %d\n\tallowlist = false\n[vol]\n\texportname = %s\n\tflush = true\n", port, file)), 0o644)
	if out, err := exec.Command(bin, "-C", conf, "-p", pidFile).CombinedOutput(); err != nil {
		t.Fatalf("nbd-server: %v\n%s", err, out)
	}
	var pid int
	for deadline := time.Now().Add(10 * time.Second); pid == 0; time.Sleep(20 * time.Millisecond) {
		b, _ := os.ReadFile(pidFile)
		pid, _ = strconv.Atoi(strings.TrimSpace(string(b)))
		if pid == 0 && time.Now().After(deadline) {
			t.Fatal("nbd-server wrote no pid file")
		}
	}
	defer syscall.Kill(pid, syscall.SIGTERM)
	dial := func() net.Conn {
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			nc, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
			if err == nil {
				return nc
			}
			if time.Now().After(deadline) {
				t.Fatal(err)
			}
		}
	}
	nc := dial()
	info, err := Handshake(nc, "vol", 10*time.Second)
	nc.Close()
	if err != nil {
		t.Fatalf("Handshake with nbd-server: %v", err)
	}
	if got, want := info.Size, int64(3<<20); got != want {
		t.Errorf("size from nbd-server: got %d, want %d", got, want)
	}
	if info.Flags&flagSendFlush == 0 {
		t.Errorf("flags from nbd-server %#x lack SEND_FLUSH", info.Flags)
	}
	nc = dial()
	defer nc.Close()
	var re *RefusedError
	if _, err := Handshake(nc, "nosuch", 10*time.Second); !errors.As(err, &re) || !re.Permanent() {
		t.Errorf("Handshake(nosuch) with nbd-server: got %v, want a permanent refusal", err)
	}
}
