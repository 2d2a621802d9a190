package clip

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/http"
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
	"github.com/google/go-containerregistry/pkg/authn"
)

// workerContentCache is shaped like beta9's *imageContentCache (image_cache.go):
// whole objects on local disk (so it can name local page files), every optional
// extension, ContentExists always (false, nil) on purpose, errors wrapped with %w.
type workerContentCache struct {
	dir   string
	mu    sync.Mutex
	calls map[string]int
}

func newWorkerContentCache(t *testing.T) *workerContentCache {
	return &workerContentCache{dir: t.TempDir(), calls: map[string]int{}}
}

func (c *workerContentCache) count(m string) {
	c.mu.Lock()
	c.calls[m]++
	c.mu.Unlock()
}

func (c *workerContentCache) called(m string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.calls[m]
}

func (c *workerContentCache) snapshot() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	m := map[string]int{}
	for k, v := range c.calls {
		m[k] = v
	}
	return m
}

func (c *workerContentCache) path(hash string) string { return filepath.Join(c.dir, hash) }

// open is the worker's lookup: a miss is ErrContentCacheMiss behind %w.
func (c *workerContentCache) open(hash string, o struct{ RoutingKey string }) (*os.File, error) {
	if o.RoutingKey != hash {
		return nil, fmt.Errorf("routing key %q for %s: %w", o.RoutingKey, hash, storage.ErrContentCacheUnavailable)
	}
	f, err := os.Open(c.path(hash))
	if err != nil {
		return nil, fmt.Errorf("cache client: get %s: %w", hash, storage.ErrContentCacheMiss)
	}
	return f, nil
}

func (c *workerContentCache) GetContent(hash string, offset, length int64, o struct{ RoutingKey string }) ([]byte, error) {
	c.count("GetContent")
	f, err := c.open(hash, o)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b := make([]byte, length)
	if _, err := f.ReadAt(b, offset); err != nil {
		return nil, fmt.Errorf("cache client: short %s: %w", hash, storage.ErrContentCacheMiss)
	}
	return b, nil
}

func (c *workerContentCache) ReadContentInto(hash string, offset int64, dest []byte, o struct{ RoutingKey string }) (int64, error) {
	c.count("ReadContentInto")
	f, err := c.open(hash, o)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	n, err := f.ReadAt(dest, offset)
	if err != nil {
		return 0, fmt.Errorf("cache client: short %s: %w", hash, storage.ErrContentCacheMiss)
	}
	return int64(n), nil
}

func (c *workerContentCache) ContentExists(string, struct{ RoutingKey string }) (bool, error) {
	c.count("ContentExists")
	return false, nil // beta9's answer, always
}

func (c *workerContentCache) ContentExistsWithSize(hash string, size int64, o struct{ RoutingKey string }) (bool, error) {
	c.count("ContentExistsWithSize")
	fi, err := os.Stat(c.path(hash))
	return err == nil && fi.Size() == size && o.RoutingKey == hash, nil
}

func (c *workerContentCache) GetContentStream(hash string, o struct{ RoutingKey string }) (<-chan []byte, int64, error) {
	c.count("GetContentStream")
	b, err := os.ReadFile(c.path(hash))
	if err != nil {
		return nil, 0, fmt.Errorf("cache client: stream %s: %w", hash, storage.ErrContentCacheMiss)
	}
	ch := make(chan []byte, 1)
	ch <- b
	close(ch)
	return ch, int64(len(b)), nil
}

func (c *workerContentCache) ClientLocalPageFileViews(hash string, offset, length int64, o struct{ RoutingKey string }) ([]storage.ClientLocalPageFileView, error) {
	c.count("ClientLocalPageFileViews")
	fi, err := os.Stat(c.path(hash))
	if err != nil || o.RoutingKey != hash || offset+length > fi.Size() {
		return nil, nil // beta9: (nil, nil) on a miss
	}
	return []storage.ClientLocalPageFileView{{Path: c.path(hash), Offset: offset, Length: int(length)}}, nil
}

func (c *workerContentCache) put(hash string, r io.Reader) (string, error) {
	tmp, err := os.CreateTemp(c.dir, ".store-*")
	if err != nil {
		return "", err
	}
	if _, err := io.Copy(tmp, r); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return "", err
	}
	tmp.Close()
	return hash, os.Rename(tmp.Name(), c.path(hash))
}

