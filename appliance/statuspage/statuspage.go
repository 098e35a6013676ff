// Package statuspage renders the cluster overview: every node with its
// current boot (stages with times), whether it is online, booting or
// offline, what went wrong in words with what to do, its image, its use
// of the store, its disk for containers and its install to a local disk;
// every configured image with its pull state; /perm's free space; and
// whether each service runs, with the reason when it does not.
//
// It reads node records and stage files from the store, the images index,
// the services' state files and the other services' /status JSON over
// HTTP, so it keeps working (with gaps) when a service is down. It writes
// nothing itself: its actions (reset, forget, re-pull) are forwarded with
// the caller's credentials to the service that owns the state (nfsd for a
// node's root, ocicache for images).
package statuspage

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ociboot/ociboot/appliance/config"
	"github.com/ociboot/ociboot/appliance/images"
	"github.com/ociboot/ociboot/appliance/nodes"
	"github.com/ociboot/ociboot/appliance/service"
	"github.com/ociboot/ociboot/appliance/store"
	"github.com/ociboot/ociboot/appliance/webauth"
)

// Service is another ociboot service whose /status and /metrics the page
// shows.
type Service struct {
	Name string
	// URL of its status listener, e.g. "http://127.0.0.1:9067".
	URL string
}

// Page serves the status page.
type Page struct {
	Config   *config.Config
	Store    *store.Store
	Services []Service
	Client   *http.Client
	Now      func() time.Time
	// Guard checks the actions (password, same origin); nil means the
	// gokrazy password files.
	Guard *webauth.Guard

	sizeMu sync.Mutex
	sizes  map[string]int64 // image tree bytes by digest: trees are immutable
}

// OnlineWindow is how recent a node's last packet must be for it to count
// as online (or still booting). A running node's NFS client calls at least
// this often (attribute revalidation, journald).
const OnlineWindow = 2 * time.Minute

// Liveness values.
const (
	Online  = "online"
	Booting = "booting"
	Offline = "offline"
	NotSeen = "not seen"
)

// Node is one node of the overview.
type Node struct {
	Name   string
	Serial string
	MAC    string
	IP     string
	Image  string
	Digest string
	// ImageState is the node's image in the cache: ready, pulling,
	// failed (nothing to serve), or pending (not pulled yet).
	ImageState string
	// RootDigest is the image the node's NFS root was made from; it stays
	// until the node is reset, even when Digest moves on.
	RootDigest string
	// Hostname and HostKeys are the identity nfsd wrote into the node's
	// root (host name, SSH host key fingerprints).
	Hostname string   `json:",omitempty"`
	HostKeys []string `json:",omitempty"`
	// BootsFrom says where its boot files come now (nodes.BootOf): its
	// image before its root exists, its root's boot directory after.
	BootsFrom string
	// ImageChange is set when the configured image moved on after the
	// root was made: "image changed, pending reimage" (Reimage on-boot)
	// or what to do to move it (manual).
	ImageChange string
	// RootUsed is what the node's own files in its root use on the
	// store; RootQuota its quota (0: none). From nfsd.
	RootUsed  int64 `json:",omitempty"`
	RootQuota int64 `json:",omitempty"`
	// EEPROM is the last bootloader update (pieeprom.upd) tftpd served
	// the node, nil if none.
	EEPROM *nodes.EEPROMUpdate `json:",omitempty"`
	// Console is the node's boot log as received over UDP (bootloader
	// NETCONSOLE, kernel netconsole=), the last lines, oldest first.
	Console []nodes.ConsoleLine `json:",omitempty"`
	// Boot is the current boot: its stages with times and durations.
	Boot []nodes.Step
	// Stage is the furthest stage of the current boot; Detail what the
	// services saw last (the file fetched, who mounted).
	Stage  string
	Detail string `json:",omitempty"`
	// Liveness is online, booting, offline or not seen, since
	// LivenessSince (the last packet for offline, the boot's start
	// otherwise).
	Liveness      string
	LivenessSince time.Time `json:",omitzero"`
	LastSeen      time.Time
	// LastError is the newest error a service recorded for the node;
	// Problem says in words what is wrong now and what to do, "" when
	// nothing is.
	LastError string `json:",omitempty"`
	Problem   string `json:",omitempty"`
	// InUse is set when nfsd saw the node's mounted root in use, or
	// nbdd serves its NBD disk (one a reset drops): a reset then needs
	// force.
	InUse bool
	// Disk is the node's disk for its container runtime, nil: none.
	Disk *NodeDisk `json:",omitempty"`
	// Install is its install to its own disk in words ("installed to
	// /dev/nvme0n1 at ..., boots locally"), "" when none is configured.
	Install       string `json:",omitempty"`
	InstallFailed bool   `json:",omitempty"`
	// DiskBytes is what the node's own changes take on /perm (RootUsed,
	// as nfsd counts it), -1 when nfsd does not report it.
	DiskBytes int64
	Known     bool // listed in config.json
	Seen      bool // has asked for something

	platform string
}

