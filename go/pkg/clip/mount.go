package clip

/*
#include <stdlib.h>
#include "callbacks.h"
*/
import "C"

import (
	"context"
	"os"
	"runtime/cgo"
	"time"
	"unsafe"

	"github.com/beam-cloud/clip/go/pkg/common"
	"sync"
)

// Server is a live mount made by MountArchive. It stands where the Go clip returned
// a go-fuse *fuse.Server; Unmount is the only method the worker uses.
type Server struct {
	mountPoint string
	errs       chan error

	mu      sync.Mutex
	mount   *C.clip_mount // nil once freed
	handle  cgo.Handle    // the callbacks' handle, 0 if none
	started bool          // a goroutine waits for the session, or nobody ever will
}

// MountArchive mounts the archive at ArchivePath read-only at MountPoint (created
// if missing). When it returns without error the mount is live; file bytes are
// fetched lazily: for an index-only archive from the registry it records (or
// LocalLayoutPath), for a v1 .rclip from its S3 object (or StorageInfo's, with
// Credentials), for a self-contained v1 archive from the file itself.
//
// It returns, as the Go clip did: start, which returns nil at once and watches the
// mount in a goroutine; a channel, buffered(1), that is closed once the mount is
// gone (after an error on it if the session failed); and the Server whose Unmount
// unmounts.
func MountArchive(options MountOptions) (func() error, <-chan error, *Server, error) {
	if options.ArchivePath == "" {
		return nil, nil, nil, invalid("MountOptions.ArchivePath is empty")
	}
	if options.MountPoint == "" {
		return nil, nil, nil, invalid("MountOptions.MountPoint is empty")
	}
	if options.PrepareConcurrency > 0 {
		if err := PrepareArchiveContent(options); err != nil {
			return nil, nil, nil, err
		}
	}
	// Callbacks (credentials, read tracing, the content cache) serve the mount
	// while it lives, not one call.
	ms, err := newMountSetup(options, &callbacks{ctx: context.Background()})
	if err != nil {
		return nil, nil, nil, err
	}
	defer ms.free()
	s := &Server{mountPoint: options.MountPoint, errs: make(chan error, 1), handle: ms.handle}
	err = call(func() C.int {
		return C.clip_mount_new(&s.mount, ms.cs.bytes(ms.archivePath), ms.cs.bytes(options.MountPoint), ms.opts)
	})
	if err != nil {
		s.release()
		return nil, nil, nil, err
	}
	return s.start, s.errs, s, nil
}

// mountSetup is the C options of a mount (or a prepare) and the C memory they
// point to; free releases that memory, not the callbacks' handle.
type mountSetup struct {
	cs          cstrings
	opts        *C.clip_mount_options
	cfree       []func()
	archivePath string
	mode        common.StorageMode
	handle      cgo.Handle // 0 if no callback is needed
}

func (m *mountSetup) free() {
	for _, f := range m.cfree {
		f()
	}
	m.cfree = nil
	m.cs.free()
}

