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

	ourtftpd "github.com/ociboot/ociboot/tests/tftpd"
)

const size = 30 << 20

func ns(t *testing.T, name string) string {
	n := fmt.Sprintf("obtb%d-%s", os.Getpid(), name)
	exec.Command("ip", "netns", "delete", n).Run()
	if out, err := exec.Command("ip", "netns", "add", n).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v\n%s", err, out)
	}
	t.Cleanup(func() { exec.Command("ip", "netns", "delete", n).Run() })
	exec.Command("ip", "-n", n, "link", "set", "lo", "up").Run()
	return n
}

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
	if os.Getenv("OCIBOOT_BENCH") != "1" {
		t.Skip("benchmark: set OCIBOOT_BENCH=1")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces")
	}
	for _, tool := range []string{"dnsmasq", "curl"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed", tool)
		}
	}
	// Ours: the built binary on port 69 inside its namespace.
	srv := ourtftpd.StartServerIn(t, map[string]int{"kernel8.img": size}, ns(t, "ours"))
	oursNS := srv.NS
	// dnsmasq: TFTP only, serving a copy of the same bytes.
	dnsNS := ns(t, "dnsmasq")
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "abcd1234"), 0o755)
	os.WriteFile(filepath.Join(root, "abcd1234", "kernel8.img"), srv.Files["kernel8.img"], 0o644)
	d := exec.Command("ip", "netns", "exec", dnsNS, "dnsmasq", "--no-daemon", "--port=0", "--enable-tftp",
		"--tftp-root="+root, "--listen-address=127.0.0.1", "--bind-interfaces", "--user=root", "--log-facility=-")
	if err := d.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Process.Kill(); d.Wait() })
	time.Sleep(500 * time.Millisecond)

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
