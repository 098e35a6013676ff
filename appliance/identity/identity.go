// Package identity makes each node its own machine: when nfsd makes a
// node's root from an image it writes, into that root only, what must
// differ between machines booted from the same image:
//
//   - /etc/hostname, and the 127.0.1.1 line of /etc/hosts;
//   - /etc/machine-id, new and random (systemd, journald and DHCP client
//     IDs derive from it);
//   - SSH host keys (ed25519 and ECDSA P-256) when the image has
//     /etc/ssh, replacing any the image carried;
//   - /root/.ssh/authorized_keys from Netboot.SSHAuthorizedKeys, if any;
//   - for images with cloud-init, a NoCloud seed in
//     /var/lib/cloud/seed/nocloud (instance-id = the node key, the
//     hostname, the authorized keys) and a drop-in that stops cloud-init
//     from reconfiguring the network the root is mounted over.
//
// Files are replaced by rename, never written through: in a node's root
// every file the node has not changed is a hard link into the shared image
// tree, so writing into one would change every node. All paths are
// resolved inside the root (os.Root): an image whose /etc/hostname is a
// symlink to /etc/shadow of the head node cannot make this write there.
package identity

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"strings"

	"golang.org/x/crypto/ssh"
)

// Identity is what one node gets.
type Identity struct {
	// Key is the node key (Pi serial or MAC key); cloud-init's instance-id.
	Key string
	// Hostname is a valid host name (see Hostname).
	Hostname string
	// AuthorizedKeys are OpenSSH public keys allowed to log in as root.
	AuthorizedKeys []string
}

// Written says what Write put into the root; nfsd keeps it beside the
// node's record for the status page.
type Written struct {
	Hostname  string
	MachineID string
	// HostKeys are the SSH host keys' fingerprints, "ssh-ed25519 SHA256:...".
	HostKeys       []string `json:",omitempty"`
	AuthorizedKeys int      `json:",omitempty"`
	CloudInit      bool     `json:",omitempty"`
}

// Hostname turns a node's configured name into a host name: lower case,
// letters, digits and '-' (RFC 1123 label, at most 63 bytes). A name with
// nothing usable left gives "node-<key>".
func Hostname(name, key string) string {
	var b strings.Builder
	dash := false
	for _, c := range strings.ToLower(name) {
		switch {
		case c >= 'a' && c <= 'z' || c >= '0' && c <= '9':
			b.WriteRune(c)
			dash = false
		case !dash && b.Len() > 0:
			b.WriteByte('-')
			dash = true
		}
	}
	h := strings.Trim(b.String(), "-")
	if len(h) > 63 {
		h = strings.TrimRight(h[:63], "-")
	}
	if h == "" {
		return Hostname("node-"+key, "x")
	}
	return h
}

// Write writes id into the root tree at dir (a node's root before it is
// served).
func Write(dir string, id Identity) (Written, error) {
	if id.Hostname == "" {
		id.Hostname = Hostname("", id.Key)
	}
	r, err := os.OpenRoot(dir)
	if err != nil {
		return Written{}, fmt.Errorf("identity: %v", err)
	}
	defer r.Close()
	w := Written{Hostname: id.Hostname}
	if err := replace(r, "etc/hostname", []byte(id.Hostname+"\n"), 0o644); err != nil {
		return w, err
	}
	hosts, err := readRegular(r, "etc/hosts")
	if err != nil {
		return w, err
	}
	if err := replace(r, "etc/hosts", hostsFile(hosts, id.Hostname), 0o644); err != nil {
		return w, err
	}
	var mid [16]byte
	rand.Read(mid[:])
	mid[6] = mid[6]&0x0f | 0x40 // a v4 UUID, as systemd makes them
	mid[8] = mid[8]&0x3f | 0x80
	w.MachineID = hex.EncodeToString(mid[:])
	if err := replace(r, "etc/machine-id", []byte(w.MachineID+"\n"), 0o444); err != nil {
		return w, err
	}
	if isDir(r, "etc/ssh") {
		fps, err := hostKeys(r, id.Hostname)
		if err != nil {
			return w, err
		}
		w.HostKeys = fps
	}
	if len(id.AuthorizedKeys) > 0 {
		if err := authorizedKeys(r, id.AuthorizedKeys); err != nil {
			return w, err
		}
		w.AuthorizedKeys = len(id.AuthorizedKeys)
	}
	if hasCloudInit(r) {
		if err := cloudInit(r, id); err != nil {
			return w, err
		}
		w.CloudInit = true
	}
	return w, nil
}

