package dhcpd

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// ListenUDP opens the server socket: UDP port 67 on all addresses, bound to
// iface (SO_BINDTODEVICE) so that requests from other interfaces are not
// answered and broadcast replies leave through iface, with SO_BROADCAST for
// 255.255.255.255. Unlike server4.NewIPv4UDPConn it sets neither
// SO_REUSEADDR nor SO_REUSEPORT: a second server on the port (another dhcpd,
// a stray dnsmasq) must make start-up fail instead of silently sharing
// requests.
func ListenUDP(iface string, port int) (*net.UDPConn, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.IPPROTO_UDP)
	if err != nil {
		return nil, fmt.Errorf("dhcpd: socket: %v", err)
	}
	f := os.NewFile(uintptr(fd), "dhcpd")
	defer f.Close() // FilePacketConn dups fd
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_BROADCAST, 1); err != nil {
		return nil, fmt.Errorf("dhcpd: SO_BROADCAST: %v", err)
	}
	if iface != "" {
		if err := unix.BindToDevice(fd, iface); err != nil {
			return nil, fmt.Errorf("dhcpd: binding to interface %s: %v (does it exist? set Netboot.Interface)", iface, err)
		}
	}
	if err := unix.Bind(fd, &unix.SockaddrInet4{Port: port}); err != nil {
		return nil, fmt.Errorf("dhcpd: binding UDP port %d on %s: %v (is another DHCP server such as dnsmasq running on this host?)", port, iface, err)
	}
	c, err := net.FilePacketConn(f)
	if err != nil {
		return nil, fmt.Errorf("dhcpd: %v", err)
	}
	return c.(*net.UDPConn), nil
}

// InterfaceIPv4 returns the first IPv4 address and the MAC of iface.
func InterfaceIPv4(iface string) (net.IP, net.HardwareAddr, error) {
	ifi, err := net.InterfaceByName(iface)
	if err != nil {
		return nil, nil, fmt.Errorf("dhcpd: %v (set Netboot.Interface)", err)
	}
	addrs, err := ifi.Addrs()
	if err != nil {
		return nil, nil, fmt.Errorf("dhcpd: addresses of %s: %v", iface, err)
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && n.IP.To4() != nil {
			return n.IP.To4(), ifi.HardwareAddr, nil
		}
	}
	return nil, ifi.HardwareAddr, fmt.Errorf("dhcpd: %s has no IPv4 address; configure one or set Netboot.ServerIP", iface)
}

// WaitIPv4 polls iface until it has an IPv4 address, for up to timeout: at
// boot gokrazy's own DHCP client may still be configuring the interface when
// dhcpd starts, and proxy mode takes the server address from it.
func WaitIPv4(ctx context.Context, iface string, timeout time.Duration, log *slog.Logger) (net.IP, net.HardwareAddr, error) {
	deadline := time.Now().Add(timeout)
	logged := false
	for {
		ip, mac, err := InterfaceIPv4(iface)
		if err == nil {
			return ip, mac, nil
		}
		if time.Now().After(deadline) {
			return nil, mac, fmt.Errorf("%v (waited %v)", err, timeout)
		}
		if !logged {
			log.Info("waiting for an IPv4 address", "interface", iface, "err", err)
			logged = true
		}
		select {
		case <-ctx.Done():
			return nil, mac, ctx.Err()
		case <-time.After(time.Second):
		}
	}
}
