package clip

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/beam-cloud/clip/go/internal/testutil"
	"github.com/beam-cloud/clip/go/pkg/common"
	"github.com/beam-cloud/clip/go/pkg/storage"
)

// v1Source writes the tricky source tree of the v1 tests and scans it.
func v1Source(t *testing.T) (string, testutil.FullTree) {
	t.Helper()
	src := testutil.MakeTree(t, filepath.Join(t.TempDir(), "bundle"))
	return src, testutil.Scan(t, src)
}

// mountV1AndCompare mounts as the worker does (MountArchive, start, wait for the
// mount table), compares the mounted tree with want entry by entry, unmounts and
// checks the channel closes.
func mountV1AndCompare(t *testing.T, opts MountOptions, want testutil.FullTree) {
	t.Helper()
	testutil.NeedFUSE(t)
	if len(want) < 20 {
		t.Fatalf("the source tree has %d entries: the fixture is broken", len(want))
	}
	errs, server, err := mountLive(opts)
	if err != nil {
		t.Fatal(err)
	}
	got := testutil.Scan(t, opts.MountPoint)
	if d := testutil.DiffFull(want, got); len(d) > 0 {
		_ = server.Unmount()
		t.Fatalf("mounted tree differs from the source (%d differences):\n%s", len(d), strings.Join(d, "\n"))
	}
	if err := server.Unmount(); err != nil {
		t.Fatalf("Unmount: %v", err)
	}
	waitClosed(t, errs)
}

// The worker's `registryStore: local` flow: CreateArchive of the bundle, the
// archive's metadata extracted (no storage info for a local v1 archive), then a
// mount of it with the worker's options (CachePath is a file path for v1).
func TestV1LocalFlow(t *testing.T) {
	src, want := v1Source(t)
	dir := t.TempDir()
	archive := filepath.Join(dir, "image.clip")
	if err := CreateArchive(CreateOptions{InputPath: src, OutputPath: archive}); err != nil {
		t.Fatal(err)
	}
	meta, err := NewClipArchiver().ExtractMetadata(archive)
	if err != nil {
		t.Fatal(err)
	}
	if meta.StorageInfo != nil {
		t.Fatalf("StorageInfo of a local v1 archive: got %#v, want nil", meta.StorageInfo)
	}
	if meta.Header.Path != archive || meta.Header.ArchiveSize <= 0 {
		t.Fatalf("header %+v: want the path and size of %s", meta.Header, archive)
	}
	cachePath := filepath.Join(dir, "image.cache")
	mountV1AndCompare(t, MountOptions{
		ArchivePath: archive,
		Metadata:    meta,
		MountPoint:  filepath.Join(dir, "mnt"),
		CachePath:   cachePath,
	}, want)
	if _, err := os.Stat(cachePath); err == nil {
		t.Fatalf("a v1 mount created %s (the worker's file path for v1 data)", cachePath)
	}
	// Without Metadata the archive is read from ArchivePath.
	mountV1AndCompare(t, MountOptions{ArchivePath: archive, MountPoint: filepath.Join(dir, "mnt2")}, want)
}

// beta9's tests build v1 archives with ClipArchiver.Create (SourcePath,
// OutputFile, ArchivePath, the output sometimes named .rclip) and read them
// back with ExtractMetadata.
func TestV1ArchiverCreate(t *testing.T) {
	src, want := v1Source(t)
	for _, name := range []string{"legacy.clip", "legacy.rclip"} {
		out := filepath.Join(t.TempDir(), name)
		a := NewClipArchiver()
		if err := a.Create(ClipArchiverOptions{SourcePath: src, OutputFile: out, ArchivePath: out}); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		meta, err := a.ExtractMetadata(out)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if meta.StorageInfo != nil {
			t.Fatalf("%s: StorageInfo %#v, want nil", name, meta.StorageInfo)
		}
		if name == "legacy.rclip" {
			// The reader goes by the header, not the name: this one mounts from itself.
			mountV1AndCompare(t, MountOptions{ArchivePath: out, Metadata: meta, MountPoint: filepath.Join(t.TempDir(), "mnt")}, want)
		}
	}
	err := NewClipArchiver().Create(ClipArchiverOptions{SourcePath: filepath.Join(t.TempDir(), "missing"), OutputFile: filepath.Join(t.TempDir(), "x.clip")})
	wantErr(t, "a missing source", err, ErrNotFound)
}

