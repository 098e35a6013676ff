package config

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// warnings finds what is valid but likely a mistake: a section under a
// mis-cased key (gok and Parse ignore it, so none of it applies) and no
// image for nodes that need the default.
func warnings(top map[string]json.RawMessage, cfg *Config) []string {
	var out []string
	var keys []string
	for k := range top {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if k != "Netboot" && strings.EqualFold(k, "Netboot") {
			out = append(out, fmt.Sprintf("config.json: key %q is not \"Netboot\": it is ignored, so none of its settings apply; rename it to \"Netboot\"", k))
		}
	}
	if cfg.DefaultImage == "" {
		var without []string
		for i, n := range cfg.Nodes {
			if n.Image == "" {
				without = append(without, fmt.Sprintf("Netboot.Nodes[%d]", i))
			}
		}
		switch {
		case len(without) > 0:
			out = append(out, "Netboot.DefaultImage is empty: "+strings.Join(without, ", ")+" name no Image and have nothing to boot; set DefaultImage")
		case cfg.Enroll == EnrollAuto:
			out = append(out, "Netboot.DefaultImage is empty: nodes that enrol themselves (Enroll \"auto\") have nothing to boot; set DefaultImage or Enroll \"known-only\"")
		}
	}
	return out
}

// Reachable asks every image's registry whether the reference resolves
// (a HEAD of the manifest with the docker config's credentials), each
// within timeout, and returns one line per reference that does not. It is
// make check's look ahead at what ocicache will pull; without a network
// every reference is reported, as a warning.
func Reachable(ctx context.Context, cfg *Config, timeout time.Duration) []string {
	refs := cfg.Images()
	var names []string
	for r := range refs {
		names = append(names, r)
	}
	sort.Strings(names)
	var out []string
	for _, r := range names {
		ref, err := name.ParseReference(r)
		if err != nil {
			out = append(out, fmt.Sprintf("image %s: %v", r, err))
			continue
		}
		c, cancel := context.WithTimeout(ctx, timeout)
		_, err = remote.Head(ref, remote.WithContext(c), remote.WithAuthFromKeychain(authn.DefaultKeychain))
		cancel()
		if err != nil {
			out = append(out, fmt.Sprintf("image %s is not reachable from here: %v (ocicache on the head node may still reach it; check the name, the registry and docker login)", r, err))
		}
	}
	return out
}

// CheckFile is make check: it loads path exactly as the services do,
// prints every warning to w and, when online, the references that do not
// resolve. The error is what stops a build: the same error a service
// would exit with.
func CheckFile(ctx context.Context, path string, online bool, w io.Writer) error {
	cfg, err := Load(path)
	if err != nil {
		return err
	}
	warn := cfg.Warnings
	if online {
		warn = append(warn, Reachable(ctx, cfg, 15*time.Second)...)
	}
	for _, l := range warn {
		fmt.Fprintln(w, "warning:", l)
	}
	fmt.Fprintf(w, "%s: valid (%s mode on %s, %d nodes, %d images, %d warnings)\n", path, cfg.Mode, cfg.Interface, len(cfg.Nodes), len(cfg.Images()), len(warn))
	return nil
}
