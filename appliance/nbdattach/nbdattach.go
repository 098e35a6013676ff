// Package nbdattach is the node side of an ociboot node disk: it attaches
// a kernel NBD device (/dev/nbdN) to the head node's export and keeps it
// attached while the head node restarts.
//
// nbd-client (3.24, Debian bookworm's) hands the kernel one socket and
// leaves: when nbdd restarts (a `make update` reboots the head node), the
// kernel fails every request with EIO and the node's ext4 goes read-only
// under containerd. Here the device is configured over the kernel's
// generic netlink interface with a dead-connection timeout: when the
// connection breaks, the kernel holds the block requests (as a hard NFS
// mount holds file system calls) and announces NBD_CMD_LINK_DEAD on the
// nbd multicast group; Watch dials the server again, negotiates, checks
// that it is the same disk (size and NBD_INFO_DESCRIPTION), and hands the
// new socket over with NBD_CMD_RECONFIGURE, after which the held requests
// go out on it.
package nbdattach

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ociboot/ociboot/appliance/nbd"
)

// ErrOtherDisk: the head node serves another disk under the export than
// the one attached (it dropped the node's disk and made a new one).
// Reattaching cannot help; the node must reboot.
var ErrOtherDisk = errors.New("the head node serves another disk")

// mountedFrom names a mount point whose source is dev, from
// /proc/self/mountinfo (by device number, which a file system mounted
// before the device lost its disk keeps), or "".
func mountedFrom(dev string) string {
	want, err := os.ReadFile("/sys/block/" + strings.TrimPrefix(dev, "/dev/") + "/dev")
	if err != nil {
		return ""
	}
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return ""
	}
	return findMount(string(b), strings.TrimSpace(string(want)))
}

// findMount returns the mount point of the first mountinfo line whose
// major:minor is devno.
func findMount(mountinfo, devno string) string {
	for _, line := range strings.Split(mountinfo, "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && f[2] == devno {
			return f[4]
		}
	}
	return ""
}

// Config says which export goes on which device.
type Config struct {
	Addr   string // the server, host:port
	Export string
	Index  int // /dev/nbd<Index>

	// BlockSize is the device's logical block size (4096: ext4's).
	BlockSize int64
	// Timeout is how long a request may take before the kernel takes the
	// connection for dead and waits for a new one (0: never).
	Timeout time.Duration
	// DeadTimeout is how long the kernel holds requests for a new
	// connection before failing them.
	DeadTimeout time.Duration
	// AttachTimeout bounds Attach's attempts to reach the server.
	AttachTimeout time.Duration

	// StateDir keeps what each attached device's disk said at attach
	// (size, description), so that a restarted program takes over only
	// the same disk; "" keeps nothing. The program uses /run (gone at
	// reboot, as the attachment is).
	StateDir string

	// Dial connects to the server (net.Dialer.DialContext if nil).
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// Logger gets a line per connection and reconnection.
	Logger *slog.Logger
}

// Device is an attached NBD device.
type Device struct {
	cfg    Config
	g      *genl // requests
	mc     *genl // NBD_CMD_LINK_DEAD announcements
	family uint16
	info   nbd.ExportInfo // what the first connection said
}

