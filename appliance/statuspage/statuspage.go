// Package statuspage renders the cluster overview: every node with its
// identity, address, image, boot stage and last error; what the image cache
// holds; and links to each service's /metrics.
//
// It only reads: node records and stage files from the store, the images
// index, and the other services' /status JSON over HTTP. So it keeps working
// (with gaps) when a service is down, and it never becomes a writer.
package statuspage

import (
	"context"
	"encoding/json"
	"fmt"
	"html/template"
	"io"
	"net"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/ociboot/ociboot/appliance/config"
	"github.com/ociboot/ociboot/appliance/images"
	"github.com/ociboot/ociboot/appliance/nodes"
	"github.com/ociboot/ociboot/appliance/store"
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
}

// Node is one row of the node table.
type Node struct {
	Name   string
	Serial string
	MAC    string
	IP     string
	Image  string
	Digest string
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
	Console   []nodes.ConsoleLine `json:",omitempty"`
	Stage     string
	StageTime time.Time
	Detail    string
	LastSeen  time.Time
	LastError string
	Known     bool // listed in config.json
	Seen      bool // has asked for something
}

// ServiceState is what the page learned from one service.
type ServiceState struct {
	Service
	Up      bool
	Error   string
	Status  json.RawMessage
	Metrics string // link for the browser
}

// Overview is everything the page shows; /api/status returns it as JSON.
type Overview struct {
	Generated time.Time
	Mode      string
	Interface string
	Nodes     []Node
	Images    []images.Entry
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
	ov := Overview{Generated: now().UTC(), Mode: p.Config.Mode, Interface: p.Config.Interface}
	ix, err := images.LoadIndex(p.Store)
	if err != nil {
		ov.Problems = append(ov.Problems, err.Error())
	}
	ov.Images = ix.Entries
	digestOf := func(ref, platform string) string {
		if e, ok := ix.Lookup(ref, platform); ok {
			return e.Digest
		}
		return ""
	}

	recs, errs := nodes.List(p.Store)
	for _, err := range errs {
		ov.Problems = append(ov.Problems, err.Error())
	}
	bySerial := map[string]*Node{}
	var rows []*Node
	for _, rec := range recs {
		n := &Node{Name: rec.Name, Serial: rec.Serial, MAC: rec.MAC, IP: rec.IP, Image: rec.Image, LastSeen: rec.LastSeen, Seen: true}
		platform := rec.Platform
		if platform == "" {
			platform = p.Config.Platform
		}
		n.Digest = digestOf(n.Image, platform)
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
			n.Digest = digestOf(nc.Image, nc.Platform)
			rows = append(rows, n)
		}
		n.Known = true
		n.Name = nc.Name
		if nc.IP.IsValid() && n.IP == "" {
			n.IP = nc.IP.String()
		}
	}
	for _, n := range rows {
		if n.Serial == "" {
			continue
		}
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
				n.ImageChange = "image changed: the root was made from " + short(b.RootDigest) + "; reset the node (nfsd /reset) or set Netboot.Reimage to \"on-boot\" to boot the new image"
			}
		}
		n.Console = nodes.LoadConsole(p.Store, n.Serial)
		if u, ok := nodes.LoadEEPROMUpdate(p.Store, n.Serial); ok {
			n.EEPROM = &u
		}
		if pr, err := nodes.Progress(p.Store, n.Serial); err == nil {
			n.Stage, n.StageTime, n.Detail, n.LastError = pr.Stage, pr.Time, pr.Detail, pr.LastError
		}
		if n.Name == "" {
			n.Name = n.Serial
		}
	}
	sort.SliceStable(rows, func(i, j int) bool { return rows[i].Name < rows[j].Name })
	for _, n := range rows {
		ov.Nodes = append(ov.Nodes, *n)
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
	ov.Services = states
	addStoreState(&ov)
	return ov
}

func (p *Page) fetch(ctx context.Context, s Service, host string) ServiceState {
	st := ServiceState{Service: s, Metrics: metricsLink(s.URL, host)}
	client := p.Client
	if client == nil {
		client = &http.Client{Timeout: 2 * time.Second}
	}
	req, err := http.NewRequestWithContext(ctx, "GET", strings.TrimSuffix(s.URL, "/")+"/status", nil)
	if err != nil {
		st.Error = err.Error()
		return st
	}
	resp, err := client.Do(req)
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

// metricsLink rewrites a service URL bound to a wildcard or loopback address
// to the host the browser used, so the link works from another machine.
func metricsLink(serviceURL, host string) string {
	u, err := url.Parse(serviceURL)
	if err != nil {
		return serviceURL + "/metrics"
	}
	h := u.Hostname()
	if host != "" && (h == "" || h == "0.0.0.0" || h == "::" || h == "localhost" || strings.HasPrefix(h, "127.")) {
		if hn, _, err := net.SplitHostPort(host); err == nil {
			host = hn
		}
		u.Host = net.JoinHostPort(host, u.Port())
	}
	u.Path = "/metrics"
	return u.String()
}

// ServeHTTP serves "/" (HTML) and "/api/status" (JSON).
func (p *Page) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	ov := p.Collect(r.Context(), r.Host)
	switch r.URL.Path {
	case "/api/status":
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		enc.Encode(ov)
	case "/":
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		if err := pageTmpl.Execute(w, ov); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
		}
	default:
		http.NotFound(w, r)
	}
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

