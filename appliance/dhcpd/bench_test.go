package dhcpd

import (
	"net"
	"testing"
)

// BenchmarkHandleDiscover measures the work per DISCOVER with 200 clients
// holding offers, the steady state of a perfdhcp run.
func BenchmarkHandleDiscover(b *testing.B) {
	for _, mode := range []struct{ name, cfg string }{{"proxy", proxyConfig}, {"full", fullConfig}} {
		b.Run(mode.name, func(b *testing.B) {
			f := newFixture(b, mode.cfg, nil, nil)
			var pkts [][]byte
			for i := 0; i < 200; i++ {
				mac := net.HardwareAddr{0xdc, 0xa6, 0x32, 0x67, byte(i >> 8), byte(i)}
				pkts = append(pkts, pi(byte(i), uint32(i)).Discover(xid1).ToBytes())
				_ = mac
			}
			peer := &net.UDPAddr{IP: net.IPv4zero, Port: ClientPort}
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				f.s.HandlePacket(pkts[i%len(pkts)], peer)
			}
		})
	}
}
