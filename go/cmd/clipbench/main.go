// Command clipbench times the Go path into libclip: the cost of a call (a no-op
// and ExtractMetadata), and the index and mount-ready times of a layout or archive
// as the worker sees them through the Go package.
//
//	clipbench [-n 1000000] [-layout DIR [-tag TAG]] [-archive FILE] [-mountpoint DIR] [-cache DIR]
//
// With -layout, the layout is indexed (CreateIndexOnlyArchiveFromOCILayout) into
// -archive (a temporary file if unset). With an archive, it is mounted (from
// -layout if given, else from the registry it records), one file is read, and it is
// unmounted. Output: one "name value unit" line per measurement; lines starting
// with # are notes.
package main

import (
	"context"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/beam-cloud/clip/go/pkg/clip"
)

func main() {
	n := flag.Int("n", 1_000_000, "calls timed for the no-op")
	layout := flag.String("layout", "", "OCI layout to index (and to serve a mount from)")
	tag := flag.String("tag", "", "tag in the layout (default latest)")
	archive := flag.String("archive", "", "archive to write (with -layout) and mount")
	mountpoint := flag.String("mountpoint", "", "where to mount (default: a temp dir)")
	cache := flag.String("cache", "", "span cache dir (default: a temp dir, so mounts start cold)")
	flag.Parse()
	if err := run(*n, *layout, *tag, *archive, *mountpoint, *cache); err != nil {
		fmt.Fprintln(os.Stderr, "clipbench:", err)
		os.Exit(1)
	}
}

func run(n int, layout, tag, archive, mountpoint, cache string) error {
	tmp, err := os.MkdirTemp("", "clipbench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)

	start := time.Now()
	for i := 0; i < n; i++ {
		_ = clip.Version()
	}
	report("go_noop_call", float64(time.Since(start).Nanoseconds())/float64(n), "ns/call")

	if layout != "" {
		if archive == "" {
			archive = filepath.Join(tmp, "bench.clip")
		}
		start = time.Now()
		if err := clip.CreateIndexOnlyArchiveFromOCILayout(context.Background(), layout, tag, archive); err != nil {
			return err
		}
		report("go_index_layout", time.Since(start).Seconds(), "s")
	}
	if archive == "" {
		return nil
	}

	const infoCalls = 200
	start = time.Now()
	for i := 0; i < infoCalls; i++ {
		if _, err := clip.NewClipArchiver().ExtractMetadata(archive); err != nil {
			return err
		}
	}
	report("go_extract_metadata", float64(time.Since(start).Nanoseconds())/infoCalls, "ns/call")

	if mountpoint == "" {
		mountpoint = filepath.Join(tmp, "mnt")
	}
	if cache == "" {
		cache = filepath.Join(tmp, "cache")
	}
	start = time.Now()
	startFn, errs, server, err := clip.MountArchive(clip.MountOptions{
		ArchivePath: archive, MountPoint: mountpoint, CachePath: cache, LocalLayoutPath: layout,
	})
	if err != nil {
		return err
	}
	if err := startFn(); err != nil {
		return err
	}
	if _, err := os.Stat(filepath.Join(mountpoint, ".")); err != nil {
		_ = server.Unmount()
		return err
	}
	report("go_mount_ready", float64(time.Since(start).Microseconds())/1000, "ms")

	start = time.Now()
	file, size, err := readFirstFile(mountpoint)
	if err != nil {
		_ = server.Unmount()
		return err
	}
	report("go_first_file_read", float64(time.Since(start).Microseconds())/1000, "ms")
	fmt.Printf("# read %s (%d bytes)\n", file, size)

	start = time.Now()
	if err := server.Unmount(); err != nil {
		return err
	}
	if err, ok := <-errs; ok && err != nil {
		return err
	}
	report("go_unmount", float64(time.Since(start).Microseconds())/1000, "ms")
	return nil
}

// readFirstFile reads the first non-empty regular file of the tree, in walk order.
func readFirstFile(root string) (string, int, error) {
	var found string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || found != "" {
			return err
		}
		if d.Type().IsRegular() {
			if fi, err := d.Info(); err == nil && fi.Size() > 0 {
				found = p
				return fs.SkipAll
			}
		}
		return nil
	})
	if err != nil || found == "" {
		return "", 0, fmt.Errorf("no file to read under %s (%v)", root, err)
	}
	b, err := os.ReadFile(found)
	return found, len(b), err
}

func report(name string, v float64, unit string) { fmt.Printf("%s %.3f %s\n", name, v, unit) }
