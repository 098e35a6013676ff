package dhcpd

import (
	"net"
	"testing"
)

// BenchmarkHandleDiscover measures the work per DISCOVER with 200 clients
// holding offers, the steady state of a perfdhcp run.
func BenchmarkHandleDiscover(b *testing.B) {
	full := `{"Interface": "obd0", "Mode": "full", "ServerIP": "10.67.0.1", "Subnet": "10.67.0.0/24", "Range": "10.67.0.10-10.67.0.250"}`
	for _, mode := range []struct{ name, cfg string }{{"proxy", proxyConfig}, {"full", full}} {
		b.Run(mode.name, func(b *testing.B) {
			f := newFixture(b, mode.cfg, nil, nil)
			var pkts [][]byte
			for i := 0; i < 200; i++ {
				pkts = append(pkts, pi(byte(i), uint32(i)).Discover(xid1).ToBytes())
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
