package cluster_bench

import (
	"os"
	"testing"

	"github.com/ociboot/ociboot/tests/e2e"
)

// TestMain deletes the node image NodeOSImage built when
// OCIBOOT_NODE_IMAGE names none, as tests/e2e does: each benchmark run
// would otherwise leave one in the temporary directory.
func TestMain(m *testing.M) {
	code := m.Run()
	e2e.RemoveNodeOSImage()
	os.Exit(code)
}
