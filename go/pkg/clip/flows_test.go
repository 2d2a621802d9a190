package clip

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/beam-cloud/clip/go/internal/testutil"
	"github.com/beam-cloud/clip/go/pkg/common"
	"github.com/google/go-containerregistry/pkg/authn"
)

// recordingProvider hands out fixed credentials and records what it was asked.
type recordingProvider struct {
	cfg   *authn.AuthConfig
	err   error
	mu    sync.Mutex
	calls []string // "registry scope"
}

func (p *recordingProvider) GetCredentials(_ context.Context, registry, scope string) (*authn.AuthConfig, error) {
	p.mu.Lock()
	p.calls = append(p.calls, registry+" "+scope)
	p.mu.Unlock()
	return p.cfg, p.err
}

func (p *recordingProvider) Name() string { return "recording" }

func (p *recordingProvider) asked() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.calls...)
}

// collectProgress drains ch the way the worker does (a goroutine ranging over it,
// the channel closed by the caller once CreateFromOCIImage has returned).
func collectProgress(ch chan OCIIndexProgress) func() []OCIIndexProgress {
	var events []OCIIndexProgress
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ev := range ch {
			events = append(events, ev)
		}
	}()
	return func() []OCIIndexProgress {
		close(ch)
		<-done
		return events
	}
}

// checkProgress checks the documented ordering: per layer one "starting" first,
// "progress" events in between, one "completed" last, with the fields set.
func checkProgress(t *testing.T, events []OCIIndexProgress, layers int, source string) {
	t.Helper()
	if len(events) == 0 {
		t.Fatal("no progress events")
	}
	stages := map[int][]string{}
	maxCompleted := 0
	for _, ev := range events {
		if ev.TotalLayers != layers || ev.LayerIndex < 1 || ev.LayerIndex > layers {
			t.Fatalf("event %+v: want %d layers, 1-based index", ev, layers)
		}
		if !strings.HasPrefix(ev.LayerDigest, "sha256:") || ev.CompressedBytesTotal <= 0 || ev.Source != source {
			t.Fatalf("event %+v: want a digest, a compressed size and source %q", ev, source)
		}
		stages[ev.LayerIndex] = append(stages[ev.LayerIndex], ev.Stage)
		if ev.Stage == StageCompleted {
			if ev.BytesTotal <= 0 || ev.BytesTotal != ev.BytesProcessed || ev.CompletedLayers < 1 {
				t.Fatalf("completed event %+v: want BytesTotal = BytesProcessed > 0, CompletedLayers >= 1", ev)
			}
			maxCompleted = max(maxCompleted, ev.CompletedLayers)
		}
	}
	for i := 1; i <= layers; i++ {
		s := stages[i]
		if len(s) < 2 || s[0] != StageStarting || s[len(s)-1] != StageCompleted {
			t.Fatalf("layer %d stages %v: want starting first and completed last", i, s)
		}
		for _, mid := range s[1 : len(s)-1] {
			if mid != StageProgress {
				t.Fatalf("layer %d stages %v: only progress between starting and completed", i, s)
			}
		}
	}
	if maxCompleted != layers {
		t.Fatalf("max CompletedLayers %d, want %d", maxCompleted, layers)
	}
}

// mountAndCheck mounts archive as the worker does (MountArchive, start, wait for
// the mount table, read), compares the tree with want, unmounts, and checks that
// the channel closes and the mount is gone.
func mountAndCheck(t *testing.T, opts MountOptions, want testutil.Tree) {
	t.Helper()
	testutil.NeedFUSE(t)
	errs, server, err := mountLive(opts)
	if err != nil {
		t.Fatal(err)
	}
	got := testutil.Snapshot(t, opts.MountPoint)
	if d := testutil.Diff(want, got); len(d) > 0 {
		_ = server.Unmount()
		t.Fatalf("mounted tree differs:\n%s", strings.Join(d, "\n"))
	}
	if err := server.Unmount(); err != nil {
		t.Fatalf("Unmount: %v", err)
	}
	if testutil.IsMounted(opts.MountPoint) {
		t.Fatal("still mounted after Unmount")
	}
	waitClosed(t, errs)
	if err := server.Unmount(); err != nil {
		t.Fatalf("second Unmount: %v", err)
	}
}