// readRegular reads name if it is a regular file; anything else (missing,
// a symlink, a device) reads as empty and is replaced.
func readRegular(r *os.Root, name string) ([]byte, error) {
	fi, err := r.Lstat(name)
	if errors.Is(err, fs.ErrNotExist) || err == nil && !fi.Mode().IsRegular() {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("identity: /%s: %v", name, err)
	}
	b, err := r.ReadFile(name)
	if err != nil {
		return nil, fmt.Errorf("identity: /%s: %v", name, err)
	}
	return b, nil
}

func isDir(r *os.Root, name string) bool {
	fi, err := r.Stat(name)
	return err == nil && fi.IsDir()
}

// replace puts data at name by writing a temp file beside it and renaming
// it over: a hard link into the image is replaced, not written through.
func replace(r *os.Root, name string, data []byte, perm os.FileMode) error {
	if err := r.MkdirAll(path.Dir(name), 0o755); err != nil {
		return fmt.Errorf("identity: /%s: %v", path.Dir(name), err)
	}
	var rnd [6]byte
	rand.Read(rnd[:])
	tmp := path.Join(path.Dir(name), ".ociboot-identity-"+hex.EncodeToString(rnd[:]))
	f, err := r.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return fmt.Errorf("identity: /%s: %v", name, err)
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Chmod(perm) // the umask may have taken bits away
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = r.Rename(tmp, name)
	}
	if err != nil {
		r.Remove(tmp)
		return fmt.Errorf("identity: /%s: %v", name, err)
	}
	return nil
}

// hostsFile keeps the image's /etc/hosts but for the 127.0.1.1 line, which
// Debian uses for the machine's own name.
func hostsFile(old []byte, hostname string) []byte {
	own := "127.0.1.1\t" + hostname
	if len(old) == 0 {
		return []byte("127.0.0.1\tlocalhost\n" + own + "\n::1\t\tlocalhost ip6-localhost ip6-loopback\nff02::1\t\tip6-allnodes\nff02::2\t\tip6-allrouters\n")
	}
	var b bytes.Buffer
	placed := false
	for _, line := range strings.SplitAfter(string(old), "\n") {
		if line == "" {
			continue
		}
		f := strings.Fields(line)
		if len(f) > 0 && f[0] == "127.0.1.1" {
			if !placed {
				b.WriteString(own + "\n")
				placed = true
			}
			continue
		}
		b.WriteString(strings.TrimSuffix(line, "\n") + "\n")
		if !placed && len(f) > 0 && f[0] == "127.0.0.1" {
			b.WriteString(own + "\n")
			placed = true
		}
	}
	if !placed {
		b.WriteString(own + "\n")
	}
	return b.Bytes()
}

