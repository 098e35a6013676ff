// Package tftpd serves each node its boot files out of its image's boot
// directory, read-only, and synthesizes the per-node ones (cmdline.txt,
// config.txt, iPXE scripts).
//
// A request names a file as the Raspberry Pi bootloader does:
//
//	<serial>/<file>       serial = the low 8 hex digits (TFTP_PREFIX=0)
//	<mac>/<file>          mac = aa-bb-cc-dd-ee-ff (TFTP_PREFIX=2, iPXE nodes)
//	<file>                no prefix: the node is the one whose recorded or
//	                      configured IP is the request's source address
//
// Prefixes are matched case-insensitively and leading slashes are ignored;
// the file part is matched exactly (the boot directory is a Linux tree).
// Where a node's boot files come from (its image before its root exists,
// the root's boot directory after) is nodes.BootOf's decision. Every file
// is opened through an os.Root on that boot directory, so no name, "..",
// or symlink in the image or in the node's root can reach outside it.
package tftpd

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/ociboot/ociboot/appliance/config"
	"github.com/ociboot/ociboot/appliance/images"
	"github.com/ociboot/ociboot/appliance/nodes"
	"github.com/ociboot/ociboot/appliance/store"
)

// ErrNotFound is answered as TFTP error 1, promptly: the Pi firmware probes
// for many files that normally do not exist.
var ErrNotFound = errors.New("file not found")

// Request is a parsed read request.
type Request struct {
	Key  string // node key from the prefix ("" if none)
	File string // path inside the boot directory, slash-separated, clean
}

// ParseRequest splits a requested name into node prefix and file. It
// rejects names that could leave the boot directory or that no bootloader
// sends: "..", empty elements inside the path, NUL and backslashes.
func ParseRequest(name string) (Request, error) {
	if name == "" || len(name) > 512 || strings.ContainsAny(name, "\x00\\") {
		return Request{}, fmt.Errorf("tftpd: malformed file name %q", name)
	}
	name = strings.TrimLeft(name, "/")
	parts := strings.Split(name, "/")
	for _, p := range parts {
		if p == ".." || p == "." || p == "" {
			return Request{}, fmt.Errorf("tftpd: refused file name %q: only plain paths inside the boot directory are served", name)
		}
	}
	var r Request
	if len(parts) > 1 {
		if k, ok := nodeKey(parts[0]); ok {
			r.Key = k
			parts = parts[1:]
		}
	}
	r.File = strings.Join(parts, "/")
	return r, nil
}

// nodeKey recognises a serial (8 hex digits) or a MAC in dash form and
// returns it in the store's spelling (lower case).
func nodeKey(s string) (string, bool) {
	s = strings.ToLower(s)
	if len(s) == 8 && isHex(s) {
		return s, true
	}
	if len(s) == 17 {
		for i := 0; i < 17; i++ {
			if i%3 == 2 {
				if s[i] != '-' {
					return "", false
				}
			} else if !isHex(s[i : i+1]) {
				return "", false
			}
		}
		return s, true
	}
	return "", false
}

func isHex(s string) bool { return strings.Trim(s, "0123456789abcdef") == "" }

// Node is what tftpd knows about the node behind a request: where its
// boot files come from, as nodes.BootOf decides.
type Node struct {
	nodes.Boot
}

// Resolver maps requests to nodes and boot directories.
type Resolver struct {
	Config *config.Config
	Store  *store.Store
}

// Node resolves a request from remote to its node and boot files.
func (r *Resolver) Node(req Request, remote netip.Addr) (Node, error) {
	key := req.Key
	if key == "" {
		k, ok := nodes.KeyByIP(r.Config, r.Store, remote)
		if !ok {
			return Node{}, fmt.Errorf("%w: %s asked for %q without a node prefix and is no known node's address", ErrNotFound, remote, req.File)
		}
		key = k
	}
	key = nodes.Canonical(r.Config, r.Store, key)
	b, err := nodes.BootOf(r.Config, r.Store, key)
	if errors.Is(err, nodes.ErrNoImage) {
		return Node{}, fmt.Errorf("%w: %v", ErrNotFound, err)
	}
	if err != nil {
		return Node{}, err
	}
	return Node{b}, nil
}

