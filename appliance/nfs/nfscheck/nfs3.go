package nfscheck

import "fmt"

// NFSv3 (RFC 1813 §2.5, §2.6, §3.3).

var nfs3Procs = []string{"NULL", "GETATTR", "SETATTR", "LOOKUP", "ACCESS", "READLINK", "READ", "WRITE",
	"CREATE", "MKDIR", "SYMLINK", "MKNOD", "REMOVE", "RMDIR", "RENAME", "LINK", "READDIR", "READDIRPLUS",
	"FSSTAT", "FSINFO", "PATHCONF", "COMMIT"}

// nfsstat3 (RFC 1813 §2.6).
var nfsstat3 = map[uint32]string{
	0: "NFS3_OK", 1: "NFS3ERR_PERM", 2: "NFS3ERR_NOENT", 5: "NFS3ERR_IO", 6: "NFS3ERR_NXIO",
	13: "NFS3ERR_ACCES", 17: "NFS3ERR_EXIST", 18: "NFS3ERR_XDEV", 19: "NFS3ERR_NODEV",
	20: "NFS3ERR_NOTDIR", 21: "NFS3ERR_ISDIR", 22: "NFS3ERR_INVAL", 27: "NFS3ERR_FBIG",
	28: "NFS3ERR_NOSPC", 30: "NFS3ERR_ROFS", 31: "NFS3ERR_MLINK", 63: "NFS3ERR_NAMETOOLONG",
	66: "NFS3ERR_NOTEMPTY", 69: "NFS3ERR_DQUOT", 70: "NFS3ERR_STALE", 71: "NFS3ERR_REMOTE",
	10001: "NFS3ERR_BADHANDLE", 10002: "NFS3ERR_NOT_SYNC", 10003: "NFS3ERR_BAD_COOKIE",
	10004: "NFS3ERR_NOTSUPP", 10005: "NFS3ERR_TOOSMALL", 10006: "NFS3ERR_SERVERFAULT",
	10007: "NFS3ERR_BADTYPE", 10008: "NFS3ERR_JUKEBOX",
}

var ftype3 = map[uint32]string{1: "NF3REG", 2: "NF3DIR", 3: "NF3BLK", 4: "NF3CHR", 5: "NF3LNK", 6: "NF3SOCK", 7: "NF3FIFO"}

var stableHow = map[uint32]string{0: "UNSTABLE", 1: "DATA_SYNC", 2: "FILE_SYNC"}

const fhSize3 = 64 // NFS3_FHSIZE

func (d *dec) nfstime3(what string) {
	d.u32(what + ".seconds")
	at := d.off
	if ns := d.u32(what + ".nseconds"); d.ok() && ns >= 1e9 {
		d.off = at
		d.failf("%s.nseconds is %d, not below 10^9", what, ns)
	}
}

func (d *dec) fattr3(what string) {
	d.enum(what+".type", ftype3)
	at := d.off
	if mode := d.u32(what + ".mode"); d.ok() && mode&^0o7777 != 0 {
		d.off = at
		d.failf("%s.mode %#o has bits beyond 07777", what, mode)
	}
	d.u32(what + ".nlink")
	d.u32(what + ".uid")
	d.u32(what + ".gid")
	d.u64(what + ".size")
	d.u64(what + ".used")
	d.u32(what + ".rdev.specdata1")
	d.u32(what + ".rdev.specdata2")
	d.u64(what + ".fsid")
	d.u64(what + ".fileid")
	d.nfstime3(what + ".atime")
	d.nfstime3(what + ".mtime")
	d.nfstime3(what + ".ctime")
}

func (d *dec) postOpAttr(what string) {
	if d.bool(what + ".attributes_follow") {
		d.fattr3(what)
	}
}

func (d *dec) preOpAttr(what string) {
	if d.bool(what + ".attributes_follow") {
		d.u64(what + ".size")
		d.nfstime3(what + ".mtime")
		d.nfstime3(what + ".ctime")
	}
}

func (d *dec) wccData(what string) {
	d.preOpAttr(what + ".before")
	d.postOpAttr(what + ".after")
}

func (d *dec) fh3(what string) { d.opaque(what, fhSize3) }

