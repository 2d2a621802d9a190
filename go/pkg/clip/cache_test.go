package clip

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/beam-cloud/clip/go/internal/testutil"
	"github.com/beam-cloud/clip/go/pkg/common"
	"github.com/beam-cloud/clip/go/pkg/storage"
)

// memCache is a content cache in memory implementing every extension the worker's
// does, counting calls; mode makes it fail.
type memCache struct {
	t       *testing.T
	mu      sync.Mutex
	data    map[string][]byte
	mode    string // "", "unavailable", "error", "slow", "nodrain"
	gets    atomic.Int64
	served  atomic.Int64
	exists  atomic.Int64
	stores  atomic.Int64
	badKeys atomic.Int64
}

func newMemCache(t *testing.T, mode string) *memCache {
	return &memCache{t: t, data: map[string][]byte{}, mode: mode}
}

func (c *memCache) fail(hash string, o struct{ RoutingKey string }) error {
	if o.RoutingKey != hash {
		c.badKeys.Add(1)
	}
	switch c.mode {
	case "unavailable":
		return fmt.Errorf("blobcache: no host: %w", storage.ErrContentCacheUnavailable)
	case "error":
		return errors.New("blobcache: boom")
	case "slow":
		time.Sleep(10 * time.Second)
		return fmt.Errorf("blobcache: slow: %w", storage.ErrContentCacheUnavailable)
	}
	return nil
}

func (c *memCache) get(hash string) ([]byte, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	d, ok := c.data[hash]
	return d, ok
}

func (c *memCache) layers() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.data)
}

func (c *memCache) GetContent(hash string, offset, length int64, o struct{ RoutingKey string }) ([]byte, error) {
	c.gets.Add(1)
	if err := c.fail(hash, o); err != nil {
		return nil, err
	}
	d, ok := c.get(hash)
	if !ok || offset+length > int64(len(d)) {
		return nil, fmt.Errorf("blobcache: %s: %w", hash, storage.ErrContentCacheMiss)
	}
	c.served.Add(length)
	return append([]byte(nil), d[offset:offset+length]...), nil
}

func (c *memCache) ReadContentInto(hash string, offset int64, dest []byte, o struct{ RoutingKey string }) (int64, error) {
	c.gets.Add(1)
	if err := c.fail(hash, o); err != nil {
		return 0, err
	}
	d, ok := c.get(hash)
	if !ok || offset+int64(len(dest)) > int64(len(d)) {
		return 0, fmt.Errorf("blobcache: %s: %w", hash, storage.ErrContentCacheMiss)
	}
	c.served.Add(int64(len(dest)))
	return int64(copy(dest, d[offset:])), nil
}

func (c *memCache) ContentExistsWithSize(hash string, size int64, o struct{ RoutingKey string }) (bool, error) {
	c.exists.Add(1)
	if err := c.fail(hash, o); err != nil {
		return false, err
	}
	d, ok := c.get(hash)
	return ok && int64(len(d)) == size, nil
}

func (c *memCache) StoreContent(chunks chan []byte, hash string, o struct{ RoutingKey string }) (string, error) {
	c.stores.Add(1)
	if c.mode == "nodrain" {
		return "", errors.New("blobcache: store refused") // without draining chunks
	}
	if err := c.fail(hash, o); err != nil {
		return "", err
	}
	var all []byte
	for b := range chunks {
		all = append(all, b...)
	}
	c.mu.Lock()
	c.data[hash] = all
	c.mu.Unlock()
	return hash, nil
}

// cacheFixture is an image in a registry behind a counting proxy, and its archive.
type cacheFixture struct {
	dir     string
	img     testutil.Image
	proxy   *testutil.CountingProxy
	archive string
	layers  int
}

func newCacheFixture(t *testing.T) *cacheFixture {
	testutil.NeedFUSE(t)
	dir := t.TempDir()
	img := testutil.SampleImage(3 << 20)
	layout := filepath.Join(dir, "layout")
	testutil.WriteLayout(t, layout, "v1", img)
	reg := testutil.StartRegistry(t, false)
	reg.Push(t, layout, "v1", "team/app:v1")
	proxy := testutil.StartCountingProxy(t, reg.Addr)
	out := filepath.Join(dir, "app.clip")
	if err := CreateFromOCIImage(context.Background(), CreateFromOCIImageOptions{
		ImageRef: proxy.Ref("team/app:v1"), OutputPath: out,
	}); err != nil {
		t.Fatalf("CreateFromOCIImage: %v", err)
	}
	meta, err := NewClipArchiver().ExtractMetadata(out)
	if err != nil {
		t.Fatal(err)
	}
	return &cacheFixture{dir: dir, img: img, proxy: proxy, archive: out,
		layers: len(meta.StorageInfo.(common.OCIStorageInfo).Layers)}
}

