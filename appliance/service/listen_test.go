package service

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// TestListenInherited runs this test binary again with a TCP listener and
// a UDP socket passed down as fds 3 and 4: Listen and ListenPacket in the
// child serve on them (the ports the parent chose) instead of binding anew.
func TestListenInherited(t *testing.T) {
	if os.Getenv("OCIBOOT_LISTEN_CHILD") == "1" {
		listenChild()
		return
	}
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	lf, _ := ln.(*net.TCPListener).File()
	pf, _ := pc.(*net.UDPConn).File()
	tcpPort, udpPort := ln.Addr().(*net.TCPAddr).Port, pc.LocalAddr().(*net.UDPAddr).Port
	cmd := exec.Command(os.Args[0], "-test.run", "^TestListenInherited$")
	cmd.Env = append(os.Environ(), "OCIBOOT_LISTEN_CHILD=1", ListenFDsEnv+"=2",
		fmt.Sprintf("OCIBOOT_LISTEN_TCP=127.0.0.1:%d", tcpPort), fmt.Sprintf("OCIBOOT_LISTEN_UDP=:%d", udpPort))
	cmd.ExtraFiles = []*os.File{lf, pf}
	out, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	lf.Close()
	pf.Close()
	sc := bufio.NewScanner(out)
	if !sc.Scan() {
		t.Fatalf("child printed nothing: %v", cmd.Wait())
	}
	if got, want := sc.Text(), fmt.Sprintf("tcp 127.0.0.1:%d udp 127.0.0.1:%d", tcpPort, udpPort); got != want {
		t.Errorf("child listens on: got %q, want %q", got, want)
	}
	c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", tcpPort), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintln(c, "ping")
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || line != "child: ping\n" {
		t.Errorf("through the inherited listener: got %q, %v", line, err)
	}
}

func listenChild() {
	ln, err := Listen("tcp", os.Getenv("OCIBOOT_LISTEN_TCP"))
	if err != nil {
		fmt.Println(err)
		os.Exit(1)
	}
	pc, err := ListenPacket("udp", os.Getenv("OCIBOOT_LISTEN_UDP"))
	if err != nil {
		fmt.Println(err)
		os.Exit(1)
	}
	if os.Getenv(ListenFDsEnv) != "" {
		fmt.Println(ListenFDsEnv, "is still set for children")
	}
	fmt.Printf("tcp %s udp %s\n", ln.Addr(), pc.LocalAddr())
	c, err := ln.Accept()
	if err != nil {
		os.Exit(1)
	}
	line, _ := bufio.NewReader(c).ReadString('\n')
	fmt.Fprintf(c, "child: %s\n", strings.TrimSpace(line))
	c.Close()
	os.Exit(0)
}
