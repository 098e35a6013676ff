package statuspage

import (
	"context"
	"time"

	"github.com/ociboot/ociboot/appliance/metrics"

	"github.com/ociboot/ociboot/appliance/nodes"
)

// MaxNodeLabels bounds the node label of node_disk_bytes: nodes listed in
// config.json always get their own series, enrolled ones up to this many
// in total; the rest are summed under node="other", so invented serials
// cannot grow the series without bound.
const MaxNodeLabels = 64

var (
	descPermFree   = metrics.NewDesc("perm_free_bytes", "Bytes free on the store's file system (/perm) for ociboot.", nil, nil)
	descPermSize   = metrics.NewDesc("perm_size_bytes", "Size of the store's file system (/perm).", nil, nil)
	descImageState = metrics.NewDesc("image_state", "1 for the state (ready, pulling, failed, stale, pending) each configured image is in.", []string{"ref", "state"}, nil)
	descPullDone   = metrics.NewDesc("image_pull_done_bytes", "Bytes fetched so far of the blobs an image's running pull needs.", []string{"ref"}, nil)
	descPullTotal  = metrics.NewDesc("image_pull_total_bytes", "Bytes of the blobs an image's running pull needs.", []string{"ref"}, nil)
	descNodes      = metrics.NewDesc("nodes", "Nodes by the furthest stage of their current boot (none: not seen).", []string{"stage"}, nil)
	descLiveness   = metrics.NewDesc("nodes_liveness", "Nodes by liveness: online, booting, offline, not seen.", []string{"liveness"}, nil)
	descNodeDisk   = metrics.NewDesc("node_disk_bytes", "Bytes a node's own changes take on /perm (nodes whose usage is measured).", []string{"node"}, nil)
	descServiceUp  = metrics.NewDesc("service_up", "1 when the service answers its /status.", []string{"service"}, nil)
)

// Collector exports the overview as gauges, computed when scraped.
func (p *Page) Collector() metrics.Collector { return collector{p} }

type collector struct{ p *Page }

func (c collector) Describe(ch chan<- *metrics.Desc) {
	for _, d := range []*metrics.Desc{descPermFree, descPermSize, descImageState, descPullDone, descPullTotal, descNodes, descLiveness, descNodeDisk, descServiceUp} {
		ch <- d
	}
}

func (c collector) Collect(ch chan<- metrics.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ov := c.p.Collect(ctx, "")
	g := func(d *metrics.Desc, v float64, labels ...string) {
		ch <- metrics.MustNewConstMetric(d, metrics.GaugeValue, v, labels...)
	}
	g(descPermFree, float64(ov.Disk.FreeBytes))
	g(descPermSize, float64(ov.Disk.Total))
	for _, img := range ov.Images {
		for _, s := range []string{"ready", "pulling", "failed", "stale", "pending"} {
			v := 0.0
			if img.State == s {
				v = 1
			}
			g(descImageState, v, img.Ref, s)
		}
		g(descPullDone, float64(img.Done), img.Ref)
		g(descPullTotal, float64(img.Total), img.Ref)
	}
	stages := map[string]int{"none": 0, nodes.StageDHCP: 0, nodes.StageFirmware: 0, nodes.StageKernel: 0, nodes.StageRoot: 0}
	live := map[string]int{Online: 0, Booting: 0, Offline: 0, NotSeen: 0}
	var other int64
	labelled := 0
	for _, n := range ov.Nodes {
		s := n.Stage
		if s == "" {
			s = "none"
		}
		stages[s]++
		live[n.Liveness]++
		if n.DiskBytes < 0 {
			continue
		}
		if n.Known || labelled < MaxNodeLabels {
			labelled++
			g(descNodeDisk, float64(n.DiskBytes), n.Name)
		} else {
			other += n.DiskBytes
		}
	}
	if other > 0 {
		g(descNodeDisk, float64(other), "other")
	}
	for s, v := range stages {
		g(descNodes, float64(v), s)
	}
	for l, v := range live {
		g(descLiveness, float64(v), l)
	}
	for _, s := range ov.Services {
		v := 0.0
		if s.Up {
			v = 1
		}
		g(descServiceUp, v, s.Name)
	}
}
