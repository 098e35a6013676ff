package ocicache

import (
	"strings"
	"testing"
)

// FuzzParseRoute feeds request paths as a /v2/ client could send them.
func FuzzParseRoute(f *testing.F) {
	for _, s := range []string{"/v2/", "/v2", "/v2/a/b/manifests/latest", "/v2/a/manifests/sha256:" + strings.Repeat("a", 64),
		"/v2/a/blobs/sha256:" + strings.Repeat("0", 64), "/v2/x/tags/list", "/v2/../manifests/x", "/v2/a/manifests/b/manifests/c", "/v2//blobs/"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p string) {
		rt, ok := ParseRoute(p)
		if !ok {
			return
		}
		if strings.Contains(rt.Name, "..") || strings.HasPrefix(rt.Name, "/") || strings.Contains(rt.Ref, "/") {
			t.Errorf("ParseRoute(%q) accepted %+v", p, rt)
		}
		if rt.Kind == "blob" && !digestRE.MatchString(rt.Ref) {
			t.Errorf("blob route with ref %q", rt.Ref)
		}
	})
}

// FuzzSniff feeds manifests as an upstream registry could return them.
func FuzzSniff(f *testing.F) {
	f.Add([]byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"digest":"sha256:` + strings.Repeat("a", 64) + `","size":1},"layers":[]}`))
	f.Add([]byte(`{"schemaVersion":2,"manifests":[{"digest":"sha256:` + strings.Repeat("b", 64) + `"}]}`))
	f.Add([]byte(`{"schemaVersion":1}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, data []byte) {
		mt, refs, ok := sniff(data)
		if ok && mt == "" {
			t.Errorf("sniff accepted %q without a media type", data)
		}
		if !ok && len(refs) != 0 {
			t.Errorf("sniff rejected but returned refs")
		}
	})
}
