package statuspage

import (
	"encoding/json"
	"fmt"
	"html/template"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/ociboot/ociboot/appliance/nodes"
	"github.com/ociboot/ociboot/appliance/webauth"
)

// ServeHTTP serves the page ("/"), its data ("/api/status") and the
// actions (POST /api/reset, /api/forget, /api/pull). The actions need
// the gokrazy password and a same-origin request: the status service's
// listener checks both (package webauth) before ServeHTTP runs, and Page
// checks again so that it is safe on any listener.
func (p *Page) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case "/api/reset", "/api/forget", "/api/pull":
		p.action(w, r)
		return
	}
	if !webauth.Safe(r.Method) {
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	switch r.URL.Path {
	case "/api/status":
		ov := p.Collect(r.Context(), r.Host)
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		enc.Encode(ov)
	case "/":
		ov := p.Collect(r.Context(), r.Host)
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		// The page never runs in another site's frame (clickjacking of
		// the action buttons).
		w.Header().Set("X-Frame-Options", "DENY")
		w.Header().Set("Content-Security-Policy", "frame-ancestors 'none'")
		if err := pageTmpl.Execute(w, ov); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
		}
	default:
		http.NotFound(w, r)
	}
}

func (p *Page) action(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", "POST")
		http.Error(w, "actions change state: use POST (curl -u gokrazy:PASSWORD -X POST ...)", http.StatusMethodNotAllowed)
		return
	}
	g := p.Guard
	if g == nil {
		g = &webauth.Guard{}
	}
	if code, reason := g.Check(r); code != 0 {
		if code == http.StatusUnauthorized {
			w.Header().Set("WWW-Authenticate", `Basic realm="gokrazy"`)
		}
		http.Error(w, reason, code)
		return
	}
	var svc, path string
	form := url.Values{}
	switch r.URL.Path {
	case "/api/reset", "/api/forget":
		svc, path = "nfsd", strings.TrimPrefix(r.URL.Path, "/api")
		form.Set("node", r.FormValue("node"))
		if r.FormValue("force") == "1" {
			form.Set("force", "1")
		}
	case "/api/pull":
		svc, path = "ocicache", "/pull"
	}
	code, msg := p.forward(r, svc, path, form)
	if strings.Contains(r.Header.Get("Accept"), "text/html") {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.WriteHeader(code)
		resultTmpl.Execute(w, map[string]any{"OK": code < 300, "Msg": msg, "Code": code})
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(code)
	io.WriteString(w, msg)
}

