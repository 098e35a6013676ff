// Package webauth is the one gate of every ociboot HTTP listener: which
// requests may change state, who may read profiles, and how long a client
// may hold a connection.
//
// State-changing requests (anything but GET, HEAD and OPTIONS) need the
// gokrazy password as HTTP Basic auth with user "gokrazy", exactly as
// gokrazy's own web UI on port 80 asks for it, so there is one password for
// the whole head node. The password is gokrazy's gokr-pw.txt, read where
// gokrazy reads it (/perm, then /etc, then /) on every request, so a
// changed password needs no restart. A head node built without a password
// (gokrazy's NoPassword) accepts state changes only from loopback.
//
// Browsers send stored Basic credentials with every request to the same
// origin, also when another site's page makes that request; so a POST with
// a valid password is refused when the browser says it comes from another
// site (Sec-Fetch-Site cross-site or same-site, or an Origin whose host is
// not the one the request was sent to). curl sends neither header and is
// accepted: it is not a browser that could be tricked.
//
// A node has no password. What a node itself reports (its install to a
// local disk) goes to node endpoints (NodeOnly) instead: accepted only
// from the node's own address, the one nfsd trusts with its root, and
// never from a browser on another site.
package webauth

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"strings"
	"time"
)

// User is the Basic auth user name gokrazy's UI expects.
const User = "gokrazy"

// PasswordFiles are where gokrazy looks for its password, in its order.
var PasswordFiles = []string{"/perm/gokr-pw.txt", "/etc/gokr-pw.txt", "/gokr-pw.txt"}

// Guard decides about requests.
type Guard struct {
	// Files are the password files tried in order; nil means
	// PasswordFiles.
	Files []string
}

// Password returns the gokrazy password, "" with a nil error when no file
// exists (an instance built without a password).
func (g *Guard) Password() (string, error) {
	files := g.Files
	if files == nil {
		files = PasswordFiles
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return "", fmt.Errorf("reading the gokrazy password: %v", err)
		}
		return strings.TrimSpace(string(b)), nil
	}
	return "", nil
}

// Safe reports whether method cannot change state (RFC 9110 safe methods).
func Safe(method string) bool {
	return method == http.MethodGet || method == http.MethodHead || method == http.MethodOptions
}

// Check returns the HTTP status and reason to refuse r with, or 0 when r
// may change state.
func (g *Guard) Check(r *http.Request) (int, string) {
	if reason := crossSite(r); reason != "" {
		return http.StatusForbidden, reason
	}
	pw, err := g.Password()
	if err != nil {
		return http.StatusInternalServerError, err.Error()
	}
	if pw == "" {
		if fromLoopback(r) {
			return 0, ""
		}
		return http.StatusForbidden, "this head node has no gokrazy password (" + strings.Join(g.files(), ", ") + "): state changes are accepted from the head node itself (loopback) only"
	}
	user, pass, ok := r.BasicAuth()
	if !ok {
		return http.StatusUnauthorized, "this request changes state: send the gokrazy password as Basic auth, e.g. curl -u gokrazy:PASSWORD"
	}
	if subtle.ConstantTimeCompare([]byte(user), []byte(User)) != 1 || subtle.ConstantTimeCompare([]byte(pass), []byte(pw)) != 1 {
		return http.StatusUnauthorized, "wrong user or password: the user is \"gokrazy\", the password that of gokrazy's web interface (gokr-pw.txt)"
	}
	return 0, ""
}

func (g *Guard) files() []string {
	if g.Files == nil {
		return PasswordFiles
	}
	return g.Files
}

// crossSite names why r looks like a request another site's page made, or
// returns "".
func crossSite(r *http.Request) string {
	switch s := r.Header.Get("Sec-Fetch-Site"); s {
	case "", "same-origin", "none":
	default:
		return "refused: the browser says this request comes from another site (Sec-Fetch-Site: " + s + "); use the status page's own buttons or curl"
	}
	o := r.Header.Get("Origin")
	if o == "" {
		return ""
	}
	u, err := url.Parse(o)
	if o == "null" || err != nil || u.Host == "" {
		return fmt.Sprintf("refused: Origin %q is not this page's origin", o)
	}
	if !strings.EqualFold(u.Host, r.Host) {
		return fmt.Sprintf("refused: the request comes from a page of %s, not of %s (cross-site request)", u.Host, r.Host)
	}
	return ""
}

