package tftpd

// The TFTP protocol, read side only: RFC 1350 with option negotiation
// (RFC 2347), blksize (RFC 2348) and tsize (RFC 2349). tftpd owns it rather
// than using a library because the Pi's conversations need two things a
// general server gets wrong: the bootloader's ERROR 0 "early terminate"
// after an OACK must go unanswered (RFC 1350 §7: an ERROR is neither
// acknowledged nor retransmitted; the Pi has already closed its port), and
// duplicate ACKs must not trigger retransmissions (the Sorcerer's
// Apprentice bug, RFC 1123 §4.2.3.1).

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"
)

const (
	opRRQ   = 1
	opWRQ   = 2
	opDATA  = 3
	opACK   = 4
	opERROR = 5
	opOACK  = 6
)

// TFTP error codes (RFC 1350 §5).
const (
	errUndefined  = 0
	errNotFound   = 1
	errAccess     = 2
	errIllegalOp  = 4
	errUnknownTID = 5
)

// rrq is a parsed read request.
type rrq struct {
	file string
	mode string            // "octet" or "netascii", lower case
	opts map[string]string // option names in lower case
}

// parseRRQ decodes an RRQ or WRQ body (after the opcode): file, mode and
// option pairs, each NUL-terminated.
func parseRRQ(b []byte) (rrq, error) {
	fields := bytes.Split(b, []byte{0})
	if len(fields) < 3 || len(fields[len(fields)-1]) != 0 {
		return rrq{}, errors.New("tftpd: request is not NUL-terminated file and mode")
	}
	fields = fields[:len(fields)-1]
	r := rrq{file: string(fields[0]), mode: strings.ToLower(string(fields[1])), opts: map[string]string{}}
	opts := fields[2:]
	if len(opts)%2 != 0 {
		return rrq{}, errors.New("tftpd: an option without a value")
	}
	for i := 0; i < len(opts); i += 2 {
		r.opts[strings.ToLower(string(opts[i]))] = string(opts[i+1])
	}
	return r, nil
}

// peerError is an ERROR packet the client sent; it ends the transfer and is
// never answered.
type peerError struct {
	Code  uint16
	Msg   string
	Block uint16 // the block (0: the OACK) the client answered with it
}

func (e *peerError) Error() string {
	return fmt.Sprintf("client sent error %d %q at block %d", e.Code, e.Msg, e.Block)
}

// earlyTerminate reports whether err is the Pi's ERROR 0 in answer to the
// OACK: it learned the size and will ask again.
func earlyTerminate(err error) bool {
	var pe *peerError
	return errors.As(err, &pe) && pe.Block == 0 && pe.Code == errUndefined
}

func errorPacket(code uint16, msg string) []byte {
	b := []byte{0, opERROR, byte(code >> 8), byte(code)}
	b = append(b, msg...)
	return append(b, 0)
}

// sender is one read transfer on its own socket (a fresh TID).
type sender struct {
	conn    *net.UDPConn
	peer    *net.UDPAddr
	timeout time.Duration
	retries int
}

// send transmits pkt and waits for the ACK of block, retransmitting after
// each timeout. Packets from other ports get ERROR 5 and do not count as
// an answer; ACKs of earlier blocks are ignored.
func (s *sender) send(pkt []byte, block uint16) error {
	buf := make([]byte, 1024)
	for try := 0; try <= s.retries; try++ {
		if _, err := s.conn.WriteToUDP(pkt, s.peer); err != nil {
			return fmt.Errorf("sending block %d: %v", block, err)
		}
		deadline := time.Now().Add(s.timeout)
		for {
			s.conn.SetReadDeadline(deadline)
			n, from, err := s.conn.ReadFromUDP(buf)
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				break
			}
			if err != nil {
				return fmt.Errorf("waiting for the ACK of block %d: %v", block, err)
			}
			if !from.IP.Equal(s.peer.IP) || from.Port != s.peer.Port {
				s.conn.WriteToUDP(errorPacket(errUnknownTID, "Unknown transfer ID"), from)
				continue
			}
			if n < 4 {
				continue
			}
			switch binary.BigEndian.Uint16(buf) {
			case opACK:
				if binary.BigEndian.Uint16(buf[2:]) == block {
					return nil
				}
			case opERROR:
				msg, _, _ := strings.Cut(string(buf[4:n]), "\x00")
				return &peerError{Code: binary.BigEndian.Uint16(buf[2:]), Msg: msg, Block: block}
			}
		}
	}
	return fmt.Errorf("no ACK of block %d after %d tries of %v", block, s.retries+1, s.timeout)
}

// fail tells the client why the transfer ends.
func (s *sender) fail(code uint16, msg string) {
	s.conn.WriteToUDP(errorPacket(code, msg), s.peer)
}

// negotiate picks the options we grant (RFC 2347: unknown ones are left
// out of the OACK) and returns the block size.
func negotiate(req rrq, size int64) (blksize int, oack []byte) {
	blksize = 512
	var b []byte
	if v, ok := req.opts["blksize"]; ok {
		// RFC 2348 allows 8..65464; we grant up to one Ethernet frame.
		if n, err := strconv.Atoi(v); err == nil && n >= 8 && n <= 65464 {
			blksize = min(n, MaxBlockSize)
			b = append(b, "blksize\x00"+strconv.Itoa(blksize)+"\x00"...)
		}
	}
	if v, ok := req.opts["tsize"]; ok && v == "0" && size >= 0 {
		b = append(b, "tsize\x00"+strconv.FormatInt(size, 10)+"\x00"...)
	}
	if len(b) == 0 {
		return blksize, nil
	}
	return blksize, append([]byte{0, opOACK}, b...)
}

// transmit sends r (size bytes, -1 if unknown) as negotiated: OACK if any
// option was granted, then lock-step DATA blocks until one is short. Block
// numbers wrap after 65535, as clients that fetch large initramfs files
// expect.
func (s *sender) transmit(req rrq, r io.Reader, size int64) (int64, error) {
	blksize, oack := negotiate(req, size)
	if oack != nil {
		if err := s.send(oack, 0); err != nil {
			return 0, err
		}
	}
	pkt := make([]byte, 4+blksize)
	pkt[1] = opDATA
	var sent int64
	for block := uint16(1); ; block++ {
		n, err := io.ReadFull(r, pkt[4:])
		if err != nil && err != io.EOF && err != io.ErrUnexpectedEOF {
			s.fail(errUndefined, "read error on the server")
			return sent, fmt.Errorf("reading block %d: %v", block, err)
		}
		binary.BigEndian.PutUint16(pkt[2:], block)
		if err := s.send(pkt[:4+n], block); err != nil {
			return sent, err
		}
		sent += int64(n)
		if n < blksize {
			return sent, nil
		}
	}
}

// netascii converts a byte stream to netascii (RFC 764): LF becomes CR LF,
// a bare CR becomes CR NUL.
type netascii struct {
	r   *bufio.Reader
	out []byte
}

func (n *netascii) Read(p []byte) (int, error) {
	for len(n.out) < len(p) {
		c, err := n.r.ReadByte()
		if err != nil {
			if len(n.out) == 0 {
				return 0, err
			}
			break
		}
		switch c {
		case '\n':
			n.out = append(n.out, '\r', '\n')
		case '\r':
			n.out = append(n.out, '\r', 0)
		default:
			n.out = append(n.out, c)
		}
	}
	k := copy(p, n.out)
	n.out = n.out[k:]
	return k, nil
}