func (f *cacheFixture) options(name string, cache storage.ContentCache) MountOptions {
	return MountOptions{
		ArchivePath:           f.archive,
		MountPoint:            filepath.Join(f.dir, "mnt-"+name),
		CachePath:             filepath.Join(f.dir, "cache-"+name),
		ContentCache:          cache,
		ContentCacheAvailable: true,
	}
}

func waitFor(t *testing.T, what string, d time.Duration, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// A second worker (a fresh local cache) with the first one's content cache reads
// nothing from the registry.
func TestContentCacheServesTheSecondMount(t *testing.T) {
	f := newCacheFixture(t)
	cache := newMemCache(t, "")
	o1 := f.options("one", cache)
	errs, server, err := mountLive(o1)
	if err != nil {
		t.Fatal(err)
	}
	if d := testutil.Diff(testutil.Expected(f.img), testutil.Snapshot(t, o1.MountPoint)); len(d) > 0 {
		_ = server.Unmount()
		t.Fatalf("first mount differs:\n%s", strings.Join(d, "\n"))
	}
	// Every layer was read from the registry, so every layer is offered to the
	// cache, in the background.
	waitFor(t, "the layers to reach the content cache", 60*time.Second, func() bool { return cache.layers() == f.layers })
	if err := server.Unmount(); err != nil {
		t.Fatal(err)
	}
	waitClosed(t, errs)
	meta, _ := NewClipArchiver().ExtractMetadata(f.archive)
	for _, h := range meta.StorageInfo.(common.OCIStorageInfo).DecompressedHashByLayer {
		if _, ok := cache.get(h); !ok {
			t.Fatalf("the cache lacks layer %s (keys must be the DecompressedHashByLayer values)", h)
		}
	}

	before := f.proxy.Bytes()
	var hits, reads atomic.Int64
	o2 := f.options("two", cache)
	o2.ReadTraceObserver = func(ev common.ReadTraceEvent) {
		switch ev.Operation {
		case "clip.content_cache_read":
			if ev.Attrs["content_cache_result"] == "hit" && ev.DecompressedHash != "" && ev.Attrs["content_hash"] == ev.DecompressedHash {
				hits.Add(1)
			}
		case "clip.read":
			reads.Add(1)
			if ev.Attrs["cache_tier"] == "source" {
				t.Errorf("a read went to the registry: %+v", ev)
			}
		}
	}
	mountAndCheck(t, o2, testutil.Expected(f.img))
	if got := f.proxy.Bytes() - before; got != 0 {
		t.Fatalf("the second mount read %d bytes from the registry", got)
	}
	if hits.Load() == 0 || reads.Load() == 0 || cache.served.Load() == 0 {
		t.Fatalf("%d content-cache hits, %d reads, %d bytes served by the cache", hits.Load(), reads.Load(), cache.served.Load())
	}
	if cache.badKeys.Load() != 0 {
		t.Fatalf("%d calls with a routing key other than the hash", cache.badKeys.Load())
	}
}

// A content cache that is unavailable, fails, hangs, refuses stores without
// draining, or is a typed nil changes nothing but speed.
func TestContentCacheFailuresChangeNothingButSpeed(t *testing.T) {
	f := newCacheFixture(t)
	for _, mode := range []string{"unavailable", "error", "slow", "nodrain", "typed-nil", "not-available"} {
		t.Run(mode, func(t *testing.T) {
			cache := newMemCache(t, mode)
			o := f.options(mode, cache)
			switch mode {
			case "typed-nil":
				var none *memCache
				o.ContentCache = none
			case "not-available":
				o.ContentCacheAvailable = false
			}
			started := time.Now()
			errs, server, err := mountLive(o)
			if err != nil {
				t.Fatal(err)
			}
			if d := testutil.Diff(testutil.Expected(f.img), testutil.Snapshot(t, o.MountPoint)); len(d) > 0 {
				_ = server.Unmount()
				t.Fatalf("mounted tree differs:\n%s", strings.Join(d, "\n"))
			}
			if took := time.Since(started); took > 45*time.Second {
				t.Fatalf("reading through a %s cache took %v", mode, took)
			}
			if mode == "nodrain" {
				// Layers are offered 5 s after the reads that fetched them.
				waitFor(t, "a store attempt", 30*time.Second, func() bool { return cache.stores.Load() > 0 })
			}
			if err := server.Unmount(); err != nil {
				t.Fatal(err)
			}
			waitClosed(t, errs)
			switch mode {
			case "typed-nil", "not-available":
				if n := cache.gets.Load() + cache.exists.Load() + cache.stores.Load(); n != 0 {
					t.Fatalf("%d calls to a cache that is not there", n)
				}
			case "nodrain":
				if cache.layers() != 0 {
					t.Fatal("a refused store stored something")
				}
			default:
				if cache.exists.Load()+cache.gets.Load() == 0 {
					t.Fatal("the cache was never asked")
				}
			}
		})
	}
}

// PrepareArchiveContent fills the local cache (and the content cache) so that a
// mount then reads nothing from the registry, with progress in order.
func TestPrepareArchiveContent(t *testing.T) {
	f := newCacheFixture(t)
	cache := newMemCache(t, "")
	o := f.options("prep", cache)
	var calls []storage.PrepareProgress
	o.PrepareConcurrency = 8
	o.PrepareProgress = func(p storage.PrepareProgress) { calls = append(calls, p) }
	if err := PrepareArchiveContent(o); err != nil {
		t.Fatalf("PrepareArchiveContent: %v", err)
	}
	if len(calls) != f.layers+1 {
		t.Fatalf("progress calls %+v: want %d", calls, f.layers+1)
	}
	for i, c := range calls {
		if c.Completed != i || c.Total != f.layers || (i > 0 && c.Bytes <= calls[i-1].Bytes) {
			t.Fatalf("progress call %d is %+v (all: %+v)", i, c, calls)
		}
	}
	if cache.layers() != f.layers {
		t.Fatalf("the content cache holds %d layers after preparing, want %d", cache.layers(), f.layers)
	}

	// The registry is gone now: the mount must not need it.
	f.proxy.SetDown(true)
	before := f.proxy.Bytes()
	o.PrepareConcurrency, o.PrepareProgress = 0, nil
	mountAndCheck(t, o, testutil.Expected(f.img))
	if got := f.proxy.Bytes() - before; got != 0 {
		t.Fatalf("the mount read %d bytes from the registry after preparing", got)
	}

	// A second worker prepares from the content cache alone.
	o2 := f.options("prep2", cache)
	o2.PrepareConcurrency = 4
	if err := PrepareArchiveContent(o2); err != nil {
		t.Fatalf("PrepareArchiveContent from the content cache, registry down: %v", err)
	}

	// Cancelled, and no-op cases.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	o3 := f.options("prep3", nil)
	o3.PrepareConcurrency, o3.Context = 2, ctx
	if err := PrepareArchiveContent(o3); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled prepare: %v", err)
	}
	o3.PrepareConcurrency, o3.Context = 0, nil
	if err := PrepareArchiveContent(o3); err != nil {
		t.Fatalf("prepare with concurrency 0: %v", err)
	}
	if n := liveHandles.Load(); n != 0 {
		t.Fatalf("%d cgo handles left", n)
	}
}

