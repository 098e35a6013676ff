// Command ociboot-nbd runs on a node (the node image installs it): it
// attaches /dev/nbd0 to the disk the head node serves it
// (ociboot.disk=nbd://... on the kernel command line), tells systemd it
// is ready, and keeps the device connected while the head node restarts.
// On SIGTERM (systemd stops it after ociboot-disk unmounted the disk) it
// detaches the device.
package main

import (
	"context"
	"errors"
	"flag"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"syscall"
	"time"

	"github.com/ociboot/ociboot/appliance/nbdattach"
)

func main() {
	cmdline := flag.String("cmdline", "/proc/cmdline", "kernel command line to read ociboot.disk= from")
	index := flag.Int("device", 0, "attach /dev/nbd<N>")
	timeout := flag.Duration("timeout", 30*time.Second, "a request unanswered this long makes the kernel take the connection for dead and wait for a new one")
	dead := flag.Duration("dead_timeout", time.Hour, "how long the kernel holds the disk's requests while the head node is unreachable before failing them")
	flag.Parse()
	log := slog.New(slog.NewTextHandler(os.Stdout, nil))

	b, err := os.ReadFile(*cmdline)
	if err != nil {
		log.Error("ociboot-nbd: reading the kernel command line", "err", err)
		os.Exit(1)
	}
	addr, export, ok, err := nbdattach.FromCmdline(string(b))
	if err != nil {
		log.Error("ociboot-nbd: " + err.Error())
		os.Exit(1)
	}
	if !ok {
		log.Info("ociboot-nbd: no ociboot.disk=nbd://... on the kernel command line: nothing to attach")
		nbdattach.Notify("READY=1")
		return
	}
	// Debian's kernel has nbd as a module; its netlink family appears
	// when it is loaded.
	if out, err := exec.Command("modprobe", "nbd").CombinedOutput(); err != nil {
		log.Warn("ociboot-nbd: modprobe nbd", "err", err, "output", string(out))
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	d := &net.Dialer{KeepAlive: 15 * time.Second}
	dev, err := nbdattach.Attach(ctx, nbdattach.Config{
		Addr: addr, Export: export, Index: *index,
		Timeout: *timeout, DeadTimeout: *dead,
		Dial: d.DialContext, Logger: log, StateDir: "/run/ociboot-nbd",
	})
	if err != nil {
		log.Error("ociboot-nbd: " + err.Error() + " (see nbdd's log on the head node, and its status page)")
		os.Exit(1)
	}
	nbdattach.Notify("READY=1")
	err = dev.Watch(ctx)
	if ctx.Err() != nil {
		if err := dev.Detach(); err != nil {
			log.Error("ociboot-nbd: " + err.Error())
			os.Exit(1)
		}
		log.Info("ociboot-nbd: detached", "device", dev.Path())
		return
	}
	log.Error("ociboot-nbd: " + err.Error())
	if errors.Is(err, nbdattach.ErrOtherDisk) {
		os.Exit(3) // the unit's RestartPreventExitStatus: no reattach
	}
	os.Exit(1)
}
