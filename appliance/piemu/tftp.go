package piemu

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"
)

// TFTPError is an ERROR packet from the server.
type TFTPError struct {
	Code uint16
	Msg  string
}

func (e *TFTPError) Error() string { return fmt.Sprintf("tftp error %d: %s", e.Code, e.Msg) }

// TFTPResult is one finished read request.
type TFTPResult struct {
	Data    []byte
	Options map[string]string // from the OACK; nil if the server sent none
	Blocks  int
}

// TFTPGet reads file from server (host:port) the way the Pi 4 bootloader's
// TFTP client does: a fresh source port per request, octet mode, the given
// options (the Pi sends "tsize" "0" and "blksize" "1024" or "1468"), lock
// step with one outstanding ACK, retransmission of the last ACK after a
// second of silence. With probe set it stops after the OACK with ERROR 0
// "Early terminate", as the Pi does when it only wants to know a file is
// there and how big it is.
func TFTPGet(ctx context.Context, server, file string, opts []string, probe bool) (TFTPResult, error) {
	srv, err := net.ResolveUDPAddr("udp4", server)
	if err != nil {
		return TFTPResult{}, err
	}
	conn, err := net.ListenUDP("udp4", nil)
	if err != nil {
		return TFTPResult{}, err
	}
	defer conn.Close()
	rrq := []byte{0, 1}
	rrq = append(rrq, file...)
	rrq = append(rrq, 0)
	rrq = append(rrq, "octet"...)
	rrq = append(rrq, 0)
	for _, o := range opts {
		rrq = append(rrq, o...)
		rrq = append(rrq, 0)
	}
	var res TFTPResult
	blksize := 512
	var tid *net.UDPAddr
	last := rrq // what to retransmit on timeout
	lastTo := srv
	var expect uint16 = 1
	buf := make([]byte, 65536)
	var data bytes.Buffer
	if _, err := conn.WriteToUDP(rrq, srv); err != nil {
		return res, err
	}
	tries := 0
	for {
		if err := ctx.Err(); err != nil {
			return res, err
		}
		conn.SetReadDeadline(time.Now().Add(time.Second))
		n, from, err := conn.ReadFromUDP(buf)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				tries++
				if tries > 5 {
					return res, fmt.Errorf("tftp %s: no answer after %d tries", file, tries)
				}
				conn.WriteToUDP(last, lastTo)
				continue
			}
			return res, err
		}
		if tid == nil {
			tid = from
		} else if !from.IP.Equal(tid.IP) || from.Port != tid.Port {
			// RFC 1350: a packet from another TID gets ERROR 5.
			conn.WriteToUDP(append([]byte{0, 5, 0, 5}, "Unknown transfer ID\x00"...), from)
			continue
		}
		if n < 4 {
			return res, fmt.Errorf("tftp %s: short packet of %d bytes", file, n)
		}
		tries = 0
		p := buf[:n]
		switch op := binary.BigEndian.Uint16(p); op {
		case 5:
			msg, _, _ := strings.Cut(string(p[4:]), "\x00")
			return res, &TFTPError{Code: binary.BigEndian.Uint16(p[2:]), Msg: msg}
		case 6:
			if res.Options != nil || expect != 1 {
				continue // a duplicate OACK: our ACK 0 was lost
			}
			res.Options = map[string]string{}
			fields := strings.Split(strings.TrimSuffix(string(p[2:]), "\x00"), "\x00")
			for i := 0; i+1 < len(fields); i += 2 {
				res.Options[strings.ToLower(fields[i])] = fields[i+1]
			}
			if bs, err := strconv.Atoi(res.Options["blksize"]); err == nil {
				blksize = bs
			}
			if probe {
				conn.WriteToUDP(append([]byte{0, 5, 0, 0}, "Early terminate\x00"...), tid)
				return res, nil
			}
			last, lastTo = []byte{0, 4, 0, 0}, tid
			conn.WriteToUDP(last, tid)
		case 3:
			block := binary.BigEndian.Uint16(p[2:])
			if block != expect {
				// A duplicate of a block we ACKed: ACK it again, as the Pi
				// does, but do not take the data twice.
				if block == expect-1 {
					conn.WriteToUDP([]byte{0, 4, byte(block >> 8), byte(block)}, tid)
				}
				continue
			}
			data.Write(p[4:])
			res.Blocks++
			last, lastTo = []byte{0, 4, byte(block >> 8), byte(block)}, tid
			conn.WriteToUDP(last, tid)
			expect++
			if n-4 < blksize {
				res.Data = data.Bytes()
				return res, nil
			}
		default:
			return res, fmt.Errorf("tftp %s: unexpected opcode %d", file, op)
		}
	}
}

