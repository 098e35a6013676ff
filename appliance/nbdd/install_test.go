package nbdd

import (
	"io"
	"log/slog"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"

	"github.com/ociboot/ociboot/appliance/config"
	"github.com/ociboot/ociboot/appliance/nodes"
	"github.com/ociboot/ociboot/appliance/store"
	"github.com/ociboot/ociboot/appliance/webauth"
)

func TestInstallReport(t *testing.T) {
	st, err := store.Open(t.TempDir(), store.Options{AllowTmpfs: true})
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Parse([]byte(`{"Netboot": {"Nodes": [
		{"Serial": "abcd0001", "IP": "10.42.0.11", "Install": {"Device": "/dev/nvme0n1"}},
		{"Serial": "abcd0002", "IP": "10.42.0.12", "Install": {"Device": "/dev/mmcblk0", "KeepNetboot": true}},
		{"Serial": "abcd0003", "IP": "10.42.0.13"}]}}`))
	if err != nil {
		t.Fatal(err)
	}
	identify := func(a netip.Addr) (string, bool) { return nodes.KeyByIP(cfg, st, a) }
	h := webauth.NodeOnly(identify, InstallHandler(func() *config.Config { return cfg }, st, slog.New(slog.NewTextHandler(io.Discard, nil))))
	post := func(from, body string) (int, string) {
		r := httptest.NewRequest("POST", "http://10.42.0.1:9809/install", strings.NewReader(body))
		r.RemoteAddr = from + ":40000"
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		return w.Code, w.Body.String()
	}
	for _, tt := range []struct {
		name, from, body string
		code             int
		resp             string
		key              string // whose state to check
		pending, local   bool
		saved            bool
	}{
		{"failure", "10.42.0.11", `{"Device": "/dev/nvme0n1", "OK": false, "Error": "sgdisk: /dev/nvme0n1:\nno such device"}`, 200, "keeps netbooting", "abcd0001", true, false, true},
		{"success", "10.42.0.11", `{"Device": "/dev/nvme0n1", "OK": true}`, 200, "no longer answers its netboot", "abcd0001", false, true, true},
		{"success, netboot kept", "10.42.0.12", `{"Device": "/dev/mmcblk0", "OK": true}`, 200, "KeepNetboot", "abcd0002", false, false, true},
		{"another device than configured", "10.42.0.12", `{"Device": "/dev/sda", "OK": true}`, 200, "installs again", "abcd0002", true, false, true},
		{"a node without Install", "10.42.0.13", `{"Device": "/dev/sda", "OK": true}`, 409, "has no Install", "abcd0003", false, false, false},
		{"not a node", "10.42.0.99", `{"Device": "/dev/nvme0n1", "OK": true}`, 403, "not a node's own address", "", false, false, false},
		{"not JSON", "10.42.0.11", `Device=/dev/nvme0n1`, 400, "install report", "", false, false, false},
		{"unknown field", "10.42.0.11", `{"Device": "/dev/nvme0n1", "OK": true, "Node": "abcd0002"}`, 400, "unknown field", "", false, false, false},
		{"no device", "10.42.0.11", `{"OK": true}`, 400, "no Device", "", false, false, false},
		{"not a device path", "10.42.0.11", `{"Device": "/etc/passwd", "OK": true}`, 400, "not a device path", "", false, false, false},
		{"too large", "10.42.0.11", `{"Device": "/dev/nvme0n1", "OK": false, "Error": "` + strings.Repeat("x", webauth.MaxNodeBody) + `"}`, 413, "larger than", "", false, false, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			code, body := post(tt.from, tt.body)
			if code != tt.code || !strings.Contains(body, tt.resp) {
				t.Errorf("got %d %q, want %d with %q", code, body, tt.code, tt.resp)
			}
			if tt.key == "" {
				return
			}
			s := nodes.InstallOf(cfg, st, tt.key)
			if s.Reported != tt.saved || s.Pending != tt.pending || s.Local != tt.local {
				t.Errorf("InstallOf(%s): reported %v pending %v local %v, want %v %v %v", tt.key, s.Reported, s.Pending, s.Local, tt.saved, tt.pending, tt.local)
			}
		})
	}
}

func TestParseReport(t *testing.T) {
	for _, tt := range []struct {
		in      string
		want    Report
		wantErr string
	}{
		{`{"Device": "/dev/nvme0n1", "OK": true, "Error": "ignored"}`, Report{Device: "/dev/nvme0n1", OK: true}, ""},
		{`{"Device": "/dev/nvme0n1", "Error": "a\nb\u0001c  "}`, Report{Device: "/dev/nvme0n1", Error: "a b c"}, ""},
		{`{"Device": "/dev/nvme0n1"}`, Report{Device: "/dev/nvme0n1", Error: "the installer gave no reason"}, ""},
		{`{"Device": "/dev/disk/by-id/nvme-Samsung_SSD_980_S64DNX0R"}`, Report{Device: "/dev/disk/by-id/nvme-Samsung_SSD_980_S64DNX0R", Error: "the installer gave no reason"}, ""},
		{`{"Device": "/dev/nvme0n1", "OK": true} {}`, Report{}, "more than one"},
		{`{"Device": "/dev/nvme 0n1", "OK": true}`, Report{}, "not a device path"},
		{`{"Device": "/dev/` + strings.Repeat("a", maxDevice) + `", "OK": true}`, Report{}, "not a device path"},
		{`{"Device": 7}`, Report{}, "cannot unmarshal"},
		{``, Report{}, "EOF"},
	} {
		got, err := ParseReport([]byte(tt.in))
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("ParseReport(%.40q): got %v, want an error with %q", tt.in, err, tt.wantErr)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("ParseReport(%.40q): got %+v, %v; want %+v", tt.in, got, err, tt.want)
		}
	}
	long, err := ParseReport([]byte(`{"Device": "/dev/sda", "Error": "` + strings.Repeat("é", maxError) + `"}`))
	if err != nil || len(long.Error) > maxError || !strings.HasSuffix(long.Error, "é") {
		t.Errorf("a long reason: %d bytes, err %v; want at most %d, cut between characters", len(long.Error), err, maxError)
	}
}

// FuzzParseReport: no input panics, and what is accepted is within the
// bounds the store and the status page rely on.
func FuzzParseReport(f *testing.F) {
	for _, s := range []string{`{"Device": "/dev/nvme0n1", "OK": true}`, `{"Device": "/dev/sda", "OK": false, "Error": "x\ny"}`, `{}`, `[]`, `{"Device": "/dev/\u0000"}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := ParseReport(b)
		if err != nil {
			return
		}
		if !strings.HasPrefix(r.Device, "/dev/") || len(r.Device) > maxDevice || len(r.Error) > maxError || strings.ContainsAny(r.Error, "\n\r\x00") {
			t.Errorf("accepted out of bounds: %+v", r)
		}
		if !r.OK && r.Error == "" || r.OK && r.Error != "" {
			t.Errorf("OK and Error disagree: %+v", r)
		}
	})
}
