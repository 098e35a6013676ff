package ocicache

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"time"

	"github.com/ociboot/ociboot/appliance/config"
	"github.com/ociboot/ociboot/appliance/store"
)

// stateFile is ocicache's own record below store.CacheDir, rewritten
// crash-safely (store.WriteJSON) after each change.
const stateFile = "state.json"

// record is stateFile.
type record struct {
	// Slots maps each place in the config that names an image
	// ("DefaultImage", "Nodes[<serial or MAC>]") to the reference last
	// pulled successfully for it. When the config puts a reference there
	// that fails, the slot's previous tree keeps serving (as a StandIn
	// entry of images/index.json).
	Slots map[string]SlotRef `json:",omitempty"`
	// Rejected holds manifests that failed the boot check or unpacking,
	// by manifest digest: they are not fetched again while the tag
	// points to them and the config is unchanged.
	Rejected map[string]Rejection `json:",omitempty"`
}

// SlotRef is a reference for a platform.
type SlotRef struct {
	Ref      string
	Platform string
}

// Rejection is a manifest refused after it was fetched.
type Rejection struct {
	Ref      string
	Platform string
	Digest   string // the platform's manifest
	Resolved string // what the tag pointed to (index or manifest)
	Reason   string
	Time     time.Time
	// Config is the fingerprint of the config the check ran under; a
	// different config (Netboot.BootDir, say) tries again.
	Config string
}

func (c *Cache) loadRecord() (record, error) {
	var r record
	err := store.ReadJSON(c.st.Path(store.CacheDir, stateFile), &r)
	if errors.Is(err, fs.ErrNotExist) {
		err = nil
	}
	if r.Slots == nil {
		r.Slots = map[string]SlotRef{}
	}
	if r.Rejected == nil {
		r.Rejected = map[string]Rejection{}
	}
	return r, err
}

func (c *Cache) saveRecord(r record) error {
	if err := store.WriteJSON(c.st.Path(store.CacheDir, stateFile), r); err != nil {
		return fmt.Errorf("ocicache: saving %s: %w", stateFile, err)
	}
	return nil
}

// slots lists the places in cfg that name an image.
func slots(cfg *config.Config) map[string]SlotRef {
	out := map[string]SlotRef{}
	if cfg.DefaultImage != "" {
		out["DefaultImage"] = SlotRef{cfg.DefaultImage, cfg.Platform}
	}
	for _, n := range cfg.Nodes {
		if n.Image == "" {
			continue
		}
		key := n.Serial
		if key == "" && n.MAC != nil {
			key = n.MAC.String()
		}
		out["Nodes["+key+"]"] = SlotRef{n.Image, n.Platform}
	}
	return out
}

// fingerprint identifies a config for Rejection.Config.
func fingerprint(cfg *config.Config) string {
	b, err := json.Marshal(cfg)
	if err != nil {
		return ""
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:8])
}

// rejectErr marks a pull error as the image's fault (boot check,
// unpacking), not the network's or the disk's.
type rejectErr struct {
	digest, resolved string
	err              error
}

func (e *rejectErr) Error() string { return e.err.Error() }
func (e *rejectErr) Unwrap() error { return e.err }
