package benchtmp

import (
	"context"
	"io"
	"os"
	"testing"
	"time"

	"github.com/ociboot/ociboot/appliance/nodeimage/sdimage"
	"github.com/ociboot/ociboot/appliance/nodeimage/sdimage/sdtest"
)

type cw struct{ n int64 }

func (c *cw) Write(p []byte) (int, error) { c.n += int64(len(p)); return len(p), nil }

func TestBig(t *testing.T) {
	img := "/tmp/sdbig/sd.img"
	if _, err := os.Stat(img); err != nil {
		s := time.Now()
		if err := sdtest.Build("/tmp/sdbig/tree", img); err != nil {
			t.Fatal(err)
		}
		t.Logf("build %v", time.Since(s))
	}
	for _, f := range []string{img, img + ".xz"} {
		if _, err := os.Stat(f); err != nil {
			continue
		}
		s := time.Now()
		c := &cw{}
		if err := sdimage.WriteTar(context.Background(), f, io.Writer(c)); err != nil {
			t.Fatal(err)
		}
		t.Logf("%s: %v, %d bytes tar", f, time.Since(s), c.n)
	}
}
