// Package tftpd compares ociboot's tftpd with dnsmasq's TFTP server on this
// machine: the same file, the same client (curl, lock step, blksize 1468),
// each server alone in its own network namespace on port 69.
//
//	OCIBOOT_BENCH=1 go test -count=1 -v -run TestBench ./tests/bench/tftpd/
package tftpd

import (
	"fmt"
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

func median(ds []time.Duration) time.Duration {
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	return ds[len(ds)/2]
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
		fmt.Printf("tftp 30 MiB x %d client(s), blksize 1468, median of %d: ociboot %v (%.1f MiB/s), dnsmasq %v (%.1f MiB/s), speed ratio ociboot/dnsmasq %.2fx\n",
			clients, runs, mo.Round(time.Millisecond), mb/mo.Seconds(), mt.Round(time.Millisecond), mb/mt.Seconds(), mt.Seconds()/mo.Seconds())
	}
}