// newMountSetup reads options into libclip's mount options; cb (filled in here)
// backs the callbacks they need.
func newMountSetup(options MountOptions, cb *callbacks) (_ *mountSetup, err error) {
	ms := &mountSetup{archivePath: options.ArchivePath}
	defer func() {
		if err != nil {
			ms.free()
			if ms.handle != 0 {
				deleteHandle(ms.handle)
			}
		}
	}()
	opts := cAlloc[C.clip_mount_options]()
	ms.cfree = append(ms.cfree, func() { cFree(opts) })
	ms.opts = opts
	if err := call(func() C.int { return C.clip_mount_options_init(opts, C.CLIP_MOUNT_OPTIONS_VERSION) }); err != nil {
		return nil, err
	}
	cs := &ms.cs
	opts.layout = cs.str(options.LocalLayoutPath)
	if options.CacheMaxBytes > 0 {
		opts.cache_max_bytes = C.uint64_t(options.CacheMaxBytes)
	}
	if options.CacheMinFreeBytes > 0 {
		opts.cache_min_free_bytes = C.uint64_t(options.CacheMinFreeBytes)
	}
	opts.prefetch_profile = cs.str(options.StartupProfilePath)
	if options.NoStartupProfile {
		opts.no_prefetch = 1
	}
	if options.StartupProfileConcurrency > 0 {
		opts.prefetch_threads = C.uint(options.StartupProfileConcurrency)
	}
	if options.RecordStartupProfile {
		opts.record_profile = 1
	}
	meta := options.Metadata
	if meta == nil {
		m, err := NewClipArchiver().ExtractMetadata(options.ArchivePath)
		if err != nil {
			return nil, err
		}
		meta = m
	}
	ms.mode = storageMode(meta)
	switch mode := ms.mode; {
	case mode == common.StorageModeOCI:
		opts.cache_dir = cs.str(options.CachePath)
	case options.StorageModeOverride == common.StorageModeLocal:
		// The worker restored the full .clip of a .rclip: the tree comes from the
		// archive Metadata was read from, the data from ArchivePath.
		if p := meta.Header.Path; p != "" && fileExists(p) {
			ms.archivePath = p
		}
		opts.data_archive = cs.bytes(options.ArchivePath)
	case mode == common.StorageModeS3:
		s3, err := s3Options(cs, s3Info(options.StorageInfo), options.Credentials)
		if err != nil {
			return nil, err
		}
		ms.cfree = append(ms.cfree, func() { cFree(s3) })
		opts.s3 = s3
	}

	cb.provider = providerOf(options.RegistryCredProvider)
	cb.observer = options.ReadTraceObserver
	if ms.mode == common.StorageModeOCI {
		cb.cache = contentCacheOf(options.ContentCache, options.ContentCacheAvailable)
		cb.cacheTimeout = options.ContentCacheTimeout
		if cb.cacheTimeout <= 0 {
			cb.cacheTimeout = 2 * time.Second
		}
	}
	if cb.provider == nil && cb.observer == nil && cb.cache == nil && cb.prepare == nil {
		return ms, nil
	}
	ms.handle = newHandle(cb)
	if cb.provider != nil {
		reg := cAlloc[C.clip_registry_options]()
		ms.cfree = append(ms.cfree, func() { cFree(reg) })
		if err := call(func() C.int { return C.clip_registry_options_init(reg, C.CLIP_REGISTRY_OPTIONS_VERSION) }); err != nil {
			return nil, err
		}
		C.clipgo_set_credentials(reg, C.uintptr_t(ms.handle))
		opts.registry = reg
	}
	if cb.observer != nil {
		C.clipgo_set_read_observer(opts, C.uintptr_t(ms.handle))
	}
	if cb.cache != nil {
		cc := cAlloc[C.clip_content_cache]()
		ms.cfree = append(ms.cfree, func() { cFree(cc) })
		if err := call(func() C.int { return C.clip_content_cache_init(cc, C.CLIP_CONTENT_CACHE_VERSION) }); err != nil {
			return nil, err
		}
		C.clipgo_set_content_cache(cc, C.uintptr_t(ms.handle))
		opts.content_cache = cc
		if options.ContentCacheTimeout > 0 {
			opts.content_cache_timeout_ms = C.uint(options.ContentCacheTimeout.Milliseconds())
		}
		if options.ContentCacheReadOnly {
			opts.content_cache_read_only = 1
		}
	}
	return ms, nil
}

