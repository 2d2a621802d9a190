package clip

import (
	"bytes"
	"context"
	"encoding/json"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

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

// A startup profile recorded by one mount (RecordStartupProfile,
// WriteStartupProfile) and replayed by the next on a fresh cache
// (StartupProfilePath) fetches the recorded spans before any read: once they are
// in the cache, the layer source can go and the same start still reads every
// byte.
func TestStartupProfileRecordAndReplay(t *testing.T) {
	testutil.NeedFUSE(t)
	dir := t.TempDir()
	layout := filepath.Join(dir, "layout")
	testutil.WriteLayout(t, layout, "latest", testutil.SampleImage(6<<20))
	archive := filepath.Join(dir, "img.clip")
	if err := CreateIndexOnlyArchiveFromOCILayout(context.Background(), layout, "", archive); err != nil {
		t.Fatal(err)
	}
	workload := []string{"etc/os-release", "data/big.txt", "app/main.py"}
	read := func(mnt string) map[string][]byte {
		got := map[string][]byte{}
		for _, f := range workload {
			b, err := os.ReadFile(filepath.Join(mnt, f))
			if err != nil {
				t.Fatal(err)
			}
			got[f] = b
		}
		return got
	}
	mount := func(o MountOptions) *Server {
		start, _, server, err := MountArchive(o)
		if err != nil {
			t.Fatal(err)
		}
		if err := start(); err != nil {
			t.Fatal(err)
		}
		return server
	}

	opts := MountOptions{
		ArchivePath: archive, LocalLayoutPath: layout, RecordStartupProfile: true,
		MountPoint: filepath.Join(dir, "mnt"), CachePath: filepath.Join(dir, "cache1"),
	}
	server := mount(opts)
	want := read(opts.MountPoint)
	profile := filepath.Join(dir, "start.json")
	if err := server.WriteStartupProfile(profile); err != nil {
		t.Fatal(err)
	}
	if err := server.Unmount(); err != nil {
		t.Fatal(err)
	}
	var p struct {
		Version int `json:"clip_profile"`
		Spans   []struct {
			Layer string `json:"layer"`
		} `json:"spans"`
	}
	b, err := os.ReadFile(profile)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &p); err != nil || p.Version != 1 || len(p.Spans) < 3 {
		t.Fatalf("profile %s: %v %+v", b, err, p)
	}

	opts.RecordStartupProfile = false
	opts.StartupProfilePath = profile
	opts.CachePath = filepath.Join(dir, "cache2")
	server = mount(opts)
	defer server.Unmount()
	// Nothing read yet: every span file in the cache is the replay's.
	deadline := time.Now().Add(60 * time.Second)
	for spanFiles(t, filepath.Join(opts.CachePath, "spans")) < len(p.Spans) {
		if time.Now().After(deadline) {
			t.Fatalf("the replay cached %d of %d spans", spanFiles(t, filepath.Join(opts.CachePath, "spans")), len(p.Spans))
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := os.Rename(layout, layout+".gone"); err != nil {
		t.Fatal(err)
	}
	got := read(opts.MountPoint)
	for f, w := range want {
		if !bytes.Equal(got[f], w) {
			t.Errorf("%s: %d bytes, want %d", f, len(got[f]), len(w))
		}
	}
	if err := server.WriteStartupProfile(profile); err == nil {
		t.Error("WriteStartupProfile without RecordStartupProfile succeeded")
	}
}

// spanFiles counts the finished span files under a span cache's spans/.
func spanFiles(t *testing.T, dir string) int {
	t.Helper()
	n := 0
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && !strings.HasPrefix(d.Name(), ".") {
			n++
		}
		return nil
	})
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return n
}
