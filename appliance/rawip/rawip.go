// Package rawip frames and parses IPv4/UDP datagrams for AF_PACKET sockets
// in datagram mode (the kernel adds and strips the link-layer header). A
// DHCP client without an address (the Pi emulator) and dhcpd's watch for
// other DHCP servers speak UDP this way, below the host's IP stack: they
// must send from 0.0.0.0 and hear replies addressed to anyone.
package rawip

import (
	"encoding/binary"
	"net/netip"
)

const (
	ipHeaderLen  = 20
	udpHeaderLen = 8
	protoUDP     = 17
	ttl          = 64
)

// UDP returns an IPv4 packet carrying payload from src to dst: a 20-byte
// header with its checksum, then the UDP header. The UDP checksum is 0
// ("none"), which IPv4 allows and DHCP clients send before they have an
// address. src and dst must be IPv4 addresses.
func UDP(src, dst netip.AddrPort, payload []byte) []byte {
	b := make([]byte, ipHeaderLen+udpHeaderLen+len(payload))
	b[0] = 0x45 // version 4, 5 words of header
	binary.BigEndian.PutUint16(b[2:], uint16(len(b)))
	b[8] = ttl
	b[9] = protoUDP
	s, d := src.Addr().As4(), dst.Addr().As4()
	copy(b[12:16], s[:])
	copy(b[16:20], d[:])
	binary.BigEndian.PutUint16(b[10:], Checksum(b[:ipHeaderLen]))
	u := b[ipHeaderLen:]
	binary.BigEndian.PutUint16(u[0:], src.Port())
	binary.BigEndian.PutUint16(u[2:], dst.Port())
	binary.BigEndian.PutUint16(u[4:], uint16(udpHeaderLen+len(payload)))
	copy(u[udpHeaderLen:], payload)
	return b
}

// ParseUDP returns the addresses and the payload of an unfragmented IPv4
// packet carrying UDP; ok is false for anything else (other protocols,
// fragments, truncated or inconsistent lengths). Bytes past the IP total
// length (Ethernet padding of short frames) are not part of the payload.
// The payload aliases b.
func ParseUDP(b []byte) (src, dst netip.AddrPort, payload []byte, ok bool) {
	if len(b) < ipHeaderLen || b[0]>>4 != 4 || b[9] != protoUDP {
		return src, dst, nil, false
	}
	ihl := int(b[0]&0xf) * 4
	total := int(binary.BigEndian.Uint16(b[2:]))
	if ihl < ipHeaderLen || total < ihl+udpHeaderLen || total > len(b) {
		return src, dst, nil, false
	}
	// More fragments set, or a fragment offset: only whole datagrams.
	if binary.BigEndian.Uint16(b[6:])&0x3fff != 0 {
		return src, dst, nil, false
	}
	u := b[ihl:total]
	ulen := int(binary.BigEndian.Uint16(u[4:]))
	if ulen < udpHeaderLen || ulen > len(u) {
		return src, dst, nil, false
	}
	sa, _ := netip.AddrFromSlice(b[12:16])
	da, _ := netip.AddrFromSlice(b[16:20])
	src = netip.AddrPortFrom(sa, binary.BigEndian.Uint16(u[0:]))
	dst = netip.AddrPortFrom(da, binary.BigEndian.Uint16(u[2:]))
	return src, dst, u[udpHeaderLen:ulen], true
}

// Checksum is the Internet checksum (RFC 1071) of h, as an IPv4 header
// carries it.
func Checksum(h []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(h); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(h[i:]))
	}
	if len(h)%2 == 1 {
		sum += uint32(h[len(h)-1]) << 8
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return ^uint16(sum)
}