func (d *dec) postOpFh3(what string) {
	if d.bool(what + ".handle_follows") {
		d.fh3(what)
	}
}

// nfs3 decodes the results of procedure proc (after the RPC header) and
// returns the status's name.
func (d *dec) nfs3(proc uint32) (status string) {
	if proc == 0 {
		return ""
	}
	st := d.enum("status", nfsstat3)
	status = nfsstat3[st]
	ok := st == 0 && d.ok()
	switch proc {
	case 1: // GETATTR
		if ok {
			d.fattr3("obj_attributes")
		}
	case 2: // SETATTR
		d.wccData("obj_wcc")
	case 3: // LOOKUP
		if ok {
			d.fh3("object")
			d.postOpAttr("obj_attributes")
		}
		d.postOpAttr("dir_attributes")
	case 4: // ACCESS
		d.postOpAttr("obj_attributes")
		if ok {
			at := d.off
			if a := d.u32("access"); d.ok() && a&^0x3f != 0 {
				d.off = at
				d.failf("access %#x has bits beyond ACCESS3_EXECUTE", a)
			}
		}
	case 5: // READLINK
		d.postOpAttr("symlink_attributes")
		if ok {
			d.str("data", -1)
		}
	case 6: // READ
		d.postOpAttr("file_attributes")
		if ok {
			count := d.u32("count")
			d.bool("eof")
			at := d.off
			if data := d.opaque("data", -1); d.ok() && uint32(len(data)) != count {
				d.off = at
				d.failf("count is %d but data holds %d bytes", count, len(data))
			}
		}
	case 7: // WRITE
		d.wccData("file_wcc")
		if ok {
			d.u32("count")
			d.enum("committed", stableHow)
			d.fixed("verf", 8)
		}
	case 8, 9, 10, 11: // CREATE, MKDIR, SYMLINK, MKNOD
		if ok {
			d.postOpFh3("obj")
			d.postOpAttr("obj_attributes")
		}
		d.wccData("dir_wcc")
	case 12, 13: // REMOVE, RMDIR
		d.wccData("dir_wcc")
	case 14: // RENAME
		d.wccData("fromdir_wcc")
		d.wccData("todir_wcc")
	case 15: // LINK
		d.postOpAttr("file_attributes")
		d.wccData("linkdir_wcc")
	case 16, 17: // READDIR, READDIRPLUS
		d.postOpAttr("dir_attributes")
		if ok {
			d.fixed("cookieverf", 8)
			d.list("entries", func(i int) {
				e := fmt.Sprintf("entries[%d]", i)
				d.u64(e + ".fileid")
				d.str(e+".name", -1)
				d.u64(e + ".cookie")
				if proc == 17 {
					d.postOpAttr(e + ".name_attributes")
					d.postOpFh3(e + ".name_handle")
				}
			})
			d.bool("eof")
		}
	case 18: // FSSTAT
		d.postOpAttr("obj_attributes")
		if ok {
			for _, f := range []string{"tbytes", "fbytes", "abytes", "tfiles", "ffiles", "afiles"} {
				d.u64(f)
			}
			d.u32("invarsec")
		}
	case 19: // FSINFO
		d.postOpAttr("obj_attributes")
		if ok {
			for _, f := range []string{"rtmax", "rtpref", "rtmult", "wtmax", "wtpref", "wtmult", "dtpref"} {
				d.u32(f)
			}
			d.u64("maxfilesize")
			d.nfstime3("time_delta")
			at := d.off
			if p := d.u32("properties"); d.ok() && p&^0x1b != 0 {
				d.off = at
				d.failf("properties %#x has bits beyond FSF3_CANSETTIME", p)
			}
		}
	case 20: // PATHCONF
		d.postOpAttr("obj_attributes")
		if ok {
			d.u32("linkmax")
			d.u32("name_max")
			for _, f := range []string{"no_trunc", "chown_restricted", "case_insensitive", "case_preserving"} {
				d.bool(f)
			}
		}
	case 21: // COMMIT
		d.wccData("file_wcc")
		if ok {
			d.fixed("verf", 8)
		}
	}
	return status
}
