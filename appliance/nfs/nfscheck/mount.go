package nfscheck

import "fmt"

// MOUNT v3 (RFC 1813 Appendix I).

var mount3Procs = []string{"NULL", "MNT", "DUMP", "UMNT", "UMNTALL", "EXPORT"}

var mountstat3 = map[uint32]string{
	0: "MNT3_OK", 1: "MNT3ERR_PERM", 2: "MNT3ERR_NOENT", 5: "MNT3ERR_IO", 13: "MNT3ERR_ACCES",
	20: "MNT3ERR_NOTDIR", 22: "MNT3ERR_INVAL", 63: "MNT3ERR_NAMETOOLONG", 10004: "MNT3ERR_NOTSUPP",
	10006: "MNT3ERR_SERVERFAULT",
}

const (
	mntPathLen = 1024 // MNTPATHLEN
	mntNameLen = 255  // MNTNAMLEN
)

func (d *dec) mount3(proc uint32) (status string) {
	switch proc {
	case 1: // MNT
		st := d.enum("fhs_status", mountstat3)
		if st == 0 && d.ok() {
			d.opaque("fhandle", fhSize3)
			at := d.off
			n := d.u32("auth_flavors length")
			if d.ok() && uint64(n)*4 > uint64(len(d.b)-d.off) {
				d.off = at
				d.failf("auth_flavors: %d announced, %d bytes left", n, len(d.b)-d.off)
			}
			for i := uint32(0); i < n && d.ok(); i++ {
				d.u32(fmt.Sprintf("auth_flavors[%d]", i))
			}
		}
		return mountstat3[st]
	case 2: // DUMP
		d.list("mountlist", func(i int) {
			d.str(fmt.Sprintf("mountlist[%d].hostname", i), mntNameLen)
			d.str(fmt.Sprintf("mountlist[%d].directory", i), mntPathLen)
		})
	case 5: // EXPORT
		d.list("exports", func(i int) {
			d.str(fmt.Sprintf("exports[%d].dir", i), mntPathLen)
			d.list(fmt.Sprintf("exports[%d].groups", i), func(j int) {
				d.str(fmt.Sprintf("exports[%d].groups[%d].name", i, j), mntNameLen)
			})
		})
	}
	return ""
}
