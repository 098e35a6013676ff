package testenv

import (
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
)

// InTmpfs gives the calling test a real, small file system to fill: it runs
// the test again in a mount namespace of its own with a tmpfs of sizeMiB
// mounted, so a full disk is real (ENOSPC from the kernel) and nothing
// outside the test sees it. In that run it returns the tmpfs's path. In
// the calling run it waits, fails t if that run failed, and returns "" with
// the run's output; the test then returns.
func InTmpfs(t *testing.T, sizeMiB int) (dir, out string) {
	t.Helper()
	if d := os.Getenv("OCIBOOT_TMPFS_DIR"); d != "" && os.Getenv("OCIBOOT_TMPFS_TEST") == t.Name() {
		return d, ""
	}
	NeedRoot(t, "a tmpfs in a mount namespace")
	NeedTool(t, "unshare", "util-linux")
	cmd := exec.Command("unshare", "-m", "sh", "-c",
		fmt.Sprintf(`mount -t tmpfs -o size=%dm tmpfs "$OCIBOOT_TMPFS_DIR" && exec "$0" -test.run '^%s$' -test.v`, sizeMiB, regexp.QuoteMeta(t.Name())),
		os.Args[0])
	cmd.Env = append(os.Environ(), "OCIBOOT_TMPFS_DIR="+t.TempDir(), "OCIBOOT_TMPFS_TEST="+t.Name())
	b, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(b), "--- PASS") {
		t.Fatalf("%v: %v\n%s", cmd.Args, err, b)
	}
	return "", string(b)
}