func fromLoopback(r *http.Request) bool {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	return err == nil && ap.Addr().Unmap().IsLoopback()
}

// Protect wraps h so that state-changing requests must pass Check; safe
// methods go through unchecked (they must not change state).
func (g *Guard) Protect(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !Safe(r.Method) {
			if code, reason := g.Check(r); code != 0 {
				if code == http.StatusUnauthorized {
					w.Header().Set("WWW-Authenticate", `Basic realm="gokrazy"`)
				}
				http.Error(w, reason, code)
				return
			}
		}
		h.ServeHTTP(w, r)
	})
}

// LoopbackOnly serves h only to clients on the head node itself: profiles
// show memory contents and cost CPU, nothing for the LAN.
func LoopbackOnly(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !fromLoopback(r) {
			http.Error(w, "only from the head node itself (loopback), e.g. through an SSH tunnel", http.StatusForbidden)
			return
		}
		h.ServeHTTP(w, r)
	})
}

// MaxNodeBody caps the body of a request to a node endpoint: nodes send
// small JSON reports.
const MaxNodeBody = 16 << 10

type nodeKey struct{}

// NodeOnly serves h only to nodes: identify maps the TCP peer's address
// to the key of the node whose own address it is (nodes.KeyByIP, the
// trust rule of nfsd), and a peer that is no node's is refused with 403,
// as is a request a browser says comes from another site. h finds the
// node's key with NodeKey; the body is capped at MaxNodeBody. Behind a
// NAT or proxy every request would come from one address: node endpoints
// are for the nodes' own network.
func NodeOnly(identify func(netip.Addr) (key string, ok bool), h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if reason := crossSite(r); reason != "" {
			http.Error(w, reason, http.StatusForbidden)
			return
		}
		ap, err := netip.ParseAddrPort(r.RemoteAddr)
		if err != nil {
			http.Error(w, "refused: no peer address", http.StatusForbidden)
			return
		}
		key, ok := identify(ap.Addr().Unmap())
		if !ok {
			http.Error(w, fmt.Sprintf("refused: %s is not a node's own address (reserved in Netboot.Nodes[].IP or leased by dhcpd); only a node may send this", ap.Addr().Unmap()), http.StatusForbidden)
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, MaxNodeBody)
		h.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), nodeKey{}, key)))
	})
}

// NodeKey is the node a request passed NodeOnly for, "" if it did not.
func NodeKey(r *http.Request) string {
	k, _ := r.Context().Value(nodeKey{}).(string)
	return k
}

// Limits are a server's timeouts and header cap.
type Limits struct {
	ReadHeader, Read, Write, Idle time.Duration
	MaxHeaderBytes                int
}

// StatusLimits suit the status listeners: small requests and answers (a
// CPU profile takes its 30 s default, hence the write timeout).
var StatusLimits = Limits{ReadHeader: 10 * time.Second, Read: 30 * time.Second, Write: 2 * time.Minute, Idle: 2 * time.Minute, MaxHeaderBytes: 16 << 10}

// RegistryLimits suit the registry mirror: requests are small GETs, but a
// blob of several GiB takes minutes over a slow link to the node.
var RegistryLimits = Limits{ReadHeader: 10 * time.Second, Read: 30 * time.Second, Write: 30 * time.Minute, Idle: 2 * time.Minute, MaxHeaderBytes: 32 << 10}

// Server returns an http.Server for h with l's limits; every ociboot HTTP
// listener is made here, so none is left without deadlines.
func Server(h http.Handler, l Limits) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: l.ReadHeader,
		ReadTimeout:       l.Read,
		WriteTimeout:      l.Write,
		IdleTimeout:       l.Idle,
		MaxHeaderBytes:    l.MaxHeaderBytes,
	}
}

// SetCredentials copies the Basic auth of from to to: the status page
// passes the user's password through to the service that acts.
func SetCredentials(to, from *http.Request) {
	if a := from.Header.Get("Authorization"); a != "" {
		to.Header.Set("Authorization", a)
	}
}
