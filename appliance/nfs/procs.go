package nfs

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"time"
)

// The RPC programs this server answers and their procedures. This table
// is the one place that knows program and procedure numbers: it drives
// dispatch, the metrics' labels, which calls may be answered on a
// connection's reader (the quick path) and which calls are idempotent.

// Program numbers (RFC 1833 §3, RFC 1813 §1.2 and Appendix I).
const (
	progPortmap = 100000
	progNFS     = 100003
	progMount   = 100005
)

// Program is an RPC program of this server, for registering its ports
// with the portmapper.
type Program struct {
	Number   uint32
	Versions []uint32
	UDP      bool // also answered over UDP
}

// NFSPrograms are the programs served on the NFS port; PortmapPrograms
// the portmapper's.
var (
	NFSPrograms     = []Program{programOf(progNFS).public(), programOf(progMount).public()}
	PortmapPrograms = []Program{programOf(progPortmap).public()}
)

// program is one RPC program: its versions low to high, each with its
// procedures indexed by number.
type program struct {
	num       uint32
	name      string // the metrics' "prog" label
	low, high uint32
	udp       bool // NFS is TCP only: its replies do not fit datagrams
	// auth: calls other than NULL need AUTH_SYS or AUTH_NONE.
	auth  bool
	procs [][]proc // by version - low, then by procedure number
}

// proc is one procedure.
type proc struct {
	name string // the metrics' "proc" label
	// run decodes the arguments, does the call and encodes the results,
	// returning the NFS status for the metrics (MOUNT and portmap: 0);
	// false means the arguments were garbage.
	run func(s *Server, c *call, w *writer) (status uint32, ok bool)
	// slow calls are never answered on the connection's reader, where
	// they would hold up the calls that arrive meanwhile: COMMIT's fsync,
	// CREATE (UNCHECKED truncates an existing file, which may copy it up),
	// MNT (which may make a node's root) and with it the rest of MOUNT and
	// the portmapper, which are no part of a node's steady traffic.
	slow bool
	// idempotent calls may run again when a client retransmits them; the
	// others change the namespace, attributes or data, and a duplicate
	// request cache would keep their replies (knfsd's RC_NOCACHE against
	// RC_REPLBUFF, same split as nfsd_procedures3).
	idempotent bool
	// copies: the call may copy a file out of the image first (copyup.go),
	// which takes as long as the file is large; its first argument is
	// the file's handle. Such a call is answered on the reader only when
	// that file is the node's own already (Server.quick).
	copies bool
	// cached calls' replies are kept for retransmissions (drc.go): the
	// calls that are not idempotent but WRITE, which gives the same
	// result when it runs again and whose arguments are large.
	cached bool
}

func (p *program) public() Program {
	out := Program{Number: p.num, UDP: p.udp}
	for v := p.low; v <= p.high; v++ {
		out.Versions = append(out.Versions, v)
	}
	return out
}

// NFSv3 procedure numbers (RFC 1813 §3.3).
const (
	nfsNull = iota
	nfsGetattr
	nfsSetattr
	nfsLookup
	nfsAccess
	nfsReadlink
	nfsRead
	nfsWrite
	nfsCreate
	nfsMkdir
	nfsSymlink
	nfsMknod
	nfsRemove
	nfsRmdir
	nfsRename
	nfsLink
	nfsReaddir
	nfsReaddirplus
	nfsFsstat
	nfsFsinfo
	nfsPathconf
	nfsCommit
)

// MOUNT v3 procedure numbers (RFC 1813 Appendix I).
const (
	mountNull = iota
	mountMnt
	mountDump
	mountUmnt
	mountUmntall
	mountExport
)

// Portmap v2 and rpcbind v3/v4 procedure numbers (RFC 1833).
const (
	pmapNull = iota
	pmapSet
	pmapUnset
	pmapGetport // rpcbind: GETADDR
	pmapDump
)

func null(*Server, *call, *writer) (uint32, bool) { return nfsOK, true }

// plain runs a MOUNT or portmap procedure, which decodes and encodes as
// it goes.
func plain(f func(s *Server, c *call, w *writer) bool) func(*Server, *call, *writer) (uint32, bool) {
	return func(s *Server, c *call, w *writer) (uint32, bool) { return nfsOK, f(s, c, w) }
}

// NFSv3 procedures decode their arguments into a typed A (nfs3xdr.go), do
// the call on it (nfs3proc.go) and encode the typed result R, whose
// encoder writes the resok or the resfail arm by its status.
type nfs3Args[A any] interface {
	*A
	decode(r *reader)
}

type nfs3Result[R any] interface {
	*R
	encode(w *writer) uint32
}

