// Package ocicache pulls the OCI images the config names, keeps their blobs
// once in an OCI image layout (oci/), unpacks each into an immutable tree
// (images/sha256-<hex>/) for tftpd and nfsd, and serves what it holds as a
// read-only registry (registry.go).
//
// A pull resolves the reference for the platform the config asks for
// (always passed, and checked against the image config even when the tag
// names a single manifest), fetches the missing blobs (several at a time,
// each retried with backoff and verified before it is renamed into place),
// then unpacks the layers bottom-up into a temp dir that becomes the tree
// with one rename. Only after that is images/index.json rewritten. A pull
// killed at any point leaves only temp files, which the next start removes;
// blobs that were complete are reused.
//
// What serves is only ever replaced by something ready: a failed pull
// leaves the reference's entry (and GC its tree and blobs) in place and
// records the attempt on it; a reference that never pulled stands in with
// the tree its config slot served before (state.go). Blobs are written
// only while the store keeps Options.MinFree free (blobs.go). Manifests
// refused by the boot check or unpacking are remembered and not fetched
// again under the same config. Run revalidates tags with a HEAD each.
package ocicache

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"golang.org/x/sys/unix"

	"github.com/ociboot/ociboot/appliance/config"
	"github.com/ociboot/ociboot/appliance/images"
	"github.com/ociboot/ociboot/appliance/ocicache/unpack"
	"github.com/ociboot/ociboot/appliance/store"
)

// Options configure a Cache.
type Options struct {
	Log *slog.Logger
	// Keychain finds registry credentials; default authn.DefaultKeychain
	// (docker's config.json under $DOCKER_CONFIG or ~/.docker).
	Keychain authn.Keychain
	// Transport for registry requests; default http.DefaultTransport.
	Transport http.RoundTripper
	// Jobs is how many blobs are fetched at once; default 3.
	Jobs int
	// MinFree bytes must stay free while unpacking; default 256 MiB.
	MinFree int64
	// Attempts per blob and per manifest request before giving up;
	// default 5, with backoff 1s, 2s, 4s, ...
	Attempts int
	// Backoff is the first retry delay; default 1s.
	Backoff time.Duration
	// Now is the clock; default time.Now.
	Now func() time.Time
	// FreeSpace reports the free bytes on the store's file system;
	// default a statfs. Tests pass a small disk.
	FreeSpace func(dir string) (int64, error)
	// PullThroughCap bounds the bytes of pull-through content (fetched
	// for /v2/ clients, not for the config); GC drops the least recently
	// used beyond it. Default 2 GiB.
	PullThroughCap int64
	// PullThroughTTL is how long a pull-through tag is served before the
	// upstream is asked again; default 10 minutes.
	PullThroughTTL time.Duration
	// UpstreamDownFor is how long an upstream that could not be reached
	// is not asked again for content that is not held; default 1 minute.
	UpstreamDownFor time.Duration
}

// Cache owns oci/ and images/ of a store.
type Cache struct {
	st    *store.Store
	blobs *Blobs
	opts  Options

	pullMu sync.Mutex // one Sync/Pull/GC at a time

	mu       sync.Mutex
	cfg      *config.Config
	progress map[string]*layerProgress // digest → progress of a running fetch
	state    map[string]*ImageStatus   // ref+platform → last outcome
	lastGC   GCResult
	rec      record                  // ocicache/state.json; changed under pullMu and mu
	down     map[string]upstreamDown // upstream registry → outage
	used     map[string]time.Time    // pull-through manifest digest → last served

	fetchedBytes atomic.Int64
}

type layerProgress struct {
	Ref   string
	Done  atomic.Int64
	Total int64
}

// ImageStatus is one image's line in /status.
type ImageStatus struct {
	Ref      string
	Platform string
	State    string   // "pulling", "ready", "failed"
	Digest   string   `json:",omitempty"`
	BootDir  string   `json:",omitempty"`
	Kernel   string   `json:",omitempty"`
	Warnings []string `json:",omitempty"`
	Error    string   `json:",omitempty"`
	Updated  time.Time
}

// GCResult reports the last garbage collection.
type GCResult struct {
	Time       time.Time
	TreesFreed []string `json:",omitempty"`
	BlobBytes  int64
	// PullThroughDropped is how many pull-through tags went over the cap.
	PullThroughDropped int    `json:",omitempty"`
	Error              string `json:",omitempty"`
}

