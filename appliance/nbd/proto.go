package nbd

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"syscall"
	"unicode/utf8"
)

// Wire values of the NBD protocol (doc/proto.md of the reference
// implementation, "Values"). Only what this server speaks or refuses by
// name is here.
const (
	magicInit      = 0x4e42444d41474943 // "NBDMAGIC", the server's first word
	magicOpt       = 0x49484156454f5054 // "IHAVEOPT": the newstyle greeting and every option
	magicCliserv   = 0x00420281861253   // the oldstyle greeting's second word
	magicOptReply  = 0x3e889045565a9
	magicRequest   = 0x25609513
	magicReply     = 0x67446698 // simple reply
	magicExtended  = 0x21e41c71 // extended-header requests (experimental; never negotiated here)
	greetingLength = 18         // magicInit, magicOpt, handshake flags

	// Handshake flags (server) and client flags.
	flagFixedNewstyle = 1 << 0
	flagNoZeroes      = 1 << 1
	clientFlagsKnown  = flagFixedNewstyle | flagNoZeroes

	// Transmission flags.
	flagHasFlags     = 1 << 0
	flagReadOnly     = 1 << 1
	flagSendFlush    = 1 << 2
	flagSendFUA      = 1 << 3
	flagSendTrim     = 1 << 5
	flagSendZeroes   = 1 << 6
	flagCanMultiConn = 1 << 8
	flagSendCache    = 1 << 10

	// Options.
	optExportName      = 1
	optAbort           = 2
	optList            = 3
	optStartTLS        = 5
	optInfo            = 6
	optGo              = 7
	optStructuredReply = 8
	optListMetaContext = 9
	optSetMetaContext  = 10

	// Option replies.
	repAck         = 1
	repServer      = 2
	repInfo        = 3
	repFlagError   = 1 << 31
	repErrUnsup    = repFlagError | 1
	repErrPolicy   = repFlagError | 2
	repErrInvalid  = repFlagError | 3
	repErrUnknown  = repFlagError | 6
	repErrShutdown = repFlagError | 7
	repErrTooBig   = repFlagError | 9

	// NBD_INFO types.
	infoExport      = 0
	infoName        = 1
	infoDescription = 2
	infoBlockSize   = 3

	// Commands.
	cmdRead        = 0
	cmdWrite       = 1
	cmdDisc        = 2
	cmdFlush       = 3
	cmdTrim        = 4
	cmdCache       = 5
	cmdWriteZeroes = 6

	// Command flags.
	cmdFlagFUA      = 1 << 0
	cmdFlagNoHole   = 1 << 1
	cmdFlagDF       = 1 << 2
	cmdFlagReqOne   = 1 << 3
	cmdFlagFastZero = 1 << 4

	// Error values of replies.
	errPerm     = 1
	errIO       = 5
	errNoMem    = 12
	errInval    = 22
	errNoSpc    = 28
	errOverflow = 75
	errNotSup   = 95
	errShutdown = 108
)

// Limits. The protocol lets a client announce up to 4 GiB in an option or
// a request; these are what the server accepts.
const (
	// MaxPayload is the largest READ or WRITE a client may send (the
	// protocol's interoperable maximum, 32 MiB). It is announced in
	// NBD_INFO_BLOCK_SIZE. A READ over it gets NBD_EINVAL; a WRITE over
	// it closes the connection, since its payload cannot be skipped
	// cheaply.
	MaxPayload = 32 << 20

	// maxOption caps an option's data: the longest legitimate one is
	// NBD_OPT_GO/INFO with a 4096-byte name and a few information
	// requests. Over it the server answers NBD_REP_ERR_TOO_BIG and closes.
	maxOption = 8 << 10

	// maxName is the protocol's limit on strings (export names).
	maxName = 4096

	// maxOptions caps how many options one negotiation may send: a client
	// looping on NBD_OPT_INFO or NBD_OPT_LIST is closed.
	maxOptions = 256

	// preferredBlock is the NBD_INFO_BLOCK_SIZE preferred size: the page
	// size, below which a write to a file costs a read-modify-write.
	preferredBlock = 4096

	requestHeaderLength = 28
	replyHeaderLength   = 16
)

