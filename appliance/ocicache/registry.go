package ocicache

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"regexp"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"

	"github.com/ociboot/ociboot/appliance/config"
)

// The registry side: a read-only subset of the OCI distribution API
// (https://github.com/opencontainers/distribution-spec) over what the
// cache holds, so that nodes can use the head node as a mirror.
//
//   - GET/HEAD /v2/                          → 200
//   - GET/HEAD /v2/<name>/manifests/<ref>    → by tag or digest
//   - GET/HEAD /v2/<name>/blobs/<digest>     → with Range support
//   - GET      /v2/<name>/tags/list
//   - anything that writes                   → 405 UNSUPPORTED
//
// Tags are looked up among the references the cache pulled: <name> is the
// repository without its registry ("rpi/node" for
// "registry.example:5000/rpi/node:bookworm"). containerd, as a mirror
// client, adds ?ns=<registry>; when present, only references of that
// registry match. Manifests and blobs by digest are content-addressed and
// served whatever <name> says.
//
// Pull-through: a manifest or blob that is not held is fetched from the
// configured Netboot.Upstreams (the ns registry if it is one of them, else
// each in order), verified, stored and then served.

// RegistryHandler serves the cache over /v2/.
func (c *Cache) RegistryHandler() http.Handler {
	return http.HandlerFunc(c.serveRegistry)
}

// Route is a parsed /v2/ request path.
type Route struct {
	Kind string // "base", "manifest", "blob", "tags"
	Name string // repository
	Ref  string // tag or digest
}

var (
	repoRE   = regexp.MustCompile(`^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*$`)
	tagRE    = regexp.MustCompile(`^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$`)
	digestRE = regexp.MustCompile(`^sha256:[a-f0-9]{64}$`)
)

// ParseRoute parses a request path under /v2/. ok is false for paths the
// API does not define or names that are not valid.
func ParseRoute(p string) (Route, bool) {
	if p == "/v2" || p == "/v2/" {
		return Route{Kind: "base"}, true
	}
	rest, found := strings.CutPrefix(p, "/v2/")
	if !found || len(rest) > 1024 {
		return Route{}, false
	}
	if n, ok := strings.CutSuffix(rest, "/tags/list"); ok {
		if repoRE.MatchString(n) && len(n) <= 255 {
			return Route{Kind: "tags", Name: n}, true
		}
		return Route{}, false
	}
	for _, kind := range []string{"manifests", "blobs"} {
		i := strings.LastIndex(rest, "/"+kind+"/")
		if i <= 0 {
			continue
		}
		n, ref := rest[:i], rest[i+len(kind)+2:]
		if !repoRE.MatchString(n) || len(n) > 255 {
			return Route{}, false
		}
		if digestRE.MatchString(ref) || (kind == "manifests" && tagRE.MatchString(ref)) {
			return Route{Kind: strings.TrimSuffix(kind, "s"), Name: n, Ref: ref}, true
		}
		return Route{}, false
	}
	return Route{}, false
}

type regErr struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

func writeErr(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(map[string][]regErr{"errors": {{Code: code, Message: msg}}})
}

func (c *Cache) serveRegistry(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Docker-Distribution-API-Version", "registry/2.0")
	rt, ok := ParseRoute(r.URL.Path)
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		writeErr(w, http.StatusMethodNotAllowed, "UNSUPPORTED", "this registry is a read-only mirror; push to the upstream registry instead")
		return
	}
	if !ok {
		writeErr(w, http.StatusNotFound, "NAME_INVALID", "not a distribution API path: "+r.URL.Path)
		return
	}
	ns := r.URL.Query().Get("ns")
	switch rt.Kind {
	case "base":
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte("{}\n"))
	case "manifest":
		c.serveManifest(w, r, rt, ns)
	case "blob":
		c.serveBlob(w, r, rt, ns)
	case "tags":
		tags := c.tags(rt.Name, ns)
		if len(tags) == 0 {
			writeErr(w, http.StatusNotFound, "NAME_UNKNOWN", "no cached tags for "+rt.Name)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]any{"name": rt.Name, "tags": tags})
	}
}

// refMatches reports whether a stored full reference belongs to repo (and
// registry ns, if given).
func refMatches(stored name.Reference, repo, ns string) bool {
	if stored.Context().RepositoryStr() != repo {
		return false
	}
	return ns == "" || stored.Context().RegistryStr() == ns
}

func (c *Cache) lookupTag(repo, tag, ns string) (v1.Descriptor, bool) {
	ix, err := c.blobs.Index()
	if err != nil {
		return v1.Descriptor{}, false
	}
	for _, m := range ix.Manifests {
		t, err := name.NewTag(m.Annotations[AnnotationRef])
		if err != nil || t.TagStr() != tag || !refMatches(t, repo, ns) {
			continue
		}
		return m, true
	}
	return v1.Descriptor{}, false
}