// mountLive mounts as the worker does: MountArchive, start, then wait until the
// mount table has it.
func mountLive(opts MountOptions) (<-chan error, *Server, error) {
	start, errs, server, err := MountArchive(opts)
	if err != nil {
		return nil, nil, err
	}
	if err := start(); err != nil {
		_ = server.Unmount()
		return nil, nil, err
	}
	if err := testutil.WaitMounted(opts.MountPoint, errs); err != nil {
		_ = server.Unmount()
		return nil, nil, err
	}
	return errs, server, nil
}

// closed waits up to 5 s for the mount channel to be closed with nothing on it.
func closed(errs <-chan error) error {
	select {
	case err, ok := <-errs:
		if ok {
			return fmt.Errorf("mount channel: got %v, want it closed", err)
		}
		return nil
	case <-time.After(5 * time.Second):
		return errors.New("mount channel not closed 5s after the unmount")
	}
}

func waitClosed(t *testing.T, errs <-chan error) {
	t.Helper()
	if err := closed(errs); err != nil {
		t.Fatal(err)
	}
}

var hex64 = regexp.MustCompile(`^[0-9a-f]{64}$`)

// checkMetadata checks what ExtractMetadata gives for an archive of SampleImage.
func checkMetadata(t *testing.T, meta *common.ClipArchiveMetadata, registry, repo, manifest string) {
	t.Helper()
	info, ok := meta.StorageInfo.(common.OCIStorageInfo)
	if !ok {
		t.Fatalf("StorageInfo is %T, want common.OCIStorageInfo", meta.StorageInfo)
	}
	if ti, ok := meta.StorageInfo.(interface{ Type() string }); !ok || ti.Type() != "oci" {
		t.Fatalf("StorageInfo.Type() is not \"oci\"")
	}
	if info.RegistryURL != registry || info.Repository != repo || info.Reference != manifest {
		t.Fatalf("storage info %q %q %q, want %q %q %q", info.RegistryURL, info.Repository, info.Reference, registry, repo, manifest)
	}
	if len(info.Layers) != 3 || len(info.DecompressedHashByLayer) != 3 {
		t.Fatalf("layers %v, hashes %v: want 3 each", info.Layers, info.DecompressedHashByLayer)
	}
	for _, l := range info.Layers {
		if !hex64.MatchString(info.DecompressedHashByLayer[l]) {
			t.Fatalf("decompressed hash of %s is %q", l, info.DecompressedHashByLayer[l])
		}
	}
	im := info.ImageMetadata
	img := testutil.SampleImage(0)
	if im == nil || strings.Join(im.Env, ",") != strings.Join(img.Env, ",") ||
		strings.Join(im.Cmd, ",") != strings.Join(img.Cmd, ",") || im.WorkingDir != img.WorkingDir ||
		im.User != img.User || im.Labels["org.example.test"] != "yes" || im.Digest != manifest || len(im.LayersData) != 3 {
		t.Fatalf("image metadata %+v does not match the image", im)
	}
}

// Flow 1, the worker pulling an image: index it from an htpasswd-protected
// registry with credentials from a CredProvider and progress events, read the
// metadata back, mount it from the registry, read every file, unmount.
func TestPullFlow(t *testing.T) {
	testutil.NeedFUSE(t)
	dir := t.TempDir()
	img := testutil.SampleImage(3 << 20)
	layout := filepath.Join(dir, "layout")
	manifest := testutil.WriteLayout(t, layout, "v1", img)
	reg := testutil.StartRegistry(t, true)
	reg.Push(t, layout, "v1", "team/app:v1")

	provider := &recordingProvider{cfg: &authn.AuthConfig{Username: reg.User, Password: reg.Pass}}
	out := filepath.Join(dir, "app.clip")
	progress := make(chan OCIIndexProgress, 100)
	events := collectProgress(progress)
	err := CreateFromOCIImage(context.Background(), CreateFromOCIImageOptions{
		ImageRef:         reg.Ref("team/app:v1"),
		OutputPath:       out,
		CheckpointMiB:    2,
		ProgressChan:     progress,
		CredProvider:     provider,
		IndexConcurrency: 8,
	})
	evs := events()
	if err != nil {
		t.Fatalf("CreateFromOCIImage: %v", err)
	}
	checkProgress(t, evs, 3, LayerSourceRegistry)
	if asked := provider.asked(); len(asked) == 0 || asked[0] != reg.Addr+" team/app" {
		t.Fatalf("provider asked %v, want %q first", asked, reg.Addr+" team/app")
	}

	meta, err := NewClipArchiver().ExtractMetadata(out)
	if err != nil {
		t.Fatalf("ExtractMetadata: %v", err)
	}
	checkMetadata(t, meta, reg.Addr, "team/app", manifest)

	var reads, bad, spans atomic.Int64
	mountAndCheck(t, MountOptions{
		ArchivePath:          out,
		Metadata:             meta,
		MountPoint:           filepath.Join(dir, "mnt"),
		CachePath:            filepath.Join(dir, "cache"),
		RegistryCredProvider: provider,
		ReadTraceObserver: func(ev common.ReadTraceEvent) {
			if ev.Operation != "clip.read" {
				// Span work below the reads: decoding from the registry.
				if ev.Operation == "clip.checkpoint_read" && ev.Success && ev.DecompressedHash != "" {
					spans.Add(1)
				}
				return
			}
			reads.Add(1)
			if ev.Path == "" || !ev.Success || ev.BytesRead <= 0 || ev.Attrs["cache_tier"] == "" ||
				!strings.HasPrefix(ev.LayerDigest, "sha256:") || ev.CallerPID == 0 || ev.Duration <= 0 {
				bad.Add(1)
				t.Errorf("read event %+v: want a successful clip.read with path, bytes, layer, pid and duration", ev)
			}
		},
	}, testutil.Expected(img))
	if reads.Load() == 0 || bad.Load() > 0 || spans.Load() == 0 {
		t.Fatalf("the read-trace observer saw %d reads, %d malformed, %d span decodes", reads.Load(), bad.Load(), spans.Load())
	}
}