// ErrUnknownExport, wrapped by Lookup, answers NBD_REP_ERR_UNKNOWN: no such
// export (for this client).
var ErrUnknownExport = errors.New("nbd: unknown export")

// ErrPolicy, wrapped by Lookup, answers NBD_REP_ERR_POLICY: the export
// exists but this client may not use it (for example it connects from
// another address than the node's).
var ErrPolicy = errors.New("nbd: refused by policy")

// request is a decoded request header.
type request struct {
	typ    uint16
	flags  uint16
	cookie uint64
	offset uint64
	length uint32
}

// decodeRequest reads a request header. It only fails on a wrong magic:
// after that the stream cannot be resynchronised.
func decodeRequest(b []byte) (request, error) {
	if len(b) < requestHeaderLength {
		return request{}, fmt.Errorf("request header of %d bytes, want %d", len(b), requestHeaderLength)
	}
	if m := binary.BigEndian.Uint32(b); m != magicRequest {
		if m == magicExtended {
			return request{}, fmt.Errorf("extended-header request (magic %#x) without negotiating extended headers", m)
		}
		return request{}, fmt.Errorf("request magic %#x, want %#x", m, magicRequest)
	}
	return request{
		flags:  binary.BigEndian.Uint16(b[4:]),
		typ:    binary.BigEndian.Uint16(b[6:]),
		cookie: binary.BigEndian.Uint64(b[8:]),
		offset: binary.BigEndian.Uint64(b[16:]),
		length: binary.BigEndian.Uint32(b[24:]),
	}, nil
}

// check decides what a request may do on an export of size bytes before
// any storage is touched: the reply's error (0: go ahead), and whether the
// connection must close because the stream cannot continue (a WRITE whose
// payload is over MaxPayload). readOnly refuses writes with NBD_EPERM.
// A WRITE's payload must be read whatever check says, unless fatal.
func (r request) check(size int64, readOnly bool) (errno uint32, fatal bool) {
	allowed := uint16(cmdFlagFUA) // FUA is valid on every command once SEND_FUA is announced
	switch r.typ {
	case cmdWrite:
		if r.length > MaxPayload {
			return errOverflow, true
		}
	case cmdRead:
		if r.length > MaxPayload {
			return errInval, false
		}
	case cmdWriteZeroes:
		allowed |= cmdFlagNoHole
	case cmdFlush, cmdTrim, cmdCache, cmdDisc:
	default:
		return errInval, false
	}
	if r.flags&^allowed != 0 {
		return errInval, false
	}
	switch r.typ {
	case cmdFlush, cmdDisc:
		return 0, false
	case cmdWrite, cmdTrim, cmdWriteZeroes:
		if readOnly {
			return errPerm, false
		}
	}
	if !inRange(r.offset, r.length, size) {
		// The spec's choice of errors for a range past the end: writes
		// get NBD_ENOSPC (as a full disk would), reads, trims and
		// cache hints NBD_EINVAL.
		if r.typ == cmdWrite || r.typ == cmdWriteZeroes {
			return errNoSpc, false
		}
		return errInval, false
	}
	return 0, false
}

// inRange reports whether [off, off+length) lies within an export of size
// bytes, without overflowing.
func inRange(off uint64, length uint32, size int64) bool {
	if size < 0 {
		return false
	}
	return off <= uint64(size) && uint64(length) <= uint64(size)-off
}

func (r request) String() string {
	return fmt.Sprintf("%s cookie %#x offset %d length %d flags %#x", cmdName(r.typ), r.cookie, r.offset, r.length, r.flags)
}

