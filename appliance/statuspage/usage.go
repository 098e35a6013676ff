package statuspage

import (
	"encoding/json"
	"fmt"
)

// What the store holds for each node and what could not be saved, from
// the services that own it: nfsd counts what each node's root uses,
// dhcpd reports a leases.json it cannot write.

// nfsdStatus is the part of nfsd's /status (nfs.Status) the page uses.
type nfsdStatus struct {
	Exports []struct {
		Node        string
		Used, Quota int64
	}
	ReserveBytes, FreeBytes int64
}

// dhcpdStatus is the part of dhcpd's /status the page uses.
type dhcpdStatus struct {
	LeaseSaveError string
}

// addStoreState fills in each node's use of the store and lists, as
// problems, a full store and state that could not be saved.
func addStoreState(ov *Overview) {
	for _, s := range ov.Services {
		if !s.Up {
			continue
		}
		switch s.Name {
		case "nfsd":
			var st nfsdStatus
			if json.Unmarshal(s.Status, &st) != nil {
				continue
			}
			for _, e := range st.Exports {
				for i := range ov.Nodes {
					if ov.Nodes[i].Serial == e.Node {
						ov.Nodes[i].RootUsed, ov.Nodes[i].RootQuota = e.Used, e.Quota
					}
				}
			}
			if st.ReserveBytes > 0 && st.FreeBytes >= 0 && st.FreeBytes < st.ReserveBytes {
				ov.Problems = append(ov.Problems, fmt.Sprintf("the store is full: %s free, nfsd keeps %s for the head node and refuses node writes (No space left on device); remove files on the nodes or reset one", bytesHuman(st.FreeBytes), bytesHuman(st.ReserveBytes)))
			}
		case "dhcpd":
			var st dhcpdStatus
			if json.Unmarshal(s.Status, &st) == nil && st.LeaseSaveError != "" {
				ov.Problems = append(ov.Problems, "dhcpd cannot save leases.json: "+st.LeaseSaveError+"; renewals are answered from memory, new leases are refused until the store has space")
			}
		}
	}
}

// bytesHuman prints n in the units of ParseSize ("1.5G").
func bytesHuman(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%dB", n)
	}
	f, suffix := float64(n), ""
	for _, s := range []string{"K", "M", "G", "T"} {
		if f < unit {
			break
		}
		f, suffix = f/unit, s
	}
	return fmt.Sprintf("%.1f%s", f, suffix)
}