// CreateRemoteArchive writes a .rclip for a v1 archive that ExtractMetadata reads
// back as S3 storage info (beta9's cache tests); the StorageModeOverride local
// flow then mounts the full .clip with that .rclip's metadata, making no S3
// request (the endpoint is a closed port).
func TestV1RemoteArchiveAndLocalOverride(t *testing.T) {
	src, want := v1Source(t)
	dir := t.TempDir()
	full := filepath.Join(dir, "image.clip")
	if err := CreateArchive(CreateOptions{InputPath: src, OutputPath: full}); err != nil {
		t.Fatal(err)
	}
	a := NewClipArchiver()
	meta, err := a.ExtractMetadata(full)
	if err != nil {
		t.Fatal(err)
	}
	si := common.S3StorageInfo{Bucket: "images", Key: "team/image.clip", Region: "eu-west-1", Endpoint: "http://127.0.0.1:1", ForcePathStyle: true}
	rclip := filepath.Join(dir, "image.rclip")
	for _, info := range []common.ClipStorageInfo{&si, si} {
		if err := a.CreateRemoteArchive(info, meta, rclip); err != nil {
			t.Fatalf("CreateRemoteArchive(%T): %v", info, err)
		}
		rmeta, err := a.ExtractMetadata(rclip)
		if err != nil {
			t.Fatal(err)
		}
		got, ok := rmeta.StorageInfo.(common.S3StorageInfo)
		if !ok || !reflect.DeepEqual(got, si) {
			t.Fatalf("StorageInfo of the .rclip: got %#v, want %#v", rmeta.StorageInfo, si)
		}
		if fi, _ := os.Stat(rclip); fi.Size() >= meta.Header.ArchiveSize {
			t.Fatalf(".rclip is %d bytes, the full archive %d: want metadata only", fi.Size(), meta.Header.ArchiveSize)
		}
	}
	rmeta, err := a.ExtractMetadata(rclip)
	if err != nil {
		t.Fatal(err)
	}
	// The worker: ArchivePath = the restored full .clip, Metadata = the .rclip's.
	mountV1AndCompare(t, MountOptions{
		ArchivePath:         full,
		Metadata:            rmeta,
		MountPoint:          filepath.Join(dir, "mnt"),
		CachePath:           filepath.Join(dir, "image.clip.cache"),
		StorageModeOverride: common.StorageModeLocal,
	}, want)

	// A .rclip of a .rclip names the new location.
	other := common.S3StorageInfo{Bucket: "b2", Key: "k2"}
	again := filepath.Join(dir, "again.rclip")
	if err := a.CreateRemoteArchive(&other, rmeta, again); err != nil {
		t.Fatal(err)
	}
	if m, err := a.ExtractMetadata(again); err != nil || m.StorageInfo.(common.S3StorageInfo).Bucket != "b2" {
		t.Fatalf("ExtractMetadata of a .rclip of a .rclip: %+v, %v", m, err)
	}

	// What CreateRemoteArchive refuses, clearly and without a panic.
	wantErr(t, "nil metadata", a.CreateRemoteArchive(&si, nil, rclip), ErrInvalid)
	wantErr(t, "metadata not from ExtractMetadata", a.CreateRemoteArchive(&si, &common.ClipArchiveMetadata{}, rclip), ErrInvalid, "ExtractMetadata")
	wantErr(t, "nil storage info", a.CreateRemoteArchive(nil, meta, rclip), ErrInvalid)
	wantErr(t, "a nil *S3StorageInfo", a.CreateRemoteArchive((*common.S3StorageInfo)(nil), meta, rclip), ErrInvalid)
	// An OCI storage info round-trips through ExtractMetadata, as with the Go
	// clip (beta9's cache reconciler test protects layers named this way).
	oci := &common.OCIStorageInfo{
		RegistryURL:             "registry.example:5000",
		Repository:              "team/app",
		Reference:               "sha256:" + strings.Repeat("1", 64),
		Layers:                  []string{"sha256:" + strings.Repeat("2", 64)},
		DecompressedHashByLayer: map[string]string{"sha256:active": strings.Repeat("a", 64)},
		ImageMetadata:           &common.ImageMetadata{Env: []string{"A=1"}, Cmd: []string{"run"}, WorkingDir: "/app", Created: time.Date(2024, 3, 5, 7, 8, 9, 0, time.UTC)},
	}
	ociPath := filepath.Join(dir, "active.rclip")
	if err := a.CreateRemoteArchive(oci, meta, ociPath); err != nil {
		t.Fatal(err)
	}
	om, err := a.ExtractMetadata(ociPath)
	if err != nil {
		t.Fatal(err)
	}
	got, ok := om.StorageInfo.(common.OCIStorageInfo)
	if !ok || !reflect.DeepEqual(&got, oci) {
		t.Fatalf("ExtractMetadata of an OCI .rclip: %#v, want %#v", om.StorageInfo, oci)
	}
	wantErr(t, "no key", a.CreateRemoteArchive(&common.S3StorageInfo{Bucket: "b"}, meta, rclip), ErrInvalid, "Key")
}

