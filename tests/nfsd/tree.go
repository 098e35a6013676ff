// Package nfsd tests ociboot's NFSv3 server (services/nfsd) with clients
// nobody here wrote. kernel_test.go boots the Linux kernel's own NFS client
// in QEMU from a root tree built here: a busybox system whose /sbin/init
// checks modes, owners, hard links, renames, a large file, symlinks, device
// nodes, the immutability of the image, and survival of a server restart,
// printing one "NFSTEST ok|bad <check>" line per check and a verdict.
package nfsd

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/ociboot/ociboot/tests/guest"
)

// Lines printed on the console by the guest's init.
const (
	PassLine    = "NFSTEST PASS"
	FailLine    = "NFSTEST FAIL"
	RestartLine = "NFSTEST RESTART-NOW"
	// RestartedInput is what the host types on the guest's console once the
	// server runs again.
	RestartedInput = "NFSTEST-RESTARTED"
)

// ImageFiles are files of the image whose content the guest checks or
// changes; the host compares the node's view with ViewAfter afterwards.
var ImageFiles = map[string]string{
	"t/edit":       "original image content\n",
	"t/keepimg":    "kept image file\n",
	"t/appendimg":  "line1\n",
	"t/patch":      "abcdefgh\n",
	"t/trunc":      "0123456789abcdef\n",
	"t/touchme":    "touch me\n",
	"t/renameme":   "renamed image file\n",
	"t/deleteme":   "delete me\n",
	"t/d2/over":    "image over\n",
	"t/owned":      "owned by 1000\n",
	"t/chownme":    "chown me\n",
	"t/chmodme":    "chmod me\n",
	"t/suid":       "suid\n",
	"t/sgid":       "sgid\n",
	"t/both":       "both\n",
	"t/m640":       "m640\n",
	"t/m000":       "m000\n",
	"t/hl1":        "hardlinked\n",
	"t/sgiddir/in": "in sgid dir\n",
}

// ViewAfter is what the guest leaves in the node's view (paths relative to
// the node's root) when every check passed.
var ViewAfter = map[string]string{
	"t/edit":        "original image content\nappended\n",
	"t/appendimg":   "line1\nafter\n",
	"t/patch":       "abcXXfgh\n",
	"t/trunc":       "01234",
	"t/d2/over":     "new\n",
	"t/d2/renamed":  "renamed image file\n",
	"t/hl1":         "hardlinked\nmore\nthird\n",
	"t/hl2":         "hardlinked\nmore\nthird\n",
	"t/r/afterfile": "new after restart\n",
}

// ViewGone are image paths the guest removes or renames away.
var ViewGone = []string{"t/deleteme", "t/renameme", "t/emptydir", "t/hl3"}