func (c *Config) defaults() {
	if c.BlockSize == 0 {
		c.BlockSize = 4096
	}
	if c.AttachTimeout == 0 {
		c.AttachTimeout = time.Minute
	}
	if c.Dial == nil {
		var d net.Dialer
		c.Dial = d.DialContext
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

func (d *Device) statePath() string {
	return filepath.Join(d.cfg.StateDir, fmt.Sprintf("nbd%d.json", d.cfg.Index))
}

// Path is the device's file.
func (d *Device) Path() string { return fmt.Sprintf("/dev/nbd%d", d.cfg.Index) }

// Info is what the server said about the export at attach.
func (d *Device) Info() nbd.ExportInfo { return d.info }

// Attach connects the device to the export. A device already connected
// (this program restarted) is taken over: a new connection replaces its
// connection if that one is dead, and is dropped if not.
func Attach(ctx context.Context, cfg Config) (*Device, error) {
	cfg.defaults()
	d := &Device{cfg: cfg}
	dev := d.Path()
	var err error
	if d.g, err = openGenl(); err != nil {
		return nil, fmt.Errorf("%s: %v", dev, err)
	}
	family, group, err := d.g.family(nbdFamily, nbdMcastGroup)
	if err != nil {
		d.g.Close()
		if errors.Is(err, unix.ENOENT) {
			return nil, fmt.Errorf("%s: the kernel has no NBD netlink interface: is the nbd module loaded (modprobe nbd)? %v", dev, err)
		}
		return nil, fmt.Errorf("%s: resolving the kernel's nbd netlink family: %v", dev, err)
	}
	d.family = family
	// Listen before connecting: a connection that dies at once is not
	// missed.
	if d.mc, err = openGenl(); err == nil {
		err = d.mc.join(group)
	}
	if err == nil {
		err = d.mc.setReadTimeout(time.Second)
	}
	if err != nil {
		d.Close()
		return nil, fmt.Errorf("%s: joining the nbd multicast group: %v", dev, err)
	}

	actx, cancel := context.WithTimeout(ctx, cfg.AttachTimeout)
	defer cancel()
	f, info, err := d.connect(actx)
	if err != nil {
		d.Close()
		return nil, fmt.Errorf("attaching %s to nbd://%s/%s: %v", dev, cfg.Addr, cfg.Export, err)
	}
	defer f.Close() // the kernel holds its own reference
	d.info = info
	connected, err := d.connected()
	if err != nil {
		d.Close()
		return nil, fmt.Errorf("%s: asking the kernel for its state: %v", dev, err)
	}
	if connected {
		// Taking over after a restart: the disk must be the one this
		// device was attached to (recorded in StateDir).
		if b, err := os.ReadFile(d.statePath()); err == nil && cfg.StateDir != "" {
			var was nbd.ExportInfo
			if json.Unmarshal(b, &was) == nil {
				d.info = was
				if err := d.same(info); err != nil {
					d.Close()
					return nil, fmt.Errorf("%s is attached already, and %w: %v; reboot the node", dev, ErrOtherDisk, err)
				}
			}
		}
		err := d.reconfigure(f)
		switch {
		case errors.Is(err, unix.ENOSPC):
			cfg.Logger.Info("nbd: device already attached and its connection alive; watching it", "device", dev)
		case err != nil:
			d.Close()
			return nil, fmt.Errorf("%s is attached already and did not take a new connection: %v", dev, err)
		default:
			cfg.Logger.Info("nbd: device already attached; gave it a new connection", "device", dev)
		}
		return d, nil
	}
	// A free device with a file system still mounted from it is one
	// whose disk went away (ErrOtherDisk): a new disk under that file
	// system would take the old one's writes.
	if m := mountedFrom(dev); m != "" {
		d.Close()
		return nil, fmt.Errorf("%s: not attaching: %s is still mounted from it, left from a disk that went away; reboot the node", dev, m)
	}
	attrs := []attr{
		u32Attr(nbdAttrIndex, uint32(cfg.Index)),
		u64Attr(nbdAttrSizeBytes, uint64(info.Size)),
		u64Attr(nbdAttrBlockSizeBytes, uint64(cfg.BlockSize)),
		u64Attr(nbdAttrServerFlags, uint64(info.Flags)),
		u64Attr(nbdAttrTimeout, uint64(cfg.Timeout/time.Second)),
		u64Attr(nbdAttrDeadConnTimeout, uint64(cfg.DeadTimeout/time.Second)),
		socketsAttr(f),
	}
	if _, err := d.g.request(d.family, nbdCmdConnect, attrs...); err != nil {
		d.Close()
		return nil, fmt.Errorf("%s: the kernel refused the connection (NBD_CMD_CONNECT): %v", dev, err)
	}
	// An acknowledged CONNECT that configured nothing would leave the
	// disk's unit waiting for a device that never comes.
	if ok, err := d.connected(); err != nil || !ok {
		d.Close()
		return nil, fmt.Errorf("%s: the kernel acknowledged NBD_CMD_CONNECT but reports the device not connected (%v)", dev, err)
	}
	if b, err := json.Marshal(info); err == nil && cfg.StateDir != "" {
		os.MkdirAll(cfg.StateDir, 0o755)
		if err := os.WriteFile(d.statePath(), b, 0o644); err != nil {
			cfg.Logger.Warn("nbd: recording the attached disk", "err", err)
		}
	}
	cfg.Logger.Info("nbd: device attached", "device", dev, "server", cfg.Addr, "export", cfg.Export, "size", info.Size, "description", info.Description)
	return d, nil
}

// connect dials and negotiates until it works, ctx ends, or the server
// refuses for good (unknown export, refused by policy). It returns the
// socket as a file, the form the kernel takes.
func (d *Device) connect(ctx context.Context) (*os.File, nbd.ExportInfo, error) {
	backoff := 250 * time.Millisecond
	var last error
	for {
		f, info, err := d.dialOnce(ctx)
		if err == nil {
			return f, info, nil
		}
		var re *nbd.RefusedError
		if errors.As(err, &re) && re.Permanent() {
			return nil, nbd.ExportInfo{}, fmt.Errorf("%v (the head node's nbdd log says why)", err)
		}
		if last == nil || last.Error() != err.Error() {
			d.cfg.Logger.Warn("nbd: connecting failed; trying again", "server", d.cfg.Addr, "export", d.cfg.Export, "err", err)
		}
		last = err
		select {
		case <-ctx.Done():
			return nil, nbd.ExportInfo{}, fmt.Errorf("%v, still after %v", last, d.cfg.AttachTimeout)
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

func (d *Device) dialOnce(ctx context.Context) (*os.File, nbd.ExportInfo, error) {
	nc, err := d.cfg.Dial(ctx, "tcp", d.cfg.Addr)
	if err != nil {
		return nil, nbd.ExportInfo{}, err
	}
	defer nc.Close()
	info, err := nbd.Handshake(nc, d.cfg.Export, 30*time.Second)
	if err != nil {
		return nil, nbd.ExportInfo{}, err
	}
	tc, ok := nc.(*net.TCPConn)
	if !ok {
		return nil, nbd.ExportInfo{}, fmt.Errorf("connection is a %T, not TCP", nc)
	}
	f, err := tc.File()
	if err != nil {
		return nil, nbd.ExportInfo{}, err
	}
	return f, info, nil
}

// same says whether a reconnection reached the disk that was attached:
// a disk the head node dropped and made anew (a forced reset) must not
// receive the old file system's writes.
func (d *Device) same(info nbd.ExportInfo) error {
	if info.Size < d.info.Size {
		return fmt.Errorf("the export is %d bytes now, %d when attached", info.Size, d.info.Size)
	}
	if d.info.Description != "" && info.Description != d.info.Description {
		return fmt.Errorf("the export is another disk now (%q, attached %q): the head node dropped this node's disk", info.Description, d.info.Description)
	}
	return nil
}

func (d *Device) connected() (bool, error) {
	msgs, err := d.g.request(d.family, nbdCmdStatus, u32Attr(nbdAttrIndex, uint32(d.cfg.Index)))
	if err != nil {
		return false, err
	}
	for _, m := range msgs {
		for _, item := range parseAttrList(m.attrs[nbdAttrDeviceList]) {
			a := parseAttrs(item)
			if idx, c := a[nbdDeviceIndex], a[nbdDeviceConnected]; len(idx) >= 4 && len(c) >= 1 && int(nativeU32(idx)) == d.cfg.Index {
				return c[0] != 0, nil
			}
		}
	}
	return false, nil
}

func (d *Device) reconfigure(f *os.File) error {
	_, err := d.g.request(d.family, nbdCmdReconfigure, u32Attr(nbdAttrIndex, uint32(d.cfg.Index)), socketsAttr(f))
	return err
}

// Watch keeps the device connected until ctx ends: on each dead
// connection the kernel announces, it connects again (also through
// refusals, which the head node's config may mend) and hands the socket
// over. It returns when ctx ends, or when the server serves another disk
// under the export: it then detaches the device, and its requests fail.
func (d *Device) Watch(ctx context.Context) error {
	for {
		msgs, err := d.mc.receive()
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
				continue // the read timeout: look at ctx
			}
			if errors.Is(err, unix.ENOBUFS) {
				// Announcements were lost: check by reconnecting.
				msgs = []message{{cmd: nbdCmdLinkDead, attrs: map[uint16][]byte{nbdAttrIndex: u32Attr(0, uint32(d.cfg.Index)).data}}}
			} else {
				return fmt.Errorf("%s: reading nbd announcements: %v", d.Path(), err)
			}
		}
		for _, m := range msgs {
			if m.cmd != nbdCmdLinkDead || len(m.attrs[nbdAttrIndex]) < 4 || int(nativeU32(m.attrs[nbdAttrIndex])) != d.cfg.Index {
				continue
			}
			if err := d.reconnect(ctx); err != nil {
				return err
			}
		}
	}
}

func (d *Device) reconnect(ctx context.Context) error {
	dev := d.Path()
	start := time.Now()
	d.cfg.Logger.Warn("nbd: connection to the head node lost; the kernel holds the disk's requests while reconnecting", "device", dev, "server", d.cfg.Addr, "holds_for", d.cfg.DeadTimeout)
	for {
		cctx, cancel := context.WithCancel(ctx)
		f, info, err := d.connect(cctx)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			// A refusal (the head node's config no longer gives this
			// node the disk, or does not know its address yet) may be
			// mended on the head node while the kernel holds the
			// requests: keep trying.
			d.cfg.Logger.Warn("nbd: the head node refuses the disk; trying again", "device", dev, "err", err, "requests_fail_after", d.cfg.DeadTimeout-time.Since(start).Round(time.Second))
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(5 * time.Second):
			}
			continue
		}
		if err := d.same(info); err != nil {
			f.Close()
			// The disk the file system lived on is gone (a forced reset):
			// fail its requests now instead of holding them for
			// DeadTimeout.
			derr := d.Detach()
			return fmt.Errorf("%s: not reconnecting: %w: %v; detached the device (%v), so its requests fail; reboot the node", dev, ErrOtherDisk, err, derr)
		}
		err = d.reconfigure(f)
		f.Close()
		if errors.Is(err, unix.ENOSPC) {
			// No dead connection (any more): nothing to replace.
			return nil
		}
		if err != nil {
			d.cfg.Logger.Warn("nbd: the kernel refused the new connection (NBD_CMD_RECONFIGURE); trying again", "device", dev, "err", err)
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(time.Second):
			}
			continue
		}
		d.cfg.Logger.Info("nbd: reconnected", "device", dev, "server", d.cfg.Addr, "after", time.Since(start).Round(time.Millisecond))
		return nil
	}
}

