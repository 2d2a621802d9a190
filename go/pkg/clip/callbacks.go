package clip

/*
#include <stdlib.h>
#include "callbacks.h"
*/
import "C"

import (
	"context"
	"encoding/base64"
	"fmt"
	"runtime"
	"runtime/cgo"
	"strings"
	"sync"
	"time"
	"unsafe"

	"github.com/beam-cloud/clip/go/pkg/common"
	"github.com/beam-cloud/clip/go/pkg/storage"
	"github.com/google/go-containerregistry/pkg/authn"
)

// callbacks is the Go state behind one call's (or one mount's) callbacks; libclip
// holds it as a cgo.Handle. Callbacks never let a panic unwind into libclip: they
// recover, keep the first panic, and stop the call; the caller re-raises it.
type callbacks struct {
	ctx      context.Context
	progress chan<- OCIIndexProgress
	upload   chan<- int // upload percent
	provider common.RegistryCredentialProvider
	observer common.ReadTraceObserver
	cache    storage.ContentCache // a mount's content tier
	// cacheTimeout bounds every call of cache (see bounded).
	cacheTimeout time.Duration
	prepare      func(storage.PrepareProgress) // PrepareArchiveContent's progress
	// layerIndex is the caller's layer-index cache (not a DiskLayerIndexCache,
	// which libclip uses natively).
	layerIndex storage.LayerIndexCache

	mu          sync.Mutex
	panicked    any
	hasPanicked bool
}

func (cb *callbacks) recovered(r any) {
	cb.mu.Lock()
	defer cb.mu.Unlock()
	if !cb.hasPanicked {
		cb.panicked, cb.hasPanicked = r, true
	}
}

// rethrow re-raises a panic a callback recovered, on the caller's goroutine.
func (cb *callbacks) rethrow() {
	cb.mu.Lock()
	p, ok := cb.panicked, cb.hasPanicked
	cb.mu.Unlock()
	if ok {
		panic(p)
	}
}

func fromHandle(h C.uintptr_t) *callbacks { return cgo.Handle(h).Value().(*callbacks) }

//export clipgoProgress
func clipgoProgress(p *C.clip_progress, h C.uintptr_t) (rc C.int) {
	cb := fromHandle(h)
	defer func() {
		if r := recover(); r != nil {
			cb.recovered(r)
			rc = 1
		}
	}()
	ev := progressEvent(p)
	select {
	case cb.progress <- ev:
		return 0
	case <-cb.ctx.Done():
		return 1 // the call returns CLIP_EUSER, which create reports as ctx.Err()
	}
}

//export clipgoUploadProgress
func clipgoUploadProgress(percent C.uint, h C.uintptr_t) (rc C.int) {
	cb := fromHandle(h)
	defer func() {
		if r := recover(); r != nil {
			cb.recovered(r)
			rc = 1
		}
	}()
	select {
	case cb.upload <- int(percent):
		return 0
	case <-cb.ctx.Done():
		return 1 // the call returns CLIP_EUSER, which upload reports as ctx.Err()
	}
}

func progressEvent(p *C.clip_progress) OCIIndexProgress {
	ev := OCIIndexProgress{
		LayerIndex:               int(p.layer_index),
		TotalLayers:              int(p.layer_count),
		LayerDigest:              C.GoString(p.layer_digest),
		Source:                   C.GoString(p.source),
		BytesProcessed:           int64(p.uncompressed_done),
		CompressedBytesProcessed: int64(p.compressed_done),
		CompressedBytesTotal:     int64(p.compressed_total),
	}
	switch p.stage {
	case C.CLIP_STAGE_STARTING:
		ev.Stage = StageStarting
		ev.Message = fmt.Sprintf("Processing layer %d/%d", ev.LayerIndex, ev.TotalLayers)
	case C.CLIP_STAGE_PROGRESS:
		ev.Stage = StageProgress
		ev.Message = fmt.Sprintf("Indexing layer %d/%d: %d bytes", ev.LayerIndex, ev.TotalLayers, ev.BytesProcessed)
	default:
		ev.Stage = StageCompleted
		ev.FilesIndexed = int(p.files)
		ev.CompletedLayers = int(p.completed_layers)
		ev.BytesTotal = ev.BytesProcessed
		ev.Message = fmt.Sprintf("Completed layer %d/%d (%d files)", ev.LayerIndex, ev.TotalLayers, ev.FilesIndexed)
	}
	return ev
}

//export clipgoCredential
func clipgoCredential(out *C.clip_credential, registry, scope *C.char, h C.uintptr_t) (rc C.int) {
	cb := fromHandle(h)
	defer func() {
		if r := recover(); r != nil {
			cb.recovered(r)
			rc = C.CLIP_EUSER
		}
	}()
	cfg, err := cb.provider.GetCredentials(cb.ctx, C.GoString(registry), repositoryOf(C.GoString(scope)))
	if err != nil || cfg == nil {
		// ErrNoCredentials or any other failure: clip's default chain decides.
		return C.CLIP_EPASSTHROUGH
	}
	return answerCredential(out, cfg)
}

// repositoryOf turns libclip's scope ("repository:team/app:pull") into what
// providers are asked with: the repository path ("team/app").
func repositoryOf(scope string) string {
	s := strings.TrimPrefix(scope, "repository:")
	if i := strings.LastIndexByte(s, ':'); i >= 0 && s != scope {
		s = s[:i]
	}
	return s
}

