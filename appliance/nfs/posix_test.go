package nfs

import (
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// set is a SETATTR request for the tests: nil fields stay unchanged.
type set struct {
	mode, uid, gid *uint32
	size           *uint64
	atime, mtime   uint32 // time_how
	times          [2]uint32
}

func u32(v uint32) *uint32 { return &v }
func u64(v uint64) *uint64 { return &v }

func writeSattr(w *writer, sa set) {
	for _, v := range []*uint32{sa.mode, sa.uid, sa.gid} {
		w.bool(v != nil)
		if v != nil {
			w.uint32(*v)
		}
	}
	w.bool(sa.size != nil)
	if sa.size != nil {
		w.uint64(*sa.size)
	}
	for i, how := range []uint32{sa.atime, sa.mtime} {
		w.uint32(how)
		if how == toClientTime {
			w.uint32(sa.times[i])
			w.uint32(0)
		}
	}
}

func (c *client) sattr(fh []byte, sa set) uint32 {
	return c.raw(progNFS, 3, nfsSetattr, args(func(w *writer) {
		w.opaque(fh)
		writeSattr(w, sa)
		w.bool(false)
	})).uint32()
}

func (c *client) createWith(dir []byte, name string, how uint32, sa set) ([]byte, uint32) {
	r := c.raw(progNFS, 3, nfsCreate, args(func(w *writer) {
		w.opaque(dir)
		w.string(name)
		w.uint32(how)
		writeSattr(w, sa)
	}))
	st := r.uint32()
	if st != 0 {
		return nil, st
	}
	r.bool()
	return r.opaque(64), st
}

func (c *client) mknodChr(dir []byte, name string) uint32 {
	return c.raw(progNFS, 3, nfsMknod, args(func(w *writer) {
		w.opaque(dir)
		w.string(name)
		w.uint32(typeChr)
		writeSattr(w, set{mode: u32(0o644)})
		w.uint32(1)
		w.uint32(3)
	})).uint32()
}

// TestPOSIXRules checks the ownership and mode rules the Linux kernel
// applies to a local caller on calls from NFS callers of other uids and
// groups: the expected statuses and attributes are what the same
// system calls give on a local file system (as knfsd passes them on).
func TestPOSIXRules(t *testing.T) {
	env := newEnv(t)
	rootc := env.dial(0, 0)
	alice := env.dial(1000, 1000, 1000, 27) // owner of alice's files, in group 27
	bob := env.dial(2000, 2000, 2000)       // a stranger
	root, _ := rootc.mnt("/nodes/node1")
	tmp := rootc.walk(root, "tmp")

	// A setgid directory of group 50, which alice is not in.
	sg, st := rootc.mkdir(tmp, "sg", 0o777)
	if st != 0 {
		t.Fatal(st)
	}
	if st := rootc.sattr(sg, set{gid: u32(50), mode: u32(0o2777)}); st != 0 {
		t.Fatalf("SETATTR of the setgid dir: %d", st)
	}
	file := func(c *client, dir []byte, name string, mode uint32) []byte {
		t.Helper()
		fh, st := c.create(dir, name, mode)
		if st != 0 {
			t.Fatalf("CREATE %s as %d: status %d", name, c.uid, st)
		}
		return fh
	}
	attr := func(fh []byte) attrs {
		t.Helper()
		a, st := rootc.getattr(fh)
		if st != 0 {
			t.Fatalf("GETATTR: %d", st)
		}
		return a
	}

	// CREATE in a setgid directory: the directory's group, and no
	// S_ISGID for a group the caller is not in.
	f := file(alice, sg, "f", 0o2755)
	if a := attr(f); a.gid != 50 || a.mode&0o7777 != 0o755 || a.uid != 1000 {
		t.Errorf("CREATE 02755 in a setgid dir of group 50 by 1000:1000: %d:%d %o, want 1000:50 0755", a.uid, a.gid, a.mode&0o7777)
	}
	// MKDIR there: group and S_ISGID inherited.
	d, st := alice.mkdir(sg, "d", 0o755)
	if st != 0 {
		t.Fatal(st)
	}
	if a := attr(d); a.gid != 50 || a.mode&0o7777 != 0o2755 {
		t.Errorf("MKDIR in a setgid dir: gid %d mode %o, want 50 02755", a.gid, a.mode&0o7777)
	}

	mine := file(alice, tmp, "mine", 0o644)
	for _, tc := range []struct {
		name string
		c    *client
		sa   set
		want uint32
	}{
		{"stranger chown to himself", bob, set{uid: u32(2000)}, errPerm},
		{"stranger chown to the owner (no change)", bob, set{uid: u32(1000)}, errPerm},
		{"stranger chgrp", bob, set{gid: u32(2000)}, errPerm},
		{"owner chown to another user", alice, set{uid: u32(2000)}, errPerm},
		{"owner chgrp to a group it is not in", alice, set{gid: u32(50)}, errPerm},
		{"owner chgrp to a supplementary group", alice, set{gid: u32(27)}, nfsOK},
		{"stranger chmod", bob, set{mode: u32(0o666)}, errPerm},
		{"stranger truncate without write permission", bob, set{size: u64(0)}, errAcces},
		{"stranger utimes to now without write permission", bob, set{atime: toServerTime, mtime: toServerTime}, errAcces},
		{"stranger explicit utimes", bob, set{atime: toClientTime, mtime: toClientTime, times: [2]uint32{1, 1}}, errPerm},
		{"owner explicit utimes", alice, set{atime: toClientTime, mtime: toClientTime, times: [2]uint32{100, 200}}, nfsOK},
		{"root chown", rootc, set{uid: u32(3000), gid: u32(3000)}, nfsOK},
	} {
		if got := tc.c.sattr(mine, tc.sa); got != tc.want {
			t.Errorf("%s: status %d, want %d", tc.name, got, tc.want)
		}
	}
	if a := attr(mine); a.uid != 3000 || a.gid != 3000 || a.mtime[0] != 200 {
		t.Errorf("after the SETATTRs: %d:%d mtime %d, want 3000:3000 mtime 200", a.uid, a.gid, a.mtime[0])
	}

	// A writable file of someone else: utimes to now is allowed, explicit
	// times are not.
	shared := file(alice, tmp, "shared", 0o666)
	if st := bob.sattr(shared, set{atime: toServerTime, mtime: toServerTime}); st != 0 {
		t.Errorf("utimes to now of a writable file by a stranger: status %d, want OK", st)
	}
	if st := bob.sattr(shared, set{size: u64(0)}); st != 0 {
		t.Errorf("truncate of a writable file by a stranger: status %d, want OK", st)
	}

	// chmod g+s by the owner of a file whose group it is not in: the
	// kernel drops S_ISGID.
	g := file(rootc, tmp, "g", 0o644)
	rootc.sattr(g, set{uid: u32(1000), gid: u32(50)})
	if st := alice.sattr(g, set{mode: u32(0o2755)}); st != 0 {
		t.Fatalf("chmod by the owner: %d", st)
	}
	if a := attr(g); a.mode&0o7777 != 0o755 {
		t.Errorf("chmod 02755 by an owner not in the group: mode %o, want 0755", a.mode&0o7777)
	}

	// Setuid and setgid go on a write and on a truncate by a non-root
	// caller and on chown, as on a local file system.
	for _, tc := range []struct {
		name string
		do   func(fh []byte) uint32
	}{
		{"write by the owner", func(fh []byte) uint32 { st, _ := alice.write(fh, 0, []byte("x"), fileSync); return st }},
		{"truncate by the owner", func(fh []byte) uint32 { return alice.sattr(fh, set{size: u64(1)}) }},
		{"chown by root", func(fh []byte) uint32 { return rootc.sattr(fh, set{uid: u32(1000), gid: u32(1000)}) }},
	} {
		name := "s-" + strings.ReplaceAll(tc.name, " ", "-")
		fh := file(rootc, tmp, name, 0o644)
		rootc.sattr(fh, set{uid: u32(1000), gid: u32(1000)})
		rootc.sattr(fh, set{mode: u32(0o6775)})
		if a := attr(fh); a.mode&0o7777 != 0o6775 {
			t.Fatalf("%s: setup mode %o", tc.name, a.mode&0o7777)
		}
		if st := tc.do(fh); st != 0 {
			t.Errorf("%s: status %d", tc.name, st)
			continue
		}
		if a := attr(fh); a.mode&0o6000 != 0 {
			t.Errorf("%s: mode %o still setuid/setgid", tc.name, a.mode&0o7777)
		}
	}
	// A write by root keeps them (CAP_FSETID).
	rs := file(rootc, tmp, "rootsuid", 0o4755)
	rootc.write(rs, 0, []byte("x"), fileSync)
	if a := attr(rs); a.mode&0o7777 != 0o4755 {
		t.Errorf("write by root: mode %o, want 04755", a.mode&0o7777)
	}

	// Sticky /tmp: a stranger may neither remove nor rename nor replace
	// alice's file; the owner may.
	file(alice, tmp, "alices", 0o644)
	file(bob, tmp, "bobs", 0o644)
	for _, tc := range []struct {
		name string
		got  uint32
		want uint32
	}{
		{"stranger REMOVE in sticky dir", bob.nameOp(nfsRemove, tmp, "alices"), errPerm},
		{"stranger RENAME from sticky dir", bob.rename(tmp, "alices", tmp, "x"), errPerm},
		{"stranger RENAME over another's file in sticky dir", bob.rename(tmp, "bobs", tmp, "alices"), errPerm},
		{"owner RENAME in sticky dir", alice.rename(tmp, "alices", tmp, "alices2"), nfsOK},
		{"owner REMOVE in sticky dir", alice.nameOp(nfsRemove, tmp, "alices2"), nfsOK},
		{"MKNOD of a device by a user", alice.mknodChr(tmp, "dev"), errPerm},
		{"MKNOD of a device by root", rootc.mknodChr(tmp, "dev"), nfsOK},
	} {
		if tc.got != tc.want {
			t.Errorf("%s: status %d, want %d", tc.name, tc.got, tc.want)
		}
	}
	// LINK needs write permission on the directory; like knfsd (vfs_link)
	// the head node's fs.protected_hardlinks does not apply.
	secret := file(alice, tmp, "secret", 0o600)
	if st := bob.link(secret, tmp, "linked"); st != 0 {
		t.Errorf("LINK to another user's 0600 file in a writable dir: status %d, want OK (as knfsd and ganesha)", st)
	}
	if st := bob.link(secret, rootc.walk(root, "etc"), "linked"); st != errAcces {
		t.Errorf("LINK into an unwritable dir: status %d, want ACCES", st)
	}
	// A directory moved to another parent by someone who cannot write
	// it (its ".." changes).
	pub, _ := rootc.mkdir(root, "pub", 0o777)
	ro, _ := rootc.mkdir(pub, "ro", 0o555)
	rootc.sattr(ro, set{uid: u32(1000)})
	if st := bob.rename(pub, "ro", tmp, "ro"); st != errAcces {
		t.Errorf("RENAME of an unwritable directory to another parent: status %d, want ACCES", st)
	}
	_ = unix.S_ISGID
}
