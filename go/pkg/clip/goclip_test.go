package clip

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/beam-cloud/clip/go/internal/testutil"
	"github.com/beam-cloud/clip/go/pkg/common"
	"github.com/beam-cloud/clip/go/pkg/storage"
)

// goclipGen runs tests/goclip-gen: the ORIGINAL Go clip (the version beta9 pins),
// writing archives as production does today.
type goclipGen struct {
	bin    string
	docker string // an empty DOCKER_CONFIG: no credentials from the machine
}

// buildGoclipGen builds tests/goclip-gen into a temp dir (the Go build cache makes
// this quick after the first time); it fails the test when the build fails.
func buildGoclipGen(t *testing.T) *goclipGen {
	t.Helper()
	testutil.Need(t, "go")
	src, err := filepath.Abs(filepath.Join("..", "..", "..", "tests", "goclip-gen"))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "goclip-gen")
	cmd := exec.Command("go", "build", "-trimpath", "-o", bin, ".")
	cmd.Dir = src
	// The generator is plain Go, built with its committed go.sum (no -mod=mod from
	// GOFLAGS); its go.mod names go 1.25.0, which an older go fetches itself
	// unless its go.env says GOTOOLCHAIN=local.
	// GOEXPERIMENT=cgocheck2 (make test's second run) is for this package, not
	// the generator: without it the build cache serves the generator.
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=-buildvcs=false", "GOEXPERIMENT=")
	if os.Getenv("GOTOOLCHAIN") == "" {
		cmd.Env = append(cmd.Env, "GOTOOLCHAIN=auto")
	}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building the Go clip generator in %s failed: %v\n%s", src, err, out)
	}
	docker := filepath.Join(dir, "docker-config")
	if err := os.Mkdir(docker, 0o755); err != nil {
		t.Fatal(err)
	}
	return &goclipGen{bin: bin, docker: docker}
}

// run runs goclip-gen with args (and extra environment) and returns its stdout;
// it fails the test with the command's output on error.
func (g *goclipGen) run(t *testing.T, env []string, args ...string) []byte {
	t.Helper()
	cmd := exec.Command(g.bin, args...)
	base := []string{"DOCKER_CONFIG=" + g.docker}
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch k {
		case "DOCKER_CONFIG", "CLIP_OCI_AUTH", "AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_CA_BUNDLE",
			"AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
			"AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE":
			continue
		}
		base = append(base, kv)
	}
	cmd.Env = append(base, env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("goclip-gen %s: %v\n--- stdout ---\n%s\n--- stderr ---\n%s", strings.Join(args, " "), err, stdout.Bytes(), stderr.Bytes())
	}
	return stdout.Bytes()
}

// goclipMeta is what the Go clip's own ExtractMetadata read (goclip-gen meta).
type goclipMeta struct {
	StorageType string          `json:"storage_type"`
	Storage     json.RawMessage `json:"storage"`
	Header      struct {
		IndexLength       int64
		IndexPos          int64
		StorageInfoLength int64
		StorageInfoPos    int64
		StorageInfoType   string
	} `json:"header"`
	Nodes []struct {
		Path     string
		NodeType string
		DataPos  int64
		DataLen  int64
	} `json:"nodes"`
}

func (g *goclipGen) meta(t *testing.T, archive string) goclipMeta {
	t.Helper()
	out := g.run(t, nil, "meta", archive)
	var m goclipMeta
	if err := json.Unmarshal(out, &m); err != nil {
		t.Fatalf("goclip-gen meta %s: %v\n%s", archive, err, out)
	}
	return m
}

// goclipSource is the v1 source tree (testutil.MakeTree without its FIFO and
// device: the Go clip reads a FIFO as a regular file and hangs) and what a mount
// of the Go clip's archive of it must show: permission bits & 0777 only, no
// xattrs, each hard link a file of its own.
func goclipSource(t *testing.T) (string, testutil.FullTree) {
	t.Helper()
	src := testutil.MakeTree(t, filepath.Join(t.TempDir(), "bundle"))
	for _, p := range []string{"tmp/fifo", "tmp/null"} {
		if err := os.Remove(filepath.Join(src, p)); err != nil && !os.IsNotExist(err) {
			t.Fatal(err)
		}
	}
	want := testutil.Scan(t, src)
	for p, n := range want {
		if n.Type != "file" && n.Type != "dir" && n.Type != "symlink" {
			t.Fatalf("%s: %s left in the Go clip's source tree", p, n.Type)
		}
		n.Mode &= 0o777
		n.Xattrs = nil
		n.Links = ""
		want[p] = n
	}
	return src, want
}

