package nodeimage

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"io"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/layout"

	"github.com/ociboot/ociboot/appliance/testenv"
)

func TestWriteLayout(t *testing.T) {
	in := tarOf(t, []entry{
		{name: "./", typ: tar.TypeDir},
		{name: "./etc/", typ: tar.TypeDir},
		{name: "./etc/machine-id", data: "0123456789abcdef0123456789abcdef\n"},
		{name: "./boot/", typ: tar.TypeDir},
		{name: "./boot/firmware/", typ: tar.TypeDir},
		{name: "./boot/firmware/start4.elf", data: "firmware"},
	})
	epoch := time.Date(2025, 6, 1, 0, 0, 0, 0, time.UTC)
	opts := ImageOptions{Arch: "arm64", Created: epoch, Labels: map[string]string{"a": "b"}}
	dir1, dir2 := filepath.Join(t.TempDir(), "one"), filepath.Join(t.TempDir(), "two")
	d1, err := WriteLayout(dir1, bytes.NewReader(in), opts)
	if err != nil {
		t.Fatal(err)
	}
	d2, err := WriteLayout(dir2, bytes.NewReader(in), opts)
	if err != nil {
		t.Fatal(err)
	}
	if d1 != d2 {
		t.Errorf("same input, different digests: %s and %s", d1, d2)
	}
	if _, err := WriteLayout(dir1, bytes.NewReader(in), opts); err == nil {
		t.Errorf("WriteLayout into a non-empty directory succeeded")
	}
	p, err := layout.FromPath(dir1)
	if err != nil {
		t.Fatal(err)
	}
	img, err := p.Image(d1)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cf.Architecture != "arm64" || cf.OS != "linux" || !cf.Created.Time.Equal(epoch) || cf.Config.Labels["a"] != "b" {
		t.Errorf("config: got %s/%s created %v labels %v", cf.OS, cf.Architecture, cf.Created, cf.Config.Labels)
	}
	layers, _ := img.Layers()
	if len(layers) != 1 {
		t.Fatalf("got %d layers, want 1", len(layers))
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(rc)
	got := readTar(t, b)
	if got["./etc/machine-id"].data != "" || got["./boot/firmware/start4.elf"].data != "firmware" {
		t.Errorf("layer: got %+v", got)
	}
	// skopeo reads it as any OCI layout (the documented push).
	testenv.NeedTool(t, "skopeo", "skopeo")
	out, err := exec.Command("skopeo", "inspect", "--raw", "oci:"+dir1).Output()
	if err != nil {
		t.Fatalf("skopeo inspect: %v", err)
	}
	var m struct{ Layers []struct{ MediaType string } }
	if err := json.Unmarshal(out, &m); err != nil || len(m.Layers) != 1 {
		t.Errorf("skopeo inspect: %s (%v)", out, err)
	}
}