func indent(b json.RawMessage) string {
	var v any
	if json.Unmarshal(b, &v) != nil {
		return string(b)
	}
	out, _ := json.MarshalIndent(v, "", "  ")
	return string(out)
}

var pageTmpl = template.Must(template.New("page").Funcs(template.FuncMap{
	"short":  short,
	"ago":    ago,
	"indent": indent,
	"bytes":  bytesHuman,
	"lastTime": func(l []nodes.ConsoleLine) time.Time {
		if len(l) == 0 {
			return time.Time{}
		}
		return l[len(l)-1].Time
	},
	"stageClass": func(s string) string {
		if s == "" {
			return "none"
		}
		return strings.ReplaceAll(s, "-", "")
	},
}).Parse(`<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="5">
<title>ociboot status</title>
<style>
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.1em; margin-top: 1.5em; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: .3em .6em; border-bottom: 1px solid #ddd; font-size: .9em; }
th { background: #f0f0f0; }
code { font-size: .85em; }
.stage { padding: .1em .5em; border-radius: .6em; color: #fff; }
.none { background: #999; } .dhcp { background: #b07000; } .firmware { background: #806000; }
.kernel { background: #2060a0; } .rootmounted { background: #208040; }
.err { color: #b00020; } .down { color: #b00020; font-weight: bold; } .up { color: #208040; }
pre { background: #f7f7f7; padding: .5em; max-height: 16em; overflow: auto; font-size: .8em; }
</style></head><body>
<h1>ociboot — {{.Mode}} mode on {{.Interface}}</h1>
{{range .Problems}}<p class="err">{{.}}</p>{{end}}
<h2>Nodes</h2>
<table id="nodes"><tr><th>Name</th><th>Serial</th><th>MAC</th><th>IP</th><th>Image</th><th>Digest</th><th>Stage</th><th>Last seen</th><th>Last error</th></tr>
{{$now := .Generated}}{{range .Nodes}}<tr>
<td>{{.Name}}{{if not .Known}} <small>(enrolled)</small>{{end}}{{if .Hostname}}<br><small class="ident">host <code>{{.Hostname}}</code>{{range .HostKeys}}<br><code>{{.}}</code>{{end}}</small>{{end}}</td><td><code>{{.Serial}}</code></td><td><code>{{.MAC}}</code></td><td>{{.IP}}</td>
<td>{{.Image}}{{if .BootsFrom}}<br><small>boots from {{.BootsFrom}}</small>{{end}}{{if .RootUsed}}<br><small class="usage">root uses {{bytes .RootUsed}}{{if .RootQuota}} of its {{bytes .RootQuota}} quota{{end}}</small>{{end}}</td><td><code>{{short .Digest}}</code>{{if .ImageChange}}<br><small class="err imagechange">{{.ImageChange}}</small>{{end}}</td>
<td><span class="stage {{stageClass .Stage}}">{{if .Stage}}{{.Stage}}{{else}}not seen{{end}}</span>{{if .Detail}} <small>{{.Detail}}</small>{{end}}{{with .EEPROM}}<br><small class="eeprom">bootloader update {{.File}} ({{.Size}} bytes, sha256 {{short .SHA256}}) fetched {{ago $now .Time}}</small>{{end}}</td>
<td>{{ago $now .LastSeen}}</td><td class="err">{{.LastError}}</td></tr>
{{if .Console}}<tr class="console"><td colspan="9"><details><summary>boot log of {{.Name}}: {{len .Console}} lines, the last {{ago $now (lastTime .Console)}}</summary><pre>{{range .Console}}{{.Time.Format "15:04:05"}} {{.Text}}
{{end}}</pre></details></td></tr>{{end}}
{{else}}<tr><td colspan="9">No node has asked for anything yet.</td></tr>{{end}}
</table>
<h2>Image cache</h2>
<table id="images"><tr><th>Reference</th><th>Platform</th><th>Digest</th><th>Boot dir</th><th>Kernel</th><th>Pulled</th></tr>
{{range .Images}}<tr><td>{{.Ref}}</td><td>{{.Platform}}</td><td>serving <code>{{short .Digest}}</code>{{if .StandIn}} (the tree of {{.StandIn}}){{end}}</td><td>{{.BootDir}}</td><td>{{.Kernel}}</td><td>pulled {{ago $now .Pulled}}{{if .LastError}}; <span class="err">last attempt failed ({{ago $now .LastAttempt}}): {{.LastError}}</span>{{end}}</td></tr>
{{else}}<tr><td colspan="6">Nothing pulled yet.</td></tr>{{end}}
</table>
<h2>Services</h2>
<table id="services"><tr><th>Service</th><th>State</th><th>Metrics</th></tr>
{{range .Services}}<tr><td>{{.Name}}</td><td>{{if .Up}}<span class="up">up</span>{{else}}<span class="down">down</span> {{.Error}}{{end}}</td><td><a href="{{.Metrics}}">{{.Metrics}}</a></td></tr>
{{end}}</table>
{{range .Services}}{{if .Up}}<h2>{{.Name}} status</h2><pre>{{indent .Status}}</pre>{{end}}{{end}}
<p><small>Generated {{.Generated.Format "2006-01-02 15:04:05 MST"}}; refreshes every 5 s. JSON: <a href="/api/status">/api/status</a></small></p>
</body></html>
`))
