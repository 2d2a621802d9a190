package testutil

import (
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"sync/atomic"
	"testing"
)

// CountingProxy is a reverse proxy in front of a registry that counts the bytes
// of the response bodies it passes on, so a test can tell how much a mount read
// from the registry. It stops at test cleanup.
type CountingProxy struct {
	Addr     string // 127.0.0.1:port, to use as the registry's address
	bytes    atomic.Int64
	requests atomic.Int64
	down     atomic.Bool
}

// StartCountingProxy proxies to upstream ("127.0.0.1:port").
func StartCountingProxy(t testing.TB, upstream string) *CountingProxy {
	t.Helper()
	target, err := url.Parse("http://" + upstream)
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &CountingProxy{Addr: l.Addr().String()}
	rp := httputil.NewSingleHostReverseProxy(target)
	rp.ModifyResponse = func(r *http.Response) error {
		r.Body = &countingBody{ReadCloser: r.Body, n: &p.bytes}
		return nil
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.requests.Add(1)
		if p.down.Load() {
			http.Error(w, "the registry is down", http.StatusServiceUnavailable)
			return
		}
		rp.ServeHTTP(w, r)
	})}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { _ = srv.Close() })
	return p
}

// Bytes is the response body bytes passed on so far.
func (p *CountingProxy) Bytes() int64 { return p.bytes.Load() }

// Requests is the requests received so far.
func (p *CountingProxy) Requests() int64 { return p.requests.Load() }

// SetDown makes every request fail with 503 (the registry gone) or not.
func (p *CountingProxy) SetDown(down bool) { p.down.Store(down) }

// Ref is the reference of repoTag through the proxy.
func (p *CountingProxy) Ref(repoTag string) string { return p.Addr + "/" + repoTag }

type countingBody struct {
	io.ReadCloser
	n *atomic.Int64
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.n.Add(int64(n))
	return n, err
}
