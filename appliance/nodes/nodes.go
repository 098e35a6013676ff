// Package nodes keeps what the head node knows about each netbooted node in
// the store under nodes/<serial>/.
//
// Files there have one writer each: node.json is written by dhcpd (identity,
// address, image), stage-<service>.json by the service that saw the stage
// (dhcpd, tftpd, nfsd), and root/ by nfsd. Readers (the status page, tftpd,
// nfsd) merge them.
package nodes

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/ociboot/ociboot/appliance/store"
)

// Boot stages in the order a node passes them.
const (
	StageDHCP     = "dhcp"
	StageFirmware = "firmware"
	StageKernel   = "kernel"
	StageRoot     = "root-mounted"
)

// StageOrder ranks stages so the furthest one seen wins.
var StageOrder = map[string]int{StageDHCP: 1, StageFirmware: 2, StageKernel: 3, StageRoot: 4}

// Record is nodes/<serial>/node.json.
type Record struct {
	Serial   string    // 8 lowercase hex digits; the directory name
	Name     string    `json:",omitempty"`
	MAC      string    `json:",omitempty"`
	IP       string    `json:",omitempty"`
	Model    string    `json:",omitempty"` // e.g. "RPi4", from DHCP option 97
	Image    string    `json:",omitempty"` // reference from the config
	Platform string    `json:",omitempty"`
	Enrolled time.Time // first seen
	LastSeen time.Time
}

// Stage is nodes/<serial>/stage-<service>.json.
type Stage struct {
	Stage     string
	Time      time.Time
	Detail    string    `json:",omitempty"` // e.g. the last file fetched
	LastError string    `json:",omitempty"`
	ErrorTime time.Time `json:",omitempty"`
	// History is what this service saw of the recent boots, oldest
	// first: one span per stretch of saves of the same stage (a node
	// fetching its firmware files is one span), at most HistoryLen.
	// The status page merges the services' histories into the current
	// boot's timeline.
	History []Span `json:",omitempty"`
}

// Span is a stretch of one stage: first and last time a service saw it.
type Span struct {
	Stage       string
	First, Last time.Time
}

// HistoryLen bounds Stage.History; SpanGap is the quiet time after which
// the same stage starts a new span (a node's second DHCP of one boot, the
// kernel's, comes tens of seconds after the bootloader's).
const (
	HistoryLen = 32
	SpanGap    = 10 * time.Second
)

// extend adds s to the history h.
func extend(h []Span, stage string, t time.Time) []Span {
	if stage == "" || t.IsZero() {
		return h
	}
	if n := len(h); n > 0 && h[n-1].Stage == stage && t.Sub(h[n-1].Last) < SpanGap && !t.Before(h[n-1].First) {
		h[n-1].Last = t
		return h
	}
	h = append(h, Span{Stage: stage, First: t, Last: t})
	if len(h) > HistoryLen {
		h = h[len(h)-HistoryLen:]
	}
	return h
}

const recordFile = "node.json"

// Save writes rec crash-safely, creating the node's directory.
func Save(st *store.Store, rec Record) error {
	dir, err := st.NodeDir(rec.Serial)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("nodes: %v", err)
	}
	return store.WriteJSON(filepath.Join(dir, recordFile), rec)
}

// Load reads one node's record; errors.Is(err, fs.ErrNotExist) for an
// unknown node.
func Load(st *store.Store, serial string) (Record, error) {
	dir, err := st.NodeDir(serial)
	if err != nil {
		return Record{}, err
	}
	var rec Record
	err = store.ReadJSON(filepath.Join(dir, recordFile), &rec)
	return rec, err
}

// List returns every node that has a record, sorted by serial. A corrupt
// record is reported in errs and skipped, so one bad file does not hide the
// others.
func List(st *store.Store) (recs []Record, errs []error) {
	entries, err := os.ReadDir(st.Path(store.NodesDir))
	if err != nil {
		return nil, []error{fmt.Errorf("nodes: %v", err)}
	}
	for _, e := range entries {
		if !e.IsDir() || !store.ValidName(e.Name()) {
			continue
		}
		rec, err := Load(st, e.Name())
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		recs = append(recs, rec)
	}
	sort.Slice(recs, func(i, j int) bool { return recs[i].Serial < recs[j].Serial })
	return recs, errs
}

// SaveStage records what service saw of the node.
func SaveStage(st *store.Store, serial, service string, s Stage) error {
	dir, err := st.NodeDir(serial)
	if err != nil {
		return err
	}
	if !store.ValidName(service) {
		return fmt.Errorf("nodes: %q is not a service name", service)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("nodes: %v", err)
	}
	path := filepath.Join(dir, "stage-"+service+".json")
	// The service is this file's only writer, so read-extend-write
	// cannot lose another's span.
	var prev Stage
	if store.ReadJSON(path, &prev) == nil && s.History == nil {
		s.History = prev.History
	}
	s.History = extend(s.History, s.Stage, s.Time)
	return store.WriteJSON(path, s)
}