func (c *workerContentCache) StoreContent(chunks chan []byte, hash string, o struct{ RoutingKey string }) (string, error) {
	c.count("StoreContent")
	pr, pw := io.Pipe()
	go func() {
		for b := range chunks {
			_, _ = pw.Write(b)
		}
		pw.Close()
	}()
	return c.put(hash, pr)
}

func (c *workerContentCache) StoreContentFromLocalPath(path, hash string, o struct{ RoutingKey string }) (string, error) {
	c.count("StoreContentFromLocalPath")
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	return c.put(hash, f)
}

// workerLayerIndexCache is beta9's *imageLayerIndexCache: a DiskLayerIndexCache
// (storage.NewDiskLayerIndexCache) as the local tier in front of a shared tier.
type workerLayerIndexCache struct {
	local      *storage.DiskLayerIndexCache
	mu         sync.Mutex
	shared     map[string][]byte
	localHits  int
	sharedPuts int
}

func (c *workerLayerIndexCache) GetLayerIndex(ctx context.Context, key string) ([]byte, error) {
	if b, err := c.local.GetLayerIndex(ctx, key); err == nil && b != nil {
		c.mu.Lock()
		c.localHits++
		c.mu.Unlock()
		return b, nil
	}
	c.mu.Lock()
	b := c.shared[key]
	c.mu.Unlock()
	if b != nil {
		_ = c.local.PutLayerIndex(ctx, key, b)
	}
	return b, nil
}

func (c *workerLayerIndexCache) PutLayerIndex(ctx context.Context, key string, data []byte) error {
	if err := c.local.PutLayerIndex(ctx, key, data); err != nil {
		return err
	}
	c.mu.Lock()
	c.shared[key] = append([]byte(nil), data...)
	c.sharedPuts++
	c.mu.Unlock()
	return nil
}

// beta9's ociStorageInfo (image.go:262-277): a value or a pointer.
func workerOCIStorageInfo(meta *common.ClipArchiveMetadata) (*common.OCIStorageInfo, bool) {
	if meta == nil || meta.StorageInfo == nil {
		return nil, false
	}
	switch info := meta.StorageInfo.(type) {
	case common.OCIStorageInfo:
		return &info, true
	case *common.OCIStorageInfo:
		return info, true
	}
	return nil, false
}

// beta9's storage-mode probe (image.go:648-657, :1031, :1814).
func workerStorageMode(meta *common.ClipArchiveMetadata) string {
	if meta == nil || meta.StorageInfo == nil {
		return string(common.StorageModeLocal)
	}
	if ti, ok := meta.StorageInfo.(interface{ Type() string }); ok {
		return strings.ToLower(ti.Type())
	}
	return ""
}

