package ocicache

import (
	"fmt"
	"os"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/ociboot/ociboot/appliance/config"
	"github.com/ociboot/ociboot/appliance/images"
	"github.com/ociboot/ociboot/appliance/nodes"
	"github.com/ociboot/ociboot/appliance/store"
)

// GC removes what no node can boot any more: index entries for references
// the config no longer names, unpacked trees no entry points to, and blobs
// unreachable from the remaining references. Pull-through content (fetched
// for /v2/ clients) stays while it fits in Options.PullThroughCap, least
// recently used dropped first. GC takes the pull lock, so it never runs
// while a pull is writing.
func (c *Cache) GC(cfg *config.Config) GCResult {
	c.pullMu.Lock()
	defer c.pullMu.Unlock()
	return c.gc(cfg)
}

func (c *Cache) gc(cfg *config.Config) GCResult {
	res, err := c.collect(cfg)
	res.Time = c.opts.Now().UTC()
	if err != nil {
		res.Error = err.Error()
		c.opts.Log.Error("gc failed", "err", err)
	} else if len(res.TreesFreed) > 0 || res.BlobBytes > 0 {
		c.opts.Log.Info("gc", "trees_removed", len(res.TreesFreed), "blob_bytes_freed", res.BlobBytes)
	}
	c.mu.Lock()
	c.lastGC = res
	c.mu.Unlock()
	return res
}

func (c *Cache) collect(cfg *config.Config) (GCResult, error) {
	var res GCResult
	want := cfg.Images()
	wanted := func(ref, plat string) bool {
		for _, p := range want[ref] {
			if p == plat {
				return true
			}
		}
		return false
	}
	ix, err := images.LoadIndex(c.st)
	if err != nil {
		return res, err
	}
	var kept images.Index
	liveTrees := map[string]bool{}
	var roots []v1.Hash
	for _, e := range ix.Entries {
		if !wanted(e.Ref, e.Platform) {
			continue
		}
		kept.Entries = append(kept.Entries, e)
		if d, err := images.DirName(e.Digest); err == nil {
			liveTrees[d] = true
		}
		if h, err := v1.NewHash(e.Digest); err == nil {
			roots = append(roots, h)
		}
	}
	if len(kept.Entries) != len(ix.Entries) {
		if err := images.SaveIndex(c.st, kept); err != nil {
			return res, err
		}
	}
	// A node's root (nfsd's view) shares inodes with the tree it was made
	// from; nfsd needs that tree to tell shared files from the node's own
	// until the node is reset, even when the config names a newer image.
	for _, digest := range nodes.ViewImages(c.st) {
		if d, err := images.DirName(digest); err == nil {
			liveTrees[d] = true
		}
	}
	dir := c.st.Path(store.ImagesDir)
	entries, err := os.ReadDir(dir)
	if err != nil {
		return res, fmt.Errorf("ocicache: gc: %v", err)
	}
	for _, e := range entries {
		if !e.IsDir() || !strings.HasPrefix(e.Name(), "sha256-") || liveTrees[e.Name()] {
			continue
		}
		if err := os.RemoveAll(c.st.Path(store.ImagesDir, e.Name())); err != nil {
			return res, fmt.Errorf("ocicache: gc: removing %s: %v", e.Name(), err)
		}
		res.TreesFreed = append(res.TreesFreed, e.Name())
	}

	// References as stored in oci/index.json are canonical names.
	wantNames := map[string]bool{}
	for ref := range want {
		if r, err := name.ParseReference(ref); err == nil {
			wantNames[r.Name()] = true
		}
	}
	// The reference a stand-in serves keeps its name in the mirror too,
	// so /v2/ clients see what the nodes boot.
	for _, e := range kept.Entries {
		if r, err := name.ParseReference(e.StandIn); e.StandIn != "" && err == nil {
			wantNames[r.Name()] = true
		}
	}
	err = c.blobs.Update(func(oix *v1.IndexManifest) {
		var keep, pullThrough []v1.Descriptor
		for _, m := range oix.Manifests {
			switch {
			case m.Annotations[AnnotationPullThrough] != "":
				pullThrough = append(pullThrough, m)
			case wantNames[m.Annotations[AnnotationRef]]:
				keep = append(keep, m)
				roots = append(roots, m.Digest)
			}
		}
		live := map[string]bool{}
		for _, h := range c.blobs.reachable(roots) {
			live[h.Hex] = true
		}
		kept, dropped := c.evictPullThrough(pullThrough, live)
		for _, m := range kept {
			keep = append(keep, m)
			roots = append(roots, m.Digest)
		}
		res.PullThroughDropped = len(dropped)
		oix.Manifests = keep
	})
	if err != nil {
		return res, err
	}
	res.BlobBytes, err = c.blobs.GC(roots)
	return res, err
}
