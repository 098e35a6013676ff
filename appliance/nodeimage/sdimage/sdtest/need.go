package sdtest

import (
	"os"
	"os/exec"
	"testing"
)

// Need stops t unless Build's tools are installed and, with root true, the
// test runs as root (needed to make a tree with other owners, device nodes
// and security.capability). Outside CI it skips; with CI=true a missing
// tool or privilege fails the test.
func Need(t testing.TB, root bool) {
	t.Helper()
	stop := t.Skipf
	if os.Getenv("CI") == "true" {
		stop = t.Fatalf
	}
	for _, tool := range Tools {
		if _, err := exec.LookPath(tool); err != nil {
			stop("%s not found: install the Debian packages fdisk dosfstools mtools e2fsprogs", tool)
			return
		}
	}
	if root && os.Geteuid() != 0 {
		stop("needs root to build a tree with other owners, device nodes and file capabilities")
	}
}
