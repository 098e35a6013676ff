package webauth

import (
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

func TestCheck(t *testing.T) {
	dir := t.TempDir()
	pwFile := filepath.Join(dir, "gokr-pw.txt")
	os.WriteFile(pwFile, []byte("s3cret\n"), 0o600)
	g := &Guard{Files: []string{filepath.Join(dir, "missing"), pwFile}}
	h := g.Protect(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "done") }))
	for _, tt := range []struct {
		name           string
		method         string
		user, pass     string
		header         map[string]string
		remote         string
		want           int
		wantBodySubstr string
	}{
		{name: "GET needs nothing", method: "GET", want: 200},
		{name: "POST without password", method: "POST", want: 401, wantBodySubstr: "curl -u gokrazy:PASSWORD"},
		{name: "POST wrong password", method: "POST", user: "gokrazy", pass: "nope", want: 401},
		{name: "POST wrong user", method: "POST", user: "root", pass: "s3cret", want: 401},
		{name: "POST from curl", method: "POST", user: "gokrazy", pass: "s3cret", want: 200},
		{name: "POST same origin", method: "POST", user: "gokrazy", pass: "s3cret", header: map[string]string{"Origin": "http://head:8080", "Sec-Fetch-Site": "same-origin"}, want: 200},
		{name: "POST cross-site", method: "POST", user: "gokrazy", pass: "s3cret", header: map[string]string{"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"}, want: 403, wantBodySubstr: "another site"},
		{name: "POST same-site other port", method: "POST", user: "gokrazy", pass: "s3cret", header: map[string]string{"Sec-Fetch-Site": "same-site"}, want: 403},
		{name: "POST foreign Origin only", method: "POST", user: "gokrazy", pass: "s3cret", header: map[string]string{"Origin": "http://head:9999"}, want: 403, wantBodySubstr: "cross-site"},
		{name: "POST null Origin", method: "POST", user: "gokrazy", pass: "s3cret", header: map[string]string{"Origin": "null"}, want: 403},
		{name: "DELETE is guarded too", method: "DELETE", want: 401},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := httptest.NewRequest(tt.method, "http://head:8080/api/reset", nil)
			if tt.user != "" {
				r.SetBasicAuth(tt.user, tt.pass)
			}
			for k, v := range tt.header {
				r.Header.Set(k, v)
			}
			if tt.remote != "" {
				r.RemoteAddr = tt.remote
			}
			w := httptest.NewRecorder()
			h.ServeHTTP(w, r)
			if got := w.Code; got != tt.want {
				t.Errorf("status: got %d, want %d (%s)", got, tt.want, w.Body)
			}
			if !strings.Contains(w.Body.String(), tt.wantBodySubstr) {
				t.Errorf("body: got %q, want it to contain %q", w.Body, tt.wantBodySubstr)
			}
			if tt.want == 401 && w.Header().Get("WWW-Authenticate") != `Basic realm="gokrazy"` {
				t.Errorf("401 without the gokrazy Basic challenge: %q", w.Header().Get("WWW-Authenticate"))
			}
		})
	}
}