// CreateFromOCIImage stores the layer blobs it reads from the registry into the
// content cache, and the next create reads them from there.
func TestCreateUsesTheContentCache(t *testing.T) {
	f := newCacheFixture(t)
	cache := newMemCache(t, "")
	meta, _ := NewClipArchiver().ExtractMetadata(f.archive)
	layers := meta.StorageInfo.(common.OCIStorageInfo).Layers
	run := func(out string) []OCIIndexProgress {
		progress := make(chan OCIIndexProgress, 100)
		events := collectProgress(progress)
		err := CreateFromOCIImage(context.Background(), CreateFromOCIImageOptions{
			ImageRef: f.proxy.Ref("team/app:v1"), OutputPath: out, ProgressChan: progress,
			ContentCache: cache, ContentCacheDir: t.TempDir(),
		})
		evs := events()
		if err != nil {
			t.Fatalf("CreateFromOCIImage: %v", err)
		}
		return evs
	}
	checkProgress(t, run(filepath.Join(f.dir, "c1.clip")), len(layers), LayerSourceRegistry)
	waitFor(t, "the blobs to reach the content cache", 30*time.Second, func() bool {
		for _, l := range layers {
			if _, ok := cache.get(strings.TrimPrefix(l, "sha256:")); !ok {
				return false
			}
		}
		return true
	})
	before := f.proxy.Bytes()
	checkProgress(t, run(filepath.Join(f.dir, "c2.clip")), len(layers), LayerSourceContentCache)
	if got := f.proxy.Bytes() - before; got > 16<<10 {
		t.Fatalf("the second create read %d bytes from the registry (manifest and config only expected)", got)
	}
	a, _ := os.ReadFile(filepath.Join(f.dir, "c1.clip"))
	b, _ := os.ReadFile(filepath.Join(f.dir, "c2.clip"))
	if !bytes.Equal(a, b) {
		t.Fatal("the archive made from the content cache differs")
	}
}
