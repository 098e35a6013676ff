// Command nodeimage makes OCI images for ociboot nodes.
//
//	nodeimage build [-o dir] [-suite bookworm] [-mirror uri] ...
//	    builds Debian with systemd, raspi-firmware and Debian's arm64
//	    kernel (mmdebstrap) as an OCI layout in dir.
//	nodeimage import [-o dir] [-arch arm64] file.img[.xz]
//	    turns a Raspberry Pi OS / Ubuntu raspi SD-card image into an OCI
//	    layout in dir.
//
// Push the layout to the registry the head node pulls from with skopeo:
//
//	skopeo copy oci:dir docker://registry.lan:5000/rpi/node:bookworm
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/ociboot/ociboot/appliance/nodeimage"
	"github.com/ociboot/ociboot/appliance/nodeimage/sdimage"
)

func usage() {
	fmt.Fprintf(os.Stderr, "usage: nodeimage build [flags]\n       nodeimage import [flags] file.img[.xz]\n(nodeimage <command> -h lists the flags)\n")
	os.Exit(2)
}

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt)
	defer cancel()
	var err error
	switch os.Args[1] {
	case "build":
		err = build(ctx, os.Args[2:])
	case "import":
		err = importImage(ctx, os.Args[2:])
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func build(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("build", flag.ExitOnError)
	out := fs.String("o", ".build/node-image", "output directory (an OCI image layout; must not exist or be empty)")
	suite := fs.String("suite", "bookworm", "Debian suite")
	kernelSuite := fs.String("kernel_suite", "", "suite of linux-image-arm64 (default <suite>-backports, which has the Pi 5 device trees)")
	mirror := fs.String("mirror", "", "Debian archive URI (default: the one this machine's apt uses)")
	security := fs.String("security_mirror", "", "Debian security archive URI (default: the one this machine's apt uses)")
	extra := fs.String("packages", "", "more packages to install, comma-separated")
	quiet := fs.Bool("q", false, "do not print mmdebstrap's progress")
	fs.Parse(args)

	m, err := nodeimage.HostMirrors("")
	if *mirror != "" {
		m.Archive, err = *mirror, nil
	}
	if *security != "" {
		m.Security = *security
	}
	if err != nil {
		return err
	}
	epoch := nodeimage.DefaultEpoch
	if s := os.Getenv("SOURCE_DATE_EPOCH"); s != "" {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return fmt.Errorf("nodeimage: SOURCE_DATE_EPOCH=%q is not a number of seconds", s)
		}
		epoch = time.Unix(n, 0).UTC()
	}
	var log io.Writer = os.Stderr
	if *quiet {
		log = io.Discard
	}
	r := nodeimage.Recipe{Suite: *suite, KernelSuite: *kernelSuite, Mirrors: m, Epoch: epoch, Log: log}
	if *extra != "" {
		r.Extra = strings.Split(*extra, ",")
	}
	start := time.Now()
	// Build beside the output and replace it only when the new layout is
	// complete: a failed build keeps the image that worked.
	if err := os.MkdirAll(filepath.Dir(*out), 0o755); err != nil {
		return err
	}
	tmp, err := os.MkdirTemp(filepath.Dir(*out), "."+filepath.Base(*out)+".new-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	d, err := r.Build(ctx, tmp)
	if err != nil {
		return err
	}
	if err := replaceLayout(tmp, *out); err != nil {
		return err
	}
	fmt.Printf("%s: node image %s (built in %v)\npush it: skopeo copy oci:%s docker://<registry>/rpi/node:%s\n",
		*out, d, time.Since(start).Round(time.Second), *out, *suite)
	return nil
}

// replaceLayout renames the finished layout tmp to out. An existing out is
// only removed if it is an OCI layout (an earlier build), never another
// directory someone named by mistake.
func replaceLayout(tmp, out string) error {
	if _, err := os.Lstat(out); err == nil {
		if _, err := os.Stat(filepath.Join(out, "oci-layout")); err != nil {
			return fmt.Errorf("nodeimage: %s exists and is not an OCI layout; remove it or pass another -o", out)
		}
		old := tmp + ".old"
		if err := os.Rename(out, old); err != nil {
			return err
		}
		defer os.RemoveAll(old)
	}
	if err := os.Chmod(tmp, 0o755); err != nil {
		return err
	}
	return os.Rename(tmp, out)
}

func importImage(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("import", flag.ExitOnError)
	out := fs.String("o", ".build/imported-image", "output directory (an OCI image layout)")
	arch := fs.String("arch", "arm64", "architecture of the image's programs (arm64 for Raspberry Pi OS 64-bit and Ubuntu arm64)")
	fs.Parse(args)
	if fs.NArg() != 1 {
		return fmt.Errorf("nodeimage import: name one SD-card image (.img or .img.xz)")
	}
	src := fs.Arg(0)
	start := time.Now()
	if err := os.MkdirAll(filepath.Dir(*out), 0o755); err != nil {
		return err
	}
	tmp, err := os.MkdirTemp(filepath.Dir(*out), "."+filepath.Base(*out)+".new-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	fi, err := os.Stat(src)
	if err != nil {
		return fmt.Errorf("nodeimage import: %v", err)
	}
	pr, pw := io.Pipe()
	readErr := make(chan error, 1)
	go func() {
		im := sdimage.Importer{TempDir: filepath.Dir(*out)}
		err := im.WriteTar(ctx, src, pw)
		readErr <- err
		pw.CloseWithError(err)
	}()
	d, err := nodeimage.WriteLayout(tmp, pr, nodeimage.ImageOptions{
		OS: "linux", Arch: *arch, Created: fi.ModTime().UTC(),
		Labels: map[string]string{"org.opencontainers.image.title": "ociboot node imported from " + filepath.Base(src)},
		Logf:   func(f string, a ...any) { fmt.Fprintf(os.Stderr, "nodeimage: "+f+"\n", a...) },
	})
	pr.CloseWithError(err) // stop the reader if the writer failed first
	if rerr := <-readErr; rerr != nil {
		return fmt.Errorf("nodeimage import: %v", rerr) // the image's own problem, in its words
	}
	if err != nil {
		return fmt.Errorf("nodeimage import: %v", err)
	}
	if err := replaceLayout(tmp, *out); err != nil {
		return err
	}
	fmt.Printf("%s: node image %s imported from %s in %v\npush it: skopeo copy oci:%s docker://<registry>/rpi/<name>:<tag>\n",
		*out, d, src, time.Since(start).Round(time.Second), *out)
	return nil
}
