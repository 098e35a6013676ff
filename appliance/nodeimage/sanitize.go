package nodeimage

import (
	"archive/tar"
	"bufio"
	"bytes"
	"fmt"
	"io"
	"path"
	"strings"
)

// What makes a root tree fit to be many nodes' NFS root, whichever way the
// tree was made (built here or imported from an SD-card image). This is the
// one place that decides it:
//
//   - /etc/fstab mounts nothing from a local disk: entries for the SD card's
//     partitions (PARTUUID=, UUID=, LABEL=, /dev/mmcblk*, /dev/sd*,
//     /dev/nvme*) and entries for / and the boot partition are commented
//     out, everything else (tmpfs, proc, ...) is kept;
//   - /etc/machine-id is empty, so no two nodes share one (nfsd writes each
//     node its own when it makes the node's root; on an empty file systemd
//     makes one at boot);
//   - no SSH host keys: /etc/ssh/ssh_host_* are dropped (nfsd writes keys
//     unique to each node).
//
// Everything else passes through unchanged, in the same order, so a
// deterministic input gives a deterministic output.

// fstabNote starts every line Sanitize comments out.
const fstabNote = "# ociboot (root on NFS): "

// Sanitize copies the tar stream r to w with the changes above. It reports
// what it changed, one line each, through logf (may be nil).
func Sanitize(r io.Reader, w io.Writer, logf func(format string, args ...any)) error {
	if logf == nil {
		logf = func(string, ...any) {}
	}
	tr := tar.NewReader(r)
	tw := tar.NewWriter(w)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("reading the root tar: %v", err)
		}
		name := cleanName(hdr.Name)
		switch {
		case strings.HasPrefix(name, "etc/ssh/ssh_host_") && hdr.Typeflag != tar.TypeDir:
			logf("dropped SSH host key %s", name)
			continue
		case name == "etc/machine-id" && hdr.Typeflag == tar.TypeReg:
			if hdr.Size > 0 {
				logf("emptied /etc/machine-id")
			}
			hdr.Size = 0
			if err := tw.WriteHeader(hdr); err != nil {
				return err
			}
			continue
		case name == "etc/fstab" && hdr.Typeflag == tar.TypeReg:
			b, err := io.ReadAll(tr)
			if err != nil {
				return fmt.Errorf("reading %s: %v", hdr.Name, err)
			}
			out, dropped := nfsSafeFstab(b)
			for _, d := range dropped {
				logf("fstab: commented out %q", d)
			}
			hdr.Size = int64(len(out))
			if err := tw.WriteHeader(hdr); err != nil {
				return err
			}
			if _, err := tw.Write(out); err != nil {
				return err
			}
			continue
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return fmt.Errorf("writing %s: %v", hdr.Name, err)
		}
		if _, err := io.Copy(tw, tr); err != nil {
			return fmt.Errorf("copying %s: %v", hdr.Name, err)
		}
	}
	return tw.Close()
}

func cleanName(n string) string {
	return strings.TrimPrefix(path.Clean("/"+n), "/")
}

// nfsSafeFstab comments out the entries that mount local disks or the
// root and boot file systems; the kernel mounted / over NFS already and a
// node has no SD card to mount /boot/firmware from.
func nfsSafeFstab(b []byte) (out []byte, dropped []string) {
	var buf bytes.Buffer
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		f := strings.Fields(line)
		if len(f) >= 2 && !strings.HasPrefix(f[0], "#") && localMount(f) {
			buf.WriteString(fstabNote + line + "\n")
			dropped = append(dropped, line)
			continue
		}
		buf.WriteString(line + "\n")
	}
	return buf.Bytes(), dropped
}

func localMount(f []string) bool {
	dev, dir := f[0], f[1]
	if dir == "/" || dir == "/boot" || dir == "/boot/firmware" {
		return true
	}
	for _, p := range []string{"PARTUUID=", "UUID=", "LABEL=", "PARTLABEL=", "/dev/mmcblk", "/dev/sd", "/dev/nvme", "/dev/vd", "/dev/disk/"} {
		if strings.HasPrefix(dev, p) {
			return true
		}
	}
	return false
}
