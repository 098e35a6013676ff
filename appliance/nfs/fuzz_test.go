package nfs

import (
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/ociboot/ociboot/appliance/images"
	"github.com/ociboot/ociboot/appliance/nfs/nfscheck"
	"github.com/ociboot/ociboot/appliance/store"
	"github.com/ociboot/ociboot/appliance/testenv"
)

// fuzzKey signs the handles in the committed seed corpus, so that seeds
// reach past handle checks into every procedure.
var fuzzKey = bytes32(0x5a)

func bytes32(b byte) []byte {
	k := make([]byte, 32)
	for i := range k {
		k[i] = b
	}
	return k
}

func fuzzServer(t testing.TB) *Server {
	st, err := store.Open(t.TempDir(), store.Options{AllowTmpfs: true})
	if err != nil {
		t.Fatal(err)
	}
	root, _ := images.Root(st, testDigest)
	os.MkdirAll(filepath.Join(root, "etc"), 0o755)
	os.WriteFile(filepath.Join(root, "etc/hostname"), []byte("node\n"), 0o644)
	os.Symlink("/etc", filepath.Join(root, "link"))
	os.WriteFile(st.Path(store.NodesDir, ".nfs-handle-key"), []byte(hex.EncodeToString(fuzzKey)), 0o600)
	srv, err := New(Options{Store: st, Resolver: fakeResolver{images: map[string]string{"node1": testDigest}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	if _, err := srv.export("node1"); err != nil && os.Geteuid() == 0 {
		t.Fatal(err)
	}
	return srv
}

// FuzzRPC feeds whole RPC messages (as read from a TCP record) to the
// dispatcher: nothing may panic, and every answer is a well-formed reply
// to the call (nfscheck).
func FuzzRPC(f *testing.F) {
	for _, s := range seedCalls() {
		f.Add(s)
	}
	srv := fuzzServer(f)
	remote := netip.MustParseAddrPort("127.0.0.1:700")
	local := netip.MustParseAddrPort("127.0.0.1:2049")
	f.Fuzz(func(t *testing.T, msg []byte) {
		for _, proto := range []string{"tcp", "udp"} {
			reply := srv.dispatch(msg, remote, local, proto)
			if reply == nil {
				continue
			}
			if len(msg) < 4 || len(reply) < 12 || binary.BigEndian.Uint32(reply[4:]) != binary.BigEndian.Uint32(msg) {
				t.Fatalf("reply %x does not answer call %x", reply, msg)
			}
			if binary.BigEndian.Uint32(reply[8:]) != msgReply {
				t.Fatalf("reply is not a REPLY: %x", reply)
			}
			if err := nfscheck.Reply(msg, reply[4:]); err != nil {
				t.Fatalf("over %s: %v", proto, err)
			}
		}
	})
}

// seedCalls are well-formed calls of every procedure with handles signed
// by fuzzKey for export node1 (whose generation is unknown to a fresh
// server; the fuzzer mutates it).
func seedCalls() [][]byte {
	e := &export{id: exportID("node1")}
	fh := handleKey(fuzzKey).handle(e, 1, 0)
	call := func(prog, vers, proc uint32, a func(w *writer)) []byte {
		w := &writer{}
		callHeader(w, 0x01020304, prog, vers, proc, &cred{uid: 1000, gid: 1000, gids: []uint32{27}})
		if a != nil {
			a(w)
		}
		return w.b
	}
	sattr := func(w *writer) {
		w.bool(true)
		w.uint32(0o4755)
		w.bool(true)
		w.uint32(0)
		w.bool(false)
		w.bool(true)
		w.uint64(0)
		w.uint32(1)
		w.uint32(2)
		w.uint32(1)
		w.uint32(2)
	}
	seeds := [][]byte{
		call(progNFS, 3, nfsNull, nil),
		call(progMount, 3, mountMnt, func(w *writer) { w.string("/nodes/node1") }),
		call(progMount, 3, mountMnt, func(w *writer) { w.string("/nodes/node1/etc") }),
		call(progMount, 3, mountExport, nil),
		call(progMount, 3, mountDump, nil),
		call(progPortmap, 2, pmapGetport, func(w *writer) { w.uint32(progNFS); w.uint32(3); w.uint32(6); w.uint32(0) }),
		call(progPortmap, 4, pmapGetport, func(w *writer) { w.uint32(progNFS); w.uint32(3); w.string("tcp"); w.string(""); w.string("") }),
		call(progPortmap, 2, pmapDump, nil),
		call(progNFS, 3, nfsGetattr, func(w *writer) { w.opaque(fh) }),
		call(progNFS, 3, nfsSetattr, func(w *writer) { w.opaque(fh); sattr(w); w.bool(true); w.uint32(1); w.uint32(2) }),
		call(progNFS, 3, nfsLookup, func(w *writer) { w.opaque(fh); w.string("etc") }),
		call(progNFS, 3, nfsAccess, func(w *writer) { w.opaque(fh); w.uint32(0x3f) }),
		call(progNFS, 3, nfsReadlink, func(w *writer) { w.opaque(fh) }),
		call(progNFS, 3, nfsRead, func(w *writer) { w.opaque(fh); w.uint64(0); w.uint32(4096) }),
		call(progNFS, 3, nfsWrite, func(w *writer) { w.opaque(fh); w.uint64(0); w.uint32(5); w.uint32(2); w.opaque([]byte("hello")) }),
		call(progNFS, 3, nfsCreate, func(w *writer) { w.opaque(fh); w.string("f"); w.uint32(1); sattr(w) }),
		call(progNFS, 3, nfsCreate, func(w *writer) { w.opaque(fh); w.string("f"); w.uint32(2); w.fixed([]byte("12345678")) }),
		call(progNFS, 3, nfsMkdir, func(w *writer) { w.opaque(fh); w.string("d"); sattr(w) }),
		call(progNFS, 3, nfsSymlink, func(w *writer) { w.opaque(fh); w.string("s"); sattr(w); w.string("../../x") }),
		call(progNFS, 3, nfsMknod, func(w *writer) {
			w.opaque(fh)
			w.string("n")
			w.uint32(typeChr)
			sattr(w)
			w.uint32(1)
			w.uint32(3)
		}),
		call(progNFS, 3, nfsRemove, func(w *writer) { w.opaque(fh); w.string("f") }),
		call(progNFS, 3, nfsRmdir, func(w *writer) { w.opaque(fh); w.string("d") }),
		call(progNFS, 3, nfsRename, func(w *writer) { w.opaque(fh); w.string("a"); w.opaque(fh); w.string("b") }),
		call(progNFS, 3, nfsLink, func(w *writer) { w.opaque(fh); w.opaque(fh); w.string("l") }),
		call(progNFS, 3, nfsReaddir, func(w *writer) { w.opaque(fh); w.uint64(0); w.fixed(make([]byte, 8)); w.uint32(4096) }),
		call(progNFS, 3, nfsReaddirplus, func(w *writer) { w.opaque(fh); w.uint64(0); w.fixed(make([]byte, 8)); w.uint32(1024); w.uint32(4096) }),
		call(progNFS, 3, nfsFsstat, func(w *writer) { w.opaque(fh) }),
		call(progNFS, 3, nfsFsinfo, func(w *writer) { w.opaque(fh) }),
		call(progNFS, 3, nfsPathconf, func(w *writer) { w.opaque(fh) }),
		call(progNFS, 3, nfsCommit, func(w *writer) { w.opaque(fh); w.uint64(0); w.uint32(0) }),
		call(progNFS, 2, 1, nil),
		call(400000, 1, 0, nil),
		{0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 3},
	}
	return seeds
}

// TestWriteFuzzSeeds regenerates testdata/fuzz/FuzzRPC when
// OCIBOOT_WRITE_SEEDS is set.
func TestWriteFuzzSeeds(t *testing.T) {
	testenv.OptIn(t, "OCIBOOT_WRITE_SEEDS", "rewriting the seed corpus")
	dir := filepath.Join("testdata", "fuzz", "FuzzRPC")
	os.MkdirAll(dir, 0o755)
	for i, s := range seedCalls() {
		body := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", s)
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("seed-%02d", i)), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	dir = filepath.Join("testdata", "fuzz", "FuzzNFS")
	os.MkdirAll(dir, 0o755)
	for i, s := range nfsSeeds() {
		body := fmt.Sprintf("go test fuzz v1\nbyte(%d)\n[]byte(%q)\n", s.proc, s.args)
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("seed-%02d", i)), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// The parsers must reject, not crash on, truncated input.
func TestTruncatedCalls(t *testing.T) {
	srv := fuzzServer(t)
	for _, s := range seedCalls() {
		for n := 0; n < len(s); n++ {
			reply := srv.dispatch(s[:n], netip.MustParseAddrPort("127.0.0.1:700"), netip.MustParseAddrPort("127.0.0.1:2049"), "tcp")
			if n >= 8 && reply == nil && binary.BigEndian.Uint32(s[4:]) == msgCall {
				t.Errorf("no reply to a call truncated to %d bytes", n)
			}
			if reply != nil {
				if err := nfscheck.Reply(s[:n], reply[4:]); err != nil {
					t.Errorf("call truncated to %d bytes: %v", n, err)
				}
			}
		}
	}
}

// FuzzNFS reaches inside the procedures: the call carries a valid handle of
// the export root followed by the fuzzed arguments, as an authenticated
// root or user caller. Every reply must decode cleanly (nfscheck).
func FuzzNFS(f *testing.F) {
	for _, s := range nfsSeeds() {
		f.Add(s.proc, s.args)
	}
	testenv.NeedRoot(f, "the server sets owners")
	srv := fuzzServer(f)
	e := srv.exports[exportID("node1")]
	root := srv.key.handle(e, e.rootID, 0)
	remote := netip.MustParseAddrPort("127.0.0.1:700")
	local := netip.MustParseAddrPort("127.0.0.1:2049")
	f.Fuzz(func(t *testing.T, proc uint8, a []byte) {
		w := &writer{}
		uid := uint32(0)
		if proc >= 128 {
			uid = 1000
		}
		callHeader(w, 99, progNFS, 3, uint32(proc)%uint32(len(nfs3Procs)), &cred{uid: uid, gid: uid})
		w.opaque(root)
		w.b = append(w.b, a...)
		reply := srv.dispatch(w.b, remote, local, "tcp")
		if len(reply) < 28 || binary.BigEndian.Uint32(reply[4:]) != 99 {
			t.Fatalf("bad reply %x", reply)
		}
		if err := nfscheck.Reply(w.b, reply[4:]); err != nil {
			t.Fatal(err)
		}
		// Nothing the fuzzer does may reach the image tree.
		if b, err := os.ReadFile(filepath.Join(srv.opts.Store.Path(store.ImagesDir), "sha256-"+testDigest[7:], "etc/hostname")); err != nil || string(b) != "node\n" {
			t.Fatalf("image changed: %q %v", b, err)
		}
	})
}

type nfsSeed struct {
	proc uint8
	args []byte
}

// nfsSeeds are the arguments after the first handle of each procedure.
func nfsSeeds() []nfsSeed {
	fh := make([]byte, handleLen) // a second handle slot; mutated by the fuzzer
	a := func(proc uint8, f func(w *writer)) nfsSeed {
		w := &writer{}
		if f != nil {
			f(w)
		}
		return nfsSeed{proc, w.b}
	}
	sattr := func(w *writer) {
		w.bool(true)
		w.uint32(0o1777)
		w.bool(false)
		w.bool(false)
		w.bool(true)
		w.uint64(3)
		w.uint32(1)
		w.uint32(0)
	}
	return []nfsSeed{
		a(nfsGetattr, nil),
		a(nfsSetattr, func(w *writer) { sattr(w); w.bool(false) }),
		a(nfsLookup, func(w *writer) { w.string("etc") }),
		a(nfsLookup, func(w *writer) { w.string("link") }),
		a(nfsLookup, func(w *writer) { w.string("..") }),
		a(nfsAccess, func(w *writer) { w.uint32(0x3f) }),
		a(nfsReadlink, nil),
		a(nfsRead, func(w *writer) { w.uint64(0); w.uint32(4096) }),
		a(nfsWrite, func(w *writer) { w.uint64(0); w.uint32(5); w.uint32(2); w.opaque([]byte("hello")) }),
		a(nfsCreate, func(w *writer) { w.string("f"); w.uint32(0); sattr(w) }),
		a(nfsCreate, func(w *writer) { w.string("f"); w.uint32(2); w.fixed([]byte("12345678")) }),
		a(nfsCreate, func(w *writer) { w.string("etc"); w.uint32(1); sattr(w) }), // exists: a failure after the checks
		a(nfsMkdir, func(w *writer) { w.string("d"); sattr(w) }),
		a(nfsMkdir, func(w *writer) { w.string("etc"); sattr(w) }),
		a(nfsSymlink, func(w *writer) { w.string("etc"); sattr(w); w.string("x") }),
		a(nfsMknod, func(w *writer) { w.string("etc"); w.uint32(typeSock); sattr(w) }),
		a(nfsSymlink, func(w *writer) { w.string("s"); sattr(w); w.string("../../x") }),
		a(nfsMknod, func(w *writer) { w.string("n"); w.uint32(typeFifo); sattr(w) }),
		a(nfsRemove, func(w *writer) { w.string("f") }),
		a(nfsRmdir, func(w *writer) { w.string("d") }),
		a(nfsRename, func(w *writer) { w.string("etc"); w.opaque(fh); w.string("b") }),
		a(nfsLink, func(w *writer) { w.opaque(fh); w.string("l") }),
		a(nfsReaddir, func(w *writer) { w.uint64(0); w.fixed(make([]byte, 8)); w.uint32(4096) }),
		a(nfsReaddirplus, func(w *writer) { w.uint64(0); w.fixed(make([]byte, 8)); w.uint32(1024); w.uint32(4096) }),
		a(nfsFsstat, nil),
		a(nfsFsinfo, nil),
		a(nfsPathconf, nil),
		a(nfsCommit, func(w *writer) { w.uint64(0); w.uint32(0) }),
	}
}
