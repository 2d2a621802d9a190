package clip

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/beam-cloud/clip/go/internal/testutil"
	"github.com/beam-cloud/clip/go/pkg/common"
	"github.com/beam-cloud/clip/go/pkg/storage"
)

// memLayerIndexCache is the worker's kind of LayerIndexCache, in memory, counting
// calls; putErr makes every put fail.
type memLayerIndexCache struct {
	mu         sync.Mutex
	data       map[string][]byte
	gets, puts int
	hits       int
	putErr     error
}

func newMemLayerIndexCache() *memLayerIndexCache {
	return &memLayerIndexCache{data: map[string][]byte{}}
}

func (c *memLayerIndexCache) GetLayerIndex(_ context.Context, key string) ([]byte, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gets++
	d, ok := c.data[key]
	if !ok {
		return nil, nil
	}
	c.hits++
	return append([]byte(nil), d...), nil
}

func (c *memLayerIndexCache) PutLayerIndex(_ context.Context, key string, data []byte) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.puts++
	if c.putErr != nil {
		return c.putErr
	}
	c.data[key] = data
	return nil
}

func (c *memLayerIndexCache) counts() (gets, puts, hits int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.gets, c.puts, c.hits
}

// hideBlobs renames the layer blobs of the image meta describes, so that reading
// any layer fails; the returned func puts them back.
func hideBlobs(t *testing.T, layout string, meta *common.ClipArchiveMetadata) func() {
	t.Helper()
	info := meta.StorageInfo.(common.OCIStorageInfo)
	var moved []string
	for _, l := range info.Layers {
		p := filepath.Join(layout, "blobs", "sha256", strings.TrimPrefix(l, "sha256:"))
		if err := os.Rename(p, p+".hidden"); err != nil {
			t.Fatal(err)
		}
		moved = append(moved, p)
	}
	return func() {
		for _, p := range moved {
			_ = os.Rename(p+".hidden", p)
		}
	}
}

