package ocicache

import (
	"context"
	"runtime/debug"
	"time"

	"github.com/ociboot/ociboot/appliance/config"
)

// RunOptions drive Run.
type RunOptions struct {
	// Revalidate is how often the configured tags are asked again (a
	// HEAD each while unchanged); new content is pulled then. Default 5
	// minutes.
	Revalidate time.Duration
	// Retry is how soon a pass with a failed image is repeated; default
	// 1 minute.
	Retry time.Duration
	// Reload delivers a new config (SIGHUP, the file changed); a pass
	// starts at once.
	Reload <-chan *config.Config
}

// Run syncs cfg now and then whenever RunOptions say, until ctx ends.
func (c *Cache) Run(ctx context.Context, cfg *config.Config, o RunOptions) error {
	if o.Revalidate <= 0 {
		o.Revalidate = 5 * time.Minute
	}
	if o.Retry <= 0 {
		o.Retry = time.Minute
	}
	for {
		failed := c.Sync(ctx, cfg) != nil
		if ctx.Err() != nil {
			return ctx.Err()
		}
		// A pull's buffers (read-ahead, decompressors, HTTP) are garbage
		// now; hand the pages back rather than wait for the scavenger, so
		// that the idle service is small (README, idle RSS).
		debug.FreeOSMemory()
		next := o.Revalidate
		if failed && o.Retry < next {
			next = o.Retry
		}
		t := time.NewTimer(next)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		case n := <-o.Reload:
			t.Stop()
			cfg = n
		}
	}
}
