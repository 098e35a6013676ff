package netconsole

import (
	"errors"
	"fmt"
	"net"

	"github.com/mdlayher/packet"
	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"

	"github.com/ociboot/ociboot/appliance/rawip"
)

// ListenPacket opens a packet socket on iface that sees only unfragmented
// UDP datagrams to Port, with the sender's MAC: the key of a Pi whose
// bootloader logs from a fixed address such as 169.254.1.1. Needs
// CAP_NET_RAW.
func ListenPacket(iface string) (*packet.Conn, error) {
	ifi, err := net.InterfaceByName(iface)
	if err != nil {
		return nil, fmt.Errorf("netconsole: %v (set Netboot.Interface)", err)
	}
	prog, err := bpf.Assemble([]bpf.Instruction{
		bpf.LoadAbsolute{Off: 9, Size: 1},
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: unix.IPPROTO_UDP, SkipFalse: 6},
		bpf.LoadAbsolute{Off: 6, Size: 2},
		bpf.JumpIf{Cond: bpf.JumpBitsSet, Val: 0x1fff, SkipTrue: 4},
		bpf.LoadMemShift{Off: 0},
		bpf.LoadIndirect{Off: 2, Size: 2},
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: Port, SkipFalse: 1},
		bpf.RetConstant{Val: 1 << 16},
		bpf.RetConstant{Val: 0},
	})
	if err != nil {
		return nil, fmt.Errorf("netconsole: assembling packet filter: %v", err)
	}
	c, err := packet.Listen(ifi, packet.Datagram, unix.ETH_P_IP, &packet.Config{Filter: prog})
	if err != nil {
		return nil, fmt.Errorf("netconsole: listening on %s: %v (needs CAP_NET_RAW)", iface, err)
	}
	return c, nil
}

// ServePacket files what the packet socket c receives until it is closed.
func (r *Receiver) ServePacket(c *packet.Conn) error {
	buf := make([]byte, 65536)
	for {
		n, from, err := c.ReadFrom(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		src, dst, payload, ok := rawip.ParseUDP(buf[:n])
		if !ok || dst.Port() != Port {
			continue
		}
		var mac net.HardwareAddr
		if a, ok := from.(*packet.Addr); ok {
			mac = a.HardwareAddr
		}
		r.Handle(mac, src, payload)
	}
}
