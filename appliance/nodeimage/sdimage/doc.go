// Package sdimage turns a Raspberry Pi SD-card image (Raspberry Pi OS Lite,
// Ubuntu preinstalled server for raspi) into one tar stream of the node's
// root: the ext4 root partition at the top and the FAT boot partition's
// files under boot/firmware/.
//
// # How the partitions are read
//
// Nothing is mounted. The package reads the MBR, the FAT16/FAT32 boot
// partition and the ext4 root partition itself, read-only, from an
// io.ReaderAt. Options weighed:
//
//   - Loop mounts need root, a kernel with loop, vfat and ext4, and leave
//     mounts behind when the importer dies; they also hand a hostile image to
//     the kernel's filesystem code.
//   - Debian's debugfs (e2fsprogs) driven in batch mode reads everything, but
//     its output is text made for people, not a stable interface: owners,
//     xattrs ("ea_list") and inode numbers would be scraped from it file by
//     file, and "rdump" needs a writable directory and root to keep owners.
//   - github.com/diskfs/go-diskfs (MIT, maintained; v1.9.4 exposes inode
//     numbers, device numbers and xattrs) is a read-write library built
//     around path lookups, pulls ten more modules into go.mod (lz4, lzo,
//     logrus, uuid, ...), and its behaviour on hostile input is not ours to
//     fix or fuzz. Walking a 1 GB test image of 57,000 entries with its
//     ReadDir and OpenFile read 18,000 entries in 22 s and then made no
//     progress for two minutes; this package reads the whole image in 2.5 s.
//   - A read-only reader of our own is small (superblock, group descriptors,
//     inodes, extent trees and block maps, linear directory blocks, which
//     also covers htree directories, inline data, in-inode and block xattrs),
//     has no dependencies, walks the tree by inode number, and is fuzzed
//     (FuzzExt4, FuzzFAT, FuzzImage; seed corpus in testdata/fuzz).
//
// We chose the last. It verifies inode checksums (metadata_csum), so a
// damaged inode is an error rather than a wrong owner or mode; it does not
// check directory and extent block checksums (their contents are checked
// for sense instead), does not replay the journal (images are written by
// tools that leave a clean filesystem; a journal that needs recovery is
// logged), and refuses encrypted files and unknown incompatible features.
//
// .img.xz files are decompressed with Debian's xz(1) (xz-utils), which
// decodes multi-threaded and is faster than the pure-Go decoders, into a
// sparse temporary file: the filesystems need random access. gzip and zip
// files are refused with advice.
//
// # The tar stream
//
// WriteTar writes PAX entries in a fixed order: "./" first, then each
// directory's entries sorted by name bytes, depth first. Entries carry
// numeric owners (no user names), the mode including setuid, setgid and
// sticky bits, mtime with nanoseconds (atime and ctime are left out so the
// stream only changes when the image does), and xattrs as
// SCHILY.xattr.<name> records: security.capability, security.selinux,
// user.*, trusted.*, and POSIX ACLs as system.posix_acl_access and
// system.posix_acl_default in the Linux getxattr(2) format. The second and
// later names of a multiply linked inode are tar hard-link entries naming
// the first. Sparse files are written as plain files with their holes as
// zeros. Device nodes and fifos keep their type and numbers; sockets, which
// tar cannot hold, are left out and logged. lost+found is kept.
//
// The boot partition's files are owned by 0:0 with mode 0755 (directories)
// or 0644 (files), and the FAT write time is read as UTC. When the root
// partition has files of its own under /boot/firmware (hidden below the
// mount point on a running Pi) they are left out and logged.
//
// Nothing in the stream is changed for netbooting: fstab, machine-id and
// SSH host keys are the caller's business.
package sdimage