// New opens the cache in st, removing what a crash left half-done.
func New(st *store.Store, opts Options) (*Cache, error) {
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	if opts.Keychain == nil {
		opts.Keychain = authn.DefaultKeychain
	}
	if opts.Transport == nil {
		opts.Transport = http.DefaultTransport
	}
	if opts.Jobs <= 0 {
		opts.Jobs = 3
	}
	if opts.Attempts <= 0 {
		opts.Attempts = 5
	}
	if opts.Backoff <= 0 {
		opts.Backoff = time.Second
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.MinFree <= 0 {
		opts.MinFree = 256 << 20
	}
	if opts.FreeSpace == nil {
		opts.FreeSpace = FreeSpace
	}
	if opts.PullThroughCap <= 0 {
		opts.PullThroughCap = 2 << 30
	}
	if opts.PullThroughTTL <= 0 {
		opts.PullThroughTTL = 10 * time.Minute
	}
	if opts.UpstreamDownFor <= 0 {
		opts.UpstreamDownFor = time.Minute
	}
	blobs, err := OpenBlobs(st.Path(store.OCIDir))
	if err != nil {
		return nil, err
	}
	blobs.minFree, blobs.free = opts.MinFree, opts.FreeSpace
	if err := store.CleanTemps(st.Path(store.ImagesDir)); err != nil {
		return nil, fmt.Errorf("ocicache: cleaning half-unpacked trees: %v", err)
	}
	c := &Cache{st: st, blobs: blobs, opts: opts,
		progress: map[string]*layerProgress{}, state: map[string]*ImageStatus{},
		down: map[string]upstreamDown{}, used: map[string]time.Time{}}
	if c.rec, err = c.loadRecord(); err != nil {
		// A damaged record only loses stand-ins and refusals; pulls
		// rebuild it.
		opts.Log.Error("ocicache state unreadable; starting with an empty one", "path", st.Path(store.CacheDir, stateFile), "err", err)
	}
	return c, nil
}

// Blobs returns the layout the cache stores blobs in.
func (c *Cache) Blobs() *Blobs { return c.blobs }

// FetchedBytes is the number of blob bytes fetched from registries since
// start (the benchmark's "no shared byte fetched twice" check reads it).
func (c *Cache) FetchedBytes() int64 { return c.fetchedBytes.Load() }

func (c *Cache) setConfig(cfg *config.Config) {
	c.mu.Lock()
	c.cfg = cfg
	c.mu.Unlock()
}

func (c *Cache) config() *config.Config {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cfg
}

// nameOptions returns name.Insecure for registries listed in
// Netboot.InsecureRegistries (plain HTTP).
func nameOptions(cfg *config.Config, registry string) []name.Option {
	if cfg == nil {
		return nil
	}
	for _, r := range cfg.Insecure {
		if r == registry {
			return []name.Option{name.Insecure}
		}
	}
	return nil
}

// ParseRef parses ref, marking it insecure if its registry is listed.
func ParseRef(cfg *config.Config, ref string) (name.Reference, error) {
	r, err := name.ParseReference(ref)
	if err != nil {
		return nil, fmt.Errorf("ocicache: %q is not an image reference: %v", ref, err)
	}
	if o := nameOptions(cfg, r.Context().RegistryStr()); o != nil {
		r, err = name.ParseReference(ref, o...)
	}
	return r, err
}

func (c *Cache) remoteOptions(ctx context.Context) []remote.Option {
	return []remote.Option{
		remote.WithContext(ctx),
		remote.WithAuthFromKeychain(c.opts.Keychain),
		remote.WithTransport(c.opts.Transport),
		remote.WithUserAgent("ociboot-ocicache"),
		remote.WithRetryBackoff(remote.Backoff{Duration: c.opts.Backoff, Factor: 2, Jitter: 0.1, Steps: c.opts.Attempts}),
	}
}

// Sync pulls every image cfg names, records each success in
// images/index.json, and then collects garbage. It returns the errors of
// the images that could not be pulled (their previous trees stay in use).
func (c *Cache) Sync(ctx context.Context, cfg *config.Config) error {
	c.pullMu.Lock()
	defer c.pullMu.Unlock()
	c.setConfig(cfg)
	want := cfg.Images()
	refs := make([]string, 0, len(want))
	for r := range want {
		refs = append(refs, r)
	}
	sort.Strings(refs)
	fp := fingerprint(cfg)
	c.mu.Lock()
	for k, st := range c.state {
		if !slices.Contains(want[st.Ref], st.Platform) {
			delete(c.state, k)
		}
	}
	// Refusals hold under the config they were made with, for references
	// it still names.
	pruned := false
	for d, rj := range c.rec.Rejected {
		if rj.Config != fp || !slices.Contains(want[rj.Ref], rj.Platform) {
			delete(c.rec.Rejected, d)
			pruned = true
		}
	}
	rec := c.rec
	c.mu.Unlock()
	if pruned {
		if err := c.saveRecord(rec); err != nil {
			c.opts.Log.Error("pruning refused images", "err", err)
		}
	}
	var errs []error
	for _, ref := range refs {
		for _, plat := range want[ref] {
			if err := c.pullAndRecord(ctx, cfg, ref, plat); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	c.gc(cfg)
	return errors.Join(errs...)
}

func (c *Cache) setState(s ImageStatus) {
	s.Updated = c.opts.Now()
	c.mu.Lock()
	c.state[s.Ref+" "+s.Platform] = &s
	c.mu.Unlock()
}

func (c *Cache) pullAndRecord(ctx context.Context, cfg *config.Config, ref, plat string) error {
	log := c.opts.Log.With("ref", ref, "platform", plat)
	c.setState(ImageStatus{Ref: ref, Platform: plat, State: "pulling"})
	start := c.opts.Now()
	ix, err := images.LoadIndex(c.st)
	if err != nil {
		return err
	}
	var prev *images.Entry
	if e, ok := ix.Lookup(ref, plat); ok {
		prev = &e
	}
	e, boot, err := c.pull(ctx, cfg, ref, plat, prev)
	if err != nil {
		if ctx.Err() != nil {
			return err
		}
		c.recordFailure(cfg, &ix, prev, ref, plat, start, err)
		return fmt.Errorf("%s (%s): %w", ref, plat, err)
	}
	for _, w := range boot.Warnings {
		log.Warn("boot directory", "warning", w)
	}
	if prev != nil && prev.StandIn == "" && prev.Digest == e.Digest {
		e.Pulled = prev.Pulled // same tree: "pulled 3 d ago" stays true
	}
	e.LastAttempt, e.LastError, e.StandIn = start.UTC(), "", ""
	ix.Put(e)
	if err := images.SaveIndex(c.st, ix); err != nil {
		c.setState(ImageStatus{Ref: ref, Platform: plat, State: "failed", Error: err.Error()})
		return err
	}
	changed := false
	c.mu.Lock()
	for slot, sr := range slots(cfg) {
		if sr == (SlotRef{ref, plat}) && c.rec.Slots[slot] != sr {
			c.rec.Slots[slot] = sr
			changed = true
		}
	}
	for d, rj := range c.rec.Rejected {
		if rj.Ref == ref && rj.Platform == plat {
			delete(c.rec.Rejected, d) // the tag moved on to a good image
			changed = true
		}
	}
	rec := c.rec
	c.mu.Unlock()
	if changed {
		if err := c.saveRecord(rec); err != nil {
			log.Error("image ready, but its config slot could not be recorded", "err", err)
		}
	}
	if prev == nil || prev.Digest != e.Digest {
		log.Info("image ready", "digest", e.Digest, "boot_dir", e.BootDir, "kernel", e.Kernel, "took", c.opts.Now().Sub(start).Round(time.Millisecond).String())
	}
	c.setState(ImageStatus{Ref: ref, Platform: plat, State: "ready", Digest: e.Digest, BootDir: e.BootDir, Kernel: e.Kernel, Warnings: boot.Warnings})
	return nil
}

// recordFailure notes a failed attempt without taking away what serves:
// the reference's own entry keeps its digest, and a reference that never
// pulled gets the tree its config slot served before (StandIn). Images
// refused after fetching are remembered so that they are not fetched
// again.
func (c *Cache) recordFailure(cfg *config.Config, ix *images.Index, prev *images.Entry, ref, plat string, start time.Time, perr error) {
	log := c.opts.Log.With("ref", ref, "platform", plat)
	c.setState(ImageStatus{Ref: ref, Platform: plat, State: "failed", Error: perr.Error()})
	var re *rejectErr
	if errors.As(perr, &re) && re.digest != "" {
		c.mu.Lock()
		c.rec.Rejected[re.digest] = Rejection{Ref: ref, Platform: plat, Digest: re.digest, Resolved: re.resolved,
			Reason: re.err.Error(), Time: start.UTC(), Config: fingerprint(cfg)}
		rec := c.rec
		c.mu.Unlock()
		if err := c.saveRecord(rec); err != nil {
			log.Error("could not remember the refused image; it will be fetched again", "err", err)
		}
	}
	var e images.Entry
	if prev != nil {
		e = *prev
	} else {
		c.mu.Lock()
		for slot, sr := range slots(cfg) {
			old, ok := c.rec.Slots[slot]
			if !ok && strings.HasPrefix(slot, "Nodes[") {
				// The node booted DefaultImage before it got an
				// Image of its own.
				old, ok = c.rec.Slots["DefaultImage"]
			}
			if sr != (SlotRef{ref, plat}) || !ok || old == sr || old.Platform != plat {
				continue
			}
			oe, ok := ix.Lookup(old.Ref, old.Platform)
			if !ok {
				// A second failing reference in a row: the first
				// one's stand-in still holds the slot's tree.
				for _, se := range ix.Entries {
					if se.StandIn == old.Ref && se.Platform == plat {
						oe, ok = se, true
						break
					}
				}
			}
			if ok {
				e = oe
				e.Ref, e.StandIn = ref, old.Ref
				break
			}
		}
		c.mu.Unlock()
		if e.Ref == "" {
			log.Error("pull failed; nothing to serve for this reference yet", "err", perr)
			return
		}
	}
	e.LastAttempt, e.LastError = start.UTC(), perr.Error()
	ix.Put(e)
	if err := images.SaveIndex(c.st, *ix); err != nil {
		log.Error("could not record the failed attempt", "err", err)
	}
	log.Error("pull failed; still serving the last good tree", "serving", e.Digest, "stand_in_for", e.StandIn, "pulled", e.Pulled, "err", perr)
}

// Pull fetches and unpacks one image for platform and returns its index
// entry without recording it.
func (c *Cache) Pull(ctx context.Context, cfg *config.Config, ref, platform string) (images.Entry, Boot, error) {
	c.pullMu.Lock()
	defer c.pullMu.Unlock()
	c.setConfig(cfg)
	return c.pull(ctx, cfg, ref, platform, nil)
}

// rejected returns the refusal of a manifest the tag resolves to, if the
// config is the one it was refused under.
func (c *Cache) rejected(cfg *config.Config, platform string, match func(Rejection) bool) (Rejection, bool) {
	fp := fingerprint(cfg)
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, rj := range c.rec.Rejected {
		if rj.Platform == platform && rj.Config == fp && match(rj) {
			return rj, true
		}
	}
	return Rejection{}, false
}

func rejectedError(rj Rejection) error {
	return fmt.Errorf("ocicache: not fetching %s again: it was refused %s: %s; push a fixed image under the tag or change the config to try again",
		rj.Digest, rj.Time.Format(time.RFC3339), rj.Reason)
}

// pull brings ref up to date. prev is what serves ref now: when a HEAD of
// the tag still names prev's manifest and its tree is there, nothing is
// fetched and prev is returned.
func (c *Cache) pull(ctx context.Context, cfg *config.Config, ref, platform string, prev *images.Entry) (images.Entry, Boot, error) {
	r, err := ParseRef(cfg, ref)
	if err != nil {
		return images.Entry{}, Boot{}, err
	}
	plat, err := v1.ParsePlatform(platform)
	if err != nil {
		return images.Entry{}, Boot{}, fmt.Errorf("ocicache: platform %q: %v", platform, err)
	}
	ropts := append(c.remoteOptions(ctx), remote.WithPlatform(*plat))
	// A HEAD is all revalidation costs while the tag is unchanged; when
	// it fails (some registries refuse HEAD) the GET below tells why.
	if head, err := remote.Head(r, ropts...); err == nil {
		hd := head.Digest.String()
		if prev != nil && prev.StandIn == "" && prev.Resolved == hd {
			if root, err := images.Root(c.st, prev.Digest); err == nil {
				if fi, err := os.Stat(root); err == nil && fi.IsDir() {
					return *prev, Boot{Dir: prev.BootDir, Kernel: prev.Kernel}, nil
				}
			}
		}
		if rj, ok := c.rejected(cfg, platform, func(rj Rejection) bool { return rj.Resolved == hd }); ok {
			return images.Entry{}, Boot{}, rejectedError(rj)
		}
	}
	desc, err := remote.Get(r, ropts...)
	if err != nil {
		return images.Entry{}, Boot{}, fmt.Errorf("resolving %s: %w%s", ref, err, hint(err, r))
	}
	var top v1.Descriptor = desc.Descriptor
	if desc.MediaType.IsIndex() {
		if _, err := c.blobs.PutBytes(desc.Manifest); err != nil {
			return images.Entry{}, Boot{}, err
		}
	}
	img, err := desc.Image()
	if err != nil {
		return images.Entry{}, Boot{}, fmt.Errorf("%s has no image for %s: %w", ref, platform, err)
	}
	digest, err := img.Digest()
	if err != nil {
		return images.Entry{}, Boot{}, err
	}
	if rj, ok := c.rejected(cfg, platform, func(rj Rejection) bool { return rj.Digest == digest.String() }); ok {
		return images.Entry{}, Boot{}, rejectedError(rj)
	}
	e, boot, err := c.fetchAndUnpack(ctx, cfg, r, ref, top, img, digest, plat, platform)
	var re *rejectErr
	if errors.As(err, &re) {
		re.digest, re.resolved = digest.String(), top.Digest.String()
	}
	if err != nil {
		return images.Entry{}, Boot{}, err
	}
	e.Ref, e.Resolved = ref, top.Digest.String()
	return e, boot, nil
}

func (c *Cache) fetchAndUnpack(ctx context.Context, cfg *config.Config, r name.Reference, ref string, top v1.Descriptor, img v1.Image, digest v1.Hash, plat *v1.Platform, platform string) (images.Entry, Boot, error) {
	m, err := img.Manifest()
	if err != nil {
		return images.Entry{}, Boot{}, err
	}
	rawManifest, err := img.RawManifest()
	if err != nil {
		return images.Entry{}, Boot{}, err
	}
	// The config comes through the same verified, retried path as layers
	// and is read back from the store, so a re-pull fetches nothing.
	if !c.blobs.Has(m.Config.Digest, m.Config.Size) {
		if err := c.FetchBlob(ctx, r.Context(), m.Config, r.Name()); err != nil {
			return images.Entry{}, Boot{}, fmt.Errorf("%s: image config: %w", ref, err)
		}
	}
	rawCfg, err := c.blobs.ReadSmall(m.Config.Digest)
	if err != nil {
		return images.Entry{}, Boot{}, err
	}
	cf, err := v1.ParseConfigFile(bytes.NewReader(rawCfg))
	if err != nil {
		return images.Entry{}, Boot{}, &rejectErr{err: fmt.Errorf("%s: image config %s: %w", ref, m.Config.Digest, err)}
	}
	if cf.OS != plat.OS || cf.Architecture != plat.Architecture || (plat.Variant != "" && cf.Variant != "" && cf.Variant != plat.Variant) {
		got := cf.OS + "/" + cf.Architecture
		if cf.Variant != "" {
			got += "/" + cf.Variant
		}
		return images.Entry{}, Boot{}, &rejectErr{err: fmt.Errorf("ocicache: %s is an image for %s, but the config wants %s; push a %s image (or a multi-platform index) or set the node's Platform", ref, got, platform, platform)}
	}
	// Layers are fetched Jobs at a time while the unpacker applies each
	// as soon as it and those below it are stored.
	fctx, cancel := context.WithCancel(ctx)
	fetches, wait := c.startFetch(fctx, r, m.Layers)
	boot, err := c.unpack(ctx, cfg, digest, m.Layers, platform, fetches)
	if err != nil {
		cancel()
		wait()
		return images.Entry{}, Boot{}, err
	}
	wait()
	cancel()
	if _, err := c.blobs.PutBytes(rawManifest); err != nil {
		return images.Entry{}, Boot{}, err
	}
	if err := c.blobs.SetRef(r.Name(), top, false); err != nil {
		return images.Entry{}, Boot{}, err
	}
	return images.Entry{Platform: platform, Digest: digest.String(), BootDir: boot.Dir, Kernel: boot.Kernel, Pulled: c.opts.Now().UTC()}, boot, nil
}

// hint adds what to do for common registry errors.
func hint(err error, r name.Reference) string {
	var te *transport.Error
	if errors.As(err, &te) {
		switch te.StatusCode {
		case http.StatusUnauthorized, http.StatusForbidden:
			return fmt.Sprintf(" (log in with `docker login %s` or add it to $DOCKER_CONFIG/config.json auths)", r.Context().RegistryStr())
		case http.StatusNotFound:
			return " (check the repository and tag)"
		}
	}
	if strings.Contains(err.Error(), "server gave HTTP response to HTTPS client") {
		return fmt.Sprintf(" (add %q to Netboot.InsecureRegistries for a plain-HTTP registry)", r.Context().RegistryStr())
	}
	return ""
}

// fetch is one layer download; done is closed when err is final. stream,
// for a layer being downloaded, lets the unpacker read it as it arrives.
type fetch struct {
	done   chan struct{}
	err    error
	stream *stream
}

func (f *fetch) wait(ctx context.Context) error {
	select {
	case <-f.done:
		return f.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// startFetch downloads the missing layers, Jobs at a time, in layer order,
// and returns one fetch per layer and a function that waits for all.
func (c *Cache) startFetch(ctx context.Context, r name.Reference, layers []v1.Descriptor) ([]*fetch, func()) {
	out := make([]*fetch, len(layers))
	byDigest := map[v1.Hash]*fetch{}
	var todo []int
	for i, l := range layers {
		if f, ok := byDigest[l.Digest]; ok {
			out[i] = f
			continue
		}
		f := &fetch{done: make(chan struct{})}
		out[i], byDigest[l.Digest] = f, f
		if c.blobs.Has(l.Digest, l.Size) {
			close(f.done)
			continue
		}
		f.stream = newStream()
		todo = append(todo, i)
	}
	stop := c.logProgress(ctx, r.Name())
	var wg sync.WaitGroup
	wg.Add(1)
	// Slots are handed out in layer order, so the bottom layer, which the
	// unpacker needs first, is never queued behind upper ones.
	go func() {
		defer wg.Done()
		sem := make(chan struct{}, c.opts.Jobs)
		for _, i := range todo {
			f, l := out[i], layers[i]
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				f.err = ctx.Err()
				f.stream.end(f.err)
				close(f.done)
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				f.err = c.fetchBlob(ctx, r.Context(), l, r.Name(), c.opts.Attempts, f.stream)
				f.stream.end(f.err)
				close(f.done)
			}()
		}
	}()
	return out, func() { wg.Wait(); stop() }
}

// FetchBlob downloads one blob from repo into the store, retrying with
// backoff; each attempt starts over, so a failed or corrupted transfer
// never reaches the blob's final name.
func (c *Cache) FetchBlob(ctx context.Context, repo name.Repository, d v1.Descriptor, label string) error {
	return c.fetchBlob(ctx, repo, d, label, c.opts.Attempts, nil)
}

// fetchBlob is FetchBlob; s, if not nil, follows each attempt.
func (c *Cache) fetchBlob(ctx context.Context, repo name.Repository, d v1.Descriptor, label string, attempts int, s *stream) error {
	p := &layerProgress{Ref: label, Total: d.Size}
	c.mu.Lock()
	c.progress[d.Digest.String()] = p
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.progress, d.Digest.String())
		c.mu.Unlock()
	}()
	// A layer that cannot fit is not fetched at all.
	if err := c.blobs.Room(d.Digest, d.Size); err != nil {
		return fmt.Errorf("fetching layer %s of %s: %w", d.Digest, label, err)
	}
	delay := c.opts.Backoff
	var err error
	for attempt := 1; attempt <= attempts; attempt++ {
		p.Done.Store(0)
		err = c.fetchOnce(ctx, repo, d, p, s)
		if err == nil || ctx.Err() != nil || !retryable(err) || attempt == attempts {
			break
		}
		c.opts.Log.Warn("blob fetch failed, retrying", "blob", d.Digest.String(), "attempt", attempt, "of", attempts, "in", delay.String(), "err", err)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(delay):
		}
		delay *= 2
	}
	if err != nil {
		return fmt.Errorf("fetching layer %s of %s: %w", d.Digest, label, err)
	}
	return nil
}

func retryable(err error) bool {
	// syscall.Errno implements net.Error, so disk errors must be told
	// apart first: ENOSPC is not a network problem.
	if diskErr(err) {
		return false
	}
	var te *transport.Error
	if errors.As(err, &te) {
		return te.StatusCode >= 500 || te.StatusCode == http.StatusTooManyRequests
	}
	var ne net.Error
	var de *DigestError
	// go-containerregistry verifies what it streams and reports a
	// mismatch only as text; corrupted transfers are worth another try.
	if strings.Contains(err.Error(), "error verifying") || strings.Contains(err.Error(), "bytes, want") {
		return true
	}
	return errors.As(err, &ne) || errors.Is(err, io.ErrUnexpectedEOF) || errors.As(err, &de) ||
		errors.Is(err, unix.ECONNRESET) || errors.Is(err, unix.ECONNREFUSED) || errors.Is(err, io.EOF)
}

func (c *Cache) fetchOnce(ctx context.Context, repo name.Repository, d v1.Descriptor, p *layerProgress, s *stream) error {
	// FetchBlob owns the retries of blob downloads; go-containerregistry's
	// own would multiply them (and their sleeps).
	opts := append(c.remoteOptions(ctx), remote.WithRetryPredicate(func(error) bool { return false }), remote.WithRetryStatusCodes())
	l, err := remote.Layer(repo.Digest(d.Digest.String()), opts...)
	if err != nil {
		return err
	}
	rc, err := l.Compressed()
	if err != nil {
		return err
	}
	defer rc.Close()
	return c.blobs.put(d.Digest, d.Size, rc, func(n int) {
		p.Done.Add(int64(n))
		c.fetchedBytes.Add(int64(n))
	}, s)
}

// logProgress logs bytes per running layer every 5 seconds until stopped.
func (c *Cache) logProgress(ctx context.Context, ref string) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	go func() {
		t := time.NewTicker(5 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				for _, lp := range c.Progress() {
					if lp.Ref == ref {
						c.opts.Log.Info("pulling", "ref", ref, "layer", lp.Digest, "done_bytes", lp.Done, "total_bytes", lp.Total)
					}
				}
			}
		}
	}()
	return cancel
}