// TestEveryGoAPICall makes every call of shared/GO-API.md's "What the worker calls"
// table once, as beta9 makes it, with the Go values beta9 passes in, against a real
// registry (htpasswd), a real S3 server and real FUSE mounts, and checks the results
// the way beta9 uses them.
func TestEveryGoAPICall(t *testing.T) {
	testutil.NeedFUSE(t)
	began := time.Now()
	ctx := context.Background()
	dir := t.TempDir()
	img := testutil.SampleImage(1 << 20)
	layout := filepath.Join(dir, "layout")
	manifest := testutil.WriteLayout(t, layout, "v1", img)
	reg := testutil.StartRegistry(t, true)
	reg.Push(t, layout, "v1", "team/app:v1")
	creds := map[string]string{"USERNAME": reg.User, "PASSWORD": reg.Pass}

	t.Run("SetLogLevel", func(t *testing.T) {
		// image.go:220-222: "debug" in DebugMode, else "info"; the error is ignored.
		for _, level := range []string{"debug", "info"} {
			if err := SetLogLevel(level); err != nil {
				t.Fatalf("SetLogLevel(%q): %v", level, err)
			}
		}
		_ = SetLogLevel("warn") // the tests' usual level
	})

	t.Run("constants", func(t *testing.T) {
		if LayerSourceIndexCache != "index-cache" || LayerSourceContentCache != "content-cache" ||
			LayerSourceLocalLayout != "local-layout" || LayerSourceRegistry != "registry" {
			t.Fatalf("LayerSource* = %q %q %q %q", LayerSourceIndexCache, LayerSourceContentCache, LayerSourceLocalLayout, LayerSourceRegistry)
		}
		if common.StorageModeLocal != "local" || common.StorageModeOCI != "oci" || common.StorageModeS3 != "s3" {
			t.Fatalf("StorageMode* = %q %q %q", common.StorageModeLocal, common.StorageModeOCI, common.StorageModeS3)
		}
		// image_cache.go:357-371: classified with errors.Is through %w.
		miss := fmt.Errorf("blobcache get: %w", storage.ErrContentCacheMiss)
		down := fmt.Errorf("blobcache: %w", fmt.Errorf("no host: %w", storage.ErrContentCacheUnavailable))
		if !errors.Is(miss, storage.ErrContentCacheMiss) || errors.Is(miss, storage.ErrContentCacheUnavailable) ||
			!errors.Is(down, storage.ErrContentCacheUnavailable) || errors.Is(down, storage.ErrContentCacheMiss) {
			t.Fatal("content-cache errors do not survive %w")
		}
	})

	// The providers beta9 builds and calls directly.
	var fromCreds common.RegistryCredentialProvider
	t.Run("CredentialsToProvider", func(t *testing.T) {
		if p := common.CredentialsToProvider(ctx, reg.Addr, nil); p.Name() != "public-only" {
			t.Fatalf("empty map: %T %q", p, p.Name())
		}
		fromCreds = common.CredentialsToProvider(ctx, reg.Addr, creds)
		// cache_reconciler.go:2017-2021: GetCredentials, then authn.FromConfig.
		cfg, err := fromCreds.GetCredentials(ctx, reg.Addr, "team/app")
		if err != nil || cfg == nil {
			t.Fatalf("GetCredentials: %v, %v", cfg, err)
		}
		ac, err := authn.FromConfig(*cfg).Authorization()
		if err != nil {
			t.Fatal(err)
		}
		// The registry accepts them (basic auth on the manifest of the image).
		req, _ := http.NewRequestWithContext(ctx, http.MethodHead, "http://"+reg.Addr+"/v2/team/app/manifests/v1", nil)
		req.Header.Set("Accept", "application/vnd.oci.image.manifest.v1+json")
		req.SetBasicAuth(ac.Username, ac.Password)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || resp.Header.Get("Docker-Content-Digest") != manifest {
			t.Fatalf("HEAD with the provider's credentials: %s, digest %q (want %s)", resp.Status, resp.Header.Get("Docker-Content-Digest"), manifest)
		}
	})

	t.Run("providers", func(t *testing.T) {
		if cfg, err := common.NewPublicOnlyProvider().GetCredentials(ctx, reg.Addr, "team/app"); cfg != nil || err != common.ErrNoCredentials {
			t.Fatalf("public-only: %v, %v", cfg, err)
		}
		// image_base_cache.go:188: the keychain provider, called directly.
		cfgDir := t.TempDir()
		auth := base64.StdEncoding.EncodeToString([]byte(reg.User + ":" + reg.Pass))
		if err := os.WriteFile(filepath.Join(cfgDir, "config.json"), []byte(`{"auths":{"`+reg.Addr+`":{"auth":"`+auth+`"}}}`), 0o600); err != nil {
			t.Fatal(err)
		}
		t.Setenv("DOCKER_CONFIG", cfgDir)
		cfg, err := common.NewKeychainProvider().GetCredentials(ctx, reg.Addr, "team/app")
		if err != nil || cfg.Username != reg.User || cfg.Password != reg.Pass {
			t.Fatalf("keychain: %+v, %v", cfg, err)
		}
		if cfg, err := common.NewKeychainProvider().GetCredentials(ctx, "other.example.com", ""); cfg != nil || err != common.ErrNoCredentials {
			t.Fatalf("keychain, unknown registry: %v, %v", cfg, err)
		}
	})

	// image_credentials.go:102-144: the gateway provider, a callback returning the
	// sentinel bare when it has nothing.
	var gatewayCalls atomic.Int64
	gateway := common.NewCallbackProviderWithName("gateway", func(ctx context.Context, registry, scope string) (*authn.AuthConfig, error) {
		gatewayCalls.Add(1)
		if registry != reg.Addr {
			return nil, common.ErrNoCredentials
		}
		return fromCreds.GetCredentials(ctx, registry, scope)
	})

	contentCache := newWorkerContentCache(t)
	diskTier, err := storage.NewDiskLayerIndexCache(filepath.Join(dir, "cache", "layer-index"))
	if err != nil {
		t.Fatalf("NewDiskLayerIndexCache: %v", err)
	}
	defer diskTier.Close()
	layerIndex := &workerLayerIndexCache{local: diskTier, shared: map[string][]byte{}}
	archive := filepath.Join(dir, "img.clip")

	// createOCIImageWithProgress (image.go:2262-2310).
	create := func(t *testing.T, out string) []OCIIndexProgress {
		progressChan := make(chan OCIIndexProgress, 100)
		var events []OCIIndexProgress
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			for p := range progressChan {
				events = append(events, p)
			}
		}()
		err := CreateFromOCIImage(ctx, CreateFromOCIImageOptions{
			ImageRef:         reg.Ref("team/app:v1"),
			OutputPath:       out,
			CheckpointMiB:    2,
			ProgressChan:     progressChan,
			CredProvider:     fromCreds,
			ContentCache:     contentCache,
			ContentCacheDir:  filepath.Dir(out),
			LayerIndexCache:  layerIndex,
			IndexConcurrency: 8,
		})
		close(progressChan)
		wg.Wait()
		if err != nil {
			t.Fatalf("CreateFromOCIImage: %v", err)
		}
		return events
	}

	t.Run("CreateFromOCIImage", func(t *testing.T) {
		events := create(t, archive)
		checkProgress(t, events, 3, LayerSourceRegistry)
		for _, ev := range events {
			if ev.Stage == StageCompleted && (ev.BytesTotal <= 0 || ev.CompressedBytesTotal <= 0 || ev.CompressedBytesProcessed <= 0) {
				t.Fatalf("completed event %+v: want byte counts", ev)
			}
		}
		if layerIndex.sharedPuts != 3 {
			t.Fatalf("%d layer-index puts, want 3", layerIndex.sharedPuts)
		}
		// The registry blobs reach the content cache (key: the bare layer digest hex).
		waitFor(t, "the layer blobs in the content cache", 30*time.Second, func() bool {
			ents, _ := os.ReadDir(contentCache.dir)
			n := 0
			for _, e := range ents {
				if hex64.MatchString(e.Name()) {
					n++
				}
			}
			return n == 3
		})
		// A second build of the image: every layer from the disk tier.
		again := create(t, filepath.Join(dir, "again.clip"))
		checkProgress(t, again, 3, LayerSourceIndexCache)
		if layerIndex.localHits != 3 {
			t.Fatalf("%d local-tier hits, want 3", layerIndex.localHits)
		}
	})

	var meta *common.ClipArchiveMetadata
	t.Run("ExtractMetadata", func(t *testing.T) {
		var err error
		meta, err = NewClipArchiver().ExtractMetadata(archive)
		if err != nil {
			t.Fatalf("ExtractMetadata: %v", err)
		}
		checkMetadata(t, meta, reg.Addr, "team/app", manifest)
		info, ok := workerOCIStorageInfo(meta)
		if !ok {
			t.Fatalf("StorageInfo %T is not OCI storage info", meta.StorageInfo)
		}
		// beta9's tests store a pointer: the same switch and Type() must work.
		if p, ok := workerOCIStorageInfo(&common.ClipArchiveMetadata{StorageInfo: info}); !ok || p.Reference != manifest ||
			workerStorageMode(&common.ClipArchiveMetadata{StorageInfo: info}) != string(common.StorageModeOCI) {
			t.Fatal("a *common.OCIStorageInfo is not handled like the value")
		}
		if workerStorageMode(meta) != string(common.StorageModeOCI) {
			t.Fatalf("Type() = %q", workerStorageMode(meta))
		}
		// validateRestoredImageArchive (image.go:1807-1827).
		if fi, _ := os.Stat(archive); fi.Size() > 128<<20 || info.ImageMetadata == nil || len(info.Layers) == 0 {
			t.Fatal("the archive would be rejected on restore")
		}
		for _, l := range info.Layers {
			if h := info.DecompressedHashByLayer[l]; !hex64.MatchString(h) {
				t.Fatalf("decompressed hash %q of %s", h, l)
			}
		}
	})
	if meta == nil {
		t.FailNow()
	}

	// The observer of image_events.go:100: a non-blocking send into a big channel,
	// events without the "clip." prefix dropped.
	traces := make(chan common.ReadTraceEvent, 65536)
	observer := func(ev common.ReadTraceEvent) {
		if !strings.HasPrefix(ev.Operation, "clip.") {
			return
		}
		select {
		case traces <- ev:
		default:
		}
	}
	// lazyMountOptions (image.go:664-690), in DebugMode.
	mountOptions := func(cachePath, mnt string) MountOptions {
		return MountOptions{
			ArchivePath:           archive,
			Metadata:              meta,
			MountPoint:            mnt,
			CachePath:             cachePath,
			ContentCache:          contentCache,
			ContentCacheAvailable: true,
			ReadTraceObserver:     observer,
			RegistryCredProvider:  gateway,
			UseCheckpoints:        true,
		}
	}

	t.Run("PrepareArchiveContent", func(t *testing.T) {
		// PullLazy with preload (image.go:300-310) and its progress logger.
		opts := mountOptions(filepath.Join(dir, "cache", "prep"), filepath.Join(dir, "mnt", "prep"))
		var mu sync.Mutex
		var calls []storage.PrepareProgress
		opts.Context = ctx
		opts.PrepareConcurrency = 8
		opts.PrepareProgress = func(p storage.PrepareProgress) {
			mu.Lock()
			defer mu.Unlock()
			calls = append(calls, p)
		}
		if err := PrepareArchiveContent(opts); err != nil {
			t.Fatalf("PrepareArchiveContent: %v", err)
		}
		if len(calls) != 4 || calls[0].Completed != 0 || calls[0].Total != 3 ||
			calls[len(calls)-1].Completed != calls[len(calls)-1].Total || calls[len(calls)-1].Bytes <= 0 {
			t.Fatalf("progress %+v: want Completed 0 first and Completed == Total last", calls)
		}
		if gatewayCalls.Load() == 0 {
			t.Fatal("the credential provider was never asked")
		}
		// The uncompressed layers were stored in the content cache for other workers.
		info, _ := workerOCIStorageInfo(meta)
		for _, h := range info.DecompressedHashByLayer {
			if _, err := os.Stat(contentCache.path(h)); err != nil {
				t.Fatalf("layer %s not in the content cache after preparing: %v", h, err)
			}
		}
	})

	t.Run("MountArchive", func(t *testing.T) {
		// mountLazyImageArchive (image.go:963-1017) on another worker: a fresh
		// local cache, the shared content cache.
		opts := mountOptions(filepath.Join(dir, "cache", "worker2"), filepath.Join(dir, "mnt", "img"))
		var servers sync.Map // image id -> *Server
		startServer, serverErrors, server, err := MountArchive(opts)
		if err != nil {
			t.Fatalf("MountArchive: %v", err)
		}
		if err := startServer(); err != nil {
			_ = server.Unmount()
			t.Fatalf("start: %v", err)
		}
		if err := testutil.WaitMounted(opts.MountPoint, serverErrors); err != nil {
			_ = server.Unmount()
			t.Fatal(err)
		}
		servers.Store("img", server)
		forgotten := make(chan struct{})
		go func() {
			defer close(forgotten)
			if err := <-serverErrors; err != nil {
				t.Errorf("serverErrors: %v", err)
			}
			if current, ok := servers.Load("img"); ok && current.(*Server) == server {
				servers.Delete("img")
			}
		}()

		want := testutil.Expected(img)
		b, err := os.ReadFile(filepath.Join(opts.MountPoint, "data/big.txt"))
		if err != nil || int64(len(b)) != want["/data/big.txt"].Size {
			_ = server.Unmount()
			t.Fatalf("reading data/big.txt: %d bytes, %v", len(b), err)
		}

		// Cleanup (image.go:1213-1226): Unmount every stored server.
		servers.Range(func(_, v any) bool {
			if err := v.(*Server).Unmount(); err != nil {
				t.Errorf("Unmount: %v", err)
			}
			return true
		})
		select {
		case <-forgotten:
		case <-time.After(5 * time.Second):
			t.Fatal("serverErrors not closed 5s after Unmount")
		}
		if _, ok := servers.Load("img"); ok || testutil.IsMounted(opts.MountPoint) {
			t.Fatal("the mount was not forgotten or is still mounted")
		}
		if contentCache.called("ClientLocalPageFileViews") == 0 {
			t.Fatalf("the content cache's local page files were never asked (calls %v)", contentCache.snapshot())
		}
		reads, cacheReads := 0, 0
		for len(traces) > 0 {
			ev := <-traces
			switch ev.Operation {
			case "clip.read":
				if ev.Success && ev.Path == "/data/big.txt" && ev.CallerPID != 0 {
					reads++
				}
			case "clip.content_cache_read":
				if ev.Attrs["content_cache_result"] == "hit" {
					cacheReads++
				}
			}
		}
		if reads == 0 || cacheReads == 0 {
			t.Fatalf("read traces: %d reads of data/big.txt, %d content-cache hits", reads, cacheReads)
		}
	})

	// v1 archives.
	bundle := testutil.MakeTree(t, filepath.Join(dir, "bundle"))
	t.Run("CreateArchive", func(t *testing.T) {
		out := filepath.Join(dir, "v1.clip")
		if err := CreateArchive(CreateOptions{InputPath: bundle, OutputPath: out}); err != nil {
			t.Fatalf("CreateArchive: %v", err)
		}
		m, err := NewClipArchiver().ExtractMetadata(out)
		if err != nil || m.StorageInfo != nil || workerStorageMode(m) != string(common.StorageModeLocal) {
			t.Fatalf("ExtractMetadata of a local v1 archive: %+v, %v", m, err)
		}
	})

	t.Run("ClipArchiver.Create+CreateRemoteArchive", func(t *testing.T) {
		// cache_reconciler_test.go:1551, :1891.
		a := NewClipArchiver()
		out := filepath.Join(dir, "fixture.clip")
		if err := a.Create(ClipArchiverOptions{SourcePath: bundle, OutputFile: out, ArchivePath: out}); err != nil {
			t.Fatalf("Create: %v", err)
		}
		m, err := a.ExtractMetadata(out)
		if err != nil || m.StorageInfo != nil {
			t.Fatalf("ExtractMetadata: %+v, %v", m, err)
		}
		si := &common.S3StorageInfo{Bucket: "b", Key: "fixture.clip", Region: "us-east-1"}
		rclip := filepath.Join(dir, "fixture.rclip")
		if err := a.CreateRemoteArchive(si, m, rclip); err != nil {
			t.Fatalf("CreateRemoteArchive: %v", err)
		}
		rm, err := a.ExtractMetadata(rclip)
		if err != nil {
			t.Fatal(err)
		}
		if got, ok := rm.StorageInfo.(common.S3StorageInfo); !ok || got != *si || workerStorageMode(rm) != string(common.StorageModeS3) {
			t.Fatalf("StorageInfo of the .rclip: %#v", rm.StorageInfo)
		}
	})

	t.Run("CreateAndUploadArchive", func(t *testing.T) {
		// Archive with registryStore "s3" (image.go:2770), progress forwarded as
		// container_server.go:423-460 does.
		s3 := testutil.StartS3(t)
		s3.CreateBucket(t, "images")
		out := filepath.Join(dir, "upload.rclip")
		si := &common.S3StorageInfo{Bucket: "images", Region: s3.Region, Endpoint: s3.Endpoint, Key: "img-1234.clip", ForcePathStyle: true}
		progressChan := make(chan int)
		var percents []int
		done := make(chan struct{})
		go func() {
			defer close(done)
			for p := range progressChan {
				percents = append(percents, p)
			}
		}()
		err := CreateAndUploadArchive(ctx, CreateOptions{
			InputPath:  bundle,
			OutputPath: out,
			Credentials: storage.ClipStorageCredentials{
				S3: &storage.S3ClipStorageCredentials{AccessKey: s3.AccessKey, SecretKey: s3.SecretKey},
			},
			ProgressChan: progressChan,
		}, si)
		close(progressChan)
		<-done
		if err != nil {
			t.Fatalf("CreateAndUploadArchive: %v", err)
		}
		if len(percents) == 0 || percents[len(percents)-1] != 100 {
			t.Fatalf("upload progress %v", percents)
		}
		if fi, err := os.Stat(s3.ObjectPath("images", "img-1234.clip")); err != nil || fi.Size() == 0 {
			t.Fatalf("the archive is not in the bucket: %v", err)
		}
		m, err := NewClipArchiver().ExtractMetadata(out)
		if err != nil {
			t.Fatal(err)
		}
		if got, ok := m.StorageInfo.(common.S3StorageInfo); !ok || got != *si {
			t.Fatalf("StorageInfo of the pushed .rclip: %#v", m.StorageInfo)
		}
	})

	if n := liveHandles.Load(); n != 0 {
		t.Fatalf("%d cgo handles left", n)
	}
	t.Logf("every Go API call in %v; content cache calls %v", time.Since(began).Round(time.Millisecond), contentCache.snapshot())
}
