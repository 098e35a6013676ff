package nfs

import "testing"

// Files nfsd makes and changes resolve from memory: no walk of the view
// after the one at start.
func TestNoWalkForNewFiles(t *testing.T) {
	env := newEnv(t)
	c := env.dial(0, 0)
	root, _ := c.mnt("/nodes/node1")
	e := env.srv.exports[exportID("node1")]
	e.pmu.RLock()
	started := e.walkT
	e.pmu.RUnlock()
	d, st := c.mkdir(root, "newdir", 0o755)
	if st != 0 {
		t.Fatal(st)
	}
	sub, _ := c.mkdir(d, "sub", 0o755)
	f, st := c.create(sub, "f", 0o644)
	if st != 0 {
		t.Fatal(st)
	}
	c.write(f, 0, []byte("x"), unstable)
	c.commit(f)
	c.setattr(f, 0o600, -1, nil)
	c.lookup(sub, "f")
	c.readdirplus(sub, 4096)
	host := c.walk(root, "etc", "hostname")
	c.write(host, 0, []byte("copy"), fileSync) // a copy-up
	if _, st := c.getattr(host); st != 0 {
		t.Fatalf("GETATTR of the copy: %d", st)
	}
	e.pmu.RLock()
	defer e.pmu.RUnlock()
	if !e.walkT.Equal(started) {
		t.Errorf("the view was walked again for files nfsd itself made or copied")
	}
}