// diskOf is node key's disk for its container runtime: its Nodes[].Disk
// (Netboot.NodeDisk already filled in), else Netboot.NodeDisk.
func diskOf(cfg *config.Config, key string) *config.DiskConfig {
	nc, ok := cfg.NodeBySerial(key)
	if !ok {
		if mac, err := net.ParseMAC(strings.ReplaceAll(key, "-", ":")); err == nil && len(key) == 17 {
			nc, ok = cfg.NodeByMAC(mac)
		}
	}
	if ok {
		return nc.Disk
	}
	return cfg.NodeDisk
}

// bootRoot opens the boot directory beneath the node's base: no name,
// "..", or symlink (in the image, or written by the node into its root)
// reaches outside the base, and none in the boot file's path outside the
// boot directory.
func (n Node) bootRoot() (*os.Root, error) {
	base, err := os.OpenRoot(n.Base)
	if err != nil {
		return nil, fmt.Errorf("%w: boot files of %s: %v", ErrNotFound, n.Key, err)
	}
	defer base.Close()
	root, err := base.OpenRoot(filepath.FromSlash(n.BootDir))
	if err != nil {
		return nil, fmt.Errorf("%w: boot directory %s of %s: %v", ErrNotFound, n.BootDir, n.Source(), err)
	}
	return root, nil
}

// Open opens file inside the node's boot directory without following any
// path out of it. Only regular files are served.
func (n Node) Open(file string) (*os.File, error) {
	root, err := n.bootRoot()
	if err != nil {
		return nil, err
	}
	defer root.Close()
	f, err := root.Open(filepath.FromSlash(file))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%w: %s", ErrNotFound, file)
		}
		// Escapes through symlinks end here too.
		return nil, fmt.Errorf("%w: %s: %v", ErrNotFound, file, err)
	}
	fi, err := f.Stat()
	if err != nil || !fi.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("%w: %s is not a regular file", ErrNotFound, file)
	}
	return f, nil
}

// ReadFile reads a file of the boot directory; a missing file is not an
// error (nil, nil): the generated files work without the image's.
func (n Node) ReadFile(file string) ([]byte, error) {
	f, err := n.Open(file)
	if err != nil {
		if errors.Is(err, ErrNotFound) {
			return nil, nil
		}
		return nil, err
	}
	defer f.Close()
	fi, _ := f.Stat()
	if fi.Size() > 1<<20 {
		return nil, fmt.Errorf("tftpd: %s is %d bytes, too large to rewrite", file, fi.Size())
	}
	b := make([]byte, fi.Size())
	_, err = f.ReadAt(b, 0)
	return b, err
}

// names lists the files of the boot directory that are not directories
// (symlinks included: Open decides whether they stay inside).
func (n Node) names() []string {
	root, err := n.bootRoot()
	if err != nil {
		return nil
	}
	defer root.Close()
	d, err := root.Open(".")
	if err != nil {
		return nil
	}
	defer d.Close()
	ents, _ := d.ReadDir(-1)
	var out []string
	for _, e := range ents {
		if !e.IsDir() {
			out = append(out, e.Name())
		}
	}
	return out
}

// Kernel returns the kernel file of the boot directory: the one ocicache
// found in the image, else (always in a node's root, where apt may have
// installed a newer one) images.PickKernel's choice.
func (n Node) Kernel() string {
	if n.Boot.Kernel != "" {
		return path.Base(n.Boot.Kernel)
	}
	return images.PickKernel(n.names())
}

// Initrd returns the initramfs that goes with kernel, if any.
func (n Node) Initrd(kernel string) string {
	var cands []string
	if v, ok := strings.CutPrefix(kernel, "vmlinuz-"); ok {
		cands = append(cands, "initrd.img-"+v, "initramfs-"+v+".img", "initrd-"+v)
	}
	cands = append(cands, "initrd.img", "initramfs8", "initramfs.img")
	for _, c := range cands {
		if f, err := n.Open(c); err == nil {
			f.Close()
			return c
		}
	}
	return ""
}