// forward sends the action to the service that owns the state, with the
// caller's credentials: the service checks the password itself.
func (p *Page) forward(r *http.Request, svc, path string, form url.Values) (int, string) {
	var base string
	for _, s := range p.Services {
		if s.Name == svc {
			base = s.URL
		}
	}
	if base == "" {
		return http.StatusServiceUnavailable, svc + " is not configured on the status page (-" + svc + " flag)\n"
	}
	req, err := http.NewRequestWithContext(r.Context(), http.MethodPost, strings.TrimSuffix(base, "/")+path, strings.NewReader(form.Encode()))
	if err != nil {
		return http.StatusInternalServerError, err.Error() + "\n"
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	webauth.SetCredentials(req, r)
	// Not the 2 s of the status fetches: dropping a large root takes a
	// while.
	c := &http.Client{Timeout: 2 * time.Minute}
	if p.Client != nil {
		c = p.Client
	}
	resp, err := c.Do(req)
	if err != nil {
		return http.StatusBadGateway, fmt.Sprintf("%s is not answering: %v\n", svc, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	return resp.StatusCode, string(b)
}

var resultTmpl = template.Must(template.New("result").Parse(`<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>ociboot: {{if .OK}}done{{else}}refused{{end}}</title>
<style>body{font-family:system-ui,sans-serif;margin:1.5em}.ok{color:#208040}.err{color:#b00020}</style></head>
<body><p id="result" class="{{if .OK}}ok{{else}}err{{end}}">{{if not .OK}}HTTP {{.Code}}: {{end}}{{.Msg}}</p><p><a href="/">back to the status page</a></p></body></html>
`))

var pageTmpl = template.Must(template.New("page").Funcs(template.FuncMap{
	"short":    short,
	"ago":      ago,
	"bytes":    bytesHuman,
	"lastTime": lastLine,
	"tail": func(l []nodes.ConsoleLine, n int) []nodes.ConsoleLine {
		if len(l) > n {
			return l[len(l)-n:]
		}
		return l
	},
	"dur": func(d time.Duration) string { return d.Round(100 * time.Millisecond).String() },
	"cls": func(s string) string { return strings.ReplaceAll(strings.ReplaceAll(s, "-", ""), " ", "") },
	"usedPct": func(d Disk) int {
		if d.Total <= 0 {
			return 0
		}
		return int((d.Total - d.FreeBytes) * 100 / d.Total)
	},
}).Parse(`<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>ociboot status</title>
<style>
body { font-family: system-ui, sans-serif; margin: 1em; color: #222; max-width: 90em; }
h1 { font-size: 1.3em; } h2 { font-size: 1.1em; margin-top: 1.4em; }
code { font-size: .85em; word-break: break-all; }
small { color: #555; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(22em, 1fr)); gap: .8em; }
.card { border: 1px solid #ccc; border-radius: .4em; padding: .6em .8em; }
.card h3 { margin: 0 0 .3em 0; font-size: 1.05em; }
.badge { display: inline-block; padding: .1em .6em; border-radius: .7em; color: #fff; font-size: .85em; }
.online { background: #208040; } .booting { background: #2060a0; } .offline { background: #777777; } .notseen { background: #aaaaaa; }
.ready { background: #208040; } .pulling { background: #2060a0; } .failed { background: #b00020; } .stale { background: #b07000; } .pending { background: #aaaaaa; }
.up { background: #208040; } .down { background: #b00020; }
.problem { background: #fde8e8; border-left: .3em solid #b00020; padding: .4em .6em; margin: .4em 0; }
.warn { color: #8a5a00; }
ol.boot { margin: .3em 0; padding-left: 1.4em; font-size: .9em; }
.bar { background: #dddddd; height: .9em; border-radius: .45em; overflow: hidden; min-width: 8em; max-width: 24em; }
.bar > div { background: #2060a0; height: 100%; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: .3em .5em; border-bottom: 1px solid #ddd; font-size: .9em; vertical-align: top; overflow-wrap: anywhere; }
.card, .problem { overflow-wrap: anywhere; }
pre { background: #f4f4f4; padding: .4em; max-height: 12em; overflow: auto; font-size: .8em; white-space: pre-wrap; }
form { display: inline; } button { margin: .3em .3em 0 0; }
@media (max-width: 40em) { body { margin: .5em; } .grid { grid-template-columns: 1fr; } th.opt, td.opt { display: none; } }
</style></head><body>
<div id="main">
<h1>ociboot — {{.Mode}} mode on {{.Interface}}</h1>
{{range .Problems}}<p class="problem">{{.}}</p>{{end}}
{{$now := .Generated}}
<h2>Nodes</h2>
<div class="grid" id="nodes">
{{range .Nodes}}<div class="card node" id="node-{{.Serial}}" data-liveness="{{.Liveness}}">
<h3>{{.Name}} <span class="badge {{cls .Liveness}} liveness">{{.Liveness}}{{if not .LivenessSince.IsZero}} since {{.LivenessSince.Format "15:04:05"}}{{end}}</span></h3>
<small>serial <code>{{.Serial}}</code> · MAC <code>{{.MAC}}</code> · IP {{.IP}}{{if not .Known}} · enrolled, not in config.json{{end}}</small>
{{if .Problem}}<div class="problem">{{.Problem}}</div>{{end}}
{{if .Boot}}<ol class="boot">{{range .Boot}}<li>{{.Stage}} at {{.Time.Format "15:04:05"}}{{if .Took}} (+{{dur .Took}}){{end}}</li>{{end}}</ol>{{if .Detail}}<div><small class="detail">last: {{.Detail}}</small></div>{{end}}{{else}}<p><small>No boot seen yet.</small></p>{{end}}
<div>image {{.Image}} <span class="badge {{cls .ImageState}}">{{if .ImageState}}{{.ImageState}}{{else}}none{{end}}</span>{{if .Digest}} <code>{{short .Digest}}</code>{{end}}</div>
{{if .BootsFrom}}<div><small>boots from {{.BootsFrom}}</small></div>{{end}}
{{if .ImageChange}}<div class="warn imagechange"><small>{{.ImageChange}}</small></div>{{end}}
<div>{{if .RootUsed}}<small class="usage">root uses {{bytes .RootUsed}}{{if .RootQuota}} of its {{bytes .RootQuota}} quota{{end}}</small>{{else}}<small>disk used by the node: not measured</small>{{end}} <small>· last seen {{ago $now .LastSeen}}</small></div>
{{with .Disk}}<div><small class="nodedisk">{{.Text}}{{if .Mount}} at {{range $i, $m := .Mount}}{{if $i}}, {{end}}<code>{{$m}}</code>{{end}}{{end}}{{if .KeepOnReset}}; kept on reset{{end}}</small></div>{{end}}
{{if .Install}}<div{{if .InstallFailed}} class="warn"{{end}}><small class="install">{{.Install}}</small></div>{{end}}
{{if .Hostname}}<div><small class="ident">host <code>{{.Hostname}}</code>{{range .HostKeys}}<br><code>{{.}}</code>{{end}}</small></div>{{end}}
{{with .EEPROM}}<div><small class="eeprom">bootloader update {{.File}} ({{.Size}} bytes, sha256 {{short .SHA256}}) fetched {{ago $now .Time}}</small></div>{{end}}
{{if .Console}}<details id="log-{{.Serial}}"><summary>boot log: {{len .Console}} lines, the last {{ago $now (lastTime .Console)}}</summary><pre>{{range .Console}}{{.Time.Format "15:04:05"}} {{.Text}}
{{end}}</pre></details><pre class="lastlines">{{range tail .Console 3}}{{.Time.Format "15:04:05"}} {{.Text}}
{{end}}</pre>{{end}}
{{if .Serial}}<div class="actions">
<form method="post" action="/api/reset" class="reset" onsubmit="return confirm({{if .InUse}}'{{.Name}} is running from its root right now: resetting drops its files under it. Reset anyway?'{{else}}'Reset {{.Name}}: drop its root; the next boot makes a fresh one from its image?'{{end}})"><input type="hidden" name="node" value="{{.Serial}}">{{if .InUse}}<input type="hidden" name="force" value="1">{{end}}<button type="submit">{{if .ImageChange}}Reimage{{else}}Reset{{end}}{{if .InUse}} (in use!){{end}}</button></form>
{{if not .Known}}<form method="post" action="/api/forget" class="forget" onsubmit="return confirm('Forget {{.Name}}: its record, root and log?')"><input type="hidden" name="node" value="{{.Serial}}">{{if .InUse}}<input type="hidden" name="force" value="1">{{end}}<button type="submit">Forget</button></form>{{end}}
</div>{{end}}
</div>
{{else}}<p>No node has asked for anything yet.</p>{{end}}
</div>
<h2>Image cache</h2>
<p id="disk"><small>/perm ({{.Disk.Path}}): {{bytes .Disk.FreeBytes}} free of {{bytes .Disk.Total}} ({{usedPct .Disk}}% used)</small></p>
<table id="images"><tr><th>Reference</th><th>State</th><th class="opt">Digest</th><th class="opt">Size</th><th>Pulled</th></tr>
{{range .Images}}<tr class="image" data-state="{{.State}}"><td>{{.Ref}}<br><small>{{range .Platforms}}{{.}} {{end}}</small></td>
<td><span class="badge {{cls .State}}">{{.State}}</span>{{if eq .State "pulling"}}<div class="bar" title="{{.Done}} of {{.Total}} bytes"><div style="width: {{.Percent}}%"></div></div><small>{{bytes .Done}} of {{bytes .Total}} ({{.Percent}}%)</small>{{end}}{{if .Error}}<div class="err"><small>{{if not .LastAttempt.IsZero}}last attempt {{ago $now .LastAttempt}}: {{end}}{{.Error}}{{if eq .State "stale"}} — the last good tree keeps serving{{end}}</small></div>{{end}}</td>
<td class="opt"><code>{{short .Digest}}</code>{{if .StandIn}}<br><small>the tree of {{.StandIn}}</small>{{end}}</td><td class="opt">{{if .Bytes}}{{bytes .Bytes}}{{end}}</td><td>{{if .Pulled.IsZero}}never{{else}}{{ago $now .Pulled}}{{end}}</td></tr>
{{else}}<tr><td colspan="5">config.json names no image (Netboot.DefaultImage).</td></tr>{{end}}
</table>
<form method="post" action="/api/pull" class="pull"><button type="submit">Re-pull now</button></form>
<h2>Services</h2>
<table id="services"><tr><th>Service</th><th>State</th><th>Raw</th></tr>
{{range .Services}}<tr class="service" data-up="{{.Up}}"><td>{{.Name}}</td><td>{{if .Up}}<span class="badge up">up</span>{{else}}<span class="badge down">down</span> <small>{{.Error}}</small>{{end}}{{if .ConfigError}}<div class="problem"><small>{{.ConfigError}}</small></div>{{end}}</td><td><a href="{{.StatusLink}}">status</a> · <a href="{{.Metrics}}">metrics</a></td></tr>
{{end}}</table>
<p><small>Generated {{.Generated.Format "2006-01-02 15:04:05 MST"}}; updates every 5 s. All of it as JSON: <a href="/api/status">/api/status</a>. Actions ask for the gokrazy password (user gokrazy).</small></p>
</div>
<script>
// Refresh the data without reloading the page: keep scroll position and
// open boot logs.
setInterval(async () => {
  try {
    const r = await fetch(location.pathname, {cache: "no-store"});
    if (!r.ok) return;
    const doc = new DOMParser().parseFromString(await r.text(), "text/html");
    const open = [...document.querySelectorAll("details[open]")].map(d => d.id);
    document.getElementById("main").replaceWith(doc.getElementById("main"));
    for (const id of open) { const d = document.getElementById(id); if (d) d.open = true; }
  } catch (e) {}
}, 5000);
</script>
</body></html>
`))
