package sdimage_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/ociboot/ociboot/appliance/nodeimage/sdimage"
	"github.com/ociboot/ociboot/appliance/nodeimage/sdimage/sdtest"
)

// BenchmarkWriteTar reads a 256 MiB root of 4096 files in 64 dirs.
func BenchmarkWriteTar(b *testing.B) {
	sdtest.Need(b, false)
	dir := b.TempDir()
	tree := filepath.Join(dir, "tree")
	data := make([]byte, 64<<10)
	for i := range data {
		data[i] = byte(i * 31)
	}
	for i := 0; i < 4096; i++ {
		p := filepath.Join(tree, fmt.Sprintf("d%02d/f%04d", i%64, i))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			b.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o644); err != nil {
			b.Fatal(err)
		}
	}
	img := filepath.Join(dir, "sd.img")
	if err := sdtest.Build(tree, img); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(4096 * 64 << 10)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := (&sdimage.Importer{Log: slog.New(slog.DiscardHandler)}).WriteTar(context.Background(), img, io.Discard); err != nil {
			b.Fatal(err)
		}
	}
}
