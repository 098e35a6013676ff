package service

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"sync"

	"golang.org/x/sys/unix"
)

// ListenFDsEnv names how many sockets a parent process passed down as file
// descriptors 3, 4, ...: bound (and, for TCP, listening) sockets that
// Listen and ListenPacket use instead of binding their address again. A
// test that starts a service this way knows its port before the service
// runs and keeps it across restarts of the service, with no window in
// which another process could take it (as with systemd's socket
// activation; LISTEN_FDS itself cannot be used, its LISTEN_PID is unknown
// before exec).
const ListenFDsEnv = "OCIBOOT_LISTEN_FDS"

var (
	inheritOnce sync.Once
	inheritMu   sync.Mutex
	inherited   []*os.File // nil once taken
)

func takeInherited() {
	n, _ := strconv.Atoi(os.Getenv(ListenFDsEnv))
	os.Unsetenv(ListenFDsEnv) // not for the service's children
	for fd := 3; fd < 3+n; fd++ {
		unix.CloseOnExec(fd)
		inherited = append(inherited, os.NewFile(uintptr(fd), "inherited socket "+strconv.Itoa(fd)))
	}
}

// inheritedSocket returns the passed-down socket of type typ bound to addr
// (any address with addr's port when addr's host is unspecified), or nil.
func inheritedSocket(typ int, addr netip.AddrPort) *os.File {
	inheritOnce.Do(takeInherited)
	inheritMu.Lock()
	defer inheritMu.Unlock()
	for i, f := range inherited {
		if f == nil {
			continue
		}
		fd := int(f.Fd())
		t, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE)
		if err != nil || t != typ {
			continue
		}
		sa, err := unix.Getsockname(fd)
		if err != nil {
			continue
		}
		var got netip.AddrPort
		switch sa := sa.(type) {
		case *unix.SockaddrInet4:
			got = netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port))
		case *unix.SockaddrInet6:
			got = netip.AddrPortFrom(netip.AddrFrom16(sa.Addr).Unmap(), uint16(sa.Port))
		default:
			continue
		}
		// The parent chose the address: a socket it bound to 127.0.0.1:69
		// serves a request for ":69".
		if got.Port() != addr.Port() || !addr.Addr().IsUnspecified() && got.Addr().Unmap() != addr.Addr().Unmap() {
			continue
		}
		inherited[i] = nil
		return f
	}
	return nil
}

// parseAddr resolves a listen address such as ":2049" or "127.0.0.1:69"
// without DNS; a host name yields ok false (it is bound as given).
func parseAddr(addr string) (netip.AddrPort, bool) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return netip.AddrPort{}, false
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil || p == 0 {
		return netip.AddrPort{}, false
	}
	a := netip.IPv4Unspecified()
	if host != "" {
		if a, err = netip.ParseAddr(host); err != nil {
			return netip.AddrPort{}, false
		}
	}
	return netip.AddrPortFrom(a, uint16(p)), true
}

// Listen is net.Listen for TCP that first takes a socket bound to addr
// from those the parent passed down (see ListenFDsEnv).
func Listen(network, addr string) (net.Listener, error) {
	if ap, ok := parseAddr(addr); ok {
		if f := inheritedSocket(unix.SOCK_STREAM, ap); f != nil {
			keep(f) // FileListener dups it; f is for a restart (reexec)
			ln, err := net.FileListener(f)
			if err != nil {
				return nil, fmt.Errorf("inherited socket for %s: %v", addr, err)
			}
			return ln, nil
		}
	}
	return net.Listen(network, addr)
}

// ListenPacket is net.ListenPacket for UDP that first takes a socket bound
// to addr from those the parent passed down (see ListenFDsEnv).
func ListenPacket(network, addr string) (net.PacketConn, error) {
	if ap, ok := parseAddr(addr); ok {
		if f := inheritedSocket(unix.SOCK_DGRAM, ap); f != nil {
			keep(f)
			pc, err := net.FilePacketConn(f)
			if err != nil {
				return nil, fmt.Errorf("inherited socket for %s: %v", addr, err)
			}
			return pc, nil
		}
	}
	return net.ListenPacket(network, addr)
}

// kept are the inherited sockets the service took, held open so that a
// restart in place (reexec) can pass them on: the parent still holds the
// port, a fresh bind would fail.
var kept []*os.File

func keep(f *os.File) {
	inheritMu.Lock()
	defer inheritMu.Unlock()
	kept = append(kept, f)
}

// passKept arranges for the kept sockets to be fds 3, 4, ... of the next
// program exec'd, with ListenFDsEnv saying how many. Only for right
// before exec: it overwrites whatever those fds are.
func passKept() error {
	inheritMu.Lock()
	defer inheritMu.Unlock()
	if len(kept) == 0 {
		return nil
	}
	// First out of the way of 3, 4, ..., then into place without
	// close-on-exec.
	high := make([]int, len(kept))
	for i, f := range kept {
		fd, err := unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 1000)
		if err != nil {
			return fmt.Errorf("passing socket %s on: %v", f.Name(), err)
		}
		high[i] = fd
	}
	for i, fd := range high {
		if err := unix.Dup3(fd, 3+i, 0); err != nil {
			return fmt.Errorf("passing socket on as fd %d: %v", 3+i, err)
		}
	}
	return os.Setenv(ListenFDsEnv, strconv.Itoa(len(kept)))
}
