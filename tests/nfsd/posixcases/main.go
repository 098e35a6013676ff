// Command posixcases runs the POSIX permission cases of tests/nfsd's
// conformance test in a directory: the same list against a mount of
// ociboot's nfsd, one of nfs-ganesha and a local tmpfs, in one guest.
// Run as root with the directory and a label, it makes each case's
// fixture as root and runs the case's call as the case's user (a child of
// itself with that uid, gid and groups), printing one line per case:
//
//	POSIX <label> <case> <errno or ok> [mode uid:gid after]
//
// so that the host compares the servers line by line.
package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Users of the cases: alice owns the fixtures and is in group 27; bob is
// a stranger.
var (
	root  = user{0, 0, nil}
	alice = user{1000, 1000, []uint32{1000, 27}}
	bob   = user{2000, 2000, []uint32{2000}}
)

type user struct {
	uid, gid uint32
	groups   []uint32
}

// fixture is made as root before a case: kind ("f" file, "d" dir), path,
// mode, owner.
type fixture struct {
	kind     string
	path     string
	mode     uint32
	uid, gid int
}

type testCase struct {
	name  string
	setup []fixture
	as    user
	op    []string // operation and arguments, run as the user (see do)
	show  string   // path whose mode and owner are printed after the call
}

func f(p string, mode uint32, uid, gid int) fixture { return fixture{"f", p, mode, uid, gid} }
func d(p string, mode uint32, uid, gid int) fixture { return fixture{"d", p, mode, uid, gid} }

var long255 = strings.Repeat("n", 255)