// Image is one configured reference in the cache.
type Image struct {
	Ref       string
	Platforms []string
	// State: ready, pulling, failed (nothing to serve), stale (the last
	// pull failed, the last good tree still serves), pending.
	State       string
	Digest      string `json:",omitempty"`
	StandIn     string `json:",omitempty"`
	BootDir     string `json:",omitempty"`
	Kernel      string `json:",omitempty"`
	Pulled      time.Time
	LastAttempt time.Time `json:",omitzero"`
	Error       string    `json:",omitempty"`
	// Done and Total are the bytes of the blobs being fetched now.
	Done, Total int64
	// Bytes is the unpacked tree's size, 0 when unknown.
	Bytes int64
}

// Percent is the pull's progress, 0-100.
func (i Image) Percent() int {
	if i.Total <= 0 {
		return 0
	}
	return int(i.Done * 100 / i.Total)
}

// ServiceState is what the page learned from one service.
type ServiceState struct {
	Service
	Up bool
	// Error is why it is down: what it wrote when it stopped
	// (services/<name>.json) or why it does not answer.
	Error string `json:",omitempty"`
	// ConfigError: config.json changed into something the service
	// refuses; it runs on with its previous config.
	ConfigError string          `json:",omitempty"`
	Status      json.RawMessage `json:",omitempty"`
	Metrics     string          // link for the browser
	StatusLink  string          // raw JSON, for the browser
}

// Disk is the store's file system.
type Disk struct {
	Path             string
	FreeBytes, Total int64
}

// Overview is everything the page shows; /api/status returns it as JSON.
type Overview struct {
	Generated time.Time
	Mode      string
	Interface string
	Nodes     []Node
	Images    []Image
	Disk      Disk
	Services  []ServiceState
	Problems  []string
}

