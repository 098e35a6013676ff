package nodes

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/ociboot/ociboot/appliance/config"
	"github.com/ociboot/ociboot/appliance/images"
	"github.com/ociboot/ociboot/appliance/store"
)

func TestBootOf(t *testing.T) {
	st := openStore(t)
	d1 := "sha256:1111111111111111111111111111111111111111111111111111111111111111"
	d2 := "sha256:2222222222222222222222222222222222222222222222222222222222222222"
	images.SaveIndex(st, images.Index{Entries: []images.Entry{{Ref: "r/node:1", Platform: "linux/arm64", Digest: d1, BootDir: "boot/firmware", Kernel: "kernel8.img"}}})
	cfg := func(policy string) *config.Config {
		c, err := config.Parse([]byte(`{"Netboot": {"DefaultImage": "r/node:1", "Reimage": "` + policy + `"}}`))
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	manual, onBoot := cfg("manual"), cfg("on-boot")
	img1, _ := images.Root(st, d1)
	img2, _ := images.Root(st, d2)
	nodeRoot := st.Path(store.NodesDir, "abcd0001", RootDir)

	check := func(name string, b Boot, err error, fromRoot, changed, reimage bool, base string) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if b.FromRoot != fromRoot || b.Changed != changed || b.Reimage != reimage || b.Base != base || b.BootDir != "boot/firmware" {
			t.Errorf("%s: got %+v; want FromRoot %v Changed %v Reimage %v Base %s BootDir boot/firmware", name, b, fromRoot, changed, reimage, base)
		}
	}
	b, err := BootOf(manual, st, "abcd0001")
	check("before the root exists", b, err, false, false, false, img1)

	os.MkdirAll(filepath.Join(nodeRoot, "boot", "firmware"), 0o755)
	store.WriteJSON(st.Path(store.NodesDir, "abcd0001", ViewFile), map[string]string{"Digest": d1})
	b, err = BootOf(onBoot, st, "abcd0001")
	check("root of the configured image", b, err, true, false, false, nodeRoot)

	// The tag moves on to d2.
	images.SaveIndex(st, images.Index{Entries: []images.Entry{{Ref: "r/node:1", Platform: "linux/arm64", Digest: d2, BootDir: "boot/firmware"}}})
	b, err = BootOf(manual, st, "abcd0001")
	check("image changed, manual", b, err, true, true, false, nodeRoot)
	b, err = BootOf(onBoot, st, "abcd0001")
	check("image changed, on-boot", b, err, false, true, true, img2)

	// The root's boot directory went missing (not a directory).
	os.RemoveAll(filepath.Join(nodeRoot, "boot"))
	os.Symlink("/", filepath.Join(nodeRoot, "boot"))
	images.SaveIndex(st, images.Index{})
	if b, err := BootOf(manual, st, "abcd0001"); err == nil {
		t.Errorf("root without a boot directory: got %+v, want an error", b)
	}
}

// TestViewImagesKeepsThePreviousRoot: a root a reimage set aside links
// into its image, which GC must keep while it may be put back.
func TestViewImagesKeepsThePreviousRoot(t *testing.T) {
	st := openStore(t)
	d1 := "sha256:1111111111111111111111111111111111111111111111111111111111111111"
	d2 := "sha256:2222222222222222222222222222222222222222222222222222222222222222"
	os.MkdirAll(st.Path(store.NodesDir, "abcd0001", PreviousDir), 0o755)
	store.WriteJSON(st.Path(store.NodesDir, "abcd0001", ViewFile), map[string]string{"Digest": d2})
	store.WriteJSON(st.Path(store.NodesDir, "abcd0001", PreviousDir, ViewFile), map[string]string{"Digest": d1})
	got := ViewImages(st)
	if len(got) != 2 || got[0] != d1 || got[1] != d2 {
		t.Errorf("ViewImages = %v, want [%s %s]", got, d1, d2)
	}
}
