package nbdd

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/ociboot/ociboot/appliance/config"
	"github.com/ociboot/ociboot/appliance/nodes"
	"github.com/ociboot/ociboot/appliance/store"
	"github.com/ociboot/ociboot/appliance/webauth"
)

// Report is what a node's installer POSTs to /install when it is done
// installing itself to its own disk (Nodes[].Install):
//
//	{"Device": "/dev/nvme0n1", "OK": true}
//	{"Device": "/dev/nvme0n1", "OK": false, "Error": "sgdisk: ..."}
type Report struct {
	Device string
	OK     bool
	Error  string
}

// Bounds of a report's strings: a device path, and the installer's last
// words (the status page shows them, the store keeps them).
const (
	maxDevice = 256
	maxError  = 2048
)

// ParseReport decodes and checks a report: one JSON object with the
// fields of Report only, Device a path under /dev. Control characters in
// Error become spaces and it is cut to maxError bytes; a failure without
// a reason gets one.
func ParseReport(b []byte) (Report, error) {
	var r Report
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&r); err != nil {
		return Report{}, fmt.Errorf("install report: %v; send {\"Device\": \"/dev/...\", \"OK\": true|false, \"Error\": \"...\"}", err)
	}
	if dec.More() {
		return Report{}, errors.New("install report: more than one JSON value")
	}
	switch {
	case r.Device == "":
		return Report{}, errors.New("install report: no Device")
	case len(r.Device) > maxDevice || !strings.HasPrefix(r.Device, "/dev/") || strings.IndexFunc(r.Device, func(c rune) bool { return unicode.IsControl(c) || unicode.IsSpace(c) }) >= 0:
		return Report{}, fmt.Errorf("install report: Device %q is not a device path such as /dev/nvme0n1", truncate(r.Device, 64))
	}
	if r.OK {
		r.Error = ""
		return r, nil
	}
	r.Error = strings.TrimSpace(strings.Map(func(c rune) rune {
		if unicode.IsControl(c) {
			return ' '
		}
		return c
	}, r.Error))
	r.Error = truncate(r.Error, maxError)
	if r.Error == "" {
		r.Error = "the installer gave no reason"
	}
	return r, nil
}

// truncate cuts s to at most n bytes on a character boundary.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

// InstallHandler records a node's install report (nodes.SaveInstall). It
// must be served behind webauth.NodeOnly, which names the node: a node
// reports only for itself. A node without Nodes[].Install in the config
// is refused (409): nothing would read its report.
func InstallHandler(cfg func() *config.Config, st *store.Store, log *slog.Logger) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		key := webauth.NodeKey(r)
		if key == "" {
			http.Error(w, "install report: not from a node", http.StatusForbidden)
			return
		}
		b, err := io.ReadAll(r.Body)
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			http.Error(w, fmt.Sprintf("install report: larger than %d bytes", tooBig.Limit), http.StatusRequestEntityTooLarge)
			return
		}
		if err != nil {
			http.Error(w, "install report: "+err.Error(), http.StatusBadRequest)
			return
		}
		rep, err := ParseReport(b)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		c := cfg()
		want := nodes.InstallOf(c, st, key).Want
		if want == nil {
			log.Warn("install report from a node without Nodes[].Install; not recorded", "node", key, "device", rep.Device, "ok", rep.OK)
			http.Error(w, fmt.Sprintf("node %s has no Install in config.json (Netboot.Nodes[].Install): report not recorded", key), http.StatusConflict)
			return
		}
		in := nodes.Install{Device: rep.Device, Time: time.Now().UTC(), OK: rep.OK, Error: rep.Error}
		if err := nodes.SaveInstall(st, key, in); err != nil {
			log.Error("saving an install report", "node", key, "err", err)
			http.Error(w, "install report not saved: "+err.Error(), http.StatusInternalServerError)
			return
		}
		s := nodes.InstallOf(c, st, key)
		var msg string
		switch {
		case !rep.OK:
			log.Warn("node's install failed; it keeps netbooting", "node", key, "device", rep.Device, "error", rep.Error)
			msg = "recorded: the install failed; the node keeps netbooting"
		case rep.Device != want.Device:
			log.Warn("node installed to another device than configured; its next netboot installs again", "node", key, "device", rep.Device, "configured", want.Device)
			msg = fmt.Sprintf("recorded, but config.json says %s: the next netboot installs again", want.Device)
		case s.Local:
			log.Info("node installed; it boots from its disk, netboot answers stop", "node", key, "device", rep.Device)
			msg = "recorded: installed to " + rep.Device + "; the node boots from it, ociboot no longer answers its netboot"
		default:
			log.Info("node installed; its netboot stays answered (KeepNetboot)", "node", key, "device", rep.Device)
			msg = "recorded: installed to " + rep.Device + "; ociboot keeps answering its netboot (KeepNetboot)"
		}
		fmt.Fprintf(w, "node %s: %s\n", key, msg)
	})
}