func cmdName(t uint16) string {
	switch t {
	case cmdRead:
		return "READ"
	case cmdWrite:
		return "WRITE"
	case cmdDisc:
		return "DISC"
	case cmdFlush:
		return "FLUSH"
	case cmdTrim:
		return "TRIM"
	case cmdCache:
		return "CACHE"
	case cmdWriteZeroes:
		return "WRITE_ZEROES"
	}
	return fmt.Sprintf("command %d", t)
}

func optName(o uint32) string {
	switch o {
	case optExportName:
		return "NBD_OPT_EXPORT_NAME"
	case optAbort:
		return "NBD_OPT_ABORT"
	case optList:
		return "NBD_OPT_LIST"
	case optStartTLS:
		return "NBD_OPT_STARTTLS"
	case optInfo:
		return "NBD_OPT_INFO"
	case optGo:
		return "NBD_OPT_GO"
	case optStructuredReply:
		return "NBD_OPT_STRUCTURED_REPLY"
	case optListMetaContext:
		return "NBD_OPT_LIST_META_CONTEXT"
	case optSetMetaContext:
		return "NBD_OPT_SET_META_CONTEXT"
	}
	return fmt.Sprintf("option %d", o)
}

// infoRequest is the data of NBD_OPT_INFO and NBD_OPT_GO.
type infoRequest struct {
	name  string
	infos []uint16
}

// decodeInfoRequest parses NBD_OPT_INFO/GO data: a 32-bit name length, the
// name, a 16-bit count and that many 16-bit information types, and nothing
// after them.
func decodeInfoRequest(b []byte) (infoRequest, error) {
	if len(b) < 6 {
		return infoRequest{}, fmt.Errorf("%d bytes of data, want at least 6 (name length, name, information count)", len(b))
	}
	n := binary.BigEndian.Uint32(b)
	if uint64(n) > uint64(len(b)-6) {
		return infoRequest{}, fmt.Errorf("name length %d does not fit in %d bytes of data", n, len(b))
	}
	name := b[4 : 4+n]
	rest := b[4+n:]
	count := int(binary.BigEndian.Uint16(rest))
	rest = rest[2:]
	if len(rest) != 2*count {
		return infoRequest{}, fmt.Errorf("%d information requests announced, %d bytes of them sent", count, len(rest))
	}
	if err := checkName(name); err != nil {
		return infoRequest{}, err
	}
	r := infoRequest{name: string(name)}
	for i := 0; i < count; i++ {
		r.infos = append(r.infos, binary.BigEndian.Uint16(rest[2*i:]))
	}
	return r, nil
}

// checkName applies the protocol's rules for strings to an export name.
func checkName(b []byte) error {
	if len(b) > maxName {
		return fmt.Errorf("export name of %d bytes, the protocol allows %d", len(b), maxName)
	}
	for _, c := range b {
		if c == 0 {
			return errors.New("export name contains a NUL byte")
		}
	}
	if !utf8.Valid(b) {
		return errors.New("export name is not UTF-8")
	}
	return nil
}

// Errno is the NBD error value a reply carries for err returned by an
// Export: the protocol's few values, by the errno err wraps. Unknown errors
// are NBD_EIO.
func Errno(err error) uint32 {
	switch {
	case err == nil:
		return 0
	case errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EDQUOT), errors.Is(err, syscall.EFBIG):
		return errNoSpc
	case errors.Is(err, syscall.EPERM), errors.Is(err, syscall.EROFS), errors.Is(err, fs.ErrPermission):
		return errPerm
	case errors.Is(err, syscall.EINVAL):
		return errInval
	case errors.Is(err, syscall.EOVERFLOW):
		return errOverflow
	case errors.Is(err, syscall.ENOTSUP):
		return errNotSup
	case errors.Is(err, syscall.ESHUTDOWN):
		return errShutdown
	case errors.Is(err, syscall.ENOMEM):
		return errNoMem
	}
	return errIO
}
