package ocicache

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"

	"github.com/ociboot/ociboot/appliance/ocicache/ocitest"
)

// TestDecompressByMagic: layers are recognised by content, not media type.
func TestDecompressByMagic(t *testing.T) {
	plain := ocitest.Tar(t, ocitest.File("a", 0o644, string(ocitest.Random(3, 100000))))
	var gz, zs bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(plain)
	zw.Close()
	ze, _ := zstd.NewWriter(&zs)
	ze.Write(plain)
	ze.Close()
	for name, data := range map[string][]byte{"tar": plain, "gzip": gz.Bytes(), "zstd": zs.Bytes()} {
		p := filepath.Join(t.TempDir(), name)
		os.WriteFile(p, data, 0o644)
		f, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		r, closeFn, err := decompress(f)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		got, err := io.ReadAll(r)
		closeFn()
		f.Close()
		if err != nil || !bytes.Equal(got, plain) {
			t.Errorf("%s: got %d bytes, %v; want the %d-byte tar", name, len(got), err, len(plain))
		}
	}
}