func nfs3[A, R any, PA nfs3Args[A], PR nfs3Result[R]](do func(s *Server, c *call, a *A) R) func(*Server, *call, *writer) (uint32, bool) {
	return func(s *Server, c *call, w *writer) (uint32, bool) {
		var a A
		PA(&a).decode(&c.args)
		if c.args.err != nil {
			return 0, false
		}
		r := do(s, c, &a)
		return PR(&r).encode(w), true
	}
}

var nfs3Procs = []proc{
	nfsNull:        {name: "NULL", run: null, idempotent: true},
	nfsGetattr:     {name: "GETATTR", run: nfs3((*Server).getattr), idempotent: true},
	nfsSetattr:     {name: "SETATTR", run: nfs3((*Server).setattr), copies: true, cached: true},
	nfsLookup:      {name: "LOOKUP", run: nfs3((*Server).lookup), idempotent: true},
	nfsAccess:      {name: "ACCESS", run: nfs3((*Server).access), idempotent: true},
	nfsReadlink:    {name: "READLINK", run: nfs3((*Server).readlink), idempotent: true},
	nfsRead:        {name: "READ", run: nfs3((*Server).read), idempotent: true},
	nfsWrite:       {name: "WRITE", run: nfs3((*Server).write), copies: true},
	nfsCreate:      {name: "CREATE", run: nfs3((*Server).create), slow: true, cached: true},
	nfsMkdir:       {name: "MKDIR", run: nfs3((*Server).mkdir), cached: true},
	nfsSymlink:     {name: "SYMLINK", run: nfs3((*Server).symlink), cached: true},
	nfsMknod:       {name: "MKNOD", run: nfs3((*Server).mknod), cached: true},
	nfsRemove:      {name: "REMOVE", run: nfs3((*Server).remove), cached: true},
	nfsRmdir:       {name: "RMDIR", run: nfs3((*Server).rmdir), cached: true},
	nfsRename:      {name: "RENAME", run: nfs3((*Server).rename), cached: true},
	nfsLink:        {name: "LINK", run: nfs3((*Server).link), copies: true, cached: true},
	nfsReaddir:     {name: "READDIR", run: nfs3((*Server).readdir), idempotent: true},
	nfsReaddirplus: {name: "READDIRPLUS", run: nfs3((*Server).readdirplus), idempotent: true},
	nfsFsstat:      {name: "FSSTAT", run: nfs3((*Server).fsstat), idempotent: true},
	nfsFsinfo:      {name: "FSINFO", run: nfs3((*Server).fsinfo), idempotent: true},
	nfsPathconf:    {name: "PATHCONF", run: nfs3((*Server).pathconf), idempotent: true},
	nfsCommit:      {name: "COMMIT", run: nfs3((*Server).commit), slow: true, idempotent: true},
}

var mount3Procs = []proc{
	mountNull:    {name: "NULL", run: null, idempotent: true, slow: true},
	mountMnt:     {name: "MNT", run: plain((*Server).mnt), slow: true},
	mountDump:    {name: "DUMP", run: plain((*Server).mountDump), idempotent: true, slow: true},
	mountUmnt:    {name: "UMNT", run: plain((*Server).umnt), slow: true},
	mountUmntall: {name: "UMNTALL", run: plain((*Server).umntall), slow: true},
	mountExport:  {name: "EXPORT", run: plain((*Server).mountExport), idempotent: true, slow: true},
}

var pmap2Procs = []proc{
	pmapNull:    {name: "NULL", run: null, idempotent: true, slow: true},
	pmapSet:     {name: "SET", run: plain((*Server).pmapSet), slow: true},
	pmapUnset:   {name: "UNSET", run: plain((*Server).pmapSet), slow: true},
	pmapGetport: {name: "GETPORT", run: plain((*Server).getport), idempotent: true, slow: true},
	pmapDump:    {name: "DUMP", run: plain((*Server).pmapDump), idempotent: true, slow: true},
}

var rpcbProcs = []proc{
	pmapNull:    {name: "NULL", run: null, idempotent: true, slow: true},
	pmapSet:     {name: "SET", run: plain((*Server).rpcbSet), slow: true},
	pmapUnset:   {name: "UNSET", run: plain((*Server).rpcbSet), slow: true},
	pmapGetport: {name: "GETADDR", run: plain((*Server).getaddr), idempotent: true, slow: true},
	pmapDump:    {name: "DUMP", run: plain((*Server).rpcbDump), idempotent: true, slow: true},
}

var programs = []*program{
	{num: progPortmap, name: "portmap", low: 2, high: 4, udp: true, procs: [][]proc{pmap2Procs, rpcbProcs, rpcbProcs}},
	{num: progNFS, name: "nfs", low: 3, high: 3, auth: true, procs: [][]proc{nfs3Procs}},
	{num: progMount, name: "mount", low: 3, high: 3, udp: true, auth: true, procs: [][]proc{mount3Procs}},
}

