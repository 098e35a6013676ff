package nodes

import (
	"path/filepath"
	"sort"
	"time"

	"github.com/ociboot/ociboot/appliance/store"
)

// Step is one stage of a boot: when it was first seen and how long it
// took since the step before.
type Step struct {
	Stage string
	Time  time.Time
	Took  time.Duration
}

// Timeline is a node's current (latest) boot as the services saw it.
type Timeline struct {
	// Steps in boot order; the last is where the boot is (or ended).
	Steps []Step
	// Activity is the newest thing any service saw of the node.
	Activity time.Time
}

// Reached is the furthest stage of the current boot, "" for none.
func (t Timeline) Reached() string {
	if len(t.Steps) == 0 {
		return ""
	}
	return t.Steps[len(t.Steps)-1].Stage
}

// LastBoot merges the services' stage histories into the node's latest
// boot. A boot begins with the DHCP that is followed by the bootloader's
// TFTP or, when that DHCP was not seen, its first firmware file; the
// kernel's own DHCP (ip=dhcp) and a running system's lease renewals
// belong to the boot they are in. So a node that boots again shows the new
// boot from its first packet, and a boot that stops shows where.
func LastBoot(st *store.Store, serial string) Timeline {
	dir, err := st.NodeDir(serial)
	if err != nil {
		return Timeline{}
	}
	files, _ := filepath.Glob(filepath.Join(dir, "stage-*.json"))
	var spans []Span
	for _, f := range files {
		var s Stage
		if store.ReadJSON(f, &s) != nil {
			continue
		}
		h := s.History
		if len(h) == 0 && s.Stage != "" {
			// Written before histories existed.
			h = []Span{{Stage: s.Stage, First: s.Time, Last: s.Time}}
		}
		spans = append(spans, h...)
	}
	return timeline(spans)
}

func timeline(spans []Span) Timeline {
	sort.SliceStable(spans, func(i, j int) bool { return spans[i].First.Before(spans[j].First) })
	var tl Timeline
	start := -1
	reached := "" // furthest stage of the boot that begins at start
	for i, s := range spans {
		if s.Last.After(tl.Activity) {
			tl.Activity = s.Last
		}
		prev, next := "", ""
		if i > 0 {
			prev = spans[i-1].Stage
		}
		if i+1 < len(spans) {
			next = spans[i+1].Stage
		}
		begins := false
		switch s.Stage {
		case StageDHCP:
			// The bootloader's DHCP is followed by its TFTP (firmware,
			// or the kernel for a PXE machine). A DHCP during a boot
			// that got no further than DHCP or firmware is a retry;
			// after the kernel it is the kernel's own or a running
			// system's renewal: the same boot.
			begins = start < 0 || next == StageFirmware || next == StageKernel && prev != StageFirmware ||
				next == "" && StageOrder[reached] < StageOrder[StageFirmware]
		case StageFirmware:
			begins = prev != StageDHCP && prev != StageFirmware
		}
		if begins {
			start, reached = i, ""
		}
		if StageOrder[s.Stage] > StageOrder[reached] {
			reached = s.Stage
		}
	}
	if start < 0 {
		if len(spans) == 0 {
			return tl
		}
		start = 0
	}
	seen := map[string]bool{}
	for _, s := range spans[start:] {
		if seen[s.Stage] || StageOrder[s.Stage] == 0 {
			continue
		}
		// Stages only move forward within a boot.
		if n := len(tl.Steps); n > 0 && StageOrder[s.Stage] < StageOrder[tl.Steps[n-1].Stage] {
			continue
		}
		seen[s.Stage] = true
		step := Step{Stage: s.Stage, Time: s.First}
		if n := len(tl.Steps); n > 0 {
			step.Took = s.First.Sub(tl.Steps[n-1].Time)
		}
		tl.Steps = append(tl.Steps, step)
	}
	return tl
}