// jsonFields decodes v (a struct or raw JSON) into its JSON object.
func jsonFields(t *testing.T, v any) map[string]any {
	t.Helper()
	b, ok := v.(json.RawMessage)
	if !ok {
		var err error
		if b, err = json.Marshal(v); err != nil {
			t.Fatal(err)
		}
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("%s: %v", b, err)
	}
	return m
}

// sameFields fails the test unless got and want (JSON objects) agree on fields,
// each of which want must have.
func sameFields(t *testing.T, what string, got, want map[string]any, fields ...string) {
	t.Helper()
	for _, f := range fields {
		g, w := got[f], want[f]
		if w == nil {
			t.Errorf("%s.%s: the Go clip's metadata has none (%v): the fixture is broken", what, f, want)
		} else if !reflect.DeepEqual(g, w) {
			t.Errorf("%s.%s: got %v, the Go clip %v", what, f, g, w)
		}
	}
}

func sha256Hex(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// within fails the test when f does not return within d (a hang).
func within[T any](t *testing.T, what string, d time.Duration, f func() T) T {
	t.Helper()
	done := make(chan T, 1)
	go func() { done <- f() }()
	select {
	case v := <-done:
		return v
	case <-time.After(d):
		t.Fatalf("%s: no answer within %v", what, d)
		panic("unreachable")
	}
}

// Archives written by the ORIGINAL Go clip, which every archive in a worker's
// registries and caches is today: ExtractMetadata gives the storage info the Go
// clip's own ExtractMetadata gives, and MountArchive serves them.
func TestGoclipArchives(t *testing.T) {
	gen := buildGoclipGen(t)

	t.Run("v1", func(t *testing.T) {
		src, want := goclipSource(t)
		dir := t.TempDir()
		archive := filepath.Join(dir, "image.clip")
		gen.run(t, nil, "v1", src, archive)
		if gm := gen.meta(t, archive); gm.StorageType != "" {
			t.Fatalf("the Go clip reads storage type %q from its v1 archive, want none", gm.StorageType)
		}
		meta, err := NewClipArchiver().ExtractMetadata(archive)
		if err != nil {
			t.Fatal(err)
		}
		if meta.StorageInfo != nil {
			t.Fatalf("StorageInfo of a Go clip v1 archive: got %#v, want nil", meta.StorageInfo)
		}
		if fi, _ := os.Stat(archive); meta.Header.Path != archive || meta.Header.ArchiveSize != fi.Size() || meta.Header.CreatedBy != "the Go clip" {
			t.Fatalf("header %+v: want the path and size of %s, created by the Go clip", meta.Header, archive)
		}
		mountV1AndCompare(t, MountOptions{
			ArchivePath: archive,
			Metadata:    meta,
			MountPoint:  filepath.Join(dir, "mnt"),
			CachePath:   filepath.Join(dir, "image.cache"),
		}, want)
	})

	t.Run("rclip", func(t *testing.T) {
		s3 := testutil.StartS3(t)
		s3.CreateBucket(t, "images")
		// The full archive is downloaded into the default cache dir (CachePath is the
		// worker's file path for v1 data): keep it in the test's temp dir.
		cacheDir := t.TempDir()
		t.Setenv("CLIP_CACHE_DIR", cacheDir)
		src, want := goclipSource(t)
		dir := t.TempDir()
		rclip := filepath.Join(dir, "image.rclip")
		gen.run(t, []string{
			"AWS_ACCESS_KEY_ID=" + s3.AccessKey, "AWS_SECRET_ACCESS_KEY=" + s3.SecretKey,
			// Nothing from the machine's AWS setup (AWS_CA_BUNDLE breaks the Go
			// clip's S3 client).
			"AWS_CONFIG_FILE=/dev/null", "AWS_SHARED_CREDENTIALS_FILE=/dev/null",
		}, "rclip", src, rclip, "--bucket", "images", "--key", "team/image.clip",
			"--endpoint", s3.Endpoint, "--region", s3.Region, "--path-style")
		if fi, err := os.Stat(s3.ObjectPath("images", "team/image.clip")); err != nil || fi.Size() == 0 {
			t.Fatalf("the Go clip did not upload the full archive: %v", err)
		}
		gm := gen.meta(t, rclip)
		if gm.StorageType != "s3" {
			t.Fatalf("the Go clip reads storage type %q from its .rclip, want s3", gm.StorageType)
		}
		meta, err := NewClipArchiver().ExtractMetadata(rclip)
		if err != nil {
			t.Fatal(err)
		}
		si, ok := meta.StorageInfo.(common.S3StorageInfo)
		if !ok {
			t.Fatalf("StorageInfo is %T, want common.S3StorageInfo", meta.StorageInfo)
		}
		sameFields(t, "S3StorageInfo", jsonFields(t, si), jsonFields(t, gm.Storage),
			"Bucket", "Region", "Key", "Endpoint", "ForcePathStyle")
		wantSI := common.S3StorageInfo{Bucket: "images", Region: s3.Region, Key: "team/image.clip", Endpoint: s3.Endpoint, ForcePathStyle: true}
		if si != wantSI {
			t.Fatalf("StorageInfo %#v, want %#v", si, wantSI)
		}
		creds := storage.ClipStorageCredentials{S3: &storage.S3ClipStorageCredentials{AccessKey: s3.AccessKey, SecretKey: s3.SecretKey}}
		mountV1AndCompare(t, MountOptions{
			ArchivePath: rclip,
			Metadata:    meta,
			MountPoint:  filepath.Join(dir, "mnt"),
			CachePath:   filepath.Join(dir, "cache", "image.clip"),
			StorageInfo: &si,
			Credentials: creds,
		}, want)
		downloads, _ := filepath.Glob(filepath.Join(cacheDir, "goclip", "*.data"))
		if len(downloads) != 1 {
			t.Fatalf("downloads in %s: %v, want the full archive once", cacheDir, downloads)
		}
		// Once downloaded, it is served from the cache: no S3 request is needed.
		if err := os.Remove(s3.ObjectPath("images", "team/image.clip")); err != nil {
			t.Fatal(err)
		}
		mountV1AndCompare(t, MountOptions{
			ArchivePath: rclip, Metadata: meta, MountPoint: filepath.Join(dir, "mnt2"),
			StorageInfo: &si, Credentials: creds,
		}, want)
	})

	t.Run("v2", func(t *testing.T) {
		testutil.NeedFUSE(t)
		dir := t.TempDir()
		img := testutil.SampleImage(3 << 20)
		img.Entrypoint = []string{"/bin/sh", "-c"}
		layout := filepath.Join(dir, "layout")
		manifest := testutil.WriteLayout(t, layout, "v1", img)
		reg := testutil.StartRegistry(t, false)
		reg.Push(t, layout, "v1", "team/app:v1")
		archive := filepath.Join(dir, "app.clip")
		gen.run(t, nil, "v2", reg.Ref("team/app:v1"), archive)
		gm := gen.meta(t, archive)
		if gm.StorageType != "oci" {
			t.Fatalf("the Go clip reads storage type %q from its v2 archive, want oci", gm.StorageType)
		}
		meta, err := NewClipArchiver().ExtractMetadata(archive)
		if err != nil {
			t.Fatal(err)
		}
		// beta9's switch on the storage info (value or pointer).
		var info common.OCIStorageInfo
		switch si := meta.StorageInfo.(type) {
		case common.OCIStorageInfo:
			info = si
		case *common.OCIStorageInfo:
			t.Fatalf("StorageInfo is a pointer, the Go clip gave a value")
		default:
			t.Fatalf("StorageInfo is %T, want common.OCIStorageInfo", meta.StorageInfo)
		}
		if meta.StorageInfo.Type() != "oci" {
			t.Fatalf("StorageInfo.Type() = %q", meta.StorageInfo.Type())
		}
		got, want := jsonFields(t, info), jsonFields(t, gm.Storage)
		sameFields(t, "OCIStorageInfo", got, want, "RegistryURL", "Repository", "Reference", "Layers", "DecompressedHashByLayer")
		gotIM, _ := got["ImageMetadata"].(map[string]any)
		wantIM, _ := want["ImageMetadata"].(map[string]any)
		if gotIM == nil || wantIM == nil {
			t.Fatalf("ImageMetadata: got %v, the Go clip %v", got["ImageMetadata"], want["ImageMetadata"])
		}
		sameFields(t, "ImageMetadata", gotIM, wantIM, "Env", "Cmd", "Entrypoint", "User", "WorkingDir", "Labels",
			"Architecture", "Os", "Created", "Layers", "LayersData")
		if info.RegistryURL != reg.Addr || info.Repository != "team/app" || len(info.Layers) != 3 {
			t.Fatalf("storage info %+v: want %s, team/app, 3 layers", info, reg.Addr)
		}
		t.Logf("Reference %q (manifest %s)", info.Reference, manifest)
		if t.Failed() {
			t.FailNow()
		}

		cache := filepath.Join(dir, "cache")
		wantTree := testutil.Expected(img)
		check := func(mnt string) time.Duration {
			t.Helper()
			start := time.Now()
			errs, server, err := mountLive(MountOptions{
				ArchivePath: archive, Metadata: meta, MountPoint: mnt, CachePath: cache,
			})
			took := time.Since(start)
			if err != nil {
				t.Fatal(err)
			}
			for _, p := range []string{"/data/big.txt", "/etc/hostname", "/app/main.py", "/usr/bin/hello2"} {
				b, err := os.ReadFile(filepath.Join(mnt, p))
				if err != nil {
					_ = server.Unmount()
					t.Fatal(err)
				}
				if w := wantTree[p]; w.Kind != "file" || w.Size != int64(len(b)) || w.SHA256 != sha256Hex(b) {
					_ = server.Unmount()
					t.Fatalf("%s: read %d bytes (sha256 %s), want %s", p, len(b), sha256Hex(b), w)
				}
			}
			if _, err := os.Stat(filepath.Join(mnt, "etc/motd")); !os.IsNotExist(err) {
				_ = server.Unmount()
				t.Fatalf("/etc/motd (whited out): stat gives %v", err)
			}
			if err := server.Unmount(); err != nil {
				t.Fatalf("Unmount: %v", err)
			}
			waitClosed(t, errs)
			return took
		}
		first := check(filepath.Join(dir, "mnt"))
		conv, _ := filepath.Glob(filepath.Join(cache, "goclip", "*.clip"))
		if len(conv) != 1 {
			t.Fatalf("conversions in %s: %v, want one", filepath.Join(cache, "goclip"), conv)
		}
		second := check(filepath.Join(dir, "mnt2"))
		t.Logf("MountArchive of the Go clip v2 archive: first %v (re-indexes the image), second %v (cached conversion)", first, second)
	})

	t.Run("corrupt", func(t *testing.T) {
		dir := t.TempDir()
		src := filepath.Join(dir, "src")
		for _, d := range []string{"etc", "usr/lib"} {
			if err := os.MkdirAll(filepath.Join(src, d), 0o755); err != nil {
				t.Fatal(err)
			}
		}
		files := map[string]string{
			"etc/os-release": "ID=goclip\n",
			"usr/lib/data":   strings.Repeat("some data of a library\n", 4000),
			"empty":          "",
		}
		for p, d := range files {
			if err := os.WriteFile(filepath.Join(src, p), []byte(d), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		good := filepath.Join(dir, "good.clip")
		gen.run(t, nil, "v1", src, good)
		gm := gen.meta(t, good)
		b, err := os.ReadFile(good)
		if err != nil {
			t.Fatal(err)
		}
		ip, il := gm.Header.IndexPos, gm.Header.IndexLength
		if ip < 54 || il <= 0 || ip+il > int64(len(b)) {
			t.Fatalf("the Go clip's header: index %d bytes at %d in %d", il, ip, len(b))
		}
		extract := func(name string, data []byte) error {
			t.Helper()
			p := filepath.Join(dir, name)
			if err := os.WriteFile(p, data, 0o644); err != nil {
				t.Fatal(err)
			}
			defer os.Remove(p)
			return within(t, "ExtractMetadata of "+name, 30*time.Second, func() error {
				_, err := NewClipArchiver().ExtractMetadata(p)
				if err != nil && !strings.Contains(err.Error(), p) {
					return fmt.Errorf("error does not name %s: %w", p, err)
				}
				return err
			})
		}

		// Truncated: in the header, in the data, in the index.
		for _, n := range []int64{0, 5, 9, 10, 53, 54, 55, ip / 2, ip, ip + 1, ip + il/2, ip + il - 1} {
			err := extract(fmt.Sprintf("truncated-%d.clip", n), b[:n])
			if err == nil {
				t.Fatalf("truncated to %d bytes: no error", n)
			}
			if !errors.Is(err, ErrFormat) || !errors.Is(err, common.ErrFileHeaderMismatch) || strings.Contains(err.Error(), "panic") {
				t.Fatalf("truncated to %d bytes: %v, want ErrFormat and common.ErrFileHeaderMismatch", n, err)
			}
			if n < 54 && !strings.Contains(err.Error(), "header") {
				t.Fatalf("truncated to %d bytes: %v, want it to say the header is short", n, err)
			}
			if n >= 54 && !strings.Contains(err.Error(), "truncated") {
				t.Fatalf("truncated to %d bytes: %v, want it to say truncated", n, err)
			}
		}

		// A mount of a truncated archive fails as clearly.
		truncated := filepath.Join(dir, "truncated.clip")
		if err := os.WriteFile(truncated, b[:ip+il/2], 0o644); err != nil {
			t.Fatal(err)
		}
		_, _, _, err = MountArchive(MountOptions{ArchivePath: truncated, MountPoint: filepath.Join(dir, "mnt-truncated")})
		if !errors.Is(err, ErrFormat) || !strings.Contains(err.Error(), truncated) {
			t.Fatalf("MountArchive of a truncated archive: %v, want ErrFormat naming it", err)
		}

		// A bad header: start bytes, version, index position.
		flip := func(at int64, x byte) []byte {
			c := append([]byte(nil), b...)
			c[at] ^= x
			return c
		}
		for _, at := range []int64{0, 4, 8} {
			err := extract("bad-start.clip", flip(at, 0x20))
			if !errors.Is(err, common.ErrFileHeaderMismatch) {
				t.Fatalf("start byte %d changed: %v, want common.ErrFileHeaderMismatch", at, err)
			}
		}
		err = extract("bad-version.clip", flip(9, 0x02))
		if !errors.Is(err, ErrVersion) || !errors.Is(err, common.ErrFileHeaderMismatch) {
			t.Fatalf("version byte changed: %v, want ErrVersion and common.ErrFileHeaderMismatch", err)
		}
		for _, at := range []int64{10 + 7, 18 + 7, 18} {
			err := extract("bad-index-pos.clip", flip(at, 0x40))
			if !errors.Is(err, ErrFormat) || !errors.Is(err, common.ErrFileHeaderMismatch) {
				t.Fatalf("header byte %d changed: %v, want ErrFormat and common.ErrFileHeaderMismatch", at, err)
			}
		}

		// Flipped bytes in the index: an error (or, where the flip gives another
		// valid index, none), never a panic or a hang. The gob stream's first
		// bytes (message length, type ids) must fail.
		for _, at := range []int64{ip, ip + 1} {
			if err := extract("bad-index.clip", flip(at, 0xff)); !errors.Is(err, ErrFormat) {
				t.Fatalf("index byte %d (of %d) flipped: %v, want ErrFormat", at-ip, il, err)
			}
		}
		failed := 0
		step := max(1, il/400)
		for at := ip; at < ip+il; at += step {
			err := extract("flipped-index.clip", flip(at, 0xff))
			var ce *Error
			switch {
			case err == nil:
			case errors.As(err, &ce) && ce.Code == CodeFormat:
				failed++
			default:
				t.Fatalf("index byte %d flipped: %v, want ErrFormat or no error", at-ip, err)
			}
		}
		t.Logf("flipping single bytes of the %d-byte index (every %d): %d of %d rejected", il, step, failed, (il+step-1)/step)

		// Changed file data: the index still reads, the mount refuses the archive
		// naming the file.
		testutil.NeedFUSE(t)
		var pos int64 = -1
		for _, n := range gm.Nodes {
			if n.Path == "/usr/lib/data" {
				pos = n.DataPos + n.DataLen/2
			}
		}
		if pos < 0 {
			t.Fatalf("no /usr/lib/data in the Go clip's index: %+v", gm.Nodes)
		}
		changed := filepath.Join(dir, "changed.clip")
		if err := os.WriteFile(changed, flip(pos, 0x01), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := NewClipArchiver().ExtractMetadata(changed); err != nil {
			t.Fatalf("ExtractMetadata of an archive with changed data: %v", err)
		}
		err = within(t, "MountArchive of changed data", 30*time.Second, func() error {
			errs, server, err := mountLive(MountOptions{ArchivePath: changed, MountPoint: filepath.Join(dir, "mnt")})
			if err == nil {
				_ = server.Unmount()
				<-errs
			}
			return err
		})
		if err == nil || !strings.Contains(err.Error(), "/usr/lib/data") {
			t.Fatalf("MountArchive of a Go clip archive with changed data: %v, want an error naming /usr/lib/data", err)
		}
		t.Logf("changed data: %v", err)
	})
}
