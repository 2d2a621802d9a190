package storage

/*
#cgo pkg-config: clip
#include <stdlib.h>
#include <clip.h>
*/
import "C"

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"unsafe"
)

// DefaultLayerIndexCacheBytes is the size limit of a DiskLayerIndexCache made by
// NewDiskLayerIndexCache: 1 GiB.
const DefaultLayerIndexCacheBytes = 1 << 30

// DiskLayerIndexCache is a LayerIndexCache in a local directory: a generic key →
// bytes store (any key: each maps to one file inside the directory, never a path
// outside it), written atomically (temporary file + rename), bounded in size
// (least recently used entries are removed after a put past the limit), and safe
// for several processes sharing the directory. It is libclip's own disk cache
// (clip_layer_index_cache_*), so CreateFromOCIImage, clipctl create
// --layer-index-cache and this type read and write the same files.
//
// Methods may be called from any number of goroutines. Close releases it; an
// unreachable cache is also released by the garbage collector.
type DiskLayerIndexCache struct {
	dir      string
	maxBytes int64

	mu     sync.RWMutex // held (read) by calls, (write) by Close
	handle *C.clip_layer_index_cache
}

// NewDiskLayerIndexCache opens (creating it if needed) the disk layer-index cache
// in rootDir, bounded to DefaultLayerIndexCacheBytes.
func NewDiskLayerIndexCache(rootDir string) (*DiskLayerIndexCache, error) {
	return NewDiskLayerIndexCacheWithLimit(rootDir, DefaultLayerIndexCacheBytes)
}

// NewDiskLayerIndexCacheWithLimit is NewDiskLayerIndexCache bounded to maxBytes
// (<= 0 means DefaultLayerIndexCacheBytes).
func NewDiskLayerIndexCacheWithLimit(rootDir string, maxBytes int64) (*DiskLayerIndexCache, error) {
	if rootDir == "" {
		return nil, errors.New("layer-index cache: rootDir is empty")
	}
	if strings.IndexByte(rootDir, 0) >= 0 {
		return nil, errors.New("layer-index cache: rootDir contains a NUL byte")
	}
	if maxBytes <= 0 {
		maxBytes = DefaultLayerIndexCacheBytes
	}
	c := &DiskLayerIndexCache{dir: rootDir, maxBytes: maxBytes}
	dir := C.CString(rootDir)
	defer C.free(unsafe.Pointer(dir))
	if err := libclip(func() C.int { return C.clip_layer_index_cache_open(&c.handle, dir, C.uint64_t(maxBytes)) }); err != nil {
		return nil, err
	}
	runtime.SetFinalizer(c, (*DiskLayerIndexCache).Close)
	return c, nil
}

// Dir is the cache directory.
func (c *DiskLayerIndexCache) Dir() string { return c.dir }

// MaxBytes is the cache's size limit.
func (c *DiskLayerIndexCache) MaxBytes() int64 { return c.maxBytes }

// GetLayerIndex returns the bytes stored under key, or (nil, nil) if there are
// none. ctx is not consulted (a local read).
func (c *DiskLayerIndexCache) GetLayerIndex(_ context.Context, key string) ([]byte, error) {
	if err := checkKey(key); err != nil {
		return nil, err
	}
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.handle == nil {
		return nil, errors.New("layer-index cache: closed")
	}
	var data *C.uint8_t
	var n C.size_t
	k := unsafe.StringData(key)
	err := libclip(func() C.int {
		return C.clip_layer_index_cache_get(&data, &n, c.handle, (*C.uint8_t)(unsafe.Pointer(k)), C.size_t(len(key)))
	})
	runtime.KeepAlive(key)
	var e *libclipError
	if errors.As(err, &e) && e.code == C.CLIP_ENOTFOUND {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer C.clip_data_free(data, n)
	out := make([]byte, int(n))
	if n > 0 {
		copy(out, unsafe.Slice((*byte)(unsafe.Pointer(data)), int(n)))
	}
	return out, nil
}

// PutLayerIndex stores data under key, atomically, replacing what was there.
// ctx is not consulted (a local write).
func (c *DiskLayerIndexCache) PutLayerIndex(_ context.Context, key string, data []byte) error {
	if err := checkKey(key); err != nil {
		return err
	}
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.handle == nil {
		return errors.New("layer-index cache: closed")
	}
	k := unsafe.StringData(key)
	var d *C.uint8_t
	if len(data) > 0 {
		d = (*C.uint8_t)(unsafe.Pointer(unsafe.SliceData(data)))
	}
	err := libclip(func() C.int {
		return C.clip_layer_index_cache_put(c.handle, (*C.uint8_t)(unsafe.Pointer(k)), C.size_t(len(key)), d, C.size_t(len(data)))
	})
	runtime.KeepAlive(key)
	runtime.KeepAlive(data)
	return err
}

// Close releases the cache (the files stay). Idempotent; later calls fail.
func (c *DiskLayerIndexCache) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.handle != nil {
		C.clip_layer_index_cache_free(c.handle)
		c.handle = nil
		runtime.SetFinalizer(c, nil)
	}
	return nil
}

func checkKey(key string) error {
	if key == "" {
		return errors.New("layer-index cache: empty key")
	}
	return nil
}

// libclipError is a failed libclip call: its CLIP_* code and message.
type libclipError struct {
	code    C.int
	message string
}

func (e *libclipError) Error() string {
	return fmt.Sprintf("layer-index cache: %s (libclip code %d)", e.message, int(e.code))
}

// libclip runs f, a libclip call, and clip_error_last on one locked OS thread.
func libclip(f func() C.int) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	rc := f()
	if rc == C.CLIP_OK {
		return nil
	}
	e := C.clip_error_last()
	msg := C.GoString(e.message)
	if e.code != rc {
		msg = "unknown error"
	}
	return &libclipError{code: rc, message: msg}
}