// Flow 2, the worker building an image: a skopeo-written layout is indexed locally
// (CreateIndexOnlyArchiveFromOCILayout, and CreateFromOCIImage with a storage
// reference) while it is pushed; the archives mount from the layout and from the
// registry with the same tree.
func TestBuildFlow(t *testing.T) {
	testutil.NeedFUSE(t)
	dir := t.TempDir()
	img := testutil.SampleImage(3 << 20)
	src := filepath.Join(dir, "src")
	testutil.WriteLayout(t, src, "v2", img)
	layout := filepath.Join(dir, "oci")
	testutil.Skopeo(t, "copy", "--quiet", "oci:"+src+":v2", "oci:"+layout+":latest")
	want := testutil.Expected(img)

	local := filepath.Join(dir, "local.clip")
	if err := CreateIndexOnlyArchiveFromOCILayout(context.Background(), layout, "", local); err != nil {
		t.Fatalf("CreateIndexOnlyArchiveFromOCILayout: %v", err)
	}
	mountAndCheck(t, MountOptions{
		ArchivePath: local, MountPoint: filepath.Join(dir, "mnt-local"),
		CachePath: filepath.Join(dir, "cache"), LocalLayoutPath: layout,
	}, want)

	reg := testutil.StartRegistry(t, false)
	ref := reg.Ref("build/app:img1")
	out := filepath.Join(dir, "build.clip")
	progress := make(chan OCIIndexProgress, 100)
	events := collectProgress(progress)
	var pushed sync.WaitGroup
	pushed.Add(1)
	go func() { defer pushed.Done(); reg.Push(t, layout, "latest", "build/app:img1") }()
	err := CreateFromOCIImage(context.Background(), CreateFromOCIImageOptions{
		ImageRef: ref, LocalLayoutPath: layout, OutputPath: out, ProgressChan: progress,
	})
	evs := events()
	pushed.Wait()
	if err != nil {
		t.Fatalf("CreateFromOCIImage from a layout: %v", err)
	}
	checkProgress(t, evs, 3, LayerSourceLocalLayout)
	meta, err := NewClipArchiver().ExtractMetadata(out)
	if err != nil {
		t.Fatal(err)
	}
	info := meta.StorageInfo.(common.OCIStorageInfo)
	if info.RegistryURL != reg.Addr || info.Repository != "build/app" {
		t.Fatalf("storage info %+v: want the registry reference", info)
	}
	mountAndCheck(t, MountOptions{
		ArchivePath: out, Metadata: meta, MountPoint: filepath.Join(dir, "mnt-registry"),
		CachePath: filepath.Join(dir, "cache2"),
	}, want)
}