// collectPercent drains an upload progress channel the way the worker does
// (container_server.go forwards each int); the caller closes the channel after
// the call returns, so a late send panics the test.
func collectPercent(ch chan int) func() []int {
	var got []int
	done := make(chan struct{})
	go func() {
		defer close(done)
		for p := range ch {
			got = append(got, p)
		}
	}()
	return func() []int {
		close(ch)
		<-done
		return got
	}
}

// The worker's `registryStore: s3` flow against a real S3 server on 127.0.0.1:
// CreateAndUploadArchive with credentials and a progress channel, the .rclip's
// metadata, then a mount of the .rclip with StorageInfo and Credentials as the
// worker passes them.
func TestV1S3Flow(t *testing.T) {
	s3 := testutil.StartS3(t)
	s3.CreateBucket(t, "images")
	src, want := v1Source(t)
	dir := t.TempDir()
	rclip := filepath.Join(dir, "image.rclip")
	si := &common.S3StorageInfo{Bucket: "images", Region: s3.Region, Endpoint: s3.Endpoint, Key: "image.clip", ForcePathStyle: true}
	creds := storage.ClipStorageCredentials{S3: &storage.S3ClipStorageCredentials{AccessKey: s3.AccessKey, SecretKey: s3.SecretKey}}
	ch := make(chan int)
	percents := collectPercent(ch)
	err := CreateAndUploadArchive(context.Background(), CreateOptions{
		InputPath: src, OutputPath: rclip, Credentials: creds, ProgressChan: ch,
	}, si)
	got := percents()
	if err != nil {
		t.Fatal(err)
	}
	if len(got) == 0 || got[len(got)-1] != 100 {
		t.Fatalf("upload progress %v: want it to reach 100", got)
	}
	for i, p := range got {
		if p < 0 || p > 100 || (i > 0 && p < got[i-1]) {
			t.Fatalf("upload progress %v: want 0..100, never decreasing", got)
		}
	}
	if fi, err := os.Stat(s3.ObjectPath("images", "image.clip")); err != nil || fi.Size() == 0 {
		t.Fatalf("the full archive is not in the bucket: %v", err)
	}
	meta, err := NewClipArchiver().ExtractMetadata(rclip)
	if err != nil {
		t.Fatal(err)
	}
	if info, ok := meta.StorageInfo.(common.S3StorageInfo); !ok || info != *si {
		t.Fatalf("StorageInfo of the .rclip: got %#v, want %#v", meta.StorageInfo, *si)
	}
	// The worker's v1 S3 mount: the .rclip, its metadata, the bucket and
	// credentials from its config, CachePath a file path.
	mountV1AndCompare(t, MountOptions{
		ArchivePath: rclip,
		Metadata:    meta,
		MountPoint:  filepath.Join(dir, "mnt"),
		CachePath:   filepath.Join(dir, "cache", "image.clip"),
		StorageInfo: si,
		Credentials: creds,
	}, want)
	// Without overrides: the location the .rclip names, credentials from AWS_*.
	t.Setenv("AWS_ACCESS_KEY_ID", s3.AccessKey)
	t.Setenv("AWS_SECRET_ACCESS_KEY", s3.SecretKey)
	mountV1AndCompare(t, MountOptions{ArchivePath: rclip, MountPoint: filepath.Join(dir, "mnt2")}, want)

	// A nil Credentials.S3 means the AWS_* variables, for uploads too.
	rclip2 := filepath.Join(dir, "env.rclip")
	si2 := *si
	si2.Key = "nested/env.clip"
	if err := CreateAndUploadArchive(context.Background(), CreateOptions{InputPath: src, OutputPath: rclip2}, &si2); err != nil {
		t.Fatalf("upload with AWS_* credentials: %v", err)
	}
	if _, err := os.Stat(s3.ObjectPath("images", "nested/env.clip")); err != nil {
		t.Fatal(err)
	}
}