// LayerProgress is one running blob fetch.
type LayerProgress struct {
	Ref    string
	Digest string
	Done   int64
	Total  int64
}

// Progress lists running blob fetches.
func (c *Cache) Progress() []LayerProgress {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]LayerProgress, 0, len(c.progress))
	for d, p := range c.progress {
		out = append(out, LayerProgress{Ref: p.Ref, Digest: d, Done: p.Done.Load(), Total: p.Total})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Digest < out[j].Digest })
	return out
}

// Status is the cache's part of /status.
type Status struct {
	Images []ImageStatus
	// References is images/index.json: per reference what serves
	// (Digest, Pulled, StandIn) and how its last attempt went
	// (LastAttempt, LastError).
	References   []images.Entry
	Rejected     []Rejection `json:",omitempty"` // manifests not fetched again
	Pulling      []LayerProgress
	FetchedBytes int64
	LastGC       GCResult
}

// Status reports images, running fetches and the last GC.
func (c *Cache) Status() Status {
	pulling := c.Progress()
	ix, err := images.LoadIndex(c.st)
	if err != nil {
		c.opts.Log.Error("status: reading images/index.json", "err", err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	s := Status{References: ix.Entries, Pulling: pulling, FetchedBytes: c.fetchedBytes.Load(), LastGC: c.lastGC}
	for _, rj := range c.rec.Rejected {
		s.Rejected = append(s.Rejected, rj)
	}
	sort.Slice(s.Rejected, func(i, j int) bool { return s.Rejected[i].Digest < s.Rejected[j].Digest })
	for _, st := range c.state {
		s.Images = append(s.Images, *st)
	}
	sort.Slice(s.Images, func(i, j int) bool {
		return s.Images[i].Ref+s.Images[i].Platform < s.Images[j].Ref+s.Images[j].Platform
	})
	return s
}

// unpack builds images/sha256-<hex> from the stored layers unless it exists.
func (c *Cache) unpack(ctx context.Context, cfg *config.Config, digest v1.Hash, layers []v1.Descriptor, platform string, fetches []*fetch) (Boot, error) {
	final, err := images.Root(c.st, digest.String())
	if err != nil {
		return Boot{}, err
	}
	bootOverride := ""
	if cfg != nil {
		bootOverride = cfg.BootDir
	}
	if fi, err := os.Lstat(final); err == nil && fi.IsDir() {
		// Trees are immutable once renamed, so an existing one is
		// complete; the blobs are still needed to serve the image.
		for _, f := range fetches {
			if err := f.wait(ctx); err != nil {
				return Boot{}, err
			}
		}
		boot, err := FindBoot(final, bootOverride, platform)
		return boot, imageFault(err)
	}
	defer func() {
		for _, f := range fetches {
			if f.stream != nil {
				f.stream.close()
			}
		}
	}()
	boot, err := c.unpackTree(ctx, final, bootOverride, layers, platform, fetches, true)
	if errors.Is(err, errRestart) {
		c.opts.Log.Info("a layer download was retried while being unpacked; unpacking again from the stored layers", "image", digest.String())
		boot, err = c.unpackTree(ctx, final, bootOverride, layers, platform, fetches, false)
	}
	return boot, err
}

// unpackTree unpacks the layers into a temp tree renamed to final at the
// end. With follow, a layer still downloading is read as it arrives;
// otherwise each is read from the store once its download is done.
func (c *Cache) unpackTree(ctx context.Context, final, bootOverride string, layers []v1.Descriptor, platform string, fetches []*fetch, follow bool) (Boot, error) {
	tmp, err := store.TempDir(final)
	if err != nil {
		return Boot{}, fmt.Errorf("ocicache: %v", err)
	}
	ok := false
	defer func() {
		if !ok {
			os.RemoveAll(tmp)
		}
	}()
	// Image roots are 0755 root-owned whatever the temp dir was made as.
	if err := os.Chmod(tmp, 0o755); err != nil {
		return Boot{}, err
	}
	u, err := unpack.New(tmp, unpack.Options{MinFree: c.opts.MinFree, Log: c.opts.Log})
	if err != nil {
		return Boot{}, err
	}
	for i, l := range layers {
		f := fetches[i]
		var src io.Reader
		lctx, stop := context.WithCancel(ctx)
		defer stop()
		streamed := follow && f.stream != nil
		if streamed {
			src = f.stream.reader(lctx)
		} else {
			if err := f.wait(ctx); err != nil {
				u.Close()
				return Boot{}, err
			}
			bf, err := c.blobs.Open(l.Digest)
			if err != nil {
				u.Close()
				return Boot{}, err
			}
			defer bf.Close()
			src = bf
		}
		err := c.applyLayer(u, src, stop)
		if streamed {
			// The layer counts only once its digest is checked: the
			// tar may end before the last bytes of the download.
			if werr := f.wait(ctx); werr != nil {
				u.Close()
				return Boot{}, werr
			}
			// A corrupted attempt may have failed the apply (or
			// passed it): only the bytes of the verified one count.
			if f.stream.restarted() {
				err = errRestart
			}
		}
		if errors.Is(err, errRestart) {
			u.Close()
			return Boot{}, err
		}
		if err != nil {
			u.Close()
			return Boot{}, imageFault(fmt.Errorf("layer %d (%s): %w", i, l.Digest, err))
		}
	}
	if err := u.Close(); err != nil {
		return Boot{}, err
	}
	boot, err := FindBoot(tmp, bootOverride, platform)
	if err != nil {
		return Boot{}, imageFault(err)
	}
	// One syncfs instead of an fsync per file: the rename below must not
	// reach the disk before the tree's content does.
	if fd, err := unix.Open(tmp, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0); err == nil {
		err = unix.Syncfs(fd)
		unix.Close(fd)
		if err != nil {
			return Boot{}, fmt.Errorf("ocicache: syncfs %s: %v", tmp, err)
		}
	}
	if err := os.Rename(tmp, final); err != nil {
		return Boot{}, fmt.Errorf("ocicache: %v", err)
	}
	ok = true
	return boot, store.SyncDir(filepath.Dir(final))
}

// imageFault marks err as the image's fault unless the disk or a read of
// the store caused it: a full disk is no reason to refuse an image.
func imageFault(err error) error {
	if err == nil || diskErr(err) || strings.Contains(err.Error(), "disk full") {
		return err
	}
	return &rejectErr{err: err}
}

// applyLayer applies the layer src reads; stop ends a src that follows a
// download, so that a failed apply does not wait for the download.
func (c *Cache) applyLayer(u *unpack.Unpacker, src io.Reader, stop func()) error {
	r, closeFn, err := decompress(src)
	if err != nil {
		return err
	}
	defer closeFn()
	// Decompression and file creation each keep a core busy; a read-ahead
	// goroutine lets them overlap.
	ra := newReadAhead(r, 1<<20, 8)
	defer ra.Close()
	defer stop() // before ra.Close, which waits for the goroutine reading src
	return u.Apply(ra)
}

// readAhead reads src in a goroutine into a few buffers ahead of the
// consumer.
type readAhead struct {
	ch   chan []byte
	free chan []byte
	cur  []byte // unread part of buf
	buf  []byte // the whole buffer cur lies in
	err  error
	errc chan error
	stop chan struct{}
}

func newReadAhead(src io.Reader, size, n int) *readAhead {
	ra := &readAhead{ch: make(chan []byte, n), free: make(chan []byte, n+1), errc: make(chan error, 1), stop: make(chan struct{})}
	for i := 0; i < n+1; i++ {
		ra.free <- make([]byte, size)
	}
	go func() {
		defer close(ra.ch)
		for {
			var buf []byte
			select {
			case buf = <-ra.free:
			case <-ra.stop:
				return
			}
			k, err := io.ReadFull(src, buf)
			if k > 0 {
				select {
				case ra.ch <- buf[:k]:
				case <-ra.stop:
					return
				}
			}
			if err == io.ErrUnexpectedEOF {
				err = io.EOF
			}
			if err != nil {
				ra.errc <- err
				return
			}
		}
	}()
	return ra
}

func (ra *readAhead) Read(p []byte) (int, error) {
	for len(ra.cur) == 0 {
		if ra.err != nil {
			return 0, ra.err
		}
		buf, ok := <-ra.ch
		if !ok {
			ra.err = <-ra.errc
			continue
		}
		ra.cur, ra.buf = buf, buf[:cap(buf)]
	}
	n := copy(p, ra.cur)
	ra.cur = ra.cur[n:]
	if len(ra.cur) == 0 {
		ra.free <- ra.buf
		ra.cur, ra.buf = nil, nil
	}
	return n, nil
}

// Close stops the goroutine; call it once the consumer is done.
func (ra *readAhead) Close() {
	close(ra.stop)
	for range ra.ch {
	}
}

// decompress detects gzip, zstd or a plain tar by magic bytes, as media
// types in the wild are not reliable (docker "tar.gzip" for zstd, etc.).
func decompress(src io.Reader) (io.Reader, func(), error) {
	br := bufio.NewReaderSize(src, 64<<10)
	magic, err := br.Peek(4)
	if err != nil && err != io.EOF {
		return nil, nil, err
	}
	n := len(magic)
	switch {
	case n >= 2 && magic[0] == 0x1f && magic[1] == 0x8b:
		zr, err := gzip.NewReader(br)
		if err != nil {
			return nil, nil, err
		}
		return zr, func() { zr.Close() }, nil
	case n == 4 && [4]byte(magic) == [4]byte{0x28, 0xb5, 0x2f, 0xfd}:
		zr, err := zstd.NewReader(br, zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true))
		if err != nil {
			return nil, nil, err
		}
		return zr, zr.Close, nil
	}
	return br, func() {}, nil
}