var cases = []testCase{
	{"chown-by-stranger", []fixture{f("a", 0o644, 1000, 1000)}, bob, []string{"chown", "a", "2000", "-1"}, "a"},
	{"chown-by-stranger-to-owner", []fixture{f("a", 0o644, 1000, 1000)}, bob, []string{"chown", "a", "1000", "-1"}, "a"},
	{"chown-by-owner-to-other", []fixture{f("a", 0o644, 1000, 1000)}, alice, []string{"chown", "a", "2000", "-1"}, "a"},
	{"chgrp-by-owner-to-own-group", []fixture{f("a", 0o644, 1000, 1000)}, alice, []string{"chown", "a", "-1", "27"}, "a"},
	{"chgrp-by-owner-to-other-group", []fixture{f("a", 0o644, 1000, 1000)}, alice, []string{"chown", "a", "-1", "50"}, "a"},
	{"chgrp-by-stranger", []fixture{f("a", 0o644, 1000, 1000)}, bob, []string{"chown", "a", "-1", "2000"}, "a"},
	{"chown-by-root-clears-suid", []fixture{f("a", 0o6775, 1000, 1000)}, root, []string{"chown", "a", "2000", "2000"}, "a"},
	{"chown-by-owner-clears-suid", []fixture{f("a", 0o6775, 1000, 1000)}, alice, []string{"chown", "a", "-1", "27"}, "a"},
	{"chmod-by-stranger", []fixture{f("a", 0o644, 1000, 1000)}, bob, []string{"chmod", "a", "777"}, "a"},
	{"chmod-by-owner", []fixture{f("a", 0o644, 1000, 1000)}, alice, []string{"chmod", "a", "4711"}, "a"},
	{"chmod-sgid-group-not-in", []fixture{f("a", 0o644, 1000, 50)}, alice, []string{"chmod", "a", "2755"}, "a"},
	{"chmod-sgid-dir-group-not-in", []fixture{d("a", 0o755, 1000, 50)}, alice, []string{"chmod", "a", "2755"}, "a"},
	{"utimes-now-by-writer", []fixture{f("a", 0o666, 1000, 1000)}, bob, []string{"utimes-now", "a"}, "a"},
	{"utimes-now-by-stranger", []fixture{f("a", 0o644, 1000, 1000)}, bob, []string{"utimes-now", "a"}, "a"},
	{"utimes-explicit-by-writer", []fixture{f("a", 0o666, 1000, 1000)}, bob, []string{"utimes-set", "a"}, "a"},
	{"utimes-explicit-by-owner", []fixture{f("a", 0o444, 1000, 1000)}, alice, []string{"utimes-set", "a"}, "a"},
	{"truncate-by-stranger", []fixture{f("a", 0o644, 1000, 1000)}, bob, []string{"truncate", "a"}, "a"},
	{"truncate-by-writer", []fixture{f("a", 0o666, 1000, 1000)}, bob, []string{"truncate", "a"}, "a"},
	{"truncate-by-owner-clears-suid", []fixture{f("a", 0o6775, 1000, 1000)}, alice, []string{"truncate", "a"}, "a"},
	{"write-by-owner-clears-suid", []fixture{f("a", 0o6775, 1000, 1000)}, alice, []string{"write", "a"}, "a"},
	{"write-by-root-keeps-suid", []fixture{f("a", 0o6775, 1000, 1000)}, root, []string{"write", "a"}, "a"},
	{"link-by-owner", []fixture{f("a", 0o600, 1000, 1000), d("d", 0o777, 0, 0)}, alice, []string{"link", "a", "d/l"}, "a"},
	{"link-to-unreadable-by-stranger", []fixture{f("a", 0o600, 1000, 1000), d("d", 0o777, 0, 0)}, bob, []string{"link", "a", "d/l"}, "a"},
	{"link-in-unwritable-dir", []fixture{f("a", 0o644, 1000, 1000), d("d", 0o755, 0, 0)}, alice, []string{"link", "a", "d/l"}, "a"},
	{"link-of-dir-by-root", []fixture{d("a", 0o755, 0, 0)}, root, []string{"link", "a", "l"}, "a"},
	{"rename-in-sticky-by-stranger", []fixture{d("s", 0o1777, 0, 0), f("s/a", 0o644, 1000, 1000)}, bob, []string{"rename", "s/a", "s/b"}, "s"},
	{"rename-over-in-sticky-by-stranger", []fixture{d("s", 0o1777, 0, 0), f("s/a", 0o644, 1000, 1000), f("s/b", 0o644, 2000, 2000)}, bob, []string{"rename", "s/b", "s/a"}, "s"},
	{"rename-in-sticky-by-owner", []fixture{d("s", 0o1777, 0, 0), f("s/a", 0o644, 1000, 1000)}, alice, []string{"rename", "s/a", "s/b"}, "s/b"},
	{"rename-in-sticky-by-dir-owner", []fixture{d("s", 0o1777, 2000, 2000), f("s/a", 0o644, 1000, 1000)}, bob, []string{"rename", "s/a", "s/b"}, "s/b"},
	{"rename-unwritable-dir-to-other-parent", []fixture{d("p", 0o777, 0, 0), d("p/a", 0o555, 1000, 1000), d("q", 0o777, 0, 0)}, bob, []string{"rename", "p/a", "q/a"}, "p"},
	{"rename-unwritable-dir-same-parent", []fixture{d("p", 0o777, 0, 0), d("p/a", 0o555, 1000, 1000)}, bob, []string{"rename", "p/a", "p/b"}, "p/b"},
	{"rename-in-unwritable-dir", []fixture{d("p", 0o755, 0, 0), f("p/a", 0o666, 1000, 1000)}, alice, []string{"rename", "p/a", "p/b"}, "p"},
	{"unlink-in-sticky-by-stranger", []fixture{d("s", 0o1777, 0, 0), f("s/a", 0o666, 1000, 1000)}, bob, []string{"unlink", "s/a"}, "s"},
	{"unlink-in-sticky-by-owner", []fixture{d("s", 0o1777, 0, 0), f("s/a", 0o644, 1000, 1000)}, alice, []string{"unlink", "s/a"}, "s"},
	{"unlink-in-unwritable-dir", []fixture{d("p", 0o755, 0, 0), f("p/a", 0o666, 1000, 1000)}, alice, []string{"unlink", "p/a"}, "p"},
	{"unlink-of-dir", []fixture{d("a", 0o777, 0, 0)}, root, []string{"unlink", "a"}, "a"},
	{"rmdir-in-sticky-by-stranger", []fixture{d("s", 0o1777, 0, 0), d("s/a", 0o777, 1000, 1000)}, bob, []string{"rmdir", "s/a"}, "s"},
	{"rmdir-non-empty", []fixture{d("a", 0o777, 0, 0), f("a/x", 0o644, 0, 0)}, root, []string{"rmdir", "a"}, "a"},
	{"mkdir-in-sgid-dir", []fixture{d("g", 0o2777, 0, 50)}, alice, []string{"mkdir", "g/a", "755"}, "g/a"},
	{"mkdir-mode-with-sgid", []fixture{d("p", 0o777, 0, 0)}, alice, []string{"mkdir", "p/a", "2755"}, "p/a"},
	{"mkdir-sticky-mode", []fixture{d("p", 0o777, 0, 0)}, alice, []string{"mkdir", "p/a", "1777"}, "p/a"},
	{"mkdir-in-unwritable-dir", []fixture{d("p", 0o755, 0, 0)}, alice, []string{"mkdir", "p/a", "755"}, "p"},
	{"create-in-sgid-dir-group-not-in", []fixture{d("g", 0o2777, 0, 50)}, alice, []string{"create", "g/a", "2755"}, "g/a"},
	{"create-in-sgid-dir-own-group", []fixture{d("g", 0o2777, 0, 27)}, alice, []string{"create", "g/a", "2755"}, "g/a"},
	{"create-setuid", []fixture{d("p", 0o777, 0, 0)}, alice, []string{"create", "p/a", "4755"}, "p/a"},
	{"mknod-chr-by-user", []fixture{d("p", 0o777, 0, 0)}, alice, []string{"mknod-chr", "p/a"}, "p"},
	{"mknod-chr-by-root", []fixture{d("p", 0o777, 0, 0)}, root, []string{"mknod-chr", "p/a"}, "p/a"},
	{"mknod-fifo-by-user-in-sgid-dir", []fixture{d("g", 0o2777, 0, 50)}, alice, []string{"mknod-fifo", "g/a"}, "g/a"},
	{"symlink-in-sgid-dir", []fixture{d("g", 0o2777, 0, 50)}, alice, []string{"symlink", "target", "g/a"}, "g/a"},
	{"symlink-in-unwritable-dir", []fixture{d("p", 0o755, 0, 0)}, alice, []string{"symlink", "target", "p/a"}, "p"},
	{"rmdir-after-unlink-of-open-file", []fixture{d("p", 0o777, 0, 0), f("p/a", 0o666, 1000, 1000)}, alice, []string{"unlink-open-rmdir", "p/a", "p"}, "p"},
	{"name-255", []fixture{d("p", 0o777, 0, 0)}, alice, []string{"create", "p/" + long255, "644"}, "p/" + long255},
	{"name-256", []fixture{d("p", 0o777, 0, 0)}, alice, []string{"create", "p/" + long255 + "x", "644"}, "p"},
	{"path-4095", nil, root, []string{"deep", "4095"}, ""},
	{"path-4096", nil, root, []string{"deep", "4096"}, ""},
}

