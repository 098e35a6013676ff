package nodeimage

import (
	"context"
	"debug/elf"
	"path/filepath"
	"strings"
	"testing"
)

// TestBuildNodeProgram: the node's own program is cross-compiled for the
// image's architecture, statically.
func TestBuildNodeProgram(t *testing.T) {
	out := filepath.Join(t.TempDir(), "ociboot-nbd")
	if err := buildNodeProgram(context.Background(), "arm64", out); err != nil {
		t.Fatal(err)
	}
	f, err := elf.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if got, want := f.Machine, elf.EM_AARCH64; got != want {
		t.Errorf("machine: got %v, want %v", got, want)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Errorf("the program has an interpreter (dynamically linked); the image must not depend on a libc version")
		}
	}
	if err := buildNodeProgram(context.Background(), "m68k", out); err == nil || !strings.Contains(err.Error(), "m68k") {
		t.Errorf("an architecture without a Go port: got %v", err)
	}
}