func (c *Cache) tags(repo, ns string) []string {
	ix, _ := c.blobs.Index()
	set := map[string]bool{}
	for _, m := range ix.Manifests {
		if t, err := name.NewTag(m.Annotations[AnnotationRef]); err == nil && refMatches(t, repo, ns) {
			set[t.TagStr()] = true
		}
	}
	out := make([]string, 0, len(set))
	for t := range set {
		out = append(out, t)
	}
	sort.Strings(out)
	return out
}

// upstreams returns the registries to try for a pull-through of repo, in
// order: those of Netboot.Upstreams (only ns when the client names one)
// that relay repo (see relays).
func (c *Cache) upstreams(ns, repo string) []string {
	cfg := c.config()
	if cfg == nil {
		return nil
	}
	var out []string
	for _, u := range cfg.Upstreams {
		host, _, _ := strings.Cut(u, "/")
		if ns != "" && host != ns || slices.Contains(out, host) {
			continue
		}
		if c.relays(cfg, host, repo) {
			out = append(out, host)
		}
	}
	return out
}

// relays reports whether the mirror fetches repository repo from upstream
// host for a /v2/ client. The mirror fetches with the head node's
// credentials and stores on its disk, so it relays only what the config
// names: the repositories of its images on that host, and those under a
// prefix listed in Upstreams ("host/prefix"). Anything else a LAN host
// asks for is not fetched.
func (c *Cache) relays(cfg *config.Config, host, repo string) bool {
	for _, u := range cfg.Upstreams {
		h, prefix, ok := strings.Cut(u, "/")
		if ok && h == host && (repo == prefix || strings.HasPrefix(repo, prefix+"/")) {
			return true
		}
	}
	refs := []string{cfg.DefaultImage}
	for _, n := range cfg.Nodes {
		refs = append(refs, n.Image)
	}
	for _, s := range refs {
		if s == "" {
			continue
		}
		ref, err := ParseRef(cfg, s)
		if err != nil {
			continue
		}
		if ref.Context().RegistryStr() == host && ref.Context().RepositoryStr() == repo {
			return true
		}
	}
	return false
}

// pullThroughSize returns the size the held manifests declare for blob d:
// a blob is fetched for a /v2/ client only as part of a manifest the
// mirror relayed, and never larger than the pull-through cap.
func (c *Cache) pullThroughSize(d v1.Hash) (int64, bool) {
	ix, err := c.blobs.Index()
	if err != nil {
		return 0, false
	}
	var roots []v1.Hash
	for _, m := range ix.Manifests {
		roots = append(roots, m.Digest)
	}
	for _, h := range c.blobs.reachable(roots) {
		data, err := c.blobs.ReadSmall(h)
		if err != nil {
			continue
		}
		if _, refs, ok := sniff(data); ok {
			for _, r := range refs {
				if r.Digest == d {
					return r.Size, true
				}
			}
		}
	}
	return 0, false
}

func (c *Cache) serveManifest(w http.ResponseWriter, r *http.Request, rt Route, ns string) {
	var d v1.Hash
	if digestRE.MatchString(rt.Ref) {
		d, _ = v1.NewHash(rt.Ref)
	} else if m, ok := c.lookupTag(rt.Name, rt.Ref, ns); ok {
		d = m.Digest
		if c.stale(m) {
			// Revalidate; an upstream that fails leaves the cached
			// manifest serving.
			if _, nd, err := c.pullThroughManifest(r.Context(), rt, ns); err == nil {
				d = nd
			} else {
				c.opts.Log.Info("pull-through: revalidating tag failed; serving the cached manifest", "repo", rt.Name, "tag", rt.Ref, "err", err)
			}
		}
	}
	var data []byte
	var err error = fs.ErrNotExist
	if d.Hex != "" {
		data, err = c.blobs.ReadSmall(d)
	}
	if errors.Is(err, fs.ErrNotExist) {
		data, d, err = c.pullThroughManifest(r.Context(), rt, ns)
	}
	if err != nil {
		var de *downError
		switch {
		case errors.As(err, &de):
			downResponse(w, "manifest "+rt.Name+":"+rt.Ref, de.err)
		case errors.Is(err, fs.ErrNotExist):
			writeErr(w, http.StatusNotFound, "MANIFEST_UNKNOWN", fmt.Sprintf("%s:%s is not cached and no upstream has it", rt.Name, rt.Ref))
		default:
			writeErr(w, http.StatusBadGateway, "UNKNOWN", err.Error())
		}
		return
	}
	c.touch(d)
	mt, _, ok := sniff(data)
	if !ok {
		// A digest naming a layer or config is not a manifest.
		writeErr(w, http.StatusNotFound, "MANIFEST_UNKNOWN", rt.Ref+" is not a manifest")
		return
	}
	w.Header().Set("Content-Type", string(mt))
	w.Header().Set("Docker-Content-Digest", d.String())
	w.Header().Set("Content-Length", fmt.Sprint(len(data)))
	w.Header().Set("ETag", `"`+d.String()+`"`)
	if r.Method == http.MethodHead {
		return
	}
	w.Write(data)
}

