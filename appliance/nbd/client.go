package nbd

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"time"
)

// ExportInfo is what a server says about the export a client chose.
type ExportInfo struct {
	Size  int64
	Flags uint16 // transmission flags (NBD_FLAG_HAS_FLAGS, READ_ONLY, SEND_FLUSH, ...)
	// Description is the server's NBD_INFO_DESCRIPTION, if it sent one.
	Description string
}

// RefusedError is a server's error reply to NBD_OPT_GO: the export is
// unknown, the client is refused by policy, the server shuts down. A
// client that reconnects stops on Unknown or Policy and retries the rest.
type RefusedError struct {
	Export string
	Reply  uint32 // NBD_REP_ERR_*
	Msg    string // the server's text, if any
}

func (e *RefusedError) Error() string {
	what := map[uint32]string{
		repErrUnsup:    "NBD_REP_ERR_UNSUP",
		repErrPolicy:   "refused by policy",
		repErrInvalid:  "NBD_REP_ERR_INVALID",
		repErrUnknown:  "unknown export",
		repErrShutdown: "server shutting down",
		repErrTooBig:   "NBD_REP_ERR_TOO_BIG",
	}[e.Reply]
	if what == "" {
		what = fmt.Sprintf("error reply %#x", e.Reply)
	}
	if e.Msg != "" {
		return fmt.Sprintf("nbd: export %q: %s: %s", e.Export, what, e.Msg)
	}
	return fmt.Sprintf("nbd: export %q: %s", e.Export, what)
}

// Permanent says whether trying again cannot help: the export does not
// exist or this client may not have it.
func (e *RefusedError) Permanent() bool {
	return e.Reply == repErrUnknown || e.Reply == repErrPolicy
}

// Handshake runs a client's fixed newstyle negotiation on nc and selects
// export with NBD_OPT_GO, leaving nc in transmission (the state the
// kernel's NBD client takes a socket in). It needs the server to speak
// NBD_OPT_GO (nbd-server 3.10 and later, this package). The whole
// handshake must finish within timeout.
func Handshake(nc net.Conn, export string, timeout time.Duration) (ExportInfo, error) {
	if len(export) > maxName {
		return ExportInfo{}, fmt.Errorf("nbd: export name of %d bytes, over the protocol's %d", len(export), maxName)
	}
	nc.SetDeadline(time.Now().Add(timeout))
	defer nc.SetDeadline(time.Time{})
	var g [greetingLength]byte
	if _, err := io.ReadFull(nc, g[:]); err != nil {
		return ExportInfo{}, fmt.Errorf("nbd: reading the server's greeting: %w", err)
	}
	if m := binary.BigEndian.Uint64(g[0:]); m != magicInit {
		return ExportInfo{}, fmt.Errorf("nbd: greeting magic %#016x, want NBDMAGIC: not an NBD server", m)
	}
	if m := binary.BigEndian.Uint64(g[8:]); m != magicOpt {
		return ExportInfo{}, fmt.Errorf("nbd: greeting %#016x is not newstyle (an oldstyle server?)", m)
	}
	hflags := binary.BigEndian.Uint16(g[16:])
	if hflags&flagFixedNewstyle == 0 {
		return ExportInfo{}, errors.New("nbd: the server does not speak fixed newstyle negotiation")
	}
	cflags := uint32(flagFixedNewstyle)
	if hflags&flagNoZeroes != 0 {
		cflags |= flagNoZeroes
	}
	// Client flags, then NBD_OPT_GO: name length, name, and a request
	// for NBD_INFO_DESCRIPTION (NBD_INFO_EXPORT comes anyway).
	msg := binary.BigEndian.AppendUint32(nil, cflags)
	msg = binary.BigEndian.AppendUint64(msg, magicOpt)
	msg = binary.BigEndian.AppendUint32(msg, optGo)
	msg = binary.BigEndian.AppendUint32(msg, uint32(4+len(export)+4))
	msg = binary.BigEndian.AppendUint32(msg, uint32(len(export)))
	msg = append(msg, export...)
	msg = binary.BigEndian.AppendUint16(msg, 1)
	msg = binary.BigEndian.AppendUint16(msg, infoDescription)
	if _, err := nc.Write(msg); err != nil {
		return ExportInfo{}, fmt.Errorf("nbd: sending NBD_OPT_GO: %w", err)
	}
	var info ExportInfo
	haveInfo := false
	for n := 0; n < maxOptions; n++ {
		var h [20]byte
		if _, err := io.ReadFull(nc, h[:]); err != nil {
			return ExportInfo{}, fmt.Errorf("nbd: reading the reply to NBD_OPT_GO: %w", err)
		}
		if m := binary.BigEndian.Uint64(h[0:]); m != magicOptReply {
			return ExportInfo{}, fmt.Errorf("nbd: option reply magic %#x, want %#x", m, uint64(magicOptReply))
		}
		if o := binary.BigEndian.Uint32(h[8:]); o != optGo {
			return ExportInfo{}, fmt.Errorf("nbd: reply for option %d, want NBD_OPT_GO", o)
		}
		rep := binary.BigEndian.Uint32(h[12:])
		length := binary.BigEndian.Uint32(h[16:])
		if length > maxOption {
			return ExportInfo{}, fmt.Errorf("nbd: option reply of %d bytes, over %d", length, maxOption)
		}
		data := make([]byte, length)
		if _, err := io.ReadFull(nc, data); err != nil {
			return ExportInfo{}, fmt.Errorf("nbd: reading %d bytes of an option reply: %w", length, err)
		}
		switch {
		case rep == repAck:
			if !haveInfo {
				return ExportInfo{}, errors.New("nbd: NBD_OPT_GO acknowledged without NBD_INFO_EXPORT")
			}
			return info, nil
		case rep == repInfo:
			if len(data) >= 2 && binary.BigEndian.Uint16(data) == infoExport {
				if len(data) != 12 {
					return ExportInfo{}, fmt.Errorf("nbd: NBD_INFO_EXPORT of %d bytes, want 12", len(data))
				}
				info.Size = int64(binary.BigEndian.Uint64(data[2:]))
				info.Flags = binary.BigEndian.Uint16(data[10:])
				haveInfo = info.Size >= 0
			}
			if len(data) >= 2 && binary.BigEndian.Uint16(data) == infoDescription {
				info.Description = printable(data[2:])
			}
		case rep&repFlagError != 0:
			return ExportInfo{}, &RefusedError{Export: export, Reply: rep, Msg: printable(data)}
		default:
			return ExportInfo{}, fmt.Errorf("nbd: unexpected reply %#x to NBD_OPT_GO", rep)
		}
	}
	return ExportInfo{}, errors.New("nbd: the server sent too many replies to NBD_OPT_GO")
}

// printable keeps a server's message fit for a log line.
func printable(b []byte) string {
	if len(b) > 256 {
		b = b[:256]
	}
	out := make([]rune, 0, len(b))
	for _, r := range string(b) {
		if r < 0x20 || r == 0x7f {
			r = '?'
		}
		out = append(out, r)
	}
	return string(out)
}
