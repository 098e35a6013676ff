package sdimage

import (
	"encoding/binary"
	"sort"
	"strings"
)

const xattrMagic = 0xEA020000

// xattrSet is an inode's extended attributes, names with their prefix
// ("security.capability"). systemData is the inline-data overflow kept in
// "system.data", which is file content, not an attribute.
type xattrSet struct {
	names      []string // sorted
	values     map[string]string
	systemData []byte
}

var xattrPrefix = map[byte]string{
	1: "user.",
	2: "system.posix_acl_access",
	3: "system.posix_acl_default",
	4: "trusted.",
	6: "security.",
	7: "system.",
	8: "system.richacl",
}

// maxXattrValue is the kernel's XATTR_SIZE_MAX.
const maxXattrValue = 65536

func (fs *ext4FS) xattrs(in *inode) (*xattrSet, error) {
	xs := &xattrSet{values: map[string]string{}}
	le := binary.LittleEndian
	if extra := fs.extraISize(in); extra >= 0 {
		body := in.raw[128+extra:]
		if len(body) >= 4 && le.Uint32(body) == xattrMagic {
			// Value offsets count from the first entry.
			if err := fs.xattrEntries(in, body[4:], body[4:], xs); err != nil {
				return nil, err
			}
		}
	}
	if in.fileACL != 0 {
		blk := make([]byte, fs.blockSize)
		if err := fs.readBlock(in.fileACL, blk); err != nil {
			return nil, err
		}
		if le.Uint32(blk) != xattrMagic || le.Uint32(blk[8:]) != 1 {
			return nil, corrupt("inode %d: xattr block %d has a bad header", in.num, in.fileACL)
		}
		if err := fs.xattrEntries(in, blk[32:], blk, xs); err != nil {
			return nil, err
		}
	}
	sort.Strings(xs.names)
	return xs, nil
}

// xattrEntries parses entries from ents; value offsets are relative to
// base.
func (fs *ext4FS) xattrEntries(in *inode, ents, base []byte, xs *xattrSet) error {
	le := binary.LittleEndian
	for len(ents) >= 4 && le.Uint32(ents) != 0 {
		if len(ents) < 16 {
			return corrupt("inode %d: xattr entry cut short", in.num)
		}
		nameLen := int(ents[0])
		idx := ents[1]
		voff := int(le.Uint16(ents[2:]))
		vinum := le.Uint32(ents[4:])
		vsize := int(le.Uint32(ents[8:]))
		end := (16 + nameLen + 3) &^ 3
		if end > len(ents) {
			return corrupt("inode %d: xattr name runs past its block", in.num)
		}
		suffix := string(ents[16 : 16+nameLen])
		ents = ents[end:]
		if vsize < 0 || vsize > maxXattrValue {
			return corrupt("inode %d: xattr %q of %d bytes", in.num, suffix, vsize)
		}
		var value []byte
		if vinum != 0 {
			// ea_inode: the value is the content of another inode.
			vin, err := fs.inode(vinum)
			if err != nil {
				return err
			}
			if vin.flags&flagEAInode == 0 || vin.size != uint64(vsize) {
				return corrupt("inode %d: xattr %q points at inode %d which is not its value", in.num, suffix, vinum)
			}
			if value, err = fs.readSmall(vin, maxXattrValue, "xattr value"); err != nil {
				return err
			}
		} else {
			if voff+vsize > len(base) {
				return corrupt("inode %d: xattr %q value runs past its block", in.num, suffix)
			}
			value = base[voff : voff+vsize]
		}
		prefix, ok := xattrPrefix[idx]
		if !ok {
			return corrupt("inode %d: xattr %q with unknown name index %d", in.num, suffix, idx)
		}
		name := prefix + suffix
		if strings.ContainsAny(suffix, "=\x00") {
			return corrupt("inode %d: xattr name %q", in.num, name)
		}
		if idx == 7 && suffix == "data" {
			xs.systemData = append([]byte{}, value...)
			continue
		}
		if idx == 2 || idx == 3 {
			if suffix != "" {
				return corrupt("inode %d: ACL xattr with name %q", in.num, suffix)
			}
			v, err := aclToXattr(value)
			if err != nil {
				return corrupt("inode %d: %s: %v", in.num, pq(name), err)
			}
			value = v
		}
		if _, dup := xs.values[name]; dup {
			return corrupt("inode %d: xattr %q twice", in.num, name)
		}
		xs.names = append(xs.names, name)
		xs.values[name] = string(value)
	}
	return nil
}

type aclError string

func (e aclError) Error() string { return string(e) }

// aclToXattr converts ext4's on-disk ACL (version 1, short entries for the
// owner, group, mask and other) into the getxattr(2) format that tar
// archivers store (version 2, every entry tag, perm and id).
func aclToXattr(b []byte) ([]byte, error) {
	le := binary.LittleEndian
	if len(b) < 4 || le.Uint32(b) != 1 {
		return nil, aclError("ACL header is not version 1")
	}
	out := binary.LittleEndian.AppendUint32(nil, 2)
	b = b[4:]
	for len(b) > 0 {
		if len(b) < 4 {
			return nil, aclError("ACL entry cut short")
		}
		tag, perm := le.Uint16(b), le.Uint16(b[2:])
		id := uint32(0xFFFFFFFF)
		switch tag {
		case 0x01, 0x04, 0x10, 0x20: // USER_OBJ, GROUP_OBJ, MASK, OTHER
			b = b[4:]
		case 0x02, 0x08: // USER, GROUP
			if len(b) < 8 {
				return nil, aclError("ACL entry cut short")
			}
			id = le.Uint32(b[4:])
			b = b[8:]
		default:
			return nil, aclError("unknown ACL tag")
		}
		out = le.AppendUint16(out, tag)
		out = le.AppendUint16(out, perm)
		out = le.AppendUint32(out, id)
	}
	return out, nil
}
