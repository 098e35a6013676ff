package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// A bad input gets one line that names it and what is wrong, exit status
// 1, and leaves no output behind; an existing layout stays as it was.
func TestImportBadInput(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "nodeimage")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	text := filepath.Join(dir, "notes.img")
	os.WriteFile(text, []byte("hello, this is not a disk image\n"), 0o644)
	zeros := filepath.Join(dir, "zeros.img")
	os.WriteFile(zeros, make([]byte, 1<<20), 0o644)
	gz := filepath.Join(dir, "x.img.gz")
	os.WriteFile(gz, []byte{0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3}, 0o644)

	out := filepath.Join(dir, "layout")
	os.MkdirAll(out, 0o755)
	os.WriteFile(filepath.Join(out, "oci-layout"), []byte(`{"imageLayoutVersion":"1.0.0"}`), 0o644)
	for _, tc := range []struct{ src, want string }{
		{text, "not a disk image"},
		{zeros, "no 55 AA boot signature"},
		{gz, "gzip"},
		{filepath.Join(dir, "missing.img"), "no such file"},
	} {
		cmd := exec.Command(bin, "import", "-o", out, tc.src)
		b, err := cmd.CombinedOutput()
		msg := strings.TrimSpace(string(b))
		if err == nil {
			t.Errorf("import %s: succeeded", tc.src)
			continue
		}
		if cmd.ProcessState.ExitCode() != 1 || strings.Count(msg, "\n") != 0 || !strings.Contains(msg, tc.src) || !strings.Contains(strings.ToLower(msg), strings.ToLower(tc.want)) {
			t.Errorf("import %s: exit %d, got %q; want one line naming the file and %q", tc.src, cmd.ProcessState.ExitCode(), msg, tc.want)
		}
	}
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".layout") {
			t.Errorf("left behind: %s", e.Name())
		}
	}
	if b, err := os.ReadFile(filepath.Join(out, "oci-layout")); err != nil || !strings.Contains(string(b), "imageLayoutVersion") {
		t.Errorf("the existing layout was touched: %q, %v", b, err)
	}
}
