package nbdattach

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// The kernel's NBD generic netlink interface (include/uapi/linux/nbd-netlink.h).
const (
	nbdFamily     = "nbd"
	nbdMcastGroup = "nbd_mc_group"
	nbdVersion    = 1

	nbdCmdConnect     = 1
	nbdCmdDisconnect  = 2
	nbdCmdReconfigure = 3
	nbdCmdLinkDead    = 4
	nbdCmdStatus      = 5

	nbdAttrIndex           = 1
	nbdAttrSizeBytes       = 2
	nbdAttrBlockSizeBytes  = 3
	nbdAttrTimeout         = 4
	nbdAttrServerFlags     = 5
	nbdAttrSockets         = 7
	nbdAttrDeadConnTimeout = 8
	nbdAttrDeviceList      = 9

	nbdSockItem = 1
	nbdSockFD   = 1

	nbdDeviceItem      = 1
	nbdDeviceIndex     = 1
	nbdDeviceConnected = 2
)

// genl is one generic netlink socket.
type genl struct {
	fd        int
	seq       atomic.Uint32
	closeOnce sync.Once
}

func openGenl() (*genl, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_GENERIC)
	if err != nil {
		return nil, fmt.Errorf("generic netlink socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("binding a generic netlink socket: %w", err)
	}
	return &genl{fd: fd}, nil
}

func (g *genl) Close() error {
	var err error
	g.closeOnce.Do(func() { err = unix.Close(g.fd) })
	return err
}