// What CreateAndUploadArchive refuses: anything but a *S3StorageInfo (the Go
// clip panicked on a value), wrong credentials, a missing bucket, a cancelled
// context. Nothing is left at OutputPath, and nothing is sent after it returns.
func TestV1UploadErrors(t *testing.T) {
	s3 := testutil.StartS3(t)
	s3.CreateBucket(t, "images")
	src := testutil.MakeTree(t, filepath.Join(t.TempDir(), "bundle"))
	dir := t.TempDir()
	out := filepath.Join(dir, "image.rclip")
	good := common.S3StorageInfo{Bucket: "images", Region: s3.Region, Endpoint: s3.Endpoint, Key: "image.clip", ForcePathStyle: true}
	creds := storage.ClipStorageCredentials{S3: &storage.S3ClipStorageCredentials{AccessKey: s3.AccessKey, SecretKey: s3.SecretKey}}
	opts := CreateOptions{InputPath: src, OutputPath: out, Credentials: creds}
	ctx := context.Background()

	for _, si := range []common.ClipStorageInfo{nil, good, (*common.S3StorageInfo)(nil), &common.OCIStorageInfo{}} {
		wantErr(t, fmt.Sprintf("storage info %T", si), CreateAndUploadArchive(ctx, opts, si), ErrInvalid, "*common.S3StorageInfo")
	}
	noKey := good
	noKey.Key = ""
	wantErr(t, "no key", CreateAndUploadArchive(ctx, opts, &noKey), ErrInvalid, "Key")

	wrong := opts
	wrong.Credentials = storage.ClipStorageCredentials{S3: &storage.S3ClipStorageCredentials{AccessKey: s3.AccessKey, SecretKey: "not-the-secret"}}
	wantErr(t, "wrong credentials", CreateAndUploadArchive(ctx, wrong, &good), ErrAuth)
	noBucket := good
	noBucket.Bucket = "no-such-bucket"
	wantErr(t, "a missing bucket", CreateAndUploadArchive(ctx, opts, &noBucket), ErrNotFound, "no-such-bucket")

	cctx, cancel := context.WithCancel(ctx)
	cancel()
	err := CreateAndUploadArchive(cctx, opts, &good)
	if !errors.Is(err, ErrCanceled) || !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled context: got %v, want ErrCanceled and context.Canceled", err)
	}

	// A progress reader that never reads (the worker's stream failed): the
	// blocked send gives up when ctx is done, the call ends, and nothing is sent
	// afterwards.
	cctx, cancel = context.WithCancel(ctx)
	ch := make(chan int)
	go func() { time.Sleep(200 * time.Millisecond); cancel() }()
	err = CreateAndUploadArchive(cctx, CreateOptions{InputPath: src, OutputPath: out, Credentials: creds, ProgressChan: ch}, &good)
	close(ch) // a send after return would panic
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("abandoned progress channel: got %v, want context.Canceled", err)
	}
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Fatalf("%s left behind after failed uploads (stat: %v)", out, err)
	}
	assertEmptyDir(t, dir)
}
