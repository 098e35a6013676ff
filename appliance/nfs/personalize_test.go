package nfs

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// A node's new root gets what Personalize writes before any client sees
// it; the image and other nodes never do, and a failure serves nothing.
func TestPersonalizeNewRoots(t *testing.T) {
	env := newEnv(t)
	fail := true
	env.personalize = func(key, root string) error {
		if fail {
			return errors.New("no entropy today")
		}
		p := filepath.Join(root, "etc", "hostname")
		tmp := p + ".new"
		if err := os.WriteFile(tmp, []byte(key+"-host\n"), 0o644); err != nil {
			return err
		}
		return os.Rename(tmp, p)
	}
	env.restart()
	c := env.dial(0, 0)
	if _, st := c.mnt("/nodes/node1"); st == 0 {
		t.Fatalf("MNT succeeded although writing the node's identity failed")
	}
	if _, err := os.Stat(env.st.Path("nodes", "node1", viewFile)); !os.IsNotExist(err) {
		t.Errorf("view.json written for a root that was never served: %v", err)
	}
	fail = false
	for _, node := range []string{"node1", "node2"} {
		root, st := c.mnt("/nodes/" + node)
		if st != 0 {
			t.Fatalf("MNT %s: status %d", node, st)
		}
		if got, _, _ := c.read(c.walk(root, "etc", "hostname"), 0, 100); string(got) != node+"-host\n" {
			t.Errorf("%s: etc/hostname reads %q, want %q", node, got, node+"-host\n")
		}
	}
	if b, _ := os.ReadFile(filepath.Join(env.image, "etc", "hostname")); string(b) != "node\n" {
		t.Errorf("the image's etc/hostname changed to %q", b)
	}
	// An existing root is not personalized again (a restart keeps the
	// node's identity).
	env.personalize = func(key, root string) error { t.Errorf("Personalize(%s) called for an existing root", key); return nil }
	env.restart()
	c = env.dial(0, 0)
	if _, st := c.mnt("/nodes/node1"); st != 0 {
		t.Fatal(st)
	}
}
