package lab

import (
	"net"
	"os"
	"testing"
)

// Listener is a socket bound (and for TCP listening) on loopback by the
// test, to be handed to a service as a file descriptor (Cmd.Files): the
// port is known before the service starts and stays the test's across
// restarts of the service, so nothing else can take it in between (as a
// port found free, closed and passed as a number could be).
type Listener struct {
	Addr string // 127.0.0.1:port
	Port int
	File *os.File // for Cmd.Files
	// UDP is the UDP socket on the same port, for ListenTCPUDP.
	UDP *os.File
}

// ListenTCP binds a TCP listener on 127.0.0.1 with a port of the kernel's
// choice; it is closed when t ends.
func ListenTCP(t testing.TB) *Listener {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f, err := ln.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}
	ln.Close() // f holds the socket
	t.Cleanup(func() { f.Close() })
	a := ln.Addr().(*net.TCPAddr)
	return &Listener{Addr: a.String(), Port: a.Port, File: f}
}

// ListenUDP binds a UDP socket on 127.0.0.1 with a port of the kernel's
// choice; it is closed when t ends.
func ListenUDP(t testing.TB) *Listener {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	f, err := c.File()
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	t.Cleanup(func() { f.Close() })
	a := c.LocalAddr().(*net.UDPAddr)
	return &Listener{Addr: a.String(), Port: a.Port, File: f}
}

// ListenTCPUDP binds TCP and UDP on one loopback port, as nfsd serves
// MOUNT on both.
func ListenTCPUDP(t testing.TB) *Listener {
	t.Helper()
	for i := 0; i < 20; i++ {
		l := ListenTCP(t)
		c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: l.Port})
		if err != nil {
			continue // that UDP port is taken: another TCP port
		}
		f, err := c.File()
		if err != nil {
			t.Fatal(err)
		}
		c.Close()
		t.Cleanup(func() { f.Close() })
		l.UDP = f
		return l
	}
	t.Fatal("lab: no loopback port free for both TCP and UDP after 20 tries")
	return nil
}

// Files is what to put in Cmd.Files for l.
func (l *Listener) Files() []*os.File {
	if l.UDP != nil {
		return []*os.File{l.File, l.UDP}
	}
	return []*os.File{l.File}
}