// indexWith runs CreateFromOCIImage from the layout with cache, checks the
// progress events' source, and returns the archive's bytes.
func indexWith(t *testing.T, layout, out string, cache storage.LayerIndexCache, source string) []byte {
	t.Helper()
	progress := make(chan OCIIndexProgress, 100)
	events := collectProgress(progress)
	err := CreateFromOCIImage(context.Background(), CreateFromOCIImageOptions{
		ImageRef: "registry.example.com/app:v1", LocalLayoutPath: layout, OutputPath: out,
		ProgressChan: progress, LayerIndexCache: cache,
	})
	evs := events()
	if err != nil {
		t.Fatalf("CreateFromOCIImage: %v", err)
	}
	checkProgress(t, evs, 3, source)
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// A second CreateFromOCIImage of the same image with the worker's layer-index
// cache reads no layer bytes (the blobs are gone) and writes an identical archive.
func TestLayerIndexCacheSecondCreateReadsNoLayer(t *testing.T) {
	dir := t.TempDir()
	layout := filepath.Join(dir, "oci")
	testutil.WriteLayout(t, layout, "latest", testutil.SampleImage(1<<20))
	plain := indexWith(t, layout, filepath.Join(dir, "plain.clip"), nil, LayerSourceLocalLayout)

	cache := newMemLayerIndexCache()
	first := indexWith(t, layout, filepath.Join(dir, "first.clip"), cache, LayerSourceLocalLayout)
	if gets, puts, hits := cache.counts(); gets != 3 || puts != 3 || hits != 0 {
		t.Fatalf("first run: %d gets, %d puts, %d hits; want 3, 3, 0", gets, puts, hits)
	}
	for k := range cache.data {
		if !strings.HasPrefix(k, "clip-layer-index/rs1/span2097152/sha256_") {
			t.Fatalf("key %q: want libclip's own key space", k)
		}
	}
	meta, err := NewClipArchiver().ExtractMetadata(filepath.Join(dir, "first.clip"))
	if err != nil {
		t.Fatal(err)
	}
	restore := hideBlobs(t, layout, meta)
	defer restore()
	second := indexWith(t, layout, filepath.Join(dir, "second.clip"), cache, LayerSourceIndexCache)
	if gets, puts, hits := cache.counts(); gets != 6 || puts != 3 || hits != 3 {
		t.Fatalf("after the second run: %d gets, %d puts, %d hits; want 6, 3, 3", gets, puts, hits)
	}
	if !bytes.Equal(first, plain) || !bytes.Equal(second, plain) {
		t.Fatal("archives differ with the layer-index cache")
	}
	// Without the cache, the same call fails: the blobs really are gone.
	err = CreateFromOCIImage(context.Background(), CreateFromOCIImageOptions{
		ImageRef: "registry.example.com/app:v1", LocalLayoutPath: layout,
		OutputPath: filepath.Join(dir, "nocache.clip"),
	})
	if err == nil {
		t.Fatal("indexing without blobs and without the cache succeeded")
	}
}

// The disk cache: used natively by CreateFromOCIImage, a generic key -> bytes
// store for the worker, arbitrary keys staying inside its directory.
func TestDiskLayerIndexCache(t *testing.T) {
	dir := t.TempDir()
	root := filepath.Join(dir, "layer-index")
	c, err := storage.NewDiskLayerIndexCache(root)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()
	if d, err := c.GetLayerIndex(ctx, "missing"); d != nil || err != nil {
		t.Fatalf("miss: (%v, %v), want (nil, nil)", d, err)
	}
	keys := []string{
		"clip-layer-index/v1/cp2/sha256_abc", "../../escape", "/abs/path", "..", ".", "a\x00b",
		strings.Repeat("k/", 1000), "ünïcode key",
	}
	for i, k := range keys {
		want := []byte(strings.Repeat(string(rune('a'+i)), 100+i))
		if err := c.PutLayerIndex(ctx, k, want); err != nil {
			t.Fatalf("put %q: %v", k, err)
		}
		got, err := c.GetLayerIndex(ctx, k)
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("get %q: (%q, %v)", k, got, err)
		}
	}
	if err := c.PutLayerIndex(ctx, "empty", []byte{}); err != nil {
		t.Fatal(err)
	}
	if got, err := c.GetLayerIndex(ctx, "empty"); err != nil || got == nil || len(got) != 0 {
		t.Fatalf("empty value: (%v, %v), want a non-nil empty slice", got, err)
	}
	if err := c.PutLayerIndex(ctx, "", []byte("x")); err == nil {
		t.Fatal("empty key accepted")
	}
	// Everything stayed in the directory, one plain file per key.
	entries, err := os.ReadDir(root)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != len(keys)+1 {
		t.Fatalf("%d files in the cache dir, want %d", len(entries), len(keys)+1)
	}
	parent, _ := os.ReadDir(dir)
	if len(parent) != 1 {
		t.Fatalf("files written next to the cache dir: %v", parent)
	}

	// CreateFromOCIImage uses it natively; a second cache on the same directory
	// (another process, say) serves the next build.
	layout := filepath.Join(dir, "oci")
	testutil.WriteLayout(t, layout, "latest", testutil.SampleImage(0))
	first := indexWith(t, layout, filepath.Join(dir, "a.clip"), c, LayerSourceLocalLayout)
	other, err := storage.NewDiskLayerIndexCache(root)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	meta, err := NewClipArchiver().ExtractMetadata(filepath.Join(dir, "a.clip"))
	if err != nil {
		t.Fatal(err)
	}
	restore := hideBlobs(t, layout, meta)
	defer restore()
	second := indexWith(t, layout, filepath.Join(dir, "b.clip"), other, LayerSourceIndexCache)
	if !bytes.Equal(first, second) {
		t.Fatal("archive from the disk cache differs")
	}
	// The artifacts are there for the worker's own tiers too.
	info := meta.StorageInfo.(common.OCIStorageInfo)
	key := "clip-layer-index/rs1/span2097152/sha256_" + strings.TrimPrefix(info.Layers[0], "sha256:")
	if d, err := other.GetLayerIndex(ctx, key); err != nil || len(d) == 0 {
		t.Fatalf("artifact %s: (%d bytes, %v)", key, len(d), err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatal("second Close:", err)
	}
	if _, err := c.GetLayerIndex(ctx, key); err == nil {
		t.Fatal("get after Close succeeded")
	}
}

// A cache whose puts fail, and one whose gets fail, change nothing but speed; a
// typed nil is no cache.
func TestLayerIndexCacheFailuresNeverFailABuild(t *testing.T) {
	dir := t.TempDir()
	layout := filepath.Join(dir, "oci")
	testutil.WriteLayout(t, layout, "latest", testutil.SampleImage(0))
	plain := indexWith(t, layout, filepath.Join(dir, "plain.clip"), nil, LayerSourceLocalLayout)

	broken := newMemLayerIndexCache()
	broken.putErr = errors.New("cache cluster unreachable")
	got := indexWith(t, layout, filepath.Join(dir, "a.clip"), broken, LayerSourceLocalLayout)
	if _, puts, _ := broken.counts(); puts != 3 || !bytes.Equal(got, plain) {
		t.Fatalf("%d puts (want 3), archive equal: %v", puts, bytes.Equal(got, plain))
	}
	got = indexWith(t, layout, filepath.Join(dir, "b.clip"), erroringCache{}, LayerSourceLocalLayout)
	if !bytes.Equal(got, plain) {
		t.Fatal("archive differs with an erroring cache")
	}
	// Garbage under the right keys: misses, then replaced by real artifacts.
	junk := newMemLayerIndexCache()
	indexWith(t, layout, filepath.Join(dir, "c.clip"), junk, LayerSourceLocalLayout)
	for k := range junk.data {
		junk.data[k] = []byte("not an artifact")
	}
	got = indexWith(t, layout, filepath.Join(dir, "d.clip"), junk, LayerSourceLocalLayout)
	if !bytes.Equal(got, plain) {
		t.Fatal("archive differs after garbage artifacts")
	}
	indexWith(t, layout, filepath.Join(dir, "e.clip"), junk, LayerSourceIndexCache)

	var typedNil *memLayerIndexCache
	indexWith(t, layout, filepath.Join(dir, "f.clip"), typedNil, LayerSourceLocalLayout)
	var nilDisk *storage.DiskLayerIndexCache
	indexWith(t, layout, filepath.Join(dir, "g.clip"), nilDisk, LayerSourceLocalLayout)
}

type erroringCache struct{}

func (erroringCache) GetLayerIndex(context.Context, string) ([]byte, error) {
	return nil, errors.New("timeout")
}

func (erroringCache) PutLayerIndex(context.Context, string, []byte) error {
	return errors.New("timeout")
}
