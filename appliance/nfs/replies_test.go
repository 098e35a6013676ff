package nfs

import "testing"

// A CREATE, MKDIR, SYMLINK or MKNOD that fails after its checks (here:
// the name exists) answers with the directory's wcc_data alone. An extra
// word in front shifts the post-op attributes, and the kernel client then
// takes garbage for the directory's fileid and marks it stale.
func TestCreateFailureReply(t *testing.T) {
	env := newEnv(t)
	c := env.dial(0, 0)
	root, _ := c.mnt("/nodes/node1")
	etc := c.walk(root, "etc")
	dir, st := c.getattr(etc)
	if st != 0 {
		t.Fatal(st)
	}
	for _, tc := range []struct {
		name string
		proc uint32
		args func(w *writer)
	}{
		{"CREATE", nfsCreate, func(w *writer) { w.uint32(createGuarded); modeOnly(w, 0o644) }},
		{"MKDIR", nfsMkdir, func(w *writer) { modeOnly(w, 0o755) }},
		{"SYMLINK", nfsSymlink, func(w *writer) { modeOnly(w, 0o777); w.string("target") }},
		{"MKNOD", nfsMknod, func(w *writer) { w.uint32(typeFifo); modeOnly(w, 0o644) }},
	} {
		r := c.raw(progNFS, 3, tc.proc, args(func(w *writer) {
			w.opaque(etc)
			w.string("hostname")
			tc.args(w)
		}))
		if got, want := r.uint32(), uint32(errExist); got != want {
			t.Errorf("%s of an existing name: status %d, want %d", tc.name, got, want)
			continue
		}
		if r.bool() {
			r.uint64()
			r.uint64()
			r.uint64()
		}
		post, ok := readPostOp(r)
		if r.err != nil || len(r.b) != 0 {
			t.Errorf("%s failure reply: %d bytes left over after wcc_data (err %v)", tc.name, len(r.b), r.err)
			continue
		}
		if !ok || post.fileid != dir.fileid || post.typ != typeDir {
			t.Errorf("%s failure reply: directory post-op attributes %+v (present %v), want fileid %d of a directory", tc.name, post, ok, dir.fileid)
		}
	}
}

// Moving a directory to another parent rewrites its ".." entry, so Linux
// asks for write permission on the directory itself, not only on both
// parents; a rename inside one parent does not.
func TestRenameDirectoryAcrossParents(t *testing.T) {
	env := newEnv(t)
	rootc := env.dial(0, 0)
	user := env.dial(1000, 1000)
	nobody := env.dial(65534, 65534)
	root, _ := rootc.mnt("/nodes/node1")
	tmp := rootc.walk(root, "tmp")
	d1, st := rootc.mkdir(tmp, "d1", 0o777)
	if st != 0 {
		t.Fatal(st)
	}
	d2, st := rootc.mkdir(tmp, "d2", 0o777)
	if st != 0 {
		t.Fatal(st)
	}
	for _, n := range []string{"rootdir", "rootdir2", "rootdir3"} {
		if _, st := rootc.mkdir(d1, n, 0o755); st != 0 {
			t.Fatal(st)
		}
	}
	if _, st := user.mkdir(d1, "userdir", 0o755); st != 0 {
		t.Fatal(st)
	}
	if _, st := user.mkdir(d1, "readonly", 0o555); st != 0 {
		t.Fatal(st)
	}
	if _, st := rootc.create(d1, "rootfile", 0o644); st != 0 {
		t.Fatal(st)
	}
	for _, tc := range []struct {
		who      string
		c        *client
		from, to []byte
		name     string
		want     uint32
	}{
		{"nobody, another's directory to a new parent", nobody, d1, d2, "rootdir", errAcces},
		{"nobody, another's directory in its parent", nobody, d1, d1, "rootdir3", nfsOK},
		{"nobody, another's file to a new parent", nobody, d1, d2, "rootfile", nfsOK},
		{"owner, a directory without write permission to a new parent", user, d1, d2, "readonly", errAcces},
		{"owner, a writable directory to a new parent", user, d1, d2, "userdir", nfsOK},
		{"root, another's directory to a new parent", rootc, d1, d2, "rootdir2", nfsOK},
	} {
		to := tc.name
		if string(tc.from) == string(tc.to) {
			to = tc.name + "-renamed"
		}
		if got := tc.c.rename(tc.from, tc.name, tc.to, to); got != tc.want {
			t.Errorf("RENAME as %s: status %d, want %d", tc.who, got, tc.want)
		}
	}
}
