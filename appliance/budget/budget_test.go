package budget

import (
	"bytes"
	"errors"
	"log/slog"
	"os"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestMayGrow(t *testing.T) {
	f, err := os.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fd := int(f.Fd())
	free, err := Free(fd)
	if err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	b := &Budget{Log: slog.New(slog.NewTextHandler(&logs, nil)), Writes: "root", NoSpace: "E_NOSPC", OverQuota: "E_DQUOT",
		Quota: func(key string) int64 { return map[string]int64{"q": 10 << 20}[key] }}
	called := false
	use := func() Use { called = true; return Use{Root: 6 << 20, Disk: 3 << 20} }
	for _, tt := range []struct {
		key     string
		need    int64
		reserve int64
		want    error
	}{
		{"q", 1 << 20, 0, nil},             // 9 + 1 MiB: at the quota, not past it
		{"q", 1<<20 + 1, 0, unix.EDQUOT},   // past it
		{"q", 1<<20 + 1, 0, unix.EDQUOT},   // again: no second log line
		{"none", 1 << 40, 0, nil},          // no quota
		{"none", 1, free + 1, unix.ENOSPC}, // into the reserve
	} {
		b.Reserve = tt.reserve
		called = false
		err := b.MayGrow(tt.key, fd, tt.need, use)
		if tt.want == nil && err != nil || tt.want != nil && !errors.Is(err, tt.want) {
			t.Errorf("MayGrow(%s, %d) with reserve %d: got %v, want %v", tt.key, tt.need, tt.reserve, err, tt.want)
		}
		if got, want := called, tt.key == "q"; got != want {
			t.Errorf("MayGrow(%s): use called %v, want %v (only for nodes with a quota)", tt.key, got, want)
		}
	}
	lines := strings.Split(strings.TrimSpace(logs.String()), "\n")
	if got, want := len(lines), 2; got != want {
		t.Fatalf("log lines: got %d, want %d (one per node and reason a minute):\n%s", got, want, logs.String())
	}
	for i, want := range []string{"E_DQUOT: Disk quota exceeded", "E_NOSPC: No space left on device"} {
		if !strings.Contains(lines[i], want) {
			t.Errorf("log line %d lacks %q: %s", i, want, lines[i])
		}
	}
	if !strings.Contains(lines[0], "used_mib=9 quota_mib=10 root_mib=6 disk_mib=3") || !strings.Contains(lines[0], "NBD disk") {
		t.Errorf("quota log line lacks the node's use: %s", lines[0])
	}
	var nilBudget *Budget
	if err := nilBudget.MayGrow("q", fd, 1<<50, use); err != nil {
		t.Errorf("nil Budget: %v", err)
	}
}
