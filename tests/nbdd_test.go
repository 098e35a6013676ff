package tests

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ociboot/ociboot/appliance/nbdd"
	"github.com/ociboot/ociboot/appliance/nodedisk"
	"github.com/ociboot/ociboot/appliance/nodes"
	"github.com/ociboot/ociboot/appliance/store"
	"github.com/ociboot/ociboot/appliance/testenv"
	"github.com/ociboot/ociboot/tests/lab"
)

// TestNBDDisks runs the built nbdd and nfsd in a head namespace and
// libnbd's tools in namespaces with their own addresses on one segment:
// the node whose pinned address it is writes and reads its disk with
// nbdcopy and nbdsh; an address that is no node's, and another node, are
// refused by policy, a node without a disk is told the export is unknown;
// the node's install report is taken from its address only; and nfsd's
// reset refuses the connected disk until forced, when nbdd closes the
// node's connection.
func TestNBDDisks(t *testing.T) {
	testenv.Short(t, "starts nbdd and nfsd in network namespaces")
	lab.NeedNetns(t)
	nbdinfo := testenv.NeedTool(t, "nbdinfo", "libnbd-bin")
	nbdcopy := testenv.NeedTool(t, "nbdcopy", "libnbd-bin")
	nbdsh := testenv.NeedTool(t, "nbdsh", "libnbd-bin and python3-libnbd")
	testenv.NeedTool(t, "curl", "curl")
	// nbdsh runs python3 from PATH; python3-libnbd is Debian's.
	pyEnv := []string{"PATH=/usr/bin:/bin:" + os.Getenv("PATH")}

	seg := lab.NewSegment(t)
	head := seg.NewNS("head", 1)
	node := seg.NewNS("node", 11)
	forger := seg.NewNS("forger", 12)
	diskless := seg.NewNS("diskless", 13)
	dir := t.TempDir()
	st, err := store.Open(filepath.Join(dir, "store"), store.Options{AllowTmpfs: true})
	if err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "config.json")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`{"Netboot": {"NodeDisk": {"Size": "1G"}, "Nodes": [
		{"Name": "n1", "Serial": "abcd0001", "IP": %q, "Install": {"Device": "/dev/vda"}},
		{"Name": "n3", "Serial": "abcd0003", "IP": %q, "Disk": {"Off": true}}]}}`, seg.Addr(11), seg.Addr(13))), 0o644)
	// No password file: state changes only from the head's loopback.
	common := []string{"-config", cfg, "-store", st.Root, "-allow_tmpfs", "-password_file", filepath.Join(dir, "no-password")}
	nfsd := lab.Cmd{Name: "nfsd", NS: head, Args: append([]string{lab.Binary(t, "nfsd")}, append(common, "-status", "127.0.0.1:9049", "-nfs_addr", "127.0.0.1:0", "-portmap_addr", "")...)}.Start(t)
	nfsd.WaitFor(t, "status listening", 20*time.Second)
	d := lab.Cmd{Name: "nbdd", NS: head, Args: append([]string{lab.Binary(t, "nbdd")}, append(common, "-status", ":9809", "-nbd_addr", ":10809", "-nfsd", "http://127.0.0.1:9049")...)}.Start(t)
	d.WaitFor(t, "nbd listening", 20*time.Second)
	uri := func(key string) string { return "nbd://" + seg.Addr(1) + ":10809/" + key }
	in := func(ns string, args ...string) (string, error) {
		out, err := exec.Command("ip", append([]string{"netns", "exec", ns}, args...)...).CombinedOutput()
		return string(out), err
	}

	// The node sees its disk.
	out, err := in(node, nbdinfo, "--json", uri("abcd0001"))
	if err != nil {
		t.Fatalf("nbdinfo from the node: %v\n%s", err, out)
	}
	var info struct {
		Exports []struct {
			Name string `json:"export-name"`
			Size int64  `json:"export-size"`
		}
	}
	if err := json.Unmarshal([]byte(out), &info); err != nil || len(info.Exports) != 1 || info.Exports[0].Size != 1<<30 {
		t.Errorf("nbdinfo: %+v (%v), want one export of 1 GiB:\n%s", info, err, out)
	}
	// It writes 4 MiB with nbdcopy and reads them back with nbdsh.
	data := bytes.Repeat([]byte("ociboot nbd disk "), 4<<20/17+1)[:4<<20]
	src := filepath.Join(dir, "data")
	os.WriteFile(src, data, 0o644)
	if out, err := in(node, nbdcopy, src, uri("abcd0001")); err != nil {
		t.Fatalf("nbdcopy to the disk: %v\n%s", err, out)
	}
	sum := sha256.Sum256(data)
	cmd := exec.Command("ip", "netns", "exec", node, nbdsh, "-u", uri("abcd0001"), "-c", "import hashlib; print(hashlib.sha256(h.pread(4 << 20, 0)).hexdigest())")
	cmd.Env = append(os.Environ(), pyEnv...)
	got, err := cmd.CombinedOutput()
	if err != nil || strings.TrimSpace(string(got)) != hex.EncodeToString(sum[:]) {
		t.Errorf("reading back through nbdsh: %v %q, want sha256 %x", err, got, sum)
	}
	if got := nodedisk.Usage(st, "abcd0001"); got < 4<<20 || got > 8<<20 {
		t.Errorf("the disk takes %d bytes on the store, want the 4 MiB written", got)
	}

	// Refusals: an address that is no node's, another node's address,
	// and a node without a disk. libnbd shows the errno of the reply
	// (POLICY, UNKNOWN); nbdd's log says why.
	for _, tt := range []struct {
		ns, key, errno, log string
	}{
		{forger, "abcd0001", "Operation not supported", "peer=" + seg.Addr(12) + " export=abcd0001"},
		{diskless, "abcd0001", "Operation not supported", "peer=" + seg.Addr(13) + " export=abcd0001 node=abcd0003"},
		{diskless, "abcd0003", "No such file or directory", "field=Netboot.Nodes[1].Disk"},
	} {
		out, err := in(tt.ns, nbdinfo, uri(tt.key))
		if err == nil || !strings.Contains(out, tt.errno) {
			t.Errorf("nbdinfo %s from %s: %v\n%s\nwant a refusal (%s)", tt.key, tt.ns, err, out, tt.errno)
		}
		d.WaitFor(t, tt.log, 10*time.Second)
	}
	var status nbdd.Status
	if err := json.Unmarshal(lab.GetIn(t, head, "http://127.0.0.1:9809/status"), &status); err != nil {
		t.Fatal(err)
	}
	if len(status.Disks) != 1 || status.Disks[0].Node != "abcd0001" || status.Disks[0].Allocated < 4<<20 || status.Disks[0].Size != 1<<30 {
		t.Errorf("nbdd's status disks: %+v, want abcd0001's alone (1 GiB, 4 MiB written; abcd0003's is off)", status.Disks)
	}
	metrics := string(lab.GetIn(t, head, "http://127.0.0.1:9809/metrics"))
	for _, want := range []string{`ociboot_nbdd_written_bytes_total{node="abcd0001"} 4.194304e+06`, `ociboot_nbdd_refused_total{reason="policy"}`, `ociboot_nbdd_refused_total{reason="unknown"}`, `ociboot_nbdd_disk_allocated_bytes{node="abcd0001"}`} {
		if !strings.Contains(metrics, want) {
			t.Errorf("nbdd's metrics lack %q", want)
		}
	}

	// The install report: from the node's address, not from another.
	report := `{"Device": "/dev/vda", "OK": true}`
	post := func(ns string) string {
		out, _ := in(ns, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5", "-d", report, "http://"+seg.Addr(1)+":9809/install")
		return out
	}
	if got := post(forger); got != "403" {
		t.Errorf("install report from an address that is no node's: HTTP %s, want 403", got)
	}
	if _, ok := nodes.LoadInstall(st, "abcd0001"); ok {
		t.Errorf("a refused report was recorded")
	}
	if got := post(node); got != "200" {
		t.Errorf("install report from the node: HTTP %s, want 200", got)
	}
	if rep, ok := nodes.LoadInstall(st, "abcd0001"); !ok || !rep.OK || rep.Device != "/dev/vda" {
		t.Errorf("recorded install: %+v %v, want OK on /dev/vda", rep, ok)
	}

	// Reset with the disk connected: refused, then forced; nbdd closes
	// the connection and the node's next attach gets a fresh disk.
	hold := lab.Cmd{Name: "nbdsh", NS: node, Stdin: true, Env: pyEnv, Args: []string{nbdsh, "-u", uri("abcd0001"), "-c", `
import sys, time
print("attached", flush=True)
sys.stdin.readline()
try:
    for i in range(600):
        h.pread(4096, 0)
        time.sleep(0.05)
    print("still attached", flush=True)
except nbd.Error as e:
    print("closed:", e, flush=True)
`}}.Start(t)
	hold.WaitFor(t, "attached", 20*time.Second)
	reset := func(force string) string {
		out, _ := in(head, "curl", "-s", "-w", " %{http_code}", "--max-time", "30", "-d", "node=abcd0001&force="+force, "http://127.0.0.1:9049/reset")
		return out
	}
	if got := reset("0"); !strings.HasSuffix(got, " 409") || !strings.Contains(got, "NBD disk") {
		t.Errorf("reset with the disk attached: %q, want 409 naming the NBD disk", got)
	}
	if !nodedisk.Stat(st, "abcd0001").Exists {
		t.Fatalf("a refused reset dropped the disk")
	}
	if got := reset("1"); !strings.HasSuffix(got, " 200") {
		t.Errorf("forced reset: %q, want 200", got)
	}
	hold.Type("\n")
	hold.WaitFor(t, "closed:", 30*time.Second)
	d.WaitFor(t, "its connections are closed", 10*time.Second)
	cmd = exec.Command("ip", "netns", "exec", node, nbdsh, "-u", uri("abcd0001"), "-c", "print(h.pread(4096, 0) == bytes(4096))")
	cmd.Env = append(os.Environ(), pyEnv...)
	if got, err := cmd.CombinedOutput(); err != nil || strings.TrimSpace(string(got)) != "True" {
		t.Errorf("after the reset the node's disk reads %q (%v), want a fresh, zero disk", got, err)
	}
}