// Flow 3: cancelling the context stops an indexing call promptly, and no archive
// (nor a temporary file) is left behind.
func TestCancelIndexing(t *testing.T) {
	dir := t.TempDir()
	img := testutil.Image{}
	for i := 0; i < 6; i++ {
		img.Layers = append(img.Layers, []testutil.Entry{testutil.BigFile("big"+string(rune('a'+i)), 8<<20, int64(i))})
	}
	layout := filepath.Join(dir, "layout")
	testutil.WriteLayout(t, layout, "latest", img)
	outDir := filepath.Join(dir, "out")
	if err := os.Mkdir(outDir, 0o755); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(outDir, "img.clip")

	// Uncancelled, the layout indexes fine; how long it takes sets when the token
	// test cancels (well before the end).
	began := time.Now()
	if err := CreateIndexOnlyArchiveFromOCILayout(context.Background(), layout, "latest", filepath.Join(dir, "full.clip")); err != nil {
		t.Fatal(err)
	}
	full := time.Since(began)
	t.Logf("indexing %d MiB took %v", 6*8, full)

	t.Run("mid-layer", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		progress := make(chan OCIIndexProgress) // unbuffered: indexing waits for us
		var cancelledAt time.Time
		done := make(chan struct{})
		go func() {
			defer close(done)
			for ev := range progress {
				if cancelledAt.IsZero() && ev.Stage == StageStarting {
					cancelledAt = time.Now()
					cancel()
				}
			}
		}()
		err := CreateFromOCIImage(ctx, CreateFromOCIImageOptions{
			ImageRef: "127.0.0.1:1/never/fetched:latest", LocalLayoutPath: layout,
			OutputPath: out, ProgressChan: progress, IndexConcurrency: 1,
		})
		returned := time.Now()
		close(progress)
		<-done
		if !errors.Is(err, context.Canceled) || !errors.Is(err, ErrCanceled) {
			t.Fatalf("got %v, want an error matching context.Canceled and ErrCanceled", err)
		}
		if d := returned.Sub(cancelledAt); d > 2*time.Second {
			t.Fatalf("returned %v after cancel, want promptly", d)
		}
		assertEmptyDir(t, outDir)
	})

	t.Run("token", func(t *testing.T) {
		// No progress channel: only the cancel token can stop the call.
		ctx, cancel := context.WithCancel(context.Background())
		time.AfterFunc(full/4, cancel)
		start := time.Now()
		err := CreateIndexOnlyArchiveFromOCILayout(ctx, layout, "latest", out)
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("got %v after %v, want context.Canceled", err, time.Since(start))
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Fatalf("returned after %v, want promptly", d)
		}
		assertEmptyDir(t, outDir)
	})

	t.Run("already-cancelled", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		err := CreateIndexOnlyArchiveFromOCILayout(ctx, layout, "latest", out)
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("got %v, want context.Canceled", err)
		}
		assertEmptyDir(t, outDir)
	})

}

func assertEmptyDir(t *testing.T, dir string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if len(names) > 0 {
		sort.Strings(names)
		t.Fatalf("%s holds %v after a cancelled call, want nothing", dir, names)
	}
}

// Flow 4: 16 goroutines mount the same archive (one shared cache), read, and
// unmount at once.
func TestConcurrentMounts(t *testing.T) {
	testutil.NeedFUSE(t)
	dir := t.TempDir()
	img := testutil.SampleImage(4 << 20)
	layout := filepath.Join(dir, "layout")
	testutil.WriteLayout(t, layout, "v1", img)
	reg := testutil.StartRegistry(t, false)
	reg.Push(t, layout, "v1", "team/many:v1")
	out := filepath.Join(dir, "many.clip")
	if err := CreateFromOCIImage(context.Background(), CreateFromOCIImageOptions{ImageRef: reg.Ref("team/many:v1"), OutputPath: out}); err != nil {
		t.Fatal(err)
	}
	meta, err := NewClipArchiver().ExtractMetadata(out)
	if err != nil {
		t.Fatal(err)
	}
	want := testutil.Expected(img)
	const n = 16
	errs := make(chan error, n)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			errs <- mountReadUnmount(MountOptions{
				ArchivePath: out, Metadata: meta, CachePath: filepath.Join(dir, "cache"),
				MountPoint: filepath.Join(dir, "mnt", string(rune('a'+i))),
			}, want)
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
}

func mountReadUnmount(opts MountOptions, want testutil.Tree) error {
	errs, server, err := mountLive(opts)
	if err != nil {
		return err
	}
	for _, p := range []string{"/etc/os-release", "/data/big.txt", "/usr/bin/hello2", "/app/main.py"} {
		b, err := os.ReadFile(opts.MountPoint + p)
		if err != nil || int64(len(b)) != want[p].Size {
			_ = server.Unmount()
			return errors.Join(errors.New(opts.MountPoint+p+": short or failed read"), err)
		}
	}
	if err := server.Unmount(); err != nil {
		return err
	}
	return closed(errs)
}
