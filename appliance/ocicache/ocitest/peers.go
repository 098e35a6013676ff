package ocitest

import (
	"context"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// Push uploads an image or index to host/repoTag over plain HTTP.
func Push(tb testing.TB, host, repoTag string, v remote.Taggable) string {
	tb.Helper()
	ref, err := name.ParseReference(host+"/"+repoTag, name.Insecure)
	if err != nil {
		tb.Fatal(err)
	}
	switch v := v.(type) {
	case v1.ImageIndex:
		err = remote.WriteIndex(ref, v)
	case v1.Image:
		err = remote.Write(ref, v)
	default:
		err = fmt.Errorf("cannot push %T", v)
	}
	if err != nil {
		tb.Fatalf("push %s: %v", ref, err)
	}
	return ref.String()
}

// Proxy is a TCP proxy on loopback that counts the bytes it carries from
// the backend to clients and can be throttled.
type Proxy struct {
	Addr       string
	backend    string
	ln         net.Listener
	down       atomic.Int64
	bytesPerMs atomic.Int64 // 0: unthrottled
	wg         sync.WaitGroup
}

// NewProxy forwards a new loopback port to backend until the test ends.
func NewProxy(tb testing.TB, backend string) *Proxy {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	p := &Proxy{Addr: ln.Addr().String(), backend: backend, ln: ln}
	go p.serve()
	tb.Cleanup(func() { ln.Close() })
	return p
}

// Downloaded is the number of bytes sent from the backend so far.
func (p *Proxy) Downloaded() int64 { return p.down.Load() }

// Throttle limits backend→client traffic to about bytesPerSec (0: off).
func (p *Proxy) Throttle(bytesPerSec int64) { p.bytesPerMs.Store(bytesPerSec / 1000) }

func (p *Proxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			b, err := net.Dial("tcp", p.backend)
			if err != nil {
				return
			}
			defer b.Close()
			go func() { io.Copy(b, c); b.(*net.TCPConn).CloseWrite() }()
			buf := make([]byte, 32<<10)
			for {
				n, err := b.Read(buf)
				if n > 0 {
					if rate := p.bytesPerMs.Load(); rate > 0 {
						time.Sleep(time.Duration(int64(n)/rate) * time.Millisecond)
					}
					if _, werr := c.Write(buf[:n]); werr != nil {
						return
					}
					p.down.Add(int64(n))
				}
				if err != nil {
					return
				}
			}
		}()
	}
}

// Context returns a context cancelled when the test ends.
func Context(tb testing.TB) context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	tb.Cleanup(cancel)
	return ctx
}
