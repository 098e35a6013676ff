// Package nfsd_bench compares ociboot's nfsd with nfs-ganesha (FSAL VFS) on
// this machine, through the same userspace client: testdata/nfsbench.c, a
// small program on libnfs's synchronous API (one request in flight), built
// here with gcc. Two workloads on a generated root file system look-alike of
// about 5000 files and 150 MB:
//
//   - read: walk the tree (READDIRPLUS, READLINK) and read every file fully;
//   - untar: extract a tar of that tree into an empty writable export
//     (MKDIR, CREATE, WRITE, SYMLINK, SETATTR for the modes).
//
// Each server runs in its own network namespace and is reached on its
// loopback; both serve from the same file system. Every workload is run once
// untimed per server (warm-up and correctness check against the local tree:
// names, sizes, contents, modes, symlink targets), then OCIBOOT_BENCH_RUNS
// times (default 5) alternating between the servers, each run after a sync.
// libnfs's close sends COMMIT for a written file, so the untar workload
// costs one fsync per file on the server, as a kernel client's close does.
//
//	OCIBOOT_BENCH=1 go test -count=1 -v -run TestBench ./tests/bench/nfsd/
//
// Needs root, gcc, libnfs-dev and nfs-ganesha + nfs-ganesha-vfs.
package nfsd_bench

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ociboot/ociboot/appliance/images"
	"github.com/ociboot/ociboot/appliance/store"
	"github.com/ociboot/ociboot/appliance/testenv"
	"github.com/ociboot/ociboot/tests/ganesha"
	"github.com/ociboot/ociboot/tests/lab"
)

const (
	readDigest  = "sha256:5eadc0de0123456789abcdef0123456789abcdef0123456789abcdef01234567"
	emptyDigest = "sha256:e3e3e3e30123456789abcdef0123456789abcdef0123456789abcdef01234567"
	imageRef    = "registry.test/node:1"
	nfsPort     = 12049
)

// clientC is nfsbench.c.
var clientC = filepath.Join(lab.RepoRoot(), "tests", "bench", "nfsd", "testdata", "nfsbench.c")

// --- the client ---

type result struct {
	treeStats
	Seconds float64
}

// buildClient compiles nfsbench.c against libnfs.
func buildClient(t *testing.T) string {
	bin := filepath.Join(t.TempDir(), "nfsbench")
	out, err := exec.Command("gcc", "-O2", "-Wall", "-o", bin, clientC, "-lnfs").CombinedOutput()
	if err != nil {
		t.Fatalf("gcc nfsbench.c -lnfs (needs gcc and libnfs-dev): %v\n%s", err, out)
	}
	return bin
}

// client runs nfsbench inside network namespace ns.
func runClient(bin, ns string, args ...string) (result, error) {
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns, bin}, args...)...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return result{}, fmt.Errorf("nfsbench %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	var r result
	if _, err := fmt.Sscanf(string(out), "files=%d dirs=%d symlinks=%d bytes=%d hash=%x seconds=%g",
		&r.Files, &r.Dirs, &r.Symlinks, &r.Bytes, &r.Hash, &r.Seconds); err != nil {
		return result{}, fmt.Errorf("nfsbench %s: output %q: %v", strings.Join(args, " "), out, err)
	}
	return r, nil
}

// --- the servers ---

// server is one side of the comparison: where nfsbench runs and which URL
// it mounts.
type server struct {
	name string
	ns   string
	url  string // root of the export
	err  error  // set when the server failed; it is then left out
}

// makeStore creates an ociboot store whose default image has the tree
// fill writes (fill may be nil for an empty tree) and returns the store
// directory, the image's root and config.json.
func makeStore(t *testing.T, digest string, fill func(root string)) (storeDir, imageRoot, cfg string) {
	dir := t.TempDir()
	st, err := store.Open(filepath.Join(dir, "store"), store.Options{AllowTmpfs: true})
	if err != nil {
		t.Fatal(err)
	}
	imageRoot, err = images.Root(st, digest)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(imageRoot, 0o755); err != nil {
		t.Fatal(err)
	}
	if fill != nil {
		fill(imageRoot)
	}
	if err := images.SaveIndex(st, images.Index{Entries: []images.Entry{{Ref: imageRef, Platform: "linux/arm64", Digest: digest, Pulled: time.Now()}}}); err != nil {
		t.Fatal(err)
	}
	cfg = filepath.Join(dir, "config.json")
	if err := os.WriteFile(cfg, []byte(`{"Netboot": {"DefaultImage": "`+imageRef+`", "ExportTo": ["127.0.0.0/8"]}}`), 0o644); err != nil {
		t.Fatal(err)
	}
	return st.Root, imageRoot, cfg
}

