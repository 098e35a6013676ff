package e2e

import (
	"flag"
	"os"
	"regexp"
	"strings"
	"testing"
)

// TestMain starts the node image's build (about ten minutes) before the
// first test when a node OS test is going to run, so that it overlaps the
// tests before them instead of adding to the package's time. Tests run in
// the order of their files' names, and nodeos_test.go sorts after every
// test that needs no node image (e2e_pi_test.go is named to come before
// it): those run while the image builds.
func TestMain(m *testing.M) {
	flag.Parse()
	if !testing.Short() && os.Getuid() == 0 && runsNodeOS(flag.Lookup("test.run").Value.String()) {
		StartNodeOSImage()
	}
	code := m.Run()
	RemoveNodeOSImage()
	os.Exit(code)
}

// runsNodeOS says whether a -run pattern selects a node OS test.
func runsNodeOS(run string) bool {
	if run == "" {
		return true
	}
	re, err := regexp.Compile(strings.Split(run, "/")[0])
	if err != nil {
		return false
	}
	for _, name := range []string{"TestNodeOSThreeNodes", "TestNodeOSImportedSDCard"} {
		if re.MatchString(name) {
			return true
		}
	}
	return false
}
