package clip

import (
	"context"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/beam-cloud/clip/go/internal/testutil"
)

// localArchive indexes a small layout and returns mount options serving it from
// the layout.
func localArchive(t *testing.T) MountOptions {
	t.Helper()
	dir := t.TempDir()
	layout := filepath.Join(dir, "layout")
	testutil.WriteLayout(t, layout, "latest", testutil.SampleImage(1<<20))
	out := filepath.Join(dir, "img.clip")
	if err := CreateIndexOnlyArchiveFromOCILayout(context.Background(), layout, "", out); err != nil {
		t.Fatal(err)
	}
	return MountOptions{
		ArchivePath: out, LocalLayoutPath: layout,
		MountPoint: filepath.Join(dir, "mnt"), CachePath: filepath.Join(dir, "cache"),
	}
}

// The worker's failure path: MountArchive, then Unmount without start (or with
// start racing it). The mount goes, the channel closes, start stays harmless.
func TestUnmountBeforeStart(t *testing.T) {
	testutil.NeedFUSE(t)
	opts := localArchive(t)
	start, errs, server, err := MountArchive(opts)
	if err != nil {
		t.Fatal(err)
	}
	if !testutil.IsMounted(opts.MountPoint) {
		t.Fatal("not mounted when MountArchive returned")
	}
	if err := server.Unmount(); err != nil {
		t.Fatal(err)
	}
	if testutil.IsMounted(opts.MountPoint) {
		t.Fatal("still mounted after Unmount")
	}
	waitClosed(t, errs)
	if err := start(); err != nil {
		t.Fatalf("start after Unmount: %v", err)
	}
	if err := server.Unmount(); err != nil {
		t.Fatalf("second Unmount: %v", err)
	}
}

// The worker's Cleanup force-unmounts mount points: an unmount from outside also
// ends the mount, closes the channel, and leaves Unmount a no-op.
func TestExternalUnmount(t *testing.T) {
	testutil.NeedFUSE(t)
	opts := localArchive(t)
	start, errs, server, err := MountArchive(opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := start(); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Unmount(opts.MountPoint, 0); err != nil {
		_ = server.Unmount()
		t.Fatalf("umount %s: %v", opts.MountPoint, err)
	}
	waitClosed(t, errs)
	if err := server.Unmount(); err != nil {
		t.Fatalf("Unmount after an external unmount: %v", err)
	}
}
