// Package tftpd compares ociboot's tftpd with dnsmasq's TFTP server on this
// machine: the same file, the same client (curl, lock step, blksize 1468),
// each server alone in its own network namespace on port 69.
//
//	OCIBOOT_BENCH=1 go test -count=1 -v -run TestBench ./tests/bench/tftpd/
package tftpd

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ociboot/ociboot/appliance/testenv"
	"github.com/ociboot/ociboot/tests/lab"
	ourtftpd "github.com/ociboot/ociboot/tests/tftpd"
)

const size = 30 << 20

// fetch runs clients curls at once in namespace n and returns the wall time.
func fetch(t *testing.T, n, file string, clients int) time.Duration {
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	start := time.Now()
	for i := 0; i < clients; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			out, err := exec.Command("ip", "netns", "exec", n, "curl", "-sS", "--tftp-blksize", "1468",
				"-o", "/dev/null", "-w", "%{size_download}", "tftp://127.0.0.1/"+file).CombinedOutput()
			if err != nil || strings.TrimSpace(string(out)) != fmt.Sprint(size) {
				errs <- fmt.Errorf("client %d: %v %s", i, err, out)
			}
		}(i)
	}
	wg.Wait()
	d := time.Since(start)
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	return d
}

// probe sends one RRQ from a fresh socket in namespace n and returns the
// time to the first reply, which must be an OACK.
func probe(t *testing.T, n, file string) time.Duration {
	var conn *net.UDPConn
	lab.InNS(t, n, func() {
		var err error
		conn, err = net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Error(err)
		}
	})
	if conn == nil {
		t.FailNow()
	}
	defer conn.Close()
	srv := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 69}
	buf := make([]byte, 2048)
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	start := time.Now()
	if _, err := conn.WriteToUDP([]byte("\x00\x01"+file+"\x00octet\x00tsize\x000\x00blksize\x001468\x00"), srv); err != nil {
		t.Fatal(err)
	}
	k, from, err := conn.ReadFromUDP(buf)
	d := time.Since(start)
	if err != nil || k < 2 || buf[1] != 6 {
		t.Fatalf("probe of %s in %s: got % x, %v; want an OACK", file, n, buf[:k], err)
	}
	conn.WriteToUDP([]byte("\x00\x05\x00\x00Early terminate\x00"), from)
	return d
}

func median(ds []time.Duration) time.Duration {
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	return ds[len(ds)/2]
}

// spread is "median [min-max]".
func spread(ds []time.Duration) string {
	m := median(ds)
	r := func(d time.Duration) time.Duration {
		if d < time.Millisecond {
			return d.Round(time.Microsecond)
		}
		return d.Round(time.Millisecond)
	}
	return fmt.Sprintf("%v [%v-%v]", r(m), r(ds[0]), r(ds[len(ds)-1]))
}

func TestBenchTFTP(t *testing.T) {
	testenv.OptIn(t, "OCIBOOT_BENCH", "benchmark")
	lab.NeedNetns(t)
	testenv.NeedTool(t, "dnsmasq", "dnsmasq")
	testenv.NeedTool(t, "curl", "curl")
	// Ours: the built binary on port 69 inside its namespace.
	srv := ourtftpd.StartServerIn(t, map[string]int{"kernel8.img": size}, lab.NewNS(t, "ours"))
	oursNS := srv.NS
	// dnsmasq: TFTP only, serving a copy of the same bytes.
	dnsNS := lab.NewNS(t, "dnsmasq")
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "abcd1234"), 0o755)
	os.WriteFile(filepath.Join(root, "abcd1234", "kernel8.img"), srv.Files["kernel8.img"], 0o644)
	d := lab.Start(t, dnsNS, "dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--port=0", "--enable-tftp",
		"--tftp-root="+root, "--listen-address=127.0.0.1", "--bind-interfaces", "--user=root", "--log-facility=-")
	d.WaitFor(t, "TFTP root is", 10*time.Second)

	// First reply: a fresh port asks like the Pi does (tsize and blksize),
	// times the OACK, then ends the transfer with the Pi's early terminate.
	const probes = 41
	var po, pt []time.Duration
	for i := 0; i < probes; i++ {
		pt = append(pt, probe(t, dnsNS, "abcd1234/kernel8.img"))
		po = append(po, probe(t, oursNS, "abcd1234/kernel8.img"))
	}
	fmt.Printf("tftp first reply (RRQ with tsize+blksize to OACK), median of %d [min-max]: ociboot %s, dnsmasq %s\n",
		probes, spread(po), spread(pt))

	const runs = 5
	for _, clients := range []int{1, 5} {
		var ours, theirs []time.Duration
		for i := 0; i < runs; i++ {
			// Alternate so that background load hits both alike.
			theirs = append(theirs, fetch(t, dnsNS, "abcd1234/kernel8.img", clients))
			ours = append(ours, fetch(t, oursNS, "abcd1234/kernel8.img", clients))
		}
		mo, mt := median(ours), median(theirs)
		mb := float64(size*clients) / (1 << 20)
		fmt.Printf("tftp 30 MiB x %d client(s), blksize 1468, median of %d [min-max]: ociboot %s (%.1f MiB/s), dnsmasq %s (%.1f MiB/s), speed ratio ociboot/dnsmasq %.2fx\n",
			clients, runs, spread(ours), mb/mo.Seconds(), spread(theirs), mb/mt.Seconds(), mt.Seconds()/mo.Seconds())
	}
}