// Collect gathers the overview. host is the name the browser used to reach
// the page; metrics links point at the same host.
func (p *Page) Collect(ctx context.Context, host string) Overview {
	now := time.Now
	if p.Now != nil {
		now = p.Now
	}
	t := now().UTC()
	ov := Overview{Generated: t, Mode: p.Config.Mode, Interface: p.Config.Interface}
	for _, w := range p.Config.Warnings {
		ov.Problems = append(ov.Problems, "config.json: "+strings.TrimPrefix(w, "config.json: "))
	}

	states := make([]ServiceState, len(p.Services))
	var wg sync.WaitGroup
	for i, s := range p.Services {
		wg.Add(1)
		go func() {
			defer wg.Done()
			states[i] = p.fetch(ctx, s, host)
		}()
	}
	wg.Wait()
	recorded := service.LoadStates(p.Store)
	var cacheStatus struct {
		Cache struct {
			Images  []struct{ Ref, Platform, State, Error string }
			Pulling []struct {
				Ref         string
				Done, Total int64
			}
		}
	}
	var nfsStatus struct {
		Mounts   []struct{ Client, Path string }
		Activity []struct {
			Client string
			Time   time.Time
		}
	}
	for i, s := range states {
		if r, ok := recorded[s.Name]; ok {
			states[i].ConfigError = r.ConfigError
			switch {
			case !s.Up && r.Error != "":
				states[i].Error = fmt.Sprintf("%s (it stopped %s: %s)", s.Error, ago(t, r.Time), r.Error)
			case !s.Up && !r.Running:
				states[i].Error = fmt.Sprintf("%s (it was stopped %s)", s.Error, ago(t, r.Time))
			}
		}
		if !s.Up {
			continue
		}
		switch s.Name {
		case "ocicache":
			json.Unmarshal(s.Status, &cacheStatus)
		case "nfsd":
			json.Unmarshal(s.Status, &nfsStatus)
		}
	}
	ov.Services = states
	for _, name := range sortedKeys(recorded) {
		if r := recorded[name]; r.ConfigError != "" && r.Running {
			ov.Problems = append(ov.Problems, name+": "+r.ConfigError)
		}
	}

	ix, err := images.LoadIndex(p.Store)
	if err != nil {
		ov.Problems = append(ov.Problems, err.Error())
	}
	byRef := map[string]*Image{}
	refs := p.Config.Images()
	var names []string
	for ref := range refs {
		names = append(names, ref)
	}
	sort.Strings(names)
	for _, ref := range names {
		img := &Image{Ref: ref, Platforms: refs[ref], State: "pending"}
		for _, e := range ix.Entries {
			if e.Ref != ref {
				continue
			}
			img.Digest, img.StandIn, img.BootDir, img.Kernel, img.Pulled = e.Digest, e.StandIn, e.BootDir, e.Kernel, e.Pulled
			img.LastAttempt, img.Error = e.LastAttempt, e.LastError
			switch {
			case e.Digest != "" && e.LastError != "":
				img.State = "stale"
			case e.Digest != "":
				img.State = "ready"
			case e.LastError != "":
				img.State = "failed"
			}
			if e.Digest != "" {
				img.Bytes = p.treeSize(e.Digest)
			}
		}
		for _, cs := range cacheStatus.Cache.Images {
			if cs.Ref == ref && cs.State == "failed" && img.State == "pending" {
				img.State, img.Error = "failed", cs.Error
			}
		}
		for _, pr := range cacheStatus.Cache.Pulling {
			if pr.Ref == ref {
				img.State = "pulling"
				img.Done += pr.Done
				img.Total += pr.Total
			}
		}
		byRef[ref] = img
		ov.Images = append(ov.Images, *img)
	}
	var sfs unix.Statfs_t
	if err := unix.Statfs(p.Store.Root, &sfs); err == nil {
		ov.Disk = Disk{Path: p.Store.Root, FreeBytes: int64(sfs.Bavail) * sfs.Bsize, Total: int64(sfs.Blocks) * sfs.Bsize}
	}

	nfsAct := map[string]time.Time{}
	for _, a := range nfsStatus.Activity {
		nfsAct[a.Client] = a.Time
	}
	mountedBy := map[string]string{}
	for _, m := range nfsStatus.Mounts {
		mountedBy[strings.TrimPrefix(m.Path, "/nodes/")] = m.Client
	}

	connected := connectedDisks(states)

	recs, errs := nodes.List(p.Store)
	for _, err := range errs {
		ov.Problems = append(ov.Problems, err.Error())
	}
	bySerial := map[string]*Node{}
	var rows []*Node
	for _, rec := range recs {
		n := &Node{Name: rec.Name, Serial: rec.Serial, MAC: rec.MAC, IP: rec.IP, Image: rec.Image, LastSeen: rec.LastSeen, Seen: true, platform: rec.Platform}
		bySerial[rec.Serial] = n
		rows = append(rows, n)
	}
	// Nodes from the config that have not shown up yet are listed too, so
	// a typo in a serial is visible as a node that never boots.
	for _, nc := range p.Config.Nodes {
		n, ok := bySerial[nc.Serial]
		if !ok || nc.Serial == "" {
			n = &Node{Serial: nc.Serial, Image: nc.Image}
			if nc.MAC != nil {
				n.MAC = nc.MAC.String()
			}
			rows = append(rows, n)
		}
		n.Known = true
		n.Name = nc.Name
		n.Image, n.platform = nc.Image, nc.Platform
		if nc.IP.IsValid() && n.IP == "" {
			n.IP = nc.IP.String()
		}
	}
	for _, n := range rows {
		n.DiskBytes, n.Liveness = -1, NotSeen
		if img, ok := byRef[n.Image]; ok {
			n.ImageState = img.State
		} else if n.Image != "" {
			n.ImageState = "pending"
		}
		platform := n.platform
		if platform == "" {
			platform = p.Config.Platform
		}
		if e, ok := ix.Lookup(n.Image, platform); ok {
			n.Digest = e.Digest
		}
		if n.Serial != "" {
			p.nodeDetail(n, t, nfsAct, mountedBy)
			p.diskDetail(n, connected)
		}
		n.Problem = problem(n, byRef[n.Image], t)
		if n.Name == "" {
			n.Name = n.Serial
		}
	}
	sort.SliceStable(rows, func(i, j int) bool { return rows[i].Name < rows[j].Name })
	for _, n := range rows {
		ov.Nodes = append(ov.Nodes, *n)
	}
	addStoreState(&ov)
	for i := range ov.Nodes {
		if ov.Nodes[i].RootUsed > 0 {
			ov.Nodes[i].DiskBytes = ov.Nodes[i].RootUsed
		}
	}
	return ov
}

