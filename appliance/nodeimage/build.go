// Package nodeimage makes the OCI images nodes boot: Build runs a recipe
// (Debian with systemd, Debian's Raspberry Pi firmware and kernel, an
// initramfs that mounts an NFS root) through mmdebstrap; import of SD-card
// images lives in sdimage. Both end in WriteLayout, which applies Sanitize,
// the one definition of what makes a root tree NFS-safe, and writes an OCI
// image layout that skopeo pushes to any registry.
package nodeimage

import (
	"bytes"
	"context"
	"embed"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// The customize hook and the node's own programs and units it installs
// (node/: the disk for container runtimes, install to local storage).
//
//go:embed customize.sh node
var hookFiles embed.FS

// Packages every built node image has, beyond Debian's minbase.
var Packages = []string{
	"systemd", "systemd-sysv", "systemd-resolved", "udev", "dbus", "kmod",
	"initramfs-tools", "raspi-firmware",
	"openssh-server", "iproute2", "iputils-ping", "ca-certificates",
	"procps", "less", "nano", "apt-utils",
	// node/ociboot-disk and node/ociboot-install: ext4 and FAT,
	// partitioning, copying the root, reporting to the head node.
	"e2fsprogs", "fdisk", "dosfstools", "mtools", "rsync", "curl",
}

// DefaultEpoch is the build date when SOURCE_DATE_EPOCH is not set: a
// fixed date keeps builds from the same package snapshot identical.
var DefaultEpoch = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)

// Recipe is what Build makes.
type Recipe struct {
	Suite   string // Debian suite, default "bookworm"
	Arch    string // default "arm64"
	Mirrors Mirrors
	// KernelSuite is where linux-image-<arch> comes from; default
	// "<Suite>-backports": bookworm's own kernel has no Pi 5 (bcm2712)
	// device trees.
	KernelSuite string
	// Extra packages to install.
	Extra []string
	// Epoch is SOURCE_DATE_EPOCH: every file time is clamped to it and the
	// image config's creation time is it.
	Epoch time.Time
	// Log receives mmdebstrap's progress (default: discarded).
	Log io.Writer
}

func (r *Recipe) defaults() {
	if r.Suite == "" {
		r.Suite = "bookworm"
	}
	if r.Arch == "" {
		r.Arch = "arm64"
	}
	if r.KernelSuite == "" {
		r.KernelSuite = r.Suite + "-backports"
	}
	if r.Epoch.IsZero() {
		r.Epoch = DefaultEpoch
	}
	if r.Log == nil {
		r.Log = io.Discard
	}
}

// sources are the apt lines of the build: the suite, its updates and
// security archives, and the suite the kernel comes from, each with
// non-free-firmware for the Pi's VideoCore firmware (raspi-firmware).
func (r Recipe) sources() []string {
	comp := "main non-free-firmware"
	lines := []string{
		fmt.Sprintf("deb %s %s %s", r.Mirrors.Archive, r.Suite, comp),
		fmt.Sprintf("deb %s %s-updates %s", r.Mirrors.Archive, r.Suite, comp),
	}
	if r.Mirrors.Security != "" {
		lines = append(lines, fmt.Sprintf("deb %s %s-security %s", r.Mirrors.Security, r.Suite, comp))
	}
	if r.KernelSuite != r.Suite {
		lines = append(lines, fmt.Sprintf("deb %s %s %s", r.Mirrors.Archive, r.KernelSuite, comp))
	}
	return lines
}

// Args is the mmdebstrap command line (without the customize hook's path).
func (r Recipe) args(hook string) []string {
	kernel := "linux-image-" + r.Arch
	if r.KernelSuite != r.Suite {
		kernel += "/" + r.KernelSuite
	}
	pkgs := append(append([]string{kernel}, Packages...), r.Extra...)
	args := []string{
		"--arch=" + r.Arch, "--variant=minbase", "--format=tar",
		"--include=" + strings.Join(pkgs, ","),
		"--aptopt=Acquire::Languages \"none\"",
		// Documentation is most of a minimal root; copyright files stay.
		"--dpkgopt=path-exclude=/usr/share/man/*",
		"--dpkgopt=path-exclude=/usr/share/doc/*",
		"--dpkgopt=path-include=/usr/share/doc/*/copyright",
		"--dpkgopt=path-exclude=/usr/share/locale/*",
		"--dpkgopt=path-include=/usr/share/locale/locale.alias",
		// Every package that touches the initramfs would make it again,
		// each time through qemu-user (minutes per run): it is made once,
		// by the customize hook, once everything is installed.
		"--essential-hook=chroot \"$1\" dpkg-divert --quiet --local --rename --divert /usr/sbin/update-initramfs.ociboot --add /usr/sbin/update-initramfs && ln -sf /bin/true \"$1/usr/sbin/update-initramfs\"",
		"--customize-hook=sh " + hook + " \"$1\"",
		r.Suite, "-",
	}
	return append(args, r.sources()...)
}

// CanRunArch checks that this machine runs programs of arch (natively or
// through qemu-user's binfmt handler): mmdebstrap runs the packages'
// maintainer scripts.
func CanRunArch(arch string) error {
	if _, err := exec.LookPath("arch-test"); err != nil {
		return nil // mmdebstrap checks for itself
	}
	if out, err := exec.Command("arch-test", arch).CombinedOutput(); err != nil {
		return fmt.Errorf("nodeimage: this machine cannot run %s programs (%s); install qemu-user-static and binfmt-support, then as root: mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc; update-binfmts --enable qemu-aarch64 (`make deps` does this)", arch, strings.TrimSpace(string(out)))
	}
	return nil
}

