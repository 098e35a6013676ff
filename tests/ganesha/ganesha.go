// Package ganesha runs nfs-ganesha (FSAL VFS, NFSv3 only) as a reference
// NFS server for tests and benchmarks.
//
// ganesha.nfsd refuses to start unless it can register NFS and MOUNT with
// rpcbind ("Cannot register NFS V3 on TCP", then exit), so each server gets
// its own rpcbind. Both run inside a network namespace (a private one with
// only lo unless the caller passes one) and a private mount namespace with a
// tmpfs on /run: rpcbind's socket /run/rpcbind.sock, ganesha's pid file and
// the host's D-Bus socket (ganesha's admin interface) are thus out of reach
// of the host and of other instances. ganesha listens on all addresses of
// that namespace (with Bind_addr = 127.0.0.1 in a namespace that has only
// lo, ganesha 4.3 fails: "No IP address found for 127.0.0.1"), TCP only
// (Enable_UDP = false), without NLM and RQUOTA,
// with no grace period, and exports every directory by its own path
// (mount_path_pseudo is off), read-write, to any client, without root
// squashing. A Linux kernel client therefore mounts with
//
//	vers=3,proto=tcp,mountproto=tcp,port=<NFSPort>,mountport=<MountPort>,nolock
//
// (nolock: there is no NLM) and libnfs with Server.URL.
//
// Debian packages: nfs-ganesha nfs-ganesha-vfs (which pull in rpcbind).
package ganesha

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ociboot/ociboot/appliance/testenv"
	"github.com/ociboot/ociboot/tests/lab"
)

// Default ports, deliberately not 2049 and not rpcbind's choice.
const (
	DefaultNFSPort   = 12049
	DefaultMountPort = 12048
)

// Options change how StartWith runs ganesha.
type Options struct {
	// NS is an existing network namespace to run in, e.g. one with a tap
	// or veth for a QEMU guest. Port 111 must be free there. "" creates a
	// private namespace with only lo up, deleted at cleanup.
	NS string
	// Ports; 0 means DefaultNFSPort / DefaultMountPort.
	NFSPort, MountPort int
	// MountPaths, when set, holds one NFSv3 mount path per exported
	// directory (Mount_Path_Pseudo: a client mounts "/nodes/<serial>"
	// however the directory is named on disk), so a kernel command line
	// made for another server mounts the same path here.
	MountPaths []string
	// UDP serves MOUNT (and NFS) on UDP too, for clients such as klibc's
	// nfsmount that may ask the portmapper for MOUNT over UDP.
	UDP bool
}

// Server is a running ganesha.nfsd.
type Server struct {
	NS        string   // network namespace ganesha listens in
	NFSPort   int      // NFS v3, TCP
	MountPort int      // MOUNT v3, TCP
	Exports   []string // exported directories; the v3 mount path is the directory's path
	// MountPaths are the v3 mount paths of Exports when Options.MountPaths
	// set them.
	MountPaths []string
	UDP        bool
	Dir        string // config, log and recovery directory
	LogFile    string

	proc *lab.Proc
}

// Available reports why ganesha cannot run here, or nil.
func Available() error {
	if os.Geteuid() != 0 {
		return errors.New("ganesha: needs root")
	}
	for _, tool := range []string{"ganesha.nfsd", "rpcbind", "ip", "unshare"} {
		if _, err := testenv.LookPath(tool); err != nil {
			return fmt.Errorf("ganesha: %s not installed (apt-get install nfs-ganesha nfs-ganesha-vfs iproute2)", tool)
		}
	}
	if fsal, _ := filepath.Glob("/usr/lib/*/ganesha/libfsalvfs.so"); len(fsal) == 0 {
		if _, err := os.Stat("/usr/lib/ganesha/libfsalvfs.so"); err != nil {
			return errors.New("ganesha: FSAL VFS missing (apt-get install nfs-ganesha-vfs)")
		}
	}
	return nil
}

// Start runs ganesha in a private network namespace exporting dirs (absolute
// paths), waits until it serves, and stops it at cleanup. When ganesha
// cannot run here (see Available) the test skips, or fails in CI (package
// testenv).
func Start(t testing.TB, dirs ...string) *Server {
	t.Helper()
	return StartWith(t, Options{}, dirs...)
}