func (p *Page) nodeDetail(n *Node, now time.Time, nfsAct map[string]time.Time, mountedBy map[string]string) {
	n.RootDigest = nodes.ViewImage(p.Store, n.Serial)
	if n.RootDigest != "" {
		id := nodes.LoadIdentity(p.Store, n.Serial)
		n.Hostname, n.HostKeys = id.Hostname, id.HostKeys
	}
	if b, err := nodes.BootOf(p.Config, p.Store, n.Serial); err == nil {
		n.BootsFrom = b.Source()
		switch {
		case b.Reimage:
			n.ImageChange = "image changed, pending reimage: the next boot gets a fresh root from " + short(b.Image.Entry.Digest) + "; the previous root is kept until the new one has mounted"
		case b.Changed:
			n.ImageChange = "image changed: the root was made from " + short(b.RootDigest) + "; reimage the node (button below) or set Netboot.Reimage to \"on-boot\" to boot the new image"
		}
	}
	n.Console = nodes.LoadConsole(p.Store, n.Serial)
	if u, ok := nodes.LoadEEPROMUpdate(p.Store, n.Serial); ok {
		n.EEPROM = &u
	}
	if pr, err := nodes.Progress(p.Store, n.Serial); err == nil {
		n.LastError, n.Detail = pr.LastError, pr.Detail
	}
	tl := nodes.LastBoot(p.Store, n.Serial)
	n.Boot, n.Stage = tl.Steps, tl.Reached()
	act := tl.Activity
	for _, c := range []time.Time{n.LastSeen, nfsAct[n.IP], lastLine(n.Console)} {
		if c.After(act) {
			act = c
		}
	}
	if c, ok := mountedBy[n.Serial]; ok && now.Sub(nfsAct[c]) < OnlineWindow {
		n.InUse = true
	}
	switch {
	case act.IsZero():
		n.Liveness = NotSeen
	case now.Sub(act) >= OnlineWindow:
		n.Liveness, n.LivenessSince = Offline, act
	case n.Stage == nodes.StageRoot:
		n.Liveness, n.LivenessSince = Online, tl.Steps[len(tl.Steps)-1].Time
	default:
		n.Liveness = Booting
		if len(tl.Steps) > 0 {
			n.LivenessSince = tl.Steps[0].Time
		}
	}
}

