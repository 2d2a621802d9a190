package clip

/*
#include <stdlib.h>
#include "callbacks.h"
*/
import "C"

import (
	"context"
	"runtime/cgo"
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
// fetched lazily from the registry the archive records (or LocalLayoutPath).
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
	opts.cache_dir = cs.str(options.CachePath)
	opts.layout = cs.str(options.LocalLayoutPath)

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
		return C.clip_mount_new(&s.mount, cs.bytes(options.ArchivePath), cs.bytes(options.MountPoint), opts)
	})
	if err != nil {
		s.release()
		return nil, nil, nil, err
	}
	return s.start, s.errs, s, nil
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