// TFTPReport is what TFTPBoot fetched.
type TFTPReport struct {
	Files    map[string][]byte // by name without prefix
	Sizes    map[string]string // tsize from each OACK
	Missing  []string          // probes answered with "not found"
	Requests int
	// Kernel and Initramfs name the files config.txt chose (keys of Files).
	Kernel, Initramfs string
	// EEPROMUpdate: pieeprom.sig was there, so the bootloader (with
	// ENABLE_SELF_UPDATE=1) fetched pieeprom.upd to flash it.
	EEPROMUpdate bool
}

// TFTPBoot replays the TFTP part of a Pi 4 network boot (PI-NETBOOT.md
// §2.4): the EEPROM probes <serial>/start4.elf and aborts after the OACK,
// reads config.txt, start4.elf and fixup4.dat; start4.elf then reads
// config.txt again, probes a few optional files, reads the device tree,
// overlays, cmdline.txt and the kernel. Every request uses
// "tsize 0 blksize <blksize>".
func TFTPBoot(ctx context.Context, server, serial string, blksize int) (TFTPReport, error) {
	rep := TFTPReport{Files: map[string][]byte{}, Sizes: map[string]string{}}
	opts := []string{"tsize", "0", "blksize", strconv.Itoa(blksize)}
	get := func(file string, probe, optional bool) error {
		rep.Requests++
		r, err := TFTPGet(ctx, server, serial+"/"+file, opts, probe)
		var te *TFTPError
		if errors.As(err, &te) && te.Code == 1 && optional {
			rep.Missing = append(rep.Missing, file)
			return nil
		}
		if err != nil {
			return fmt.Errorf("%s/%s: %w", serial, file, err)
		}
		if r.Options != nil {
			rep.Sizes[file] = r.Options["tsize"]
			if got, want := r.Options["blksize"], strconv.Itoa(blksize); got != want {
				return fmt.Errorf("%s/%s: OACK blksize %q, want %q", serial, file, got, want)
			}
		} else {
			return fmt.Errorf("%s/%s: no OACK: the Pi would ignore config.txt", serial, file)
		}
		if !probe {
			rep.Files[file] = r.Data
		}
		return nil
	}
	steps := []struct {
		file            string
		probe, optional bool
	}{
		{"start4.elf", true, false},
		{"config.txt", false, false},
		{"pieeprom.sig", false, true},
		{"recover4.elf", false, true},
		{"start4.elf", false, false},
		{"fixup4.dat", false, false},
		{"config.txt", false, false},
		{"dt-blob.bin", false, true},
		{"bcm2711-rpi-4-b.dtb", false, false},
		{"overlays/overlay_map.dtb", false, true},
		{"cmdline.txt", false, false},
		{"armstub8-gic.bin", false, true},
	}
	for _, s := range steps {
		if err := get(s.file, s.probe, s.optional); err != nil {
			return rep, err
		}
		// With a signature on offer the bootloader fetches the update
		// itself (and recovery.bin, which a Pi 4 runs to flash it),
		// then goes on.
		if _, ok := rep.Files["pieeprom.sig"]; ok && s.file == "pieeprom.sig" {
			for _, f := range []string{"pieeprom.upd", "recovery.bin"} {
				if err := get(f, false, false); err != nil {
					return rep, err
				}
			}
			rep.EEPROMUpdate = true
		}
	}
	// start4.elf loads the kernel and the initramfs config.txt names for
	// its board (Raspberry Pi OS: kernel8.img and "initramfs initramfs8
	// followkernel"; Debian's raspi-firmware: kernel=vmlinuz-<release>).
	ct := ParseConfigTxt(rep.Files["config.txt"], "pi4")
	rep.Kernel = ct.Kernel
	if err := get(ct.Kernel, true, false); err != nil {
		return rep, err
	}
	if err := get(ct.Kernel, false, false); err != nil {
		return rep, err
	}
	if ct.Initramfs != "" {
		rep.Initramfs = ct.Initramfs
		if err := get(ct.Initramfs, false, false); err != nil {
			return rep, err
		}
	}
	return rep, nil
}