// setReadTimeout bounds each receive, so that a reader can notice that it
// should stop (closing a socket does not wake a thread blocked on it).
func (g *genl) setReadTimeout(d time.Duration) error {
	tv := unix.NsecToTimeval(d.Nanoseconds())
	return unix.SetsockoptTimeval(g.fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
}

func nativeU32(b []byte) uint32 { return binary.NativeEndian.Uint32(b) }

// attr is one netlink attribute; nested ones carry their children.
type attr struct {
	typ    uint16
	data   []byte
	nested []attr
}

func u32Attr(typ uint16, v uint32) attr {
	return attr{typ: typ, data: binary.NativeEndian.AppendUint32(nil, v)}
}

func u64Attr(typ uint16, v uint64) attr {
	return attr{typ: typ, data: binary.NativeEndian.AppendUint64(nil, v)}
}

func strAttr(typ uint16, s string) attr { return attr{typ: typ, data: append([]byte(s), 0)} }

func nestAttr(typ uint16, children ...attr) attr {
	return attr{typ: typ | unix.NLA_F_NESTED, nested: children}
}

func appendAttrs(b []byte, attrs []attr) []byte {
	for _, a := range attrs {
		start := len(b)
		b = append(b, 0, 0, 0, 0)
		binary.NativeEndian.PutUint16(b[start+2:], a.typ)
		if a.nested != nil {
			b = appendAttrs(b, a.nested)
		} else {
			b = append(b, a.data...)
		}
		binary.NativeEndian.PutUint16(b[start:], uint16(len(b)-start))
		for len(b)%4 != 0 {
			b = append(b, 0)
		}
	}
	return b
}

// parseAttrs splits a netlink attribute stream; malformed tails end it.
func parseAttrs(b []byte) map[uint16][]byte {
	m := map[uint16][]byte{}
	for len(b) >= 4 {
		l := int(binary.NativeEndian.Uint16(b))
		typ := binary.NativeEndian.Uint16(b[2:]) &^ (unix.NLA_F_NESTED | unix.NLA_F_NET_BYTEORDER)
		if l < 4 || l > len(b) {
			break
		}
		m[typ] = b[4:l]
		l = (l + 3) &^ 3
		if l > len(b) {
			break
		}
		b = b[l:]
	}
	return m
}

// parseAttrList is parseAttrs keeping repeated types in order (nested
// lists of items).
func parseAttrList(b []byte) [][]byte {
	var out [][]byte
	for len(b) >= 4 {
		l := int(binary.NativeEndian.Uint16(b))
		if l < 4 || l > len(b) {
			break
		}
		out = append(out, b[4:l])
		l = (l + 3) &^ 3
		if l > len(b) {
			break
		}
		b = b[l:]
	}
	return out
}

// message is one received generic netlink message: its command and
// attributes.
type message struct {
	cmd   uint8
	attrs map[uint16][]byte
}

// request sends a command to family and collects the replies up to the
// kernel's acknowledgement. A negative acknowledgement is the errno.
func (g *genl) request(family uint16, cmd uint8, attrs ...attr) ([]message, error) {
	seq := g.seq.Add(1)
	b := make([]byte, unix.NLMSG_HDRLEN, 256)
	b = append(b, cmd, nbdVersion, 0, 0)
	b = appendAttrs(b, attrs)
	binary.NativeEndian.PutUint32(b[0:], uint32(len(b)))
	binary.NativeEndian.PutUint16(b[4:], family)
	binary.NativeEndian.PutUint16(b[6:], unix.NLM_F_REQUEST|unix.NLM_F_ACK)
	binary.NativeEndian.PutUint32(b[8:], seq)
	if err := unix.Sendto(g.fd, b, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return nil, err
	}
	var out []message
	for {
		// A new buffer for each datagram: the messages kept from one
		// point into it.
		buf := make([]byte, 1<<16)
		n, _, err := unix.Recvfrom(g.fd, buf, 0)
		if err != nil {
			return nil, err
		}
		msgs, err := parseMessages(buf[:n])
		if err != nil {
			return nil, err
		}
		for _, m := range msgs {
			if m.seq != seq {
				continue
			}
			switch m.typ {
			case unix.NLMSG_ERROR:
				if len(m.data) < 4 {
					return nil, errors.New("short netlink error message")
				}
				if e := int32(binary.NativeEndian.Uint32(m.data)); e != 0 {
					return out, unix.Errno(-e)
				}
				return out, nil
			case unix.NLMSG_DONE:
				return out, nil
			default:
				if len(m.data) >= unix.GENL_HDRLEN {
					out = append(out, message{cmd: m.data[0], attrs: parseAttrs(m.data[unix.GENL_HDRLEN:])})
				}
			}
		}
	}
}

type rawMessage struct {
	typ  uint16
	seq  uint32
	data []byte
}

func parseMessages(b []byte) ([]rawMessage, error) {
	var out []rawMessage
	for len(b) >= unix.NLMSG_HDRLEN {
		l := int(binary.NativeEndian.Uint32(b))
		if l < unix.NLMSG_HDRLEN || l > len(b) {
			return out, fmt.Errorf("netlink message of length %d in %d bytes", l, len(b))
		}
		out = append(out, rawMessage{typ: binary.NativeEndian.Uint16(b[4:]), seq: binary.NativeEndian.Uint32(b[8:]), data: b[unix.NLMSG_HDRLEN:l]})
		l = (l + unix.NLMSG_ALIGNTO - 1) &^ (unix.NLMSG_ALIGNTO - 1)
		if l >= len(b) {
			break
		}
		b = b[l:]
	}
	return out, nil
}

// family resolves a generic netlink family and one of its multicast
// groups by name.
func (g *genl) family(name, group string) (id uint16, groupID uint32, err error) {
	msgs, err := g.request(unix.GENL_ID_CTRL, unix.CTRL_CMD_GETFAMILY, strAttr(unix.CTRL_ATTR_FAMILY_NAME, name))
	if err != nil {
		return 0, 0, err
	}
	for _, m := range msgs {
		v := m.attrs[unix.CTRL_ATTR_FAMILY_ID]
		if len(v) < 2 {
			continue
		}
		id = binary.NativeEndian.Uint16(v)
		for _, grp := range parseAttrList(m.attrs[unix.CTRL_ATTR_MCAST_GROUPS]) {
			ga := parseAttrs(grp)
			n := ga[unix.CTRL_ATTR_MCAST_GRP_NAME]
			if len(n) > 0 && string(n[:len(n)-1]) == group && len(ga[unix.CTRL_ATTR_MCAST_GRP_ID]) >= 4 {
				groupID = binary.NativeEndian.Uint32(ga[unix.CTRL_ATTR_MCAST_GRP_ID])
			}
		}
		return id, groupID, nil
	}
	return 0, 0, fmt.Errorf("no generic netlink family %q", name)
}

// join subscribes the socket to a multicast group.
func (g *genl) join(group uint32) error {
	return unix.SetsockoptInt(g.fd, unix.SOL_NETLINK, unix.NETLINK_ADD_MEMBERSHIP, int(group))
}

// receive waits for the next multicast messages.
func (g *genl) receive() ([]message, error) {
	buf := make([]byte, 1<<16)
	n, _, err := unix.Recvfrom(g.fd, buf, 0)
	if err != nil {
		return nil, err
	}
	raw, err := parseMessages(buf[:n])
	var out []message
	for _, m := range raw {
		if m.typ >= unix.NLMSG_MIN_TYPE && len(m.data) >= unix.GENL_HDRLEN {
			out = append(out, message{cmd: m.data[0], attrs: parseAttrs(m.data[unix.GENL_HDRLEN:])})
		}
	}
	return out, err
}

// socketsAttr hands one connected socket to the kernel.
func socketsAttr(f *os.File) attr {
	return nestAttr(nbdAttrSockets, nestAttr(nbdSockItem, u32Attr(nbdSockFD, uint32(f.Fd()))))
}
