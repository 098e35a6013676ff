package nfsd

import (
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/ociboot/ociboot/appliance/images"
	"github.com/ociboot/ociboot/appliance/nfs/nfscheck"
	"github.com/ociboot/ociboot/appliance/store"
	"github.com/ociboot/ociboot/tests/lab"
)

// Digest is the manifest digest the test image is stored under.
const Digest = "sha256:6e667374657374000000000000000000000000000000000000000000000000aa"

// Ref is the image reference the config boots by default.
const Ref = "registry.test/node:1"

// Nfsd is a store holding one image tree and the built nfsd serving it on
// 127.0.0.1:Port (TCP, and UDP for MOUNT), restartable on the same port and
// store: the test holds the sockets and hands them to each run.
type Nfsd struct {
	Bin    string
	Dir    string // holds config.json, the store and the logs
	Store  string
	Image  string // the image tree, images/<digest>/
	Config string
	Port   int
	Args   []string // more nfsd flags, e.g. -reserve_mib
	// InsecurePorts starts nfsd with -insecure_ports: QEMU's user-mode
	// network is a NAT that connects to nfsd from the host's unprivileged
	// ports, whatever port the guest's kernel bound.
	InsecurePorts bool
	t             testing.TB
	ln            *lab.Listener
	proc          *lab.Proc
	runs          int
}

// NewNfsd creates a store under dir whose default image is a tree written
// by fill (called with the tree's path) and a config exporting to loopback.
func NewNfsd(t testing.TB, dir string, fill func(root string) error) (*Nfsd, error) {
	t.Helper()
	bin := lab.Binary(t, "nfsd")
	st, err := store.Open(filepath.Join(dir, "store"), store.Options{AllowTmpfs: true})
	if err != nil {
		return nil, err
	}
	root, err := images.Root(st, Digest)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(root, 0o755); err != nil {
		return nil, err
	}
	if err := fill(root); err != nil {
		return nil, err
	}
	if err := images.SaveIndex(st, images.Index{Entries: []images.Entry{{Ref: Ref, Platform: "linux/arm64", Digest: Digest, Pulled: time.Now()}}}); err != nil {
		return nil, err
	}
	cfg := filepath.Join(dir, "config.json")
	if err := os.WriteFile(cfg, []byte(`{"Netboot": {"DefaultImage": "`+Ref+`", "ExportTo": ["127.0.0.0/8"]}}`), 0o644); err != nil {
		return nil, err
	}
	ln := lab.ListenTCPUDP(t)
	return &Nfsd{Bin: bin, Dir: dir, Store: st.Root, Image: root, Config: cfg, Port: ln.Port, t: t, ln: ln}, nil
}

// View is the node's writable view of its image on the host.
func (s *Nfsd) View(key string) string { return filepath.Join(s.Store, store.NodesDir, key, "root") }

// Start runs nfsd and waits until it serves NFS.
func (s *Nfsd) Start(timeout time.Duration) error {
	s.runs++
	args := []string{s.Bin, "-config", s.Config, "-store", s.Store, "-allow_tmpfs", "-status", "127.0.0.1:0",
		"-nfs_addr", s.ln.Addr, "-portmap_addr", "", "-reply_log", s.ReplyLog(s.runs)}
	if s.InsecurePorts {
		args = append(args, "-insecure_ports")
	}
	p := lab.Cmd{Name: fmt.Sprintf("nfsd#%d", s.runs), Log: filepath.Join(s.Dir, fmt.Sprintf("nfsd-%d.log", s.runs)),
		Args:  append(args, s.Args...),
		Files: s.ln.Files()}.Start(s.t)
	s.proc = p
	if _, err := p.WaitLine(timeout, `msg="nfs listening"`); err != nil {
		p.Kill(syscall.SIGKILL)
		return fmt.Errorf("%v:\n%s", err, p.Tail(4000))
	}
	return nil
}

// ReplyLog is where run n of nfsd records its replies (-reply_log), one
// file per run so that a run killed while writing one does not garble
// the next.
func (s *Nfsd) ReplyLog(n int) string { return filepath.Join(s.Dir, fmt.Sprintf("replies-%d.bin", n)) }

// CheckReplies decodes every reply nfsd sent so far with nfscheck and
// fails t for each malformed one.
func (s *Nfsd) CheckReplies(t testing.TB) {
	t.Helper()
	logs, _ := filepath.Glob(filepath.Join(s.Dir, "replies-*.bin"))
	sum, err := nfscheck.CheckFiles(logs...)
	if err != nil {
		t.Error(err)
	}
	t.Logf("nfscheck: %v", sum)
}

// Kill kills nfsd with SIGKILL and waits until it is gone.
func (s *Nfsd) Kill() {
	if s.proc != nil {
		s.proc.Kill(syscall.SIGKILL)
	}
}

// Log is the output of the current (or last) run.
func (s *Nfsd) Log() string {
	if s.proc == nil {
		return ""
	}
	return s.proc.Tail(6000)
}

// ListenIn moves the server's sockets into network namespace ns (made with
// lab.NewNS), where a QEMU guest started in the same namespace reaches
// them; call it before Start.
func (s *Nfsd) ListenIn(t testing.TB, ns string) {
	t.Helper()
	lab.InNS(t, ns, func() { s.ln = lab.ListenTCPUDP(t) })
	s.Port = s.ln.Port
}