// downError says the manifest could not be fetched because its upstream
// is unreachable.
type downError struct{ err error }

func (e *downError) Error() string { return e.err.Error() }
func (e *downError) Unwrap() error { return e.err }

func (c *Cache) pullThroughManifest(ctx context.Context, rt Route, ns string) ([]byte, v1.Hash, error) {
	var lastErr error = fs.ErrNotExist
	for _, up := range c.upstreams(ns, rt.Name) {
		sep := ":"
		if digestRE.MatchString(rt.Ref) {
			sep = "@"
		}
		ref, err := ParseRef(c.config(), up+"/"+rt.Name+sep+rt.Ref)
		if err != nil {
			continue
		}
		if err := c.upstreamIsDown(up); err != nil {
			lastErr = &downError{err}
			continue
		}
		ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		desc, err := remote.Get(ref, c.remoteOptions(ctx)...)
		cancel()
		c.noteUpstream(up, err)
		if err != nil {
			if networkFailure(err) {
				lastErr = &downError{fmt.Errorf("upstream %s is unreachable: %v", up, err)}
				continue
			}
			c.opts.Log.Info("pull-through: manifest not on upstream", "ref", ref.Name(), "err", err)
			var te *transport.Error
			if !errors.As(err, &te) || te.StatusCode != http.StatusNotFound {
				lastErr = fmt.Errorf("pull-through %s: %w", ref.Name(), err)
			}
			continue
		}
		if _, err := c.blobs.PutBytes(desc.Manifest); err != nil {
			return nil, v1.Hash{}, err
		}
		// Manifests asked for by digest are recorded too (as
		// repo@digest, which no tag lookup matches), so that GC keeps
		// them under the cap like tags.
		td := desc.Descriptor
		td.Annotations = map[string]string{AnnotationFetched: c.opts.Now().UTC().Format(time.RFC3339)}
		if err := c.blobs.SetRef(ref.Name(), td, true); err != nil {
			return nil, v1.Hash{}, err
		}
		c.opts.Log.Info("pull-through: cached manifest", "ref", ref.Name(), "digest", desc.Digest.String())
		return desc.Manifest, desc.Digest, nil
	}
	return nil, v1.Hash{}, lastErr
}

func (c *Cache) serveBlob(w http.ResponseWriter, r *http.Request, rt Route, ns string) {
	d, err := v1.NewHash(rt.Ref)
	if err != nil {
		writeErr(w, http.StatusBadRequest, "DIGEST_INVALID", err.Error())
		return
	}
	f, err := c.blobs.Open(d)
	var down error
	ups := c.upstreams(ns, rt.Name)
	size, declared := int64(-1), false
	if errors.Is(err, fs.ErrNotExist) && len(ups) > 0 {
		size, declared = c.pullThroughSize(d)
		switch {
		case !declared:
			ups = nil
			c.opts.Log.Info("pull-through: blob refused: no manifest the mirror holds names it", "repo", rt.Name, "blob", d.String())
		case size > c.opts.PullThroughCap:
			writeErr(w, http.StatusForbidden, "DENIED", fmt.Sprintf("blob %s is %d bytes, more than the mirror's pull-through cap of %d bytes (-pull_through_cap_mib)", d, size, c.opts.PullThroughCap))
			return
		}
	}
	if errors.Is(err, fs.ErrNotExist) {
		for _, up := range ups {
			repo, perr := name.NewRepository(up+"/"+rt.Name, nameOptions(c.config(), up)...)
			if perr != nil {
				continue
			}
			if derr := c.upstreamIsDown(up); derr != nil {
				down = derr
				continue
			}
			// Two attempts: a /v2/ client is waiting, and retries itself.
			ferr := c.fetchBlob(r.Context(), repo, v1.Descriptor{Digest: d, Size: size}, "pull-through "+repo.Name(), min(2, c.opts.Attempts), nil)
			c.noteUpstream(up, ferr)
			if ferr != nil {
				c.opts.Log.Info("pull-through: blob not fetched", "repo", repo.Name(), "blob", d.String(), "err", ferr)
				if networkFailure(ferr) {
					down = fmt.Errorf("upstream %s is unreachable: %v", up, ferr)
				}
				continue
			}
			down = nil
			c.opts.Log.Info("pull-through: cached blob", "repo", repo.Name(), "blob", d.String())
			break
		}
		f, err = c.blobs.Open(d)
	}
	if err != nil {
		if down != nil {
			downResponse(w, "blob "+d.String(), down)
			return
		}
		writeErr(w, http.StatusNotFound, "BLOB_UNKNOWN", fmt.Sprintf("blob %s is not cached", d))
		return
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		writeErr(w, http.StatusInternalServerError, "UNKNOWN", err.Error())
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Docker-Content-Digest", d.String())
	w.Header().Set("ETag", `"`+d.String()+`"`)
	w.Header().Set("Cache-Control", "max-age=31536000")
	http.ServeContent(w, r, "", fi.ModTime(), f)
}