// Progress merges the stage files of a node: the furthest stage reached, its
// time, and the newest error of any service.
func Progress(st *store.Store, serial string) (Stage, error) {
	dir, err := st.NodeDir(serial)
	if err != nil {
		return Stage{}, err
	}
	files, _ := filepath.Glob(filepath.Join(dir, "stage-*.json"))
	var out Stage
	for _, f := range files {
		var s Stage
		if err := store.ReadJSON(f, &s); err != nil {
			continue
		}
		if StageOrder[s.Stage] > StageOrder[out.Stage] ||
			(StageOrder[s.Stage] == StageOrder[out.Stage] && s.Time.After(out.Time)) {
			out.Stage, out.Time, out.Detail = s.Stage, s.Time, s.Detail
		}
		if s.LastError != "" && s.ErrorTime.After(out.ErrorTime) {
			out.LastError, out.ErrorTime = s.LastError, s.ErrorTime
		}
	}
	return out, nil
}

// EEPROMUpdate is nodes/<serial>/eeprom-tftpd.json: the last bootloader
// update (pieeprom.upd) tftpd served the node whole. The Pi flashes it
// when its signature (pieeprom.sig) differs from what it runs.
type EEPROMUpdate struct {
	File   string // as requested, e.g. "abcd1234/pieeprom.upd"
	Size   int64
	SHA256 string
	Source string // where it came from (nodes.Boot.Source)
	Time   time.Time
}

const eepromFile = "eeprom-tftpd.json"

// SaveEEPROMUpdate records that the node fetched a bootloader update.
func SaveEEPROMUpdate(st *store.Store, serial string, u EEPROMUpdate) error {
	dir, err := st.NodeDir(serial)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("nodes: %v", err)
	}
	return store.WriteJSON(filepath.Join(dir, eepromFile), u)
}

// LoadEEPROMUpdate returns the node's last bootloader update, ok false if
// none was served.
func LoadEEPROMUpdate(st *store.Store, serial string) (EEPROMUpdate, bool) {
	dir, err := st.NodeDir(serial)
	if err != nil {
		return EEPROMUpdate{}, false
	}
	var u EEPROMUpdate
	return u, store.ReadJSON(filepath.Join(dir, eepromFile), &u) == nil
}

// ConsoleLine is one line of a node's boot log as received over UDP:
// the bootloader's NETCONSOLE or the kernel's netconsole=.
type ConsoleLine struct {
	Time time.Time
	From string // sender address:port
	Text string
}

// ConsoleFile is nodes/<serial>/console.json, written by tftpd, which
// receives the logs: the last lines of the node's boot log, oldest first.
const ConsoleFile = "console.json"

// SaveConsole replaces the node's stored log lines.
func SaveConsole(st *store.Store, serial string, lines []ConsoleLine) error {
	dir, err := st.NodeDir(serial)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("nodes: %v", err)
	}
	return store.WriteJSON(filepath.Join(dir, ConsoleFile), struct{ Lines []ConsoleLine }{lines})
}

// LoadConsole returns the node's stored log lines, oldest first.
func LoadConsole(st *store.Store, serial string) []ConsoleLine {
	dir, err := st.NodeDir(serial)
	if err != nil {
		return nil
	}
	var v struct{ Lines []ConsoleLine }
	store.ReadJSON(filepath.Join(dir, ConsoleFile), &v)
	return v.Lines
}

// ViewFile is nodes/<serial>/view.json, written by nfsd when it makes the
// node's root from an image; Digest names that image's tree.
const ViewFile = "view.json"

// PreviousDir is nodes/<serial>/previous/, where nfsd keeps the root (and
// its view.json) a reimage replaced until the new one has mounted.
const PreviousDir = "previous"

// ViewImages returns the image digests nodes' roots were made from. Their
// trees must stay while the roots exist.
func ViewImages(st *store.Store) []string {
	var out []string
	entries, _ := os.ReadDir(st.Path(store.NodesDir))
	for _, e := range entries {
		if !e.IsDir() || !store.ValidName(e.Name()) {
			continue
		}
		// A root a reimage set aside (nfsd's previous/) links into its
		// image too, and may be put back.
		for _, f := range []string{ViewFile, filepath.Join(PreviousDir, ViewFile)} {
			var v struct{ Digest string }
			if store.ReadJSON(filepath.Join(st.Path(store.NodesDir, e.Name()), f), &v) == nil && v.Digest != "" {
				out = append(out, v.Digest)
			}
		}
	}
	sort.Strings(out)
	return out
}

// ViewImage is the digest of the image serial's root was made from, or ""
// if nfsd has not made one.
func ViewImage(st *store.Store, serial string) string {
	dir, err := st.NodeDir(serial)
	if err != nil {
		return ""
	}
	var v struct{ Digest string }
	store.ReadJSON(filepath.Join(dir, ViewFile), &v)
	return v.Digest
}