func main() {
	if len(os.Args) > 2 && os.Args[1] == "-as" {
		os.Exit(child(os.Args[2:]))
	}
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: posixcases DIR LABEL")
		os.Exit(2)
	}
	dir, label := os.Args[1], os.Args[2]
	unix.Umask(0)
	for i, c := range cases {
		base := filepath.Join(dir, fmt.Sprintf("c%02d", i))
		os.RemoveAll(base)
		if err := os.MkdirAll(base, 0o777); err != nil {
			fmt.Printf("POSIX %s %s setup-failed %v\n", label, c.name, err)
			continue
		}
		os.Chmod(base, 0o777)
		if err := setup(base, c.setup); err != nil {
			fmt.Printf("POSIX %s %s setup-failed %v\n", label, c.name, err)
			continue
		}
		res := run(base, c)
		after := ""
		if c.show != "" {
			var st unix.Stat_t
			if err := unix.Lstat(filepath.Join(base, c.show), &st); err != nil {
				after = "gone"
			} else {
				after = fmt.Sprintf("%o %d:%d", st.Mode&0o7777, st.Uid, st.Gid)
			}
		}
		fmt.Printf("POSIX %s %s %s %s\n", label, c.name, res, after)
	}
	fmt.Printf("POSIX %s done\n", label)
}

func setup(base string, fx []fixture) error {
	for _, x := range fx {
		p := filepath.Join(base, x.path)
		var err error
		if x.kind == "d" {
			err = os.Mkdir(p, 0o700)
		} else {
			err = os.WriteFile(p, []byte("data"), 0o600)
		}
		if err != nil {
			return err
		}
		if err := os.Lchown(p, x.uid, x.gid); err != nil {
			return err
		}
		if err := unix.Chmod(p, x.mode); err != nil {
			return err
		}
	}
	return nil
}

