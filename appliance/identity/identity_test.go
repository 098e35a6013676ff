package identity

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"

	"github.com/ociboot/ociboot/appliance/testenv"
)

// imageAndRoot makes an "image" tree and a node root whose files are hard
// links into it, as nfsd builds them.
func imageAndRoot(t *testing.T, files map[string]string) (image, root string) {
	t.Helper()
	base := t.TempDir()
	image, root = filepath.Join(base, "image"), filepath.Join(base, "root")
	for name, data := range files {
		for _, d := range []string{image, root} {
			if err := os.MkdirAll(filepath.Join(d, filepath.Dir(name)), 0o755); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.WriteFile(filepath.Join(image, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Link(filepath.Join(image, name), filepath.Join(root, name)); err != nil {
			t.Fatal(err)
		}
	}
	return image, root
}

func TestWriteLeavesImageAlone(t *testing.T) {
	files := map[string]string{
		"etc/hostname":                 "debian\n",
		"etc/hosts":                    "127.0.0.1\tlocalhost\n127.0.1.1\tdebian\n10.0.0.5\tregistry\n",
		"etc/machine-id":               "",
		"etc/ssh/sshd_config":          "# image\n",
		"etc/ssh/ssh_host_rsa_key":     "image's key\n",
		"etc/ssh/ssh_host_rsa_key.pub": "image's key\n",
		"root/.ssh/authorized_keys":    "ssh-ed25519 AAAAimage image\n",
		"etc/cloud/cloud.cfg":          "# cloud\n",
	}
	image, root := imageAndRoot(t, files)
	key := "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFxuY3y0p1mY0h2kM1hQm0d7c0xXeW0pQ2g0YlQvZ2Zs user@laptop"
	w, err := Write(root, Identity{Key: "5b154510", Hostname: "cm4-2", AuthorizedKeys: []string{key}})
	if err != nil {
		t.Fatal(err)
	}
	for name, data := range files {
		b, err := os.ReadFile(filepath.Join(image, name))
		if err != nil || string(b) != data {
			t.Errorf("image's %s changed: got %q, %v; want %q", name, b, err, data)
		}
	}
	read := func(name string) string {
		b, err := os.ReadFile(filepath.Join(root, name))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		return string(b)
	}
	if got, want := read("etc/hostname"), "cm4-2\n"; got != want {
		t.Errorf("hostname: got %q, want %q", got, want)
	}
	if got, want := read("etc/hosts"), "127.0.0.1\tlocalhost\n127.0.1.1\tcm4-2\n10.0.0.5\tregistry\n"; got != want {
		t.Errorf("hosts:\ngot  %q\nwant %q", got, want)
	}
	if got := strings.TrimSpace(read("etc/machine-id")); len(got) != 32 || got != w.MachineID {
		t.Errorf("machine-id: got %q, recorded %q", got, w.MachineID)
	}
	if _, err := os.Lstat(filepath.Join(root, "etc/ssh/ssh_host_rsa_key")); !os.IsNotExist(err) {
		t.Errorf("the image's RSA host key is still in the node's root: %v", err)
	}
	if got, want := len(w.HostKeys), 2; got != want {
		t.Fatalf("host keys: got %v, want %d", w.HostKeys, want)
	}
	for _, typ := range []string{"ed25519", "ecdsa"} {
		priv := filepath.Join(root, "etc/ssh/ssh_host_"+typ+"_key")
		fi, err := os.Stat(priv)
		if err != nil {
			t.Fatal(err)
		}
		if got, want := fi.Mode().Perm(), os.FileMode(0o600); got != want {
			t.Errorf("%s: mode %v, want %v", priv, got, want)
		}
		signer, err := ssh.ParsePrivateKey([]byte(read("etc/ssh/ssh_host_" + typ + "_key")))
		if err != nil {
			t.Fatalf("%s: %v", typ, err)
		}
		pub, _, _, _, err := ssh.ParseAuthorizedKey([]byte(read("etc/ssh/ssh_host_" + typ + "_key.pub")))
		if err != nil {
			t.Fatal(err)
		}
		if got, want := ssh.FingerprintSHA256(pub), ssh.FingerprintSHA256(signer.PublicKey()); got != want {
			t.Errorf("%s: .pub %s does not match the private key's %s", typ, got, want)
		}
		// OpenSSH itself must read what sshd will load.
		testenv.NeedTool(t, "ssh-keygen", "openssh-client")
		out, err := exec.Command("ssh-keygen", "-y", "-f", priv).CombinedOutput()
		if err != nil {
			t.Errorf("ssh-keygen -y %s: %v\n%s", priv, err, out)
		} else if p2, _, _, _, err := ssh.ParseAuthorizedKey(out); err != nil || ssh.FingerprintSHA256(p2) != ssh.FingerprintSHA256(pub) {
			t.Errorf("ssh-keygen derives another public key from %s: %s", priv, out)
		}
	}
	if got, want := read("root/.ssh/authorized_keys"), "ssh-ed25519 AAAAimage image\n"+key+"\n"; got != want {
		t.Errorf("authorized_keys:\ngot  %q\nwant %q", got, want)
	}
	if !w.CloudInit {
		t.Errorf("cloud-init image not recognised")
	}
	if got := read("var/lib/cloud/seed/nocloud/meta-data"); !strings.Contains(got, "instance-id: ociboot-5b154510\n") || !strings.Contains(got, "local-hostname: cm4-2\n") {
		t.Errorf("meta-data: got %q", got)
	}
	if got := read("var/lib/cloud/seed/nocloud/user-data"); !strings.HasPrefix(got, "#cloud-config\n") || !strings.Contains(got, key) || !strings.Contains(got, "ssh_deletekeys: false") {
		t.Errorf("user-data: got %q", got)
	}
	if got := read("etc/cloud/cloud.cfg.d/99-ociboot-netboot.cfg"); !strings.Contains(got, "network: {config: disabled}") {
		t.Errorf("cloud-init network drop-in: got %q", got)
	}
	ents, _ := os.ReadDir(filepath.Join(root, "etc"))
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".ociboot-identity-") {
			t.Errorf("temp file left: %s", e.Name())
		}
	}
}

func TestWriteIsUniquePerNode(t *testing.T) {
	files := map[string]string{"etc/hostname": "x\n", "etc/ssh/sshd_config": ""}
	_, r1 := imageAndRoot(t, files)
	_, r2 := imageAndRoot(t, files)
	w1, err := Write(r1, Identity{Key: "a"})
	if err != nil {
		t.Fatal(err)
	}
	w2, err := Write(r2, Identity{Key: "b"})
	if err != nil {
		t.Fatal(err)
	}
	if w1.MachineID == w2.MachineID {
		t.Errorf("two nodes got machine-id %s", w1.MachineID)
	}
	for i := range w1.HostKeys {
		if w1.HostKeys[i] == w2.HostKeys[i] {
			t.Errorf("two nodes got host key %s", w1.HostKeys[i])
		}
	}
	if got, want := w1.Hostname, "node-a"; got != want {
		t.Errorf("hostname without a name: got %q, want %q", got, want)
	}
}

// A hostile image cannot make the writer touch anything outside the root.
func TestWriteStaysInsideRoot(t *testing.T) {
	base := t.TempDir()
	outside := filepath.Join(base, "outside")
	os.WriteFile(outside, []byte("precious\n"), 0o644)
	root := filepath.Join(base, "root")
	os.MkdirAll(filepath.Join(root, "etc"), 0o755)
	os.Symlink(outside, filepath.Join(root, "etc/hosts"))
	os.Symlink("../../outside", filepath.Join(root, "etc/hostname"))
	os.Symlink(base, filepath.Join(root, "root"))
	if _, err := Write(root, Identity{Key: "k", AuthorizedKeys: []string{"ssh-ed25519 AAAA x"}}); err == nil {
		t.Errorf("Write through /root -> %s succeeded", base)
	}
	if b, _ := os.ReadFile(outside); string(b) != "precious\n" {
		t.Errorf("file outside the root changed: %q", b)
	}
	if _, err := os.Stat(filepath.Join(base, ".ssh")); err == nil {
		t.Errorf("Write created %s/.ssh outside the root", base)
	}
	// The symlinks themselves were replaced by files of the node's own.
	for _, name := range []string{"etc/hosts", "etc/hostname"} {
		fi, err := os.Lstat(filepath.Join(root, name))
		if err != nil || !fi.Mode().IsRegular() {
			t.Errorf("%s: got %v, %v; want a regular file", name, fi, err)
		}
	}
}

func TestHostname(t *testing.T) {
	for _, tc := range []struct{ name, key, want string }{
		{"cm4-2", "k", "cm4-2"},
		{"CM4 slot 2", "k", "cm4-slot-2"},
		{"", "5b154510", "node-5b154510"},
		{"--", "dc-a6-32-01-02-03", "node-dc-a6-32-01-02-03"},
		{strings.Repeat("a", 70), "k", strings.Repeat("a", 63)},
		{"Knoten-ä", "k", "knoten"},
	} {
		if got := Hostname(tc.name, tc.key); got != tc.want {
			t.Errorf("Hostname(%q, %q): got %q, want %q", tc.name, tc.key, got, tc.want)
		}
	}
}