// Build runs the recipe and writes the image as an OCI layout in outDir
// (which must not exist or be empty). It returns the manifest digest.
func (r Recipe) Build(ctx context.Context, outDir string) (v1.Hash, error) {
	r.defaults()
	if r.Mirrors.Archive == "" {
		return v1.Hash{}, errors.New("nodeimage: no Debian mirror; set Recipe.Mirrors (HostMirrors reads this machine's)")
	}
	if _, err := exec.LookPath("mmdebstrap"); err != nil {
		return v1.Hash{}, fmt.Errorf("nodeimage: mmdebstrap not found; install it (apt-get install mmdebstrap, or `make deps`)")
	}
	if err := CanRunArch(r.Arch); err != nil {
		return v1.Hash{}, err
	}
	hookDir, err := os.MkdirTemp("", "ociboot-customize-")
	if err != nil {
		return v1.Hash{}, err
	}
	defer os.RemoveAll(hookDir)
	if err := writeHook(hookDir); err != nil {
		return v1.Hash{}, fmt.Errorf("nodeimage: writing the customize hook: %v", err)
	}
	if err := buildNodeProgram(ctx, r.Arch, filepath.Join(hookDir, "node", "ociboot-nbd")); err != nil {
		return v1.Hash{}, err
	}

	cmd := exec.CommandContext(ctx, "mmdebstrap", r.args(filepath.Join(hookDir, "customize.sh"))...)
	cmd.Env = append(os.Environ(), fmt.Sprintf("SOURCE_DATE_EPOCH=%d", r.Epoch.Unix()), "LC_ALL=C.UTF-8")
	var tailBuf tailWriter
	cmd.Stderr = io.MultiWriter(r.Log, &tailBuf)
	out, err := cmd.StdoutPipe()
	if err != nil {
		return v1.Hash{}, err
	}
	if err := cmd.Start(); err != nil {
		return v1.Hash{}, fmt.Errorf("nodeimage: %v: %v", cmd.Args[:1], err)
	}
	digest, werr := WriteLayout(outDir, out, ImageOptions{
		OS: "linux", Arch: r.Arch, Created: r.Epoch,
		Labels: map[string]string{
			"org.opencontainers.image.title":       "ociboot node (Debian " + r.Suite + ")",
			"org.opencontainers.image.description": "Debian " + r.Suite + " with systemd, raspi-firmware and linux-image-" + r.Arch + " from " + r.KernelSuite + ", for an NFS root",
		},
		Logf: func(f string, a ...any) { fmt.Fprintf(r.Log, "nodeimage: "+f+"\n", a...) },
	})
	if werr != nil {
		io.Copy(io.Discard, out) // let mmdebstrap finish or fail on its own
	}
	if err := cmd.Wait(); err != nil {
		return v1.Hash{}, fmt.Errorf("nodeimage: mmdebstrap failed: %v\n%s", err, tailBuf.String())
	}
	if werr != nil {
		return v1.Hash{}, fmt.Errorf("nodeimage: %v", werr)
	}
	return digest, nil
}

// nodeProgram is the node's own Go program: it keeps the NBD disk
// attached while the head node restarts (package nbdattach).
const nodeProgram = "github.com/ociboot/ociboot/appliance/nodeimage/cmd/ociboot-nbd"

// goArch maps Debian architectures to GOARCH (and GOARM).
var goArch = map[string][2]string{
	"arm64": {"arm64", ""}, "amd64": {"amd64", ""}, "armhf": {"arm", "7"}, "armel": {"arm", "5"}, "i386": {"386", ""},
	"riscv64": {"riscv64", ""}, "ppc64el": {"ppc64le", ""}, "s390x": {"s390x", ""},
}

// buildNodeProgram cross-compiles nodeProgram for the image's
// architecture from this module's source (static, reproducible).
func buildNodeProgram(ctx context.Context, arch, out string) error {
	ga, ok := goArch[arch]
	if !ok {
		return fmt.Errorf("nodeimage: no Go port for Debian architecture %q (ociboot-nbd is built for the node)", arch)
	}
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-buildvcs=false", "-ldflags=-s -w -buildid=", "-o", out, nodeProgram)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+ga[0], "GOARM="+ga[1])
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("nodeimage: building %s for %s (run the build from ociboot's source tree, as `make node-image` does): %v\n%s", nodeProgram, arch, err, b)
	}
	return nil
}

// writeHook writes the customize hook and node/ into dir, programs
// executable.
func writeHook(dir string) error {
	return fs.WalkDir(hookFiles, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == "." {
			return err
		}
		if d.IsDir() {
			return os.MkdirAll(filepath.Join(dir, p), 0o755)
		}
		b, err := hookFiles.ReadFile(p)
		if err != nil {
			return err
		}
		mode := os.FileMode(0o644)
		if bytes.HasPrefix(b, []byte("#!")) {
			mode = 0o755
		}
		return os.WriteFile(filepath.Join(dir, p), b, mode)
	})
}

// tailWriter keeps the last lines written to it, for error messages.
type tailWriter struct{ b []byte }

func (t *tailWriter) Write(p []byte) (int, error) {
	t.b = append(t.b, p...)
	if len(t.b) > 8<<10 {
		t.b = t.b[len(t.b)-8<<10:]
	}
	return len(p), nil
}

func (t *tailWriter) String() string {
	if i := bytes.IndexByte(t.b, '\n'); i >= 0 && len(t.b) >= 8<<10 {
		return string(t.b[i+1:])
	}
	return string(t.b)
}
