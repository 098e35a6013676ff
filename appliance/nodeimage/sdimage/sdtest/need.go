package sdtest

import (
	"testing"

	"github.com/ociboot/ociboot/appliance/testenv"
)

// Need stops t unless Build's tools are installed and, with root true, the
// test runs as root (needed to make a tree with other owners, device nodes
// and security.capability). Package testenv decides: skip, or fail in CI.
func Need(t testing.TB, root bool) {
	t.Helper()
	for _, tool := range Tools {
		if _, err := testenv.LookPath(tool); err != nil {
			testenv.Need(t, "%s not found: install the Debian packages fdisk dosfstools mtools e2fsprogs", tool)
		}
	}
	if root {
		testenv.NeedRoot(t, "builds a tree with other owners, device nodes and file capabilities")
	}
}
