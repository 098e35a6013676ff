// Package dhcpd_bench compares dhcpd with dnsmasq on the same network
// namespace segment: DISCOVER→OFFER latency (a client that sends one
// DISCOVER at a time, like a booting node) and the offer rate under load
// (perfdhcp from Debian's kea-admin). Run as root with
//
//	OCIBOOT_BENCH=1 go test -count=1 -v ./tests/bench/dhcpd/
package dhcpd_bench

import (
	"context"
	"encoding/hex"
	"fmt"
	"net"
	"regexp"
	"slices"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"

	"github.com/ociboot/ociboot/appliance/piemu"
	"github.com/ociboot/ociboot/appliance/testenv"
	"github.com/ociboot/ociboot/tests/lab"
)

const (
	discovers  = 1000 // per latency run
	clients    = 100  // distinct MACs in the latency run
	rateRuns   = 3
	rateTarget = 40000 // DISCOVERs per second perfdhcp tries to send
)

type result struct {
	median, p90 time.Duration
	lost        int
	rate        float64 // median offers/s under load; 0 if not measured
	drops       []int
}

func TestBenchDHCP(t *testing.T) {
	testenv.OptIn(t, "OCIBOOT_BENCH", "benchmark (needs root, dnsmasq and kea-admin's perfdhcp)")
	lab.NeedNetns(t)
	testenv.NeedTool(t, "dnsmasq", "dnsmasq")
	testenv.NeedTool(t, "perfdhcp", "kea-admin")
	s := lab.NewSegment(t)
	srv := s.Attach("srv", 1, "")
	cli := s.Attach("cli", 2, "")
	full := fmt.Sprintf(`{"Interface": "eth0", "Mode": "full", "ServerIP": "%[1]s.1", "Subnet": "%[1]s.0/24",
		"Range": "%[1]s.10-%[1]s.250", "LeaseSeconds": 600}`, s.Prefix())

	type server struct {
		name  string
		start func(t *testing.T) *lab.Proc
	}
	scenarios := []struct {
		name    string
		pi      bool // DISCOVERs as a Pi sends them
		servers [2]server
	}{
		{"full", false, [2]server{
			{"dhcpd", func(t *testing.T) *lab.Proc {
				d := lab.StartDHCPD(t, srv, full, "", "-probe_wait=1s", "-status=")
				d.WaitFor(t, "serving DHCP", 10*time.Second)
				return d.Proc
			}},
			{"dnsmasq", func(t *testing.T) *lab.Proc {
				// --no-ping: dnsmasq otherwise waits up to 3 s per new
				// address for an ICMP echo before offering it.
				// --quiet-dhcp: dhcpd does not log every transaction either.
				return lab.Dnsmasq(t, srv, "--no-ping", "--quiet-dhcp", fmt.Sprintf("--dhcp-range=%s,%s,255.255.255.0,10m", s.Addr(10), s.Addr(250)))
			}},
		}},
		{"proxy", true, [2]server{
			{"dhcpd", func(t *testing.T) *lab.Proc {
				d := lab.StartDHCPD(t, srv, `{"Interface": "eth0"}`, "", "-status=")
				d.WaitFor(t, "serving DHCP", 10*time.Second)
				return d.Proc
			}},
			{"dnsmasq", func(t *testing.T) *lab.Proc {
				return lab.Dnsmasq(t, srv, "--quiet-dhcp", "--dhcp-range="+s.Addr(0)+",proxy", "--pxe-service=0,Raspberry Pi Boot")
			}},
		}},
	}
	results := map[string]result{}
	for _, sc := range scenarios {
		for _, sv := range sc.servers {
			name := sc.name + "/" + sv.name
			t.Run(name, func(t *testing.T) {
				p := sv.start(t)
				var r result
				r.median, r.p90, r.lost = latency(t, cli, sc.pi)
				rates := []float64{}
				for i := 0; i < rateRuns; i++ {
					rate, drops := perfdhcp(t, cli, sc.pi)
					rates = append(rates, rate)
					r.drops = append(r.drops, drops)
				}
				slices.Sort(rates)
				r.rate = rates[len(rates)/2]
				p.Kill(syscall.SIGTERM)
				<-p.Done()
				results[name] = r
				t.Logf("%s: DISCOVER→OFFER median %v, p90 %v, lost %d of %d; offers/s under load: median %.0f of %v (drops per run %v)",
					name, r.median, r.p90, r.lost, discovers, r.rate, rates, r.drops)
			})
		}
	}
	for _, sc := range scenarios {
		a, b := results[sc.name+"/dhcpd"], results[sc.name+"/dnsmasq"]
		if a.median == 0 || b.median == 0 {
			continue
		}
		t.Logf("%-5s latency median: dhcpd %v, dnsmasq %v, dhcpd/dnsmasq = %.2f", sc.name, a.median, b.median, float64(a.median)/float64(b.median))
		if b.rate > 0 {
			t.Logf("%-5s rate median:    dhcpd %.0f/s, dnsmasq %.0f/s, dhcpd/dnsmasq = %.2f", sc.name, a.rate, b.rate, a.rate/b.rate)
		} else {
			// perfdhcp sends as a relay (giaddr set); dnsmasq's proxy mode
			// does not answer relayed DISCOVERs.
			t.Logf("%-5s rate median:    dhcpd %.0f/s, dnsmasq not measurable (its proxy ignores perfdhcp's relayed DISCOVERs)", sc.name, a.rate)
		}
	}
}

