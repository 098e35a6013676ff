package nodeimage

import (
	"archive/tar"
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

type entry struct {
	name, data string
	typ        byte
	link       string
}

func tarOf(t *testing.T, es []entry) []byte {
	t.Helper()
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for _, e := range es {
		typ := e.typ
		if typ == 0 {
			typ = tar.TypeReg
		}
		h := &tar.Header{Name: e.name, Typeflag: typ, Mode: 0o644, Linkname: e.link, Size: int64(len(e.data)),
			PAXRecords: map[string]string{"SCHILY.xattr.user.keep": "1"}}
		if typ != tar.TypeReg {
			h.Size = 0
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if typ == tar.TypeReg {
			tw.Write([]byte(e.data))
		}
	}
	tw.Close()
	return b.Bytes()
}

func readTar(t *testing.T, b []byte) map[string]entry {
	t.Helper()
	out := map[string]entry{}
	tr := tar.NewReader(bytes.NewReader(b))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		data, _ := io.ReadAll(tr)
		if h.PAXRecords["SCHILY.xattr.user.keep"] != "1" {
			t.Errorf("%s lost its xattr", h.Name)
		}
		out[h.Name] = entry{name: h.Name, data: string(data), typ: h.Typeflag, link: h.Linkname}
	}
}

func TestSanitize(t *testing.T) {
	fstab := "# <file system> <mount point> <type> <options> <dump> <pass>\n" +
		"proc            /proc           proc    defaults          0       0\n" +
		"PARTUUID=6c586e13-01  /boot/firmware  vfat    defaults          0       2\n" +
		"PARTUUID=6c586e13-02  /               ext4    defaults,noatime  0       1\n" +
		"LABEL=writable / ext4 discard,errors=remount-ro 0 1\n" +
		"/dev/mmcblk0p3 none swap sw 0 0\n" +
		"tmpfs /tmp tmpfs defaults 0 0\n" +
		"UUID=1234 /data ext4 defaults 0 2\n"
	in := tarOf(t, []entry{
		{name: "./", typ: tar.TypeDir},
		{name: "./etc/", typ: tar.TypeDir},
		{name: "./etc/fstab", data: fstab},
		{name: "./etc/machine-id", data: "0123456789abcdef0123456789abcdef\n"},
		{name: "./etc/ssh/", typ: tar.TypeDir},
		{name: "./etc/ssh/sshd_config", data: "PermitRootLogin prohibit-password\n"},
		{name: "./etc/ssh/ssh_host_ed25519_key", data: "secret"},
		{name: "./etc/ssh/ssh_host_ed25519_key.pub", data: "public"},
		{name: "etc/ssh/ssh_host_rsa_key", data: "secret"},
		{name: "./usr/bin/ping", data: "ELF"},
		{name: "./usr/bin/ping2", typ: tar.TypeLink, link: "./usr/bin/ping"},
	})
	var logged []string
	var out bytes.Buffer
	if err := Sanitize(bytes.NewReader(in), &out, func(f string, a ...any) { logged = append(logged, f) }); err != nil {
		t.Fatal(err)
	}
	got := readTar(t, out.Bytes())
	for _, gone := range []string{"./etc/ssh/ssh_host_ed25519_key", "./etc/ssh/ssh_host_ed25519_key.pub", "etc/ssh/ssh_host_rsa_key"} {
		if _, ok := got[gone]; ok {
			t.Errorf("%s kept", gone)
		}
	}
	for _, kept := range []string{"./", "./etc/ssh/sshd_config", "./usr/bin/ping", "./usr/bin/ping2"} {
		if _, ok := got[kept]; !ok {
			t.Errorf("%s dropped", kept)
		}
	}
	if got["./usr/bin/ping2"].link != "./usr/bin/ping" {
		t.Errorf("hard link: got %+v", got["./usr/bin/ping2"])
	}
	if e := got["./etc/machine-id"]; e.data != "" || e.typ != tar.TypeReg {
		t.Errorf("machine-id: got %+v, want an empty file", e)
	}
	wantFstab := "# <file system> <mount point> <type> <options> <dump> <pass>\n" +
		"proc            /proc           proc    defaults          0       0\n" +
		fstabNote + "PARTUUID=6c586e13-01  /boot/firmware  vfat    defaults          0       2\n" +
		fstabNote + "PARTUUID=6c586e13-02  /               ext4    defaults,noatime  0       1\n" +
		fstabNote + "LABEL=writable / ext4 discard,errors=remount-ro 0 1\n" +
		fstabNote + "/dev/mmcblk0p3 none swap sw 0 0\n" +
		"tmpfs /tmp tmpfs defaults 0 0\n" +
		fstabNote + "UUID=1234 /data ext4 defaults 0 2\n"
	if got := got["./etc/fstab"].data; got != wantFstab {
		t.Errorf("fstab:\ngot\n%s\nwant\n%s", got, wantFstab)
	}
	if len(logged) != 9 { // 3 keys, machine-id, 5 fstab lines
		t.Errorf("logged %d changes, want 9: %q", len(logged), logged)
	}
	// Deterministic: the same input gives the same bytes.
	var again bytes.Buffer
	Sanitize(bytes.NewReader(in), &again, nil)
	if !bytes.Equal(out.Bytes(), again.Bytes()) {
		t.Errorf("two runs over the same tar differ")
	}
}

func TestSanitizeBadTar(t *testing.T) {
	in := tarOf(t, []entry{{name: "etc/fstab", data: strings.Repeat("x", 5000)}})
	err := Sanitize(bytes.NewReader(in[:1500]), io.Discard, nil)
	if err == nil || !strings.Contains(err.Error(), "fstab") && !strings.Contains(err.Error(), "tar") {
		t.Errorf("truncated tar: got %v, want an error naming the tar or the entry", err)
	}
}

func TestHostMirrors(t *testing.T) {
	dir := t.TempDir()
	write := func(name, s string) {
		t.Helper()
		if err := osWriteFile(dir+"/"+name, s); err != nil {
			t.Fatal(err)
		}
	}
	write("sources.list", "# none\n")
	write("sources.list.d/debian.sources", "Types: deb\n# comment\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n"+
		"Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\nComponents: main\n\n"+
		"Types: deb-src\nURIs: http://src.example/debian\nSuites: bookworm\nComponents: main\n")
	write("sources.list.d/other.list", "deb [arch=amd64 signed-by=/x.gpg] https://vendor.example/apt stable main\n")
	m, err := HostMirrors(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := m, (Mirrors{Archive: "http://mirror.example/debian", Security: "http://mirror.example/debian-security"}); got != want {
		t.Errorf("got %+v, want %+v", got, want)
	}
	dir2 := t.TempDir()
	dir = dir2
	write("sources.list", "deb http://one.example/debian bookworm main contrib\ndeb http://one.example/security bookworm-security main\n")
	if m, err := HostMirrors(dir2); err != nil || m.Archive != "http://one.example/debian" || m.Security != "http://one.example/security" {
		t.Errorf("one-line sources: got %+v, %v", m, err)
	}
	dir = t.TempDir()
	write("sources.list", "deb http://archive.ubuntu.example/ubuntu noble main\n")
	if _, err := HostMirrors(dir); err == nil || !strings.Contains(err.Error(), "-mirror") {
		t.Errorf("no Debian archive: got %v, want advice to pass -mirror", err)
	}
}

func osWriteFile(p, s string) error {
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	return os.WriteFile(p, []byte(s), 0o644)
}