// problem says what is wrong with n now and what to do, "" when nothing.
func problem(n *Node, img *Image, now time.Time) string {
	switch {
	case img != nil && img.State == "failed":
		when := ""
		if !img.LastAttempt.IsZero() {
			when = " (" + ago(now, img.LastAttempt) + ")"
		}
		return fmt.Sprintf("Its image %s could not be pulled%s: %s. What to do: check the reference in config.json and that the registry answers (credentials in the docker config for a private one); ocicache retries every minute, or press Re-pull.", img.Ref, when, img.Error)
	case n.Image == "":
		return "It has no image: set Netboot.DefaultImage or the node's Image in config.json."
	case img != nil && img.State == "pulling" && n.RootDigest == "":
		return fmt.Sprintf("Its image %s is being pulled (%d%%): it boots when the pull is done.", img.Ref, img.Percent())
	case img != nil && img.State == "pending" && n.RootDigest == "":
		return fmt.Sprintf("Its image %s is not in the cache yet: it cannot boot until ocicache has pulled it (see Image cache).", img.Ref)
	}
	if n.Liveness == Offline && n.Stage != "" && n.Stage != nodes.StageRoot {
		what := map[string]string{
			nodes.StageDHCP:     "it got its DHCP answer but fetched no firmware: is tftpd up, and does the image have a boot directory?",
			nodes.StageFirmware: "it fetched its firmware but no kernel: check config.txt's kernel= and the kernel file in the image's boot directory, and the boot log below.",
			nodes.StageKernel:   "its kernel did not mount the root: is nfsd up? Enable Netconsole for the node to see the kernel's log here.",
		}[n.Stage]
		msg := fmt.Sprintf("Its last boot stopped after %s (%s); %s", n.Stage, ago(now, n.LivenessSince), what)
		if n.LastError != "" {
			msg += " Last error: " + n.LastError + "."
		}
		return msg
	}
	if n.LastError != "" {
		advice := "see the service's log in the gokrazy web interface."
		if strings.Contains(n.LastError, "not in image") || strings.Contains(n.LastError, "not found") {
			advice = "the file is not in the image's boot directory: check the image (or Netboot.BootDir) and config.txt."
		}
		return "Last error: " + n.LastError + ". What to do: " + advice
	}
	return ""
}

func lastLine(l []nodes.ConsoleLine) time.Time {
	if len(l) == 0 {
		return time.Time{}
	}
	return l[len(l)-1].Time
}

// treeSize is the bytes of an image's unpacked tree, computed once per
// digest (trees never change once in place).
func (p *Page) treeSize(digest string) int64 {
	p.sizeMu.Lock()
	if n, ok := p.sizes[digest]; ok {
		p.sizeMu.Unlock()
		return n
	}
	p.sizeMu.Unlock()
	name, err := images.DirName(digest)
	if err != nil {
		return 0
	}
	var total int64
	filepath.WalkDir(p.Store.Path(store.ImagesDir, name), func(_ string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if fi, err := d.Info(); err == nil {
				total += fi.Size()
			}
		}
		return nil
	})
	p.sizeMu.Lock()
	defer p.sizeMu.Unlock()
	if p.sizes == nil {
		p.sizes = map[string]int64{}
	}
	p.sizes[digest] = total
	return total
}

func (p *Page) client() *http.Client {
	if p.Client != nil {
		return p.Client
	}
	return &http.Client{Timeout: 2 * time.Second}
}

func (p *Page) fetch(ctx context.Context, s Service, host string) ServiceState {
	st := ServiceState{Service: s, Metrics: browserLink(s.URL, host, "/metrics"), StatusLink: browserLink(s.URL, host, "/status")}
	req, err := http.NewRequestWithContext(ctx, "GET", strings.TrimSuffix(s.URL, "/")+"/status", nil)
	if err != nil {
		st.Error = err.Error()
		return st
	}
	resp, err := p.client().Do(req)
	if err != nil {
		st.Error = fmt.Sprintf("%s is not answering: %v", s.Name, err)
		return st
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil || resp.StatusCode != http.StatusOK || !json.Valid(b) {
		st.Error = fmt.Sprintf("%s /status: HTTP %d, %d bytes, err %v", s.Name, resp.StatusCode, len(b), err)
		return st
	}
	st.Up, st.Status = true, b
	return st
}

// metricsLink is browserLink for /metrics.
func metricsLink(serviceURL, host string) string { return browserLink(serviceURL, host, "/metrics") }

// browserLink rewrites a service URL bound to a wildcard or loopback
// address to the host the browser used, so the link works from another
// machine.
func browserLink(serviceURL, host, path string) string {
	u, err := url.Parse(serviceURL)
	if err != nil {
		return serviceURL + path
	}
	h := u.Hostname()
	if host != "" && (h == "" || h == "0.0.0.0" || h == "::" || h == "localhost" || strings.HasPrefix(h, "127.")) {
		if hn, _, err := net.SplitHostPort(host); err == nil {
			host = hn
		}
		u.Host = net.JoinHostPort(host, u.Port())
	}
	u.Path = path
	return u.String()
}

func short(digest string) string {
	if len(digest) > 19 {
		return digest[:19]
	}
	return digest
}

func ago(now, t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	d := now.Sub(t).Round(time.Second)
	if d < 0 {
		d = 0
	}
	return d.String() + " ago"
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