func TestNoPasswordLoopbackOnly(t *testing.T) {
	g := &Guard{Files: []string{filepath.Join(t.TempDir(), "none")}}
	h := g.Protect(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	for _, tt := range []struct {
		remote string
		want   int
	}{
		{"127.0.0.1:4000", 200},
		{"[::1]:4000", 200},
		{"192.0.2.7:4000", 403},
	} {
		r := httptest.NewRequest("POST", "http://head:8080/api/reset", nil)
		r.RemoteAddr = tt.remote
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		if got := w.Code; got != tt.want {
			t.Errorf("no password, POST from %s: got %d, want %d (%s)", tt.remote, got, tt.want, w.Body)
		}
	}
}

func TestLoopbackOnly(t *testing.T) {
	h := LoopbackOnly(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	for _, tt := range []struct {
		remote string
		want   int
	}{{"127.0.0.1:1", 200}, {"[::ffff:127.0.0.1]:1", 200}, {"10.0.0.2:1", 403}} {
		r := httptest.NewRequest("GET", "/debug/pprof/", nil)
		r.RemoteAddr = tt.remote
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		if got := w.Code; got != tt.want {
			t.Errorf("pprof from %s: got %d, want %d", tt.remote, got, tt.want)
		}
	}
}

// FuzzCheck: any Origin, Sec-Fetch-Site and Authorization header is
// answered without a panic, and nothing passes without the password.
func FuzzCheck(f *testing.F) {
	f.Add("http://head:8080", "same-origin", "Basic Z29rcmF6eTpzM2NyZXQ=")
	f.Add("null", "cross-site", "Basic !!!")
	f.Add("", "", "Bearer x")
	pwFile := filepath.Join(f.TempDir(), "pw")
	os.WriteFile(pwFile, []byte("s3cret"), 0o600)
	g := &Guard{Files: []string{pwFile}}
	f.Fuzz(func(t *testing.T, origin, site, auth string) {
		r := httptest.NewRequest("POST", "http://head:8080/api/reset", nil)
		r.Header.Set("Origin", origin)
		r.Header.Set("Sec-Fetch-Site", site)
		r.Header.Set("Authorization", auth)
		code, _ := g.Check(r)
		if code == 0 {
			if u, p, ok := r.BasicAuth(); !ok || u != User || p != "s3cret" {
				t.Errorf("accepted without the password: %q", auth)
			}
		}
	})
}

func TestNodeOnly(t *testing.T) {
	node := netip.MustParseAddr("10.42.0.11")
	h := NodeOnly(func(a netip.Addr) (string, bool) { return "abcd0001", a == node }, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusRequestEntityTooLarge)
			return
		}
		io.WriteString(w, NodeKey(r)+" "+strconv.Itoa(len(b)))
	}))
	for _, tt := range []struct {
		name   string
		remote string
		header map[string]string
		body   int
		want   int
		resp   string
	}{
		{name: "the node", remote: "10.42.0.11:40000", want: 200, resp: "abcd0001 0"},
		{name: "the node, v4-mapped", remote: "[::ffff:10.42.0.11]:40000", want: 200, resp: "abcd0001 0"},
		{name: "the node with a report", remote: "10.42.0.11:40000", body: 200, want: 200, resp: "abcd0001 200"},
		{name: "another address", remote: "10.42.0.12:40000", want: 403, resp: "10.42.0.12 is not a node's own address"},
		{name: "loopback is no node", remote: "127.0.0.1:40000", want: 403},
		{name: "a browser on another site", remote: "10.42.0.11:40000", header: map[string]string{"Sec-Fetch-Site": "cross-site"}, want: 403, resp: "another site"},
		{name: "a foreign Origin", remote: "10.42.0.11:40000", header: map[string]string{"Origin": "http://evil.example"}, want: 403},
		{name: "a body past the cap", remote: "10.42.0.11:40000", body: MaxNodeBody + 1, want: 413},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := httptest.NewRequest("POST", "http://10.42.0.1:9809/install", strings.NewReader(strings.Repeat("x", tt.body)))
			r.RemoteAddr = tt.remote
			for k, v := range tt.header {
				r.Header.Set(k, v)
			}
			w := httptest.NewRecorder()
			h.ServeHTTP(w, r)
			if got := w.Code; got != tt.want {
				t.Errorf("status: got %d, want %d (%s)", got, tt.want, w.Body)
			}
			if !strings.Contains(w.Body.String(), tt.resp) {
				t.Errorf("body: got %q, want it to contain %q", w.Body, tt.resp)
			}
		})
	}
	if got := NodeKey(httptest.NewRequest("GET", "/", nil)); got != "" {
		t.Errorf("NodeKey of a request that did not pass NodeOnly: %q", got)
	}
}