// latency sends one DISCOVER at a time from the client namespace and times
// the OFFER, through an AF_PACKET socket as an unconfigured client would.
func latency(t *testing.T, ns string, asPi bool) (median, p90 time.Duration, lost int) {
	var ds []time.Duration
	lab.InNS(t, ns, func() {
		c, err := piemu.Open("eth0")
		if err != nil {
			t.Error(err)
			return
		}
		defer c.Close()
		for i := 0; i < discovers; i++ {
			mac := net.HardwareAddr{0xdc, 0xa6, 0x32, 0x67, 0x10, byte(i % clients)}
			xid := dhcpv4.TransactionID{0x67, byte(i >> 16), byte(i >> 8), byte(i)}
			var d *dhcpv4.DHCPv4
			if asPi {
				d = piemu.Pi{MAC: mac, Serial: uint32(0x67000000 + i%clients)}.Discover(xid)
			} else {
				d, _ = dhcpv4.NewDiscovery(mac, dhcpv4.WithTransactionID(xid))
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			start := time.Now()
			if err := c.Send(d); err != nil {
				cancel()
				t.Error(err)
				return
			}
			for {
				m, err := c.Recv(ctx, xid, mac)
				if err != nil {
					lost++
					break
				}
				if m.MessageType() == dhcpv4.MessageTypeOffer {
					ds = append(ds, time.Since(start))
					break
				}
			}
			cancel()
		}
	})
	if len(ds) == 0 {
		t.Fatalf("no offers at all")
	}
	slices.Sort(ds)
	return ds[len(ds)/2], ds[len(ds)*9/10], lost
}

var (
	rateRE  = regexp.MustCompile(`Rate: ([0-9.]+) DISCOVER-OFFER/second`)
	dropsRE = regexp.MustCompile(`(?m)^drops: ([0-9]+)`)
)

// perfdhcp runs DISCOVER→OFFER only (-i) at rateTarget for 3 s and returns
// the achieved rate. Its 100 clients are the same in every run (fixed base
// MAC and seed): with the latency run's 100 they fit the 241-address range,
// because dhcpd sets an offered address aside for a minute while dnsmasq
// does not, and an exhausted pool would measure drops, not speed.
func perfdhcp(t *testing.T, ns string, asPi bool) (float64, int) {
	args := []string{"perfdhcp", "-4", "-l", "eth0", "-i", "-r", strconv.Itoa(rateTarget), "-R", "100",
		"-b", "mac=52:54:00:67:00:00", "-s", "1", "-p", "3"}
	if asPi {
		args = append(args, "-o", "60,"+hex.EncodeToString([]byte(piemu.VendorClass)),
			"-o", "97,"+hex.EncodeToString(piemu.Pi{MAC: net.HardwareAddr{0xdc, 0xa6, 0x32, 0, 0, 1}, Serial: 1}.GUID()))
	}
	p := lab.Start(t, ns, args...)
	select {
	case <-p.Done():
	case <-time.After(30 * time.Second):
		t.Fatalf("perfdhcp did not finish")
	}
	out := p.Output()
	m := rateRE.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no rate in perfdhcp output:\n%s", out)
	}
	rate, _ := strconv.ParseFloat(m[1], 64)
	drops := -1
	if d := dropsRE.FindStringSubmatch(out); d != nil {
		drops, _ = strconv.Atoi(d[1])
	}
	return rate, drops
}