// hostKeys replaces every ssh_host_* file with new ed25519 and ECDSA keys.
func hostKeys(r *os.Root, hostname string) ([]string, error) {
	ents, err := fs.ReadDir(r.FS(), "etc/ssh")
	if err != nil {
		return nil, fmt.Errorf("identity: /etc/ssh: %v", err)
	}
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), "ssh_host_") {
			if err := r.Remove("etc/ssh/" + e.Name()); err != nil {
				return nil, fmt.Errorf("identity: removing the image's /etc/ssh/%s: %v", e.Name(), err)
			}
		}
	}
	_, edKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	ecKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	var fps []string
	for _, k := range []struct {
		name string
		priv any
	}{{"ed25519", edKey}, {"ecdsa", ecKey}} {
		comment := "root@" + hostname
		blk, err := ssh.MarshalPrivateKey(k.priv, comment)
		if err != nil {
			return nil, fmt.Errorf("identity: %s host key: %v", k.name, err)
		}
		signer, err := ssh.NewSignerFromKey(k.priv)
		if err != nil {
			return nil, err
		}
		pub := signer.PublicKey()
		base := "etc/ssh/ssh_host_" + k.name + "_key"
		if err := replace(r, base, pem.EncodeToMemory(blk), 0o600); err != nil {
			return nil, err
		}
		line := strings.TrimSuffix(string(ssh.MarshalAuthorizedKey(pub)), "\n") + " " + comment + "\n"
		if err := replace(r, base+".pub", []byte(line), 0o644); err != nil {
			return nil, err
		}
		fps = append(fps, pub.Type()+" "+ssh.FingerprintSHA256(pub))
	}
	return fps, nil
}

// authorizedKeys adds keys to root's authorized_keys (those the image had
// stay).
func authorizedKeys(r *os.Root, keys []string) error {
	if err := r.MkdirAll("root/.ssh", 0o700); err != nil {
		return fmt.Errorf("identity: /root/.ssh: %v", err)
	}
	if err := r.Chmod("root/.ssh", 0o700); err != nil {
		return fmt.Errorf("identity: /root/.ssh: %v", err)
	}
	old, err := readRegular(r, "root/.ssh/authorized_keys")
	if err != nil {
		return err
	}
	have := map[string]bool{}
	var b bytes.Buffer
	for _, line := range strings.Split(string(old), "\n") {
		if line = strings.TrimSpace(line); line != "" {
			have[line] = true
			b.WriteString(line + "\n")
		}
	}
	for _, k := range keys {
		if k = strings.TrimSpace(k); !have[k] {
			have[k] = true
			b.WriteString(k + "\n")
		}
	}
	return replace(r, "root/.ssh/authorized_keys", b.Bytes(), 0o600)
}

func hasCloudInit(r *os.Root) bool {
	for _, p := range []string{"usr/bin/cloud-init", "etc/cloud/cloud.cfg"} {
		if _, err := r.Lstat(p); err == nil {
			return true
		}
	}
	return false
}

// cloudInit writes a NoCloud seed. It keeps the host keys written above
// (cloud-init would otherwise delete and remake them at the first boot of
// each instance) and disables cloud-init's network configuration: the
// interface carries the NFS root and must not be taken down.
func cloudInit(r *os.Root, id Identity) error {
	meta := fmt.Sprintf("instance-id: ociboot-%s\nlocal-hostname: %s\n", id.Key, id.Hostname)
	var user strings.Builder
	user.WriteString("#cloud-config\n")
	fmt.Fprintf(&user, "hostname: %s\npreserve_hostname: true\nssh_deletekeys: false\n", id.Hostname)
	if len(id.AuthorizedKeys) > 0 {
		user.WriteString("ssh_authorized_keys:\n")
		for _, k := range id.AuthorizedKeys {
			fmt.Fprintf(&user, "  - %q\n", strings.TrimSpace(k))
		}
	}
	seed := "var/lib/cloud/seed/nocloud/"
	if err := replace(r, seed+"meta-data", []byte(meta), 0o644); err != nil {
		return err
	}
	if err := replace(r, seed+"user-data", []byte(user.String()), 0o600); err != nil {
		return err
	}
	cfg := "# Written by ociboot: this node's root is on NFS over its network\n" +
		"# interface; cloud-init must not reconfigure it.\n" +
		"datasource_list: [ NoCloud, None ]\nnetwork: {config: disabled}\n"
	return replace(r, "etc/cloud/cloud.cfg.d/99-ociboot-netboot.cfg", []byte(cfg), 0o644)
}