// Detach disconnects the device (NBD_CMD_DISCONNECT); unmount first.
func (d *Device) Detach() error {
	if _, err := d.g.request(d.family, nbdCmdDisconnect, u32Attr(nbdAttrIndex, uint32(d.cfg.Index))); err != nil {
		return fmt.Errorf("%s: detaching: %v", d.Path(), err)
	}
	if d.cfg.StateDir != "" {
		os.Remove(d.statePath())
	}
	return nil
}

// Close releases the netlink sockets; the device stays as it is.
func (d *Device) Close() error {
	if d.mc != nil {
		d.mc.Close()
	}
	if d.g != nil {
		return d.g.Close()
	}
	return nil
}

// FromCmdline reads the head node's disk from a kernel command line:
// the last ociboot.disk=nbd://<host>:<port>/<export>. ok is false when
// the command line names no disk or the node's own device (ociboot-disk's
// business alone).
func FromCmdline(cmdline string) (addr, export string, ok bool, err error) {
	var disk string
	for _, f := range strings.Fields(cmdline) {
		if v, found := strings.CutPrefix(f, "ociboot.disk="); found {
			disk = v
		}
	}
	rest, isNBD := strings.CutPrefix(disk, "nbd://")
	if !isNBD {
		return "", "", false, nil
	}
	hostport, export, _ := strings.Cut(rest, "/")
	host, port, err := net.SplitHostPort(hostport)
	if err != nil || host == "" || port == "" || export == "" {
		return "", "", false, fmt.Errorf("ociboot.disk=%s: want nbd://<head>:<port>/<export>", disk)
	}
	return hostport, export, true, nil
}

// Notify sends a state line to systemd ($NOTIFY_SOCKET, Type=notify), as
// sd_notify(3) does; without the variable it does nothing.
func Notify(state string) error {
	sock := os.Getenv("NOTIFY_SOCKET")
	if sock == "" {
		return nil
	}
	if sock[0] == '@' {
		sock = "\x00" + sock[1:]
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		return err
	}
	defer c.Close()
	_, err = c.Write([]byte(state))
	return err
}
