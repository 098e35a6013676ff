package nfs

import (
	"strings"
	"testing"

	"github.com/ociboot/ociboot/appliance/nfs/nfscheck"
)

// The procedure table names every procedure as the RFCs do (nfscheck has
// its own list, written from them).
func TestProcedureTable(t *testing.T) {
	for _, p := range programs {
		for i, procs := range p.procs {
			vers := p.low + uint32(i)
			for num, pr := range procs {
				if pr.run == nil {
					t.Errorf("%s v%d procedure %d has no body", p.name, vers, num)
				}
				if got := nfscheck.ProcName(p.num, vers, uint32(num)); !strings.HasSuffix(got, " "+pr.name) {
					t.Errorf("%s v%d procedure %d is %s in the table, %s by the RFCs", p.name, vers, num, pr.name, got)
				}
			}
		}
	}
	for _, tc := range []struct {
		prog, vers, proc uint32
		quick            bool
	}{
		{progNFS, 3, nfsRead, true},
		{progNFS, 3, nfsWrite, true},
		{progNFS, 3, nfsCommit, false},
		{progNFS, 4, nfsCommit, true}, // no such procedure: answered at once
		{progMount, 3, mountMnt, false},
		{progPortmap, 4, pmapGetport, false},
		{400000, 1, 0, true}, // no such program: rejected at once
	} {
		w := &writer{}
		callHeader(w, 1, tc.prog, tc.vers, tc.proc, nil)
		if got := quick(w.b); got != tc.quick {
			t.Errorf("quick(%s): got %v, want %v", nfscheck.ProcName(tc.prog, tc.vers, tc.proc), got, tc.quick)
		}
	}
	// The calls a retransmission must not run twice, as knfsd's duplicate
	// request cache keeps them.
	var changing []string
	for _, p := range nfs3Procs {
		if !p.idempotent {
			changing = append(changing, p.name)
		}
	}
	if got, want := strings.Join(changing, " "), "SETATTR WRITE CREATE MKDIR SYMLINK MKNOD REMOVE RMDIR RENAME LINK"; got != want {
		t.Errorf("non-idempotent NFSv3 procedures: got %s, want %s", got, want)
	}
	var cached []string
	for _, p := range nfs3Procs {
		if p.cached {
			cached = append(cached, p.name)
		}
	}
	if got, want := strings.Join(cached, " "), "SETATTR CREATE MKDIR SYMLINK MKNOD REMOVE RMDIR RENAME LINK"; got != want {
		t.Errorf("NFSv3 procedures in the duplicate request cache: got %s, want %s", got, want)
	}
	if got, want := len(nfs3Procs), nfsCommit+1; got != want {
		t.Errorf("NFSv3 table has %d procedures, want %d", got, want)
	}
}