// Device trees of the Pi 5 boards TFTPBootPi5 emulates.
var Pi5DTBs = map[string]string{"pi5": "bcm2712-rpi-5-b.dtb", "cm5": "bcm2712-rpi-cm5-cm5io.dtb"}

// TFTPBootPi5 replays the TFTP part of a Pi 5 / CM5 network boot
// (PI-NETBOOT.md §3.1) for board "pi5" or "cm5": its firmware is in the
// EEPROM, so there is no start*.elf; the bootloader reads
// <prefix>/config.txt first, probes pieeprom.sig (self-update), then reads
// the board's device tree (Pi5DTBs), overlays/overlay_map.dtb,
// cmdline.txt, the kernel config.txt chooses for the board
// (kernel_2712.img by default) and its initramfs (the initramfs line, or
// with auto_initramfs=1 the one named after the kernel: initramfs_2712),
// at blksize 1468 as the Pi 5 asks.
func TFTPBootPi5(ctx context.Context, server, prefix, board string) (TFTPReport, error) {
	rep := TFTPReport{Files: map[string][]byte{}, Sizes: map[string]string{}}
	opts := []string{"tsize", "0", "blksize", "1468"}
	get := func(file string, optional bool) error {
		rep.Requests++
		r, err := TFTPGet(ctx, server, prefix+"/"+file, opts, false)
		var te *TFTPError
		if errors.As(err, &te) && te.Code == 1 && optional {
			rep.Missing = append(rep.Missing, file)
			return nil
		}
		if err != nil {
			return fmt.Errorf("%s/%s: %w", prefix, file, err)
		}
		if r.Options == nil {
			return fmt.Errorf("%s/%s: no OACK", prefix, file)
		}
		rep.Sizes[file] = r.Options["tsize"]
		rep.Files[file] = r.Data
		return nil
	}
	dtb, ok := Pi5DTBs[board]
	if !ok {
		return rep, fmt.Errorf("piemu: %q is not a Pi 5 board (pi5, cm5)", board)
	}
	for _, s := range []struct {
		file     string
		optional bool
	}{
		{"config.txt", false},
		{"pieeprom.sig", true},
		{dtb, false},
		{"overlays/overlay_map.dtb", true},
		{"cmdline.txt", false},
	} {
		if err := get(s.file, s.optional); err != nil {
			return rep, err
		}
	}
	ct := ParseConfigTxt(rep.Files["config.txt"], board)
	rep.Kernel, rep.Initramfs = ct.Kernel, ct.Initramfs
	if rep.Initramfs == "" && ct.Settings["auto_initramfs"] == "1" {
		if v, ok := strings.CutPrefix(strings.TrimSuffix(ct.Kernel, ".img"), "kernel"); ok {
			rep.Initramfs = "initramfs" + v
		}
	}
	if err := get(rep.Kernel, false); err != nil {
		return rep, err
	}
	if rep.Initramfs != "" {
		if err := get(rep.Initramfs, false); err != nil {
			return rep, err
		}
	}
	return rep, nil
}