// answerCredential maps an authn.AuthConfig onto libclip's credential kinds.
func answerCredential(out *C.clip_credential, cfg *authn.AuthConfig) C.int {
	var cs cstrings
	defer cs.free()
	switch {
	case *cfg == (authn.AuthConfig{}):
		return C.clip_credential_set_anonymous(out) // anonymous, the default chain skipped
	case cfg.RegistryToken != "":
		return C.clip_credential_set_token(out, cs.str(cfg.RegistryToken))
	case cfg.IdentityToken != "":
		return C.clip_credential_set_token(out, cs.str(cfg.IdentityToken))
	case cfg.Username != "" || cfg.Password != "":
		return C.clip_credential_set_basic(out, cs.bytes(cfg.Username), cs.bytes(cfg.Password))
	case cfg.Auth != "":
		raw, err := base64.StdEncoding.DecodeString(cfg.Auth)
		user, pass, ok := strings.Cut(string(raw), ":")
		if err != nil || !ok {
			return C.CLIP_EPASSTHROUGH
		}
		return C.clip_credential_set_basic(out, cs.bytes(user), cs.bytes(pass))
	}
	return C.CLIP_EPASSTHROUGH
}

//export clipgoReadObserved
func clipgoReadObserved(ev *C.clip_read_event, h C.uintptr_t) {
	cb := fromHandle(h)
	defer func() {
		if r := recover(); r != nil {
			cb.recovered(r) // a mount has no caller to re-raise it to: the event is dropped
		}
	}()
	cb.observer(readEvent(ev))
}

// readEvent converts libclip's read event (a read, told after the reply, or the
// span work below reads) into the worker's ReadTraceEvent.
func readEvent(ev *C.clip_read_event) common.ReadTraceEvent {
	d := time.Duration(ev.duration_ns)
	out := common.ReadTraceEvent{
		Operation:   "clip.read",
		Path:        C.GoString(ev.path),
		LayerDigest: C.GoString(ev.layer_digest),
		Offset:      int64(ev.offset),
		Length:      int64(ev.length),
		BytesRead:   int64(ev.bytes_read),
		StartedAt:   time.Now().Add(-d),
		Duration:    d,
		CallerPID:   uint32(ev.pid),
		Success:     ev.error_code == C.CLIP_OK,
		Attrs:       map[string]string{},
	}
	if ev.operation != nil {
		out.Operation = C.GoString(ev.operation)
	}
	if ev.decompressed_hash != nil {
		out.DecompressedHash = strings.TrimPrefix(C.GoString(ev.decompressed_hash), "sha256:")
	}
	if ev.attrs != nil && ev.attrs_len > 0 {
		for _, a := range unsafe.Slice(ev.attrs, int(ev.attrs_len)) {
			out.Attrs[C.GoString(a.key)] = C.GoString(a.value)
		}
	}
	mode := out.Attrs["storage_mode"]
	if mode == "" {
		mode = string(common.StorageModeOCI)
		out.Attrs["storage_mode"] = mode
	}
	out.Source = mode
	if ev.error != nil {
		out.Error = C.GoString(ev.error)
	}
	return out
}

//export clipgoPrepareProgress
func clipgoPrepareProgress(p *C.clip_prepare_progress, h C.uintptr_t) (rc C.int) {
	cb := fromHandle(h)
	defer func() {
		if r := recover(); r != nil {
			cb.recovered(r)
			rc = 1
		}
	}()
	if cb.ctx.Err() != nil {
		return 1
	}
	if cb.prepare != nil {
		cb.prepare(storage.PrepareProgress{Completed: int(p.completed), Total: int(p.total), Bytes: int64(p.bytes)})
	}
	return 0
}

//export clipgoLayerIndexGet
func clipgoLayerIndexGet(out *C.clip_buffer, key *C.char, h C.uintptr_t) (rc C.int) {
	cb := fromHandle(h)
	defer func() {
		if r := recover(); r != nil {
			cb.recovered(r) // a miss for libclip; re-raised when the call returns
			rc = C.CLIP_EUSER
		}
	}()
	data, err := cb.layerIndex.GetLayerIndex(cb.ctx, C.GoString(key))
	if err != nil {
		return C.CLIP_ERROR // a miss, with a warning
	}
	if data == nil {
		return C.CLIP_ENOTFOUND
	}
	var p *C.uint8_t
	if len(data) > 0 {
		// Go memory without Go pointers, for the call only: libclip copies it.
		p = (*C.uint8_t)(unsafe.Pointer(unsafe.SliceData(data)))
	}
	rc = C.clip_buffer_set(out, p, C.size_t(len(data)))
	runtime.KeepAlive(data)
	return rc
}

//export clipgoLayerIndexPut
func clipgoLayerIndexPut(key *C.char, data *C.uint8_t, n C.size_t, h C.uintptr_t) (rc C.int) {
	cb := fromHandle(h)
	defer func() {
		if r := recover(); r != nil {
			cb.recovered(r) // nothing stored; re-raised when the call returns
			rc = C.CLIP_EUSER
		}
	}()
	// A copy: the cache may keep it, and libclip's buffer is gone after the call.
	b := C.GoBytes(unsafe.Pointer(data), C.int(n))
	if err := cb.layerIndex.PutLayerIndex(cb.ctx, C.GoString(key), b); err != nil {
		return C.CLIP_ERROR // a warning; the build goes on
	}
	return 0
}
