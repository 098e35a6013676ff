package nfs

import (
	"log/slog"
	"runtime"

	"golang.org/x/sys/unix"
)

// Calls that change the namespace or attributes run their last system
// call (chown, chmod, utimensat, openat(O_CREAT), mkdir, mknod, symlink,
// unlink, rename, link, ftruncate) with the caller's file system identity:
// fsuid, fsgid and supplementary groups set on the calling thread only.
// The kernel then applies its own ownership and mode rules: who may chown
// and chgrp, S_ISGID dropped for a group the caller is not in, the group
// and S_ISGID a setgid directory passes on, setuid/setgid cleared by
// chown and by writes and truncates of anyone without CAP_FSETID, the
// sticky-directory rule, utimes' owner-or-writer rule, protected hard
// links. Re-implementing them would drift from the kernel with every
// release (mode_strip_sgid moved in 6.0, for one); knfsd and
// nfs-ganesha's VFS backend do the same.
//
// setfsuid to a non-zero uid also drops the file system capabilities
// (CAP_CHOWN, CAP_FOWNER, CAP_DAC_OVERRIDE, CAP_FSETID, CAP_MKNOD, ...)
// from the thread's effective set, and setfsuid(0) brings them back.
// Lookups and opens of the server's own (resolving a handle, opening the
// directory the change happens in, the copy-up) stay root's: NFS checks
// permissions on the object a handle names, not on the path to it.

// nfsdGroups are the supplementary groups the server started with, put
// back on a thread after a call, with its
// own uid and gid.
var (
	nfsdGroups = func() []int {
		g, _ := unix.Getgroups()
		return g
	}()
	nfsdUID, nfsdGID = unix.Geteuid(), unix.Getegid()
)

// asCaller runs fn on an OS thread that has c's file system identity.
// fn runs on a goroutine of its own that is locked to its thread: if the
// thread's identity cannot be put back afterwards, the goroutine exits
// still locked and the Go runtime ends the thread, so no other goroutine
// ever runs with a client's identity. New threads are never cloned from a
// locked one (the runtime uses its template thread), so none inherits it.
func asCaller(c cred, fn func() error) error {
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := setCred(c); err != nil {
			// Partly switched: let the thread die with the goroutine.
			done <- err
			return
		}
		err := fn()
		if rerr := restoreCred(); rerr != nil {
			slog.Error("nfsd: restoring a thread's identity failed; the thread is dropped", "err", rerr)
			done <- err
			return
		}
		runtime.UnlockOSThread()
		done <- err
	}()
	return <-done
}

func setCred(c cred) error {
	groups := make([]int, 0, len(c.gids)+1)
	for _, g := range c.gids {
		groups = append(groups, int(g))
	}
	if err := unix.Setgroups(groups); err != nil {
		return err
	}
	if err := unix.Setfsgid(int(c.gid)); err != nil {
		return err
	}
	// setfsuid reports no error; it returns the previous fsuid, and the
	// current one is read back to check that the change took.
	unix.Setfsuid(int(c.uid))
	if prev, _ := unix.SetfsuidRetUid(-1); prev != int(c.uid) {
		return unix.EPERM
	}
	return nil
}

func restoreCred() error {
	unix.Setfsuid(nfsdUID)
	if prev, _ := unix.SetfsuidRetUid(-1); prev != nfsdUID {
		return unix.EPERM
	}
	unix.Setfsgid(nfsdGID)
	if prev, _ := unix.SetfsgidRetGid(-1); prev != nfsdGID {
		return unix.EPERM
	}
	return unix.Setgroups(nfsdGroups)
}