func programOf(num uint32) *program {
	for _, p := range programs {
		if p.num == num {
			return p
		}
	}
	return nil
}

// procOf finds the procedure a call header (xid to procedure, as read
// from the wire) names; nil if this server has none by those numbers.
func procOf(prog, vers, num uint32) *proc {
	p := programOf(prog)
	if p == nil || vers < p.low || vers > p.high {
		return nil
	}
	procs := p.procs[vers-p.low]
	if num >= uint32(len(procs)) {
		return nil
	}
	return &procs[num]
}

// quick reports whether msg is a call short enough to answer on the
// connection's reader (see proc.slow); a call of no procedure here is
// (its answer is a rejection).
func quick(msg []byte) bool {
	if len(msg) < 24 {
		return false
	}
	p := procOf(binary.BigEndian.Uint32(msg[12:]), binary.BigEndian.Uint32(msg[16:]), binary.BigEndian.Uint32(msg[20:]))
	return p == nil || !p.slow
}

// quick is the package-level quick, and for a call that may copy a file
// up: whether the file its handle names is the node's own already.
func (s *Server) quick(msg []byte) bool {
	if !quick(msg) {
		return false
	}
	p := procOf(binary.BigEndian.Uint32(msg[12:]), binary.BigEndian.Uint32(msg[16:]), binary.BigEndian.Uint32(msg[20:]))
	if p == nil || !p.copies {
		return true
	}
	c, err := parseCall(msg)
	if err != nil || c == nil {
		return true // answered with a rejection
	}
	exp, gen, id, _, ok := s.key.parse(c.args.opaque(64))
	if !ok {
		return true
	}
	s.mu.Lock()
	e := s.exports[exp]
	s.mu.Unlock()
	if e == nil || e.gen != gen || e.image == nil {
		return true
	}
	if _, inImage := e.image.nlink[id]; !inImage {
		return true // the node's own file (copies keep their original's fileid)
	}
	e.pmu.RLock()
	rel, known := e.paths[id]
	e.pmu.RUnlock()
	if !known {
		return false
	}
	st, err := e.lstat(rel)
	return err == nil && !e.shared(&st)
}

// answer decodes one call, runs it by the table and returns the reply; nil
// means no answer (not a call).
func (s *Server) answer(msg []byte, remote, local netip.AddrPort, proto string) []byte {
	c, err := parseCall(msg)
	switch {
	case c == nil:
		return nil
	case errors.Is(err, errRPCVersion):
		return replyDeniedMsg(c.xid, rejectRPCMismatch, 2, 2)
	case errors.Is(err, errBadCred):
		return replyDeniedMsg(c.xid, rejectAuthError, authBadCred)
	case err != nil:
		return replyHeader(c.xid, acceptGarbageArgs).b
	}
	c.remote, c.local, c.proto = remote, local, proto
	prog := programOf(c.prog)
	switch {
	case prog == nil:
		return replyHeader(c.xid, acceptProgUnavail).b
	case prog.auth && c.proc != 0 && c.cred.flavor != authSys && c.cred.flavor != authNone:
		return replyDeniedMsg(c.xid, rejectAuthError, authTooWeak)
	case !s.securePort(prog, c.proc, remote):
		s.refusedPort(remote)
		return replyDeniedMsg(c.xid, rejectAuthError, authTooWeak)
	case proto != "tcp" && !prog.udp:
		return replyHeader(c.xid, acceptProgUnavail).b
	case c.vers < prog.low || c.vers > prog.high:
		return replyMismatch(c.xid, acceptProgMismatch, prog.low, prog.high)
	}
	p := procOf(c.prog, c.vers, c.proc)
	if p == nil {
		return replyHeader(c.xid, acceptProcUnavail).b
	}
	var dk drcKey
	if p.cached {
		dk = drcKeyOf(c)
		reply, busy := s.drc.start(dk, time.Now())
		if busy {
			return nil
		}
		if reply != nil {
			s.metrics.retransmits.Inc()
			return reply
		}
	}
	w := replyHeader(c.xid, acceptSuccess)
	st, ok := p.run(s, c, w)
	s.metrics.requests.WithLabelValues(prog.name, p.name).Inc()
	s.activity().touch(c.remote.Addr().Unmap(), time.Now())
	if !ok {
		if p.cached {
			s.drc.forget(dk)
		}
		return replyHeader(c.xid, acceptGarbageArgs).b
	}
	if p.cached {
		s.drc.finish(dk, w.b)
	}
	if st != nfsOK {
		s.metrics.errors.WithLabelValues(p.name, StatusName(st)).Inc()
	}
	return w.b
}
