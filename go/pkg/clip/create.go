package clip

/*
#include <stdlib.h>
#include "callbacks.h"
*/
import "C"

import (
	"context"
	"fmt"
	"reflect"
	"sync"
	"time"

	"github.com/beam-cloud/clip/go/pkg/common"
	"github.com/beam-cloud/clip/go/pkg/storage"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// CreateFromOCIImage indexes the image ImageRef names (from its registry, or from
// the OCI layout at LocalLayoutPath) into an index-only archive at OutputPath,
// recording StorageImageRef (else ImageRef) as where mounts fetch layers from.
// Cancelling ctx stops it promptly; nothing is then left at OutputPath.
func CreateFromOCIImage(ctx context.Context, options CreateFromOCIImageOptions) error {
	o := options
	if o.OutputPath == "" {
		return invalid("CreateFromOCIImageOptions.OutputPath is empty")
	}
	if o.ImageRef == "" && o.LocalLayoutPath == "" {
		return invalid("CreateFromOCIImageOptions needs ImageRef or LocalLayoutPath")
	}
	spec := createSpec{
		imageRef:    o.ImageRef,
		layout:      o.LocalLayoutPath,
		storageRef:  o.StorageImageRef,
		output:      o.OutputPath,
		platform:    o.Platform,
		concurrency: o.IndexConcurrency,
		progress:    o.ProgressChan,
		provider:    providerOf(o.CredProvider),
		layerIndex:  layerIndexCacheOf(o.LayerIndexCache),
		cache:       contentCacheOf(o.ContentCache, true),
		cacheDir:    o.ContentCacheDir,
	}
	if spec.storageRef == "" {
		spec.storageRef = o.ImageRef
	}
	switch {
	case o.CheckpointMiB == 0:
		spec.checkpointMiB = 2
	case o.CheckpointMiB < 0:
		return invalid(fmt.Sprintf("CheckpointMiB %d is negative", o.CheckpointMiB))
	default:
		spec.checkpointMiB = o.CheckpointMiB
	}
	if spec.concurrency <= 0 {
		spec.concurrency = 4
	}
	return create(ctx, spec)
}

// CreateIndexOnlyArchiveFromOCILayout indexes the image tagged tag ("" means
// "latest") in the OCI layout at ociDir into an index-only archive at outputPath.
// The archive records no registry: mount it with MountOptions.LocalLayoutPath, or
// use CreateFromOCIImage with LocalLayoutPath and StorageImageRef to record one.
func CreateIndexOnlyArchiveFromOCILayout(ctx context.Context, ociDir, tag, outputPath string) error {
	if ociDir == "" {
		return invalid("ociDir is empty")
	}
	if outputPath == "" {
		return invalid("outputPath is empty")
	}
	if tag == "" {
		tag = "latest"
	}
	return create(ctx, createSpec{
		layout: ociDir, layoutTag: tag, output: outputPath,
		checkpointMiB: 2, concurrency: 4,
	})
}

// createSpec is one create call, validated and defaulted.
type createSpec struct {
	imageRef      string // read from the registry unless layout is set
	layout        string // an OCI layout to read instead
	layoutTag     string // "" = the layout's only image
	storageRef    string // recorded in the archive; "" = none
	output        string
	checkpointMiB int64
	platform      *v1.Platform
	concurrency   int
	progress      chan<- OCIIndexProgress
	provider      common.RegistryCredentialProvider
	layerIndex    storage.LayerIndexCache // nil: none
	cache         storage.ContentCache    // compressed blobs by digest hex; nil: none
	cacheDir      string                  // spool directory for cache stores
}

func create(ctx context.Context, s createSpec) error {
	if ctx == nil {
		ctx = context.Background()
	}
	if err := ctx.Err(); err != nil {
		return &Error{Code: CodeCanceled, Message: "operation cancelled", cause: err}
	}
	var cs cstrings
	defer cs.free()
	opts := cAlloc[C.clip_create_options]()
	defer cFree(opts)
	if err := call(func() C.int { return C.clip_create_options_init(opts, C.CLIP_CREATE_OPTIONS_VERSION) }); err != nil {
		return err
	}
	opts.storage_ref = cs.str(s.storageRef)
	opts.platform = cs.str(platformString(s.platform))
	opts.span_size = C.uint64_t(s.checkpointMiB) << 20
	opts.concurrency = C.uint(s.concurrency)

	cb := &callbacks{ctx: ctx, progress: s.progress, provider: s.provider}
	disk, isDisk := s.layerIndex.(*storage.DiskLayerIndexCache)
	if isDisk {
		// libclip's own disk cache: used natively, no callback.
		opts.layer_index_cache_dir = cs.str(disk.Dir())
		opts.layer_index_cache_max_bytes = C.uint64_t(disk.MaxBytes())
	} else if s.layerIndex != nil {
		cb.layerIndex = s.layerIndex
	}
	if s.cache != nil {
		cb.cache, cb.cacheTimeout = s.cache, 2*time.Second
	}
	if s.progress != nil || s.provider != nil || cb.layerIndex != nil || cb.cache != nil {
		h := newHandle(cb)
		defer deleteHandle(h)
		if cb.cache != nil {
			cc := cAlloc[C.clip_content_cache]()
			defer cFree(cc)
			if err := call(func() C.int { return C.clip_content_cache_init(cc, C.CLIP_CONTENT_CACHE_VERSION) }); err != nil {
				return err
			}
			C.clipgo_set_content_cache(cc, C.uintptr_t(h))
			opts.content_cache = cc
			opts.content_cache_dir = cs.str(s.cacheDir)
		}
		if cb.layerIndex != nil {
			cbs := cAlloc[C.clip_layer_index_cache_callbacks]()
			defer cFree(cbs)
			if err := call(func() C.int {
				return C.clip_layer_index_cache_callbacks_init(cbs, C.CLIP_LAYER_INDEX_CACHE_CALLBACKS_VERSION)
			}); err != nil {
				return err
			}
			C.clipgo_set_layer_index_cache(cbs, C.uintptr_t(h))
			opts.layer_index_cache = cbs
		}
		if s.progress != nil {
			C.clipgo_set_progress(opts, C.uintptr_t(h))
		}
		if s.provider != nil {
			reg := cAlloc[C.clip_registry_options]()
			defer cFree(reg)
			if err := call(func() C.int { return C.clip_registry_options_init(reg, C.CLIP_REGISTRY_OPTIONS_VERSION) }); err != nil {
				return err
			}
			C.clipgo_set_credentials(reg, C.uintptr_t(h))
			opts.registry = reg
		}
	}

	err := withCancel(ctx, func(tok *C.clip_cancel) error {
		opts.cancel = tok
		return call(func() C.int {
			if s.layout != "" {
				return C.clip_index_layout(cs.str(s.layout), cs.str(s.layoutTag), cs.str(s.output), opts)
			}
			return C.clip_create_from_image(cs.str(s.imageRef), cs.str(s.output), opts)
		})
	})
	cb.rethrow()
	return contextError(ctx, err)
}

// withCancel runs f with a cancel token that is cancelled when ctx is done. The
// watcher goroutine is joined before the token is freed.
func withCancel(ctx context.Context, f func(tok *C.clip_cancel) error) error {
	var tok *C.clip_cancel
	if err := call(func() C.int { return C.clip_cancel_new(&tok) }); err != nil {
		return err
	}
	defer C.clip_cancel_free(tok)
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		select {
		case <-ctx.Done():
			C.clip_cancel_cancel(tok)
		case <-done:
		}
	}()
	err := f(tok)
	close(done)
	wg.Wait()
	return err
}

func platformString(p *v1.Platform) string {
	if p == nil {
		return ""
	}
	s := p.OS + "/" + p.Architecture
	if p.Variant != "" {
		s += "/" + p.Variant
	}
	return s
}

// layerIndexCacheOf is c, or nil for none: a nil interface or one holding a nil
// pointer (a typed nil, whose methods could only panic).
func layerIndexCacheOf(c storage.LayerIndexCache) storage.LayerIndexCache {
	if c == nil {
		return nil
	}
	if v := reflect.ValueOf(c); v.Kind() == reflect.Pointer && v.IsNil() {
		return nil
	}
	return c
}

// providerOf accepts what the Go clip accepted: any value, used when it is a
// common.RegistryCredentialProvider (a nil one means clip's default chain).
func providerOf(v interface{}) common.RegistryCredentialProvider {
	p, _ := v.(common.RegistryCredentialProvider)
	return p
}

func invalid(msg string) error { return &Error{Code: CodeInvalid, Message: msg} }
