// Binary check validates config.json with the code the services load it
// with, prints warnings (a mis-cased Netboot key, no DefaultImage, images
// that do not resolve) and exits non-zero when a service would refuse the
// config. make check runs it; make image, root and update run it first.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"

	"github.com/ociboot/ociboot/appliance/config"
)

func main() {
	online := flag.Bool("online", true, "ask each image's registry whether the reference resolves (warnings only)")
	flag.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: check [-online=false] [config.json]")
		flag.PrintDefaults()
	}
	flag.Parse()
	path := "config.json"
	if flag.NArg() > 0 {
		path = flag.Arg(0)
	}
	if err := config.CheckFile(context.Background(), path, *online, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, err)
		fmt.Fprintln(os.Stderr, "check: config.json is not valid; fix the lines above (the services would refuse to start)")
		os.Exit(1)
	}
}
