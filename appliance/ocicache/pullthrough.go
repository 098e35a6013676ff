package ocicache

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sort"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

// Pull-through content (fetched for /v2/ clients, not for the config) is
// kept under Options.PullThroughCap bytes, least recently used first out,
// instead of being dropped at each GC. Its tags are asked again of the
// upstream once older than Options.PullThroughTTL; while the upstream
// cannot be reached the cached manifest keeps being served.
//
// An upstream that failed at the network level (refused, unreachable,
// timed out) is "known down" for Options.UpstreamDownFor: requests for
// content not held fail at once with a 503 that says so, rather than after
// a full round of retries per request.

// AnnotationFetched is when a pull-through tag was last resolved upstream
// (RFC 3339).
const AnnotationFetched = "io.ociboot.fetched"

type upstreamDown struct {
	since time.Time // first failure of this outage
	last  time.Time // latest failure
	err   string
}

// networkFailure reports whether err means the upstream could not be
// reached at all (as opposed to answering with an error status).
func networkFailure(err error) bool {
	var te *transport.Error
	var de *DigestError
	if err == nil || errors.As(err, &te) || errors.As(err, &de) || diskErr(err) {
		return false
	}
	var ne net.Error
	return errors.As(err, &ne) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF)
}

// noteUpstream records the outcome of a request to upstream registry up.
func (c *Cache) noteUpstream(up string, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err == nil {
		if _, ok := c.down[up]; ok {
			delete(c.down, up)
			c.opts.Log.Info("pull-through: upstream reachable again", "upstream", up)
		}
		return
	}
	if !networkFailure(err) {
		return
	}
	now := c.opts.Now()
	d, ok := c.down[up]
	if !ok {
		d.since = now
		c.opts.Log.Error("pull-through: upstream unreachable; content not held fails at once until it answers again", "upstream", up, "for", c.opts.UpstreamDownFor.String(), "err", err)
	}
	d.last, d.err = now, err.Error()
	c.down[up] = d
}

// upstreamIsDown returns a client-facing error if up is known down.
func (c *Cache) upstreamIsDown(up string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	d, ok := c.down[up]
	if !ok || c.opts.Now().Sub(d.last) >= c.opts.UpstreamDownFor {
		return nil
	}
	return fmt.Errorf("upstream %s has been unreachable since %s (%s); next try after %s",
		up, d.since.UTC().Format(time.RFC3339), d.err, d.last.Add(c.opts.UpstreamDownFor).UTC().Format(time.RFC3339))
}

// touch marks a pull-through manifest as used now (for the LRU).
func (c *Cache) touch(d v1.Hash) {
	c.mu.Lock()
	c.used[d.String()] = c.opts.Now()
	c.mu.Unlock()
}

// stale reports whether a pull-through tag entry should be asked again.
func (c *Cache) stale(m v1.Descriptor) bool {
	if m.Annotations[AnnotationPullThrough] == "" || strings.Contains(m.Annotations[AnnotationRef], "@") {
		return false
	}
	t, err := time.Parse(time.RFC3339, m.Annotations[AnnotationFetched])
	return err != nil || c.opts.Now().Sub(t) >= c.opts.PullThroughTTL
}

// evictPullThrough picks pull-through entries to drop so that the blobs
// only they hold fit in the cap, least recently used first. live is what
// the config's images hold (never counted against the cap).
func (c *Cache) evictPullThrough(entries []v1.Descriptor, live map[string]bool) (keep, drop []v1.Descriptor) {
	lastUse := func(m v1.Descriptor) time.Time {
		c.mu.Lock()
		t := c.used[m.Digest.String()]
		c.mu.Unlock()
		if f, err := time.Parse(time.RFC3339, m.Annotations[AnnotationFetched]); err == nil && f.After(t) {
			t = f
		}
		return t
	}
	sort.SliceStable(entries, func(i, j int) bool { return lastUse(entries[i]).After(lastUse(entries[j])) })
	counted := map[string]bool{}
	for k := range live {
		counted[k] = true
	}
	var total int64
	keptDigests := map[string]bool{}
	defer func() {
		// Forget the use of what is gone, so that used stays small.
		c.mu.Lock()
		for d := range c.used {
			if !keptDigests[d] {
				delete(c.used, d)
			}
		}
		c.mu.Unlock()
	}()
	for _, m := range entries {
		var size int64
		for _, h := range c.blobs.reachable([]v1.Hash{m.Digest}) {
			if counted[h.Hex] {
				continue
			}
			if fi, err := os.Stat(c.blobs.Path(h)); err == nil {
				size += fi.Size()
			}
		}
		if total+size > c.opts.PullThroughCap {
			drop = append(drop, m)
			continue
		}
		total += size
		keep = append(keep, m)
		keptDigests[m.Digest.String()] = true
		for _, h := range c.blobs.reachable([]v1.Hash{m.Digest}) {
			counted[h.Hex] = true
		}
	}
	return keep, drop
}

// downResponse writes the 503 for an upstream known down.
func downResponse(w http.ResponseWriter, what string, err error) {
	w.Header().Set("Retry-After", "30")
	writeErr(w, http.StatusServiceUnavailable, "UNAVAILABLE", what+" is not cached here and "+err.Error())
}