// startOurs runs services/nfsd on the store in its own namespace and
// returns the server exporting /nodes/<node>. Failures are returned, not
// fatal, so that ganesha's numbers still print while nfsd is unfinished.
func startOurs(t *testing.T, storeDir, cfg, node string) *server {
	s := &server{name: "ociboot", ns: lab.NewNS(t, "ours"),
		url: fmt.Sprintf("nfs://127.0.0.1/nodes/%s?nfsport=%d&mountport=%d&version=3", node, nfsPort, nfsPort)}
	p := lab.Cmd{Name: "nfsd", NS: s.ns, Args: []string{lab.Binary(t, "nfsd"), "-config", cfg, "-store", storeDir, "-allow_tmpfs",
		"-status", "127.0.0.1:0", "-nfs_addr", fmt.Sprintf("127.0.0.1:%d", nfsPort), "-portmap_addr", ""}}.Start(t)
	t.Cleanup(func() { p.Stop(5 * time.Second) })
	if _, err := p.WaitLine(20*time.Second, `msg="nfs listening"`); err != nil {
		s.err = fmt.Errorf("%v:\n%s", err, p.Tail(5000))
	}
	return s
}

func startGanesha(t *testing.T, dir string) *server {
	g := ganesha.StartWith(t, ganesha.Options{NFSPort: nfsPort, MountPort: nfsPort + 1}, dir)
	return &server{name: "ganesha", ns: g.NS, url: g.URL(dir)}
}

// --- measurement ---

func runs() int {
	if n, err := strconv.Atoi(os.Getenv("OCIBOOT_BENCH_RUNS")); err == nil && n > 0 {
		return n
	}
	return 5
}