// StartWith is Start with options.
func StartWith(t testing.TB, opts Options, dirs ...string) *Server {
	t.Helper()
	if err := Available(); err != nil {
		testenv.Need(t, "%v", err)
	}
	if len(dirs) == 0 {
		t.Fatal("ganesha: no export")
	}
	s := &Server{NS: opts.NS, NFSPort: opts.NFSPort, MountPort: opts.MountPort, Dir: t.TempDir(), UDP: opts.UDP}
	if opts.MountPaths != nil && len(opts.MountPaths) != len(dirs) {
		t.Fatalf("ganesha: %d mount paths for %d exports", len(opts.MountPaths), len(dirs))
	}
	for _, m := range opts.MountPaths {
		if !strings.HasPrefix(m, "/") || strings.ContainsAny(m, "\";{}\n") {
			t.Fatalf("ganesha: cannot use mount path %q", m)
		}
	}
	s.MountPaths = opts.MountPaths
	if s.NFSPort == 0 {
		s.NFSPort = DefaultNFSPort
	}
	if s.MountPort == 0 {
		s.MountPort = DefaultMountPort
	}
	for _, d := range dirs {
		abs, err := filepath.Abs(d)
		if err != nil {
			t.Fatal(err)
		}
		if strings.ContainsAny(abs, "\";{}\n") {
			t.Fatalf("ganesha: cannot export %q", abs)
		}
		s.Exports = append(s.Exports, abs)
	}
	if s.NS == "" {
		s.NS = lab.NewNS(t, "ganesha")
	}

	conf := filepath.Join(s.Dir, "ganesha.conf")
	s.LogFile = filepath.Join(s.Dir, "ganesha.log")
	recovery := filepath.Join(s.Dir, "recovery")
	os.MkdirAll(recovery, 0o755)
	if err := os.WriteFile(conf, []byte(s.config(recovery)), 0o644); err != nil {
		t.Fatal(err)
	}
	ganesha, _ := testenv.LookPath("ganesha.nfsd")
	rpcbind, _ := testenv.LookPath("rpcbind")
	script := fmt.Sprintf(`set -e
mount -t tmpfs -o mode=0755 ociboot-ganesha-run /run
mkdir -p /run/ganesha /run/rpcbind
%s -f &
i=0
while [ ! -S /run/rpcbind.sock ]; do i=$((i+1)); [ $i -lt 100 ] || { echo rpcbind did not start >&2; exit 1; }; sleep 0.05; done
exec %s -F -L %s -f %s -p /run/ganesha/ganesha.pid
`, rpcbind, ganesha, s.LogFile, conf)
	s.proc = lab.Cmd{Name: "ganesha", NS: s.NS, Args: []string{"unshare", "--mount", "--propagation", "private", "sh", "-c", script}}.Start(t)
	t.Cleanup(func() {
		s.Stop()
		if t.Failed() {
			t.Logf("ganesha log (tail):\n%s", tail(s.Log(), 40))
		}
	})

	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(s.Log(), "NFS SERVER INITIALIZED") {
		select {
		case <-s.proc.Done():
			t.Fatalf("ganesha exited: %v\n%s\nlog:\n%s", s.proc.Err(), s.proc.Output(), s.Log())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("ganesha did not start within 30s\n%s\nlog:\n%s", s.proc.Output(), s.Log())
		}
	}
	return s
}

func (s *Server) config(recovery string) string {
	var b strings.Builder
	fmt.Fprintf(&b, `NFS_CORE_PARAM {
	Protocols = 3;
	NFS_Port = %d;
	MNT_Port = %d;
	Enable_NLM = false;
	Enable_RQUOTA = false;
	Enable_UDP = %t;
	Mount_Path_Pseudo = %t;
}
NFSV4 {
	Graceless = true;
	RecoveryRoot = "%s";
}
LOG {
	Default_Log_Level = EVENT;
}
`, s.NFSPort, s.MountPort, s.UDP, s.MountPaths != nil, recovery)
	transports := "TCP"
	if s.UDP {
		transports = "TCP, UDP"
	}
	for i, d := range s.Exports {
		pseudo := d
		if s.MountPaths != nil {
			pseudo = s.MountPaths[i]
		}
		fmt.Fprintf(&b, `EXPORT {
	Export_Id = %d;
	Path = "%s";
	Pseudo = "%s";
	Protocols = 3;
	Transports = %s;
	Access_Type = RW;
	Squash = No_Root_Squash;
	SecType = sys;
	CLIENT {
		Clients = *;
		Access_Type = RW;
	}
	FSAL {
		Name = VFS;
	}
}
`, i+1, d, pseudo, transports)
	}
	return b.String()
}

// Log returns ganesha's log file.
func (s *Server) Log() string {
	b, _ := os.ReadFile(s.LogFile)
	return string(b)
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	lines := strings.SplitAfter(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "")
}

// URL is the libnfs URL of exported directory dir (or a directory below
// it), with the ports explicit so that no client needs rpcbind.
func (s *Server) URL(dir string) string {
	return fmt.Sprintf("nfs://127.0.0.1%s?nfsport=%d&mountport=%d&version=3", dir, s.NFSPort, s.MountPort)
}

// Command returns a command that runs inside the server's namespace, where
// the server is at 127.0.0.1.
func (s *Server) Command(name string, args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", s.NS, name}, args...)...)
}

// Pid is ganesha.nfsd's process id (the shell that started rpcbind
// exec'd it).
func (s *Server) Pid() int { return s.proc.Pid() }

// Stop terminates ganesha and its rpcbind (ganesha's child, which a
// SIGTERMed ganesha may leave); Start's cleanup calls it.
func (s *Server) Stop() { s.proc.Stop(5 * time.Second) }