// WriteImage builds the image tree in dir (which must exist): busybox with
// its libraries and applet links, InitScript as /sbin/init, and the test
// files below /t with exact modes, owners and hard links. It must run as
// root (owners).
func WriteImage(dir string) error {
	bb, err := guest.Busybox()
	if err != nil {
		return err
	}
	for _, d := range []string{"bin", "sbin", "etc", "proc", "sys", "dev", "run", "var", "lib64", "t", "t/d1", "t/d2", "t/emptydir", "t/many", "t/sticky", "t/sgiddir", "t/ownedir"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return err
		}
	}
	if err := os.Mkdir(filepath.Join(dir, "tmp"), 0o755); err != nil {
		return err
	}
	for rel, src := range bb {
		data, err := os.ReadFile(src)
		if err != nil {
			return err
		}
		p := filepath.Join(dir, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(p, data, 0o755); err != nil {
			return err
		}
	}
	list, err := exec.Command(filepath.Join(dir, "bin", "busybox"), "--list").Output()
	if err != nil {
		// The copied busybox needs its loader at the host's path: same thing.
		list, err = exec.Command("busybox", "--list").Output()
		if err != nil {
			return fmt.Errorf("busybox --list: %v", err)
		}
	}
	for _, applet := range strings.Fields(string(list)) {
		if applet == "busybox" || strings.ContainsAny(applet, "/[") {
			continue
		}
		if err := os.Symlink("busybox", filepath.Join(dir, "bin", applet)); err != nil && !os.IsExist(err) {
			return err
		}
	}
	files := map[string]string{
		"sbin/init":    InitScript,
		"etc/image-id": "nfstest\n",
	}
	for k, v := range ImageFiles {
		files[k] = v
	}
	for rel, data := range files {
		if err := os.WriteFile(filepath.Join(dir, rel), []byte(data), 0o644); err != nil {
			return err
		}
	}
	for i := 0; i < 300; i++ {
		if err := os.WriteFile(filepath.Join(dir, "t/many", fmt.Sprintf("f%03d", i)), []byte{byte(i)}, 0o644); err != nil {
			return err
		}
	}
	p := func(rel string) string { return filepath.Join(dir, rel) }
	if err := os.Link(p("t/hl1"), p("t/hl2")); err != nil {
		return err
	}
	for _, l := range [][2]string{
		{"no/such/target", "t/sym"},
		{"/etc/image-id", "t/symabs"},
		{"../etc", "t/symdir"},
	} {
		if err := os.Symlink(l[0], p(l[1])); err != nil {
			return err
		}
	}
	if err := unix.Mkfifo(p("t/imgfifo"), 0o644); err != nil {
		return err
	}
	if err := unix.Mknod(p("t/imgnull"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))); err != nil {
		return err
	}
	// Owners first: chown clears setuid and setgid bits.
	for rel, o := range map[string][2]int{"t/owned": {1000, 1000}, "t/ownedir": {1000, 1000}, "t/sgiddir": {1000, 1000}} {
		if err := os.Lchown(p(rel), o[0], o[1]); err != nil {
			return err
		}
	}
	for rel, mode := range map[string]uint32{
		"sbin/init": 0o755, "tmp": 0o1777,
		"t/suid": 0o4755, "t/sgid": 0o2755, "t/both": 0o6711, "t/sticky": 0o1777, "t/sgiddir": 0o2775,
		"t/m640": 0o640, "t/m000": 0, "t/ownedir": 0o750, "t/imgfifo": 0o644, "t/imgnull": 0o666,
	} {
		if err := unix.Chmod(p(rel), mode); err != nil {
			return err
		}
	}
	return nil
}

// Manifest describes every entry below dir by what an immutable tree must
// keep: type, permission bits, owner, size, mtime, inode, content hash,
// link target, device number. Link counts and ctimes are left out: a view
// made of hard links into the tree raises them legitimately.
func Manifest(dir string) (map[string]string, error) {
	m := map[string]string{}
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		var st unix.Stat_t
		if err := unix.Lstat(path, &st); err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, path)
		desc := fmt.Sprintf("type=%o mode=%04o owner=%d:%d size=%d mtime=%d.%09d ino=%d",
			st.Mode&unix.S_IFMT, st.Mode&0o7777, st.Uid, st.Gid, st.Size, st.Mtim.Sec, st.Mtim.Nsec, st.Ino)
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFREG:
			f, err := os.Open(path)
			if err != nil {
				return err
			}
			h := sha256.New()
			_, err = io.Copy(h, f)
			f.Close()
			if err != nil {
				return err
			}
			desc += " sha256=" + hex.EncodeToString(h.Sum(nil))
		case unix.S_IFLNK:
			target, err := os.Readlink(path)
			if err != nil {
				return err
			}
			desc += " target=" + target
		case unix.S_IFCHR, unix.S_IFBLK:
			desc += fmt.Sprintf(" rdev=%d:%d", unix.Major(st.Rdev), unix.Minor(st.Rdev))
		case unix.S_IFDIR:
			ents, err := os.ReadDir(path)
			if err != nil {
				return err
			}
			names := make([]string, len(ents))
			for i, e := range ents {
				names[i] = e.Name()
			}
			sort.Strings(names)
			h := sha256.Sum256([]byte(strings.Join(names, "\x00")))
			desc += " entries=" + hex.EncodeToString(h[:8])
		}
		m[rel] = desc
		return nil
	})
	return m, err
}

// DiffManifests lists the differences between two manifests.
func DiffManifests(before, after map[string]string) []string {
	var diffs []string
	for k, v := range before {
		if w, ok := after[k]; !ok {
			diffs = append(diffs, fmt.Sprintf("%s: removed (was %s)", k, v))
		} else if w != v {
			diffs = append(diffs, fmt.Sprintf("%s: %s, was %s", k, w, v))
		}
	}
	for k, v := range after {
		if _, ok := before[k]; !ok {
			diffs = append(diffs, fmt.Sprintf("%s: added (%s)", k, v))
		}
	}
	sort.Strings(diffs)
	return diffs
}