// run runs c's operation as c's user in a child and returns its result.
func run(base string, c testCase) string {
	groups := make([]string, len(c.as.groups))
	for i, g := range c.as.groups {
		groups[i] = strconv.Itoa(int(g))
	}
	cmd := exec.Command("/proc/self/exe", append([]string{"-as", base}, c.op...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: c.as.uid, Gid: c.as.gid, Groups: c.as.groups}}
	out, err := cmd.Output()
	if err != nil && len(out) == 0 {
		return "exec-failed:" + strings.ReplaceAll(err.Error(), " ", "_")
	}
	return strings.TrimSpace(string(out))
}

// child does one operation in base and prints ok or the errno's name.
func child(args []string) int {
	base, op, a := args[0], args[1], args[2:]
	p := func(i int) string { return filepath.Join(base, a[i]) }
	num := func(i int) int { n, _ := strconv.ParseInt(a[i], 0, 64); return int(n) }
	oct := func(i int) uint32 { n, _ := strconv.ParseUint(a[i], 8, 32); return uint32(n) }
	var err error
	switch op {
	case "chown":
		err = unix.Lchown(p(0), num(1), num(2))
	case "chmod":
		err = unix.Chmod(p(0), oct(1))
	case "utimes-now":
		err = unix.UtimesNano(p(0), nil)
	case "utimes-set":
		err = unix.UtimesNano(p(0), []unix.Timespec{{Sec: 100}, {Sec: 200}})
	case "truncate":
		err = unix.Truncate(p(0), 1)
	case "write":
		var fd int
		if fd, err = unix.Open(p(0), unix.O_WRONLY, 0); err == nil {
			_, err = unix.Write(fd, []byte("x"))
			if cerr := unix.Close(fd); err == nil {
				err = cerr
			}
		}
	case "link":
		err = unix.Link(p(0), p(1))
	case "rename":
		err = unix.Rename(p(0), p(1))
	case "unlink":
		err = unix.Unlink(p(0))
	case "rmdir":
		err = unix.Rmdir(p(0))
	case "mkdir":
		err = unix.Mkdir(p(0), oct(1))
	case "create":
		var fd int
		if fd, err = unix.Open(p(0), unix.O_CREAT|unix.O_EXCL|unix.O_WRONLY, oct(1)); err == nil {
			err = unix.Close(fd)
		}
	case "mknod-chr":
		err = unix.Mknod(p(0), unix.S_IFCHR|0o644, int(unix.Mkdev(1, 3)))
	case "mknod-fifo":
		err = unix.Mknod(p(0), unix.S_IFIFO|0o644, 0)
	case "symlink":
		err = unix.Symlink(a[0], p(1))
	case "unlink-open-rmdir":
		// The file stays open while its name goes and then its directory.
		var fd int
		if fd, err = unix.Open(p(0), unix.O_RDWR, 0); err == nil {
			if err = unix.Unlink(p(0)); err == nil {
				err = unix.Rmdir(p(1))
			}
			unix.Close(fd)
		}
	case "deep":
		err = deep(base, num(0))
	default:
		err = fmt.Errorf("unknown operation %s", op)
	}
	fmt.Println(errName(err))
	return 0
}

// deep makes directories below base (from base, relative steps) until a
// file's absolute path is exactly n bytes long, then creates the file by
// its absolute path.
func deep(base string, n int) error {
	abs, err := filepath.Abs(base)
	if err != nil {
		return err
	}
	if err := os.Chdir(abs); err != nil {
		return err
	}
	cur := abs
	for n-len(cur)-1 > 255 {
		name := strings.Repeat("d", min(200, n-len(cur)-1-56))
		if err := unix.Mkdir(name, 0o755); err != nil {
			return err
		}
		if err := os.Chdir(name); err != nil {
			return err
		}
		cur += "/" + name
	}
	name := strings.Repeat("f", n-len(cur)-1)
	full := cur + "/" + name
	if len(full) != n {
		return fmt.Errorf("path of %d bytes, want %d", len(full), n)
	}
	fd, err := unix.Open(full, unix.O_CREAT|unix.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	return unix.Close(fd)
}

func errName(err error) string {
	if err == nil {
		return "ok"
	}
	var en syscall.Errno
	if errors.As(err, &en) {
		if name := unix.ErrnoName(en); name != "" {
			return name
		}
	}
	return strings.ReplaceAll(err.Error(), " ", "_")
}
