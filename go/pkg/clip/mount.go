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
	var cs cstrings
	defer cs.free()
	opts := cAlloc[C.clip_mount_options]()
	defer cFree(opts)
	if err := call(func() C.int { return C.clip_mount_options_init(opts, C.CLIP_MOUNT_OPTIONS_VERSION) }); err != nil {
		return nil, nil, nil, err
	}
	opts.layout = cs.str(options.LocalLayoutPath)
	meta := options.Metadata
	if meta == nil {
		m, err := NewClipArchiver().ExtractMetadata(options.ArchivePath)
		if err != nil {
			return nil, nil, nil, err
		}
		meta = m
	}
	archivePath := options.ArchivePath
	switch mode := storageMode(meta); {
	case mode == common.StorageModeOCI:
		opts.cache_dir = cs.str(options.CachePath)
	case options.StorageModeOverride == common.StorageModeLocal:
		// The worker restored the full .clip of a .rclip: the tree comes from the
		// archive Metadata was read from, the data from ArchivePath.
		if p := meta.Header.Path; p != "" && fileExists(p) {
			archivePath = p
		}
		opts.data_archive = cs.bytes(options.ArchivePath)
	case mode == common.StorageModeS3:
		s3, err := s3Options(&cs, s3Info(options.StorageInfo), options.Credentials)
		if err != nil {
			return nil, nil, nil, err
		}
		defer cFree(s3)
		opts.s3 = s3
	}

	s := &Server{mountPoint: options.MountPoint, errs: make(chan error, 1)}
	provider := providerOf(options.RegistryCredProvider)
	if provider != nil || options.ReadTraceObserver != nil {
		// Credentials are asked for while the mount lives, not for one call.
		cb := &callbacks{ctx: context.Background(), provider: provider, observer: options.ReadTraceObserver}
		s.handle = newHandle(cb)
		if provider != nil {
			reg := cAlloc[C.clip_registry_options]()
			defer cFree(reg)
			if err := call(func() C.int { return C.clip_registry_options_init(reg, C.CLIP_REGISTRY_OPTIONS_VERSION) }); err != nil {
				s.release()
				return nil, nil, nil, err
			}
			C.clipgo_set_credentials(reg, C.uintptr_t(s.handle))
			opts.registry = reg
		}
		if options.ReadTraceObserver != nil {
			C.clipgo_set_read_observer(opts, C.uintptr_t(s.handle))
		}
	}
	err := call(func() C.int {
		return C.clip_mount_new(&s.mount, cs.bytes(archivePath), cs.bytes(options.MountPoint), opts)
	})
	if err != nil {
		s.release()
		return nil, nil, nil, err
	}
	return s.start, s.errs, s, nil
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