func median(xs []float64) float64 {
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// compare runs work(s, i) for the warm-up (i = 0) and then i = 1..runs()
// alternating between the servers (ABBA), and prints the medians and the
// throughput ratio ours/ganesha. Each call returns the run's result.
func compare(t *testing.T, label string, servers []*server, work func(s *server, i int) (result, error)) {
	times := map[*server][]float64{}
	var size result
	for i := 0; i <= runs(); i++ {
		order := append([]*server(nil), servers...)
		if i%2 == 1 { // ABBA: neither server always goes first
			slices.Reverse(order)
		}
		for _, s := range order {
			if s.err != nil {
				continue
			}
			// Start from a clean page cache: no writeback of the tree,
			// the tar or an earlier run's output during this run.
			syscall.Sync()
			r, err := work(s, i)
			if err != nil {
				s.err = err
				t.Errorf("%s %s: %v", label, s.name, err)
				continue
			}
			if i == 0 {
				size = r
				t.Logf("%s %s warm-up: %.3fs (%s)", label, s.name, r.Seconds, r.treeStats)
				continue
			}
			times[s] = append(times[s], r.Seconds)
		}
	}
	mib := float64(size.Bytes) / (1 << 20)
	line := fmt.Sprintf("nfs %s, %d files + %d dirs + %d symlinks, %.0f MiB, libnfs sync, median of %d:", label, size.Files, size.Dirs, size.Symlinks, mib, runs())
	med := map[string]float64{}
	for _, s := range servers {
		if s.err != nil || len(times[s]) == 0 {
			line += fmt.Sprintf(" %s FAILED,", s.name)
			continue
		}
		m := median(times[s])
		med[s.name] = m
		t.Logf("%s %s runs: %v", label, s.name, times[s])
		line += fmt.Sprintf(" %s %.3fs (%.1f MiB/s, %.0f files/s),", s.name, m, mib/m, float64(size.Files)/m)
	}
	if o, g := med["ociboot"], med["ganesha"]; o > 0 && g > 0 {
		line += fmt.Sprintf(" throughput ratio ociboot/ganesha %.2fx (goal >= 1.0x)", g/o)
	} else {
		line = strings.TrimSuffix(line, ",") + " (no ratio)"
	}
	fmt.Println(line)
}

func TestBenchNFS(t *testing.T) {
	testenv.OptIn(t, "OCIBOOT_BENCH", "benchmark")
	lab.NeedNetns(t)
	if err := ganesha.Available(); err != nil {
		testenv.Need(t, "%v", err)
	}
	testenv.NeedTool(t, "gcc", "gcc")
	if _, err := os.Stat("/usr/include/nfsc/libnfs.h"); err != nil {
		testenv.Need(t, "no /usr/include/nfsc/libnfs.h: install the Debian package libnfs-dev")
	}
	client := buildClient(t)

	// One tree, generated once: the read workload's image, the source of
	// the untar workload's tar and the reference for both.
	// The tree sits in /tree of the image: nfsd writes a node's identity
	// (hostname, hosts, machine-id) into its root when it makes it, so the
	// root itself has three more files than the image and ganesha's export.
	var want treeStats
	readStore, readRoot, readCfg := makeStore(t, readDigest, func(root string) {
		start := time.Now()
		tree := filepath.Join(root, "tree")
		if err := os.Mkdir(tree, 0o755); err != nil {
			t.Fatal(err)
		}
		genTree(t, tree)
		want = digest(t, tree)
		t.Logf("tree: %s, generated in %v", want, time.Since(start).Round(time.Millisecond))
	})
	tarFile := filepath.Join(t.TempDir(), "rootfs.tar")
	writeTar(t, filepath.Join(readRoot, "tree"), tarFile)

	check := func(r result) error {
		if r.treeStats != want {
			return fmt.Errorf("got %s hash %016x, want %s hash %016x", r.treeStats, r.Hash, want, want.Hash)
		}
		return nil
	}

	t.Run("read", func(t *testing.T) {
		// ganesha exports the image tree itself, nfsd a node's view of it.
		servers := []*server{startGanesha(t, readRoot), startOurs(t, readStore, readCfg, "aabbccdd")}
		if s := servers[1]; s.err != nil {
			t.Errorf("ociboot nfsd: %v", s.err)
		}
		compare(t, "read", servers, func(s *server, i int) (result, error) {
			r, err := runClient(client, s.ns, "read", s.url, "/tree")
			if err == nil {
				err = check(r)
			}
			return r, err
		})
		// The kernel client has many calls in flight; several libnfs
		// clients at once are the nearest a synchronous client gets.
		const clients = 4
		compare(t, fmt.Sprintf("read by %d clients at once (totals)", clients), servers, func(s *server, i int) (result, error) {
			rs := make([]result, clients)
			errs := make([]error, clients)
			var wg sync.WaitGroup
			start := time.Now()
			for c := range rs {
				wg.Add(1)
				go func() {
					defer wg.Done()
					rs[c], errs[c] = runClient(client, s.ns, "read", s.url, "/tree")
					if errs[c] == nil {
						errs[c] = check(rs[c])
					}
				}()
			}
			wg.Wait()
			total := result{Seconds: time.Since(start).Seconds()}
			for c, r := range rs {
				if errs[c] != nil {
					return total, fmt.Errorf("client %d: %v", c, errs[c])
				}
				total.Files += r.Files
				total.Dirs += r.Dirs
				total.Symlinks += r.Symlinks
				total.Bytes += r.Bytes
			}
			return total, nil
		})
	})

	t.Run("untar", func(t *testing.T) {
		// ganesha writes into an empty directory, nfsd into a node's view of
		// an image with an empty tree; both on the same file system as the
		// tar. Run i extracts into /x<i> of the export.
		emptyStore, _, emptyCfg := makeStore(t, emptyDigest, nil)
		servers := []*server{startGanesha(t, t.TempDir()), startOurs(t, emptyStore, emptyCfg, "11223344")}
		if s := servers[1]; s.err != nil {
			t.Errorf("ociboot nfsd: %v", s.err)
		}
		compare(t, "untar", servers, func(s *server, i int) (result, error) {
			dest := fmt.Sprintf("/x%d", i)
			r, err := runClient(client, s.ns, "untar", s.url, dest, tarFile)
			if err != nil {
				return r, err
			}
			if got, want := r.treeStats, (treeStats{want.Files, want.Dirs, want.Symlinks, want.Bytes, 0}); got != want {
				return r, fmt.Errorf("untar: extracted %s, want %s", got, want)
			}
			if i == 0 {
				// What landed must read back as the tree, modes included.
				back, err := runClient(client, s.ns, "read", s.url, dest)
				if err == nil {
					err = check(back)
				}
				if err != nil {
					return r, fmt.Errorf("reading back %s: %v", dest, err)
				}
			}
			return r, nil
		})
	})
}