// PrepareArchiveContent fetches and verifies every span of every layer of an
// index-only archive into CachePath, from the content cache first, with
// PrepareConcurrency workers, so that a mount with the same options reads nothing
// from the registry; layers the content cache lacks are stored into it. It does
// nothing if PrepareConcurrency <= 0 or the archive is not index-only (OCI).
//
// PrepareProgress, if set, is called serially: first {Completed: 0, Total: n},
// then once per finished layer with Completed 1..n and the cumulative
// uncompressed Bytes; not at all for an image without layers. Context (nil:
// Background) cancels it.
func PrepareArchiveContent(options MountOptions) error {
	if options.PrepareConcurrency <= 0 {
		return nil
	}
	if options.ArchivePath == "" {
		return invalid("MountOptions.ArchivePath is empty")
	}
	ctx := options.Context
	if ctx == nil {
		ctx = context.Background()
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	cb := &callbacks{ctx: ctx, prepare: options.PrepareProgress}
	ms, err := newMountSetup(options, cb)
	if err != nil {
		return err
	}
	defer ms.free()
	defer deleteHandle(ms.handle) // prepare is set: there is always a handle
	if ms.mode != common.StorageModeOCI {
		return nil
	}
	popts := cAlloc[C.clip_prepare_options]()
	defer cFree(popts)
	if err := call(func() C.int { return C.clip_prepare_options_init(popts, C.CLIP_PREPARE_OPTIONS_VERSION) }); err != nil {
		return err
	}
	popts.concurrency = C.uint(options.PrepareConcurrency)
	C.clipgo_set_prepare_progress(popts, C.uintptr_t(ms.handle))
	archive := ms.cs.bytes(ms.archivePath)
	err = withCancel(ctx, func(tok *C.clip_cancel) error {
		popts.cancel = tok
		return call(func() C.int { return C.clip_prepare(archive, ms.opts, popts) })
	})
	cb.rethrow()
	return contextError(ctx, err)
}

// storageMode is where a mount of the archive meta describes reads file bytes from.
func storageMode(meta *common.ClipArchiveMetadata) common.StorageMode {
	t := storageType(meta.StorageInfo)
	if t == "" {
		return common.StorageModeLocal
	}
	return common.StorageMode(t)
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// MountPoint returns where the archive is mounted.
func (s *Server) MountPoint() string { return s.mountPoint }

func (s *Server) start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.started {
		return nil
	}
	s.started = true
	go s.wait(s.mount)
	return nil
}

// wait blocks until the mount is gone (Unmount, or an unmount from outside), then
// frees it and closes the channel.
func (s *Server) wait(m *C.clip_mount) {
	err := call(func() C.int { return C.clip_mount_wait(m) })
	s.mu.Lock()
	s.free()
	s.mu.Unlock()
	if err != nil {
		s.errs <- err
	}
	close(s.errs)
}

// Unmount unmounts and returns once the kernel has dropped the mount. It is
// idempotent and safe to call from any goroutine, before or after start.
func (s *Server) Unmount() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.mount == nil {
		return nil
	}
	if err := call(func() C.int { return C.clip_mount_unmount(s.mount) }); err != nil {
		return err
	}
	if !s.started {
		// Nobody waits on this mount: finish it here.
		s.started = true
		s.free()
		close(s.errs)
	}
	return nil
}

// WriteStartupProfile writes the startup profile recorded so far (the mount was
// made with RecordStartupProfile) to path, atomically: which layer ranges reads
// touched, in order, with their timing. Call it while the mount lives (before
// Unmount), once the workload has started; replay the file with
// StartupProfilePath or embed it with `clipctl profile add`. An addition of this
// package.
func (s *Server) WriteStartupProfile(path string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.mount == nil {
		return invalid("WriteStartupProfile: the mount is gone")
	}
	cpath := C.CString(path)
	defer C.free(unsafe.Pointer(cpath))
	return call(func() C.int { return C.clip_mount_write_profile(s.mount, cpath) })
}

// free releases the mount and its callbacks; s.mu is held.
func (s *Server) free() {
	if s.mount != nil {
		C.clip_mount_free(s.mount)
		s.mount = nil
	}
	s.release()
}

func (s *Server) release() {
	if s.handle != 0 {
		deleteHandle(s.handle)
		s.handle = 0
	}
}
