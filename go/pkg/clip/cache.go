package clip

/*
#include <stdlib.h>
#include "callbacks.h"
*/
import "C"

import (
	"errors"
	"fmt"
	"io"
	"os"
	"reflect"
	"time"
	"unsafe"

	"github.com/beam-cloud/clip/go/pkg/storage"
)

// The content cache a mount reads through (beta9's cluster cache) holds whole
// uncompressed layers, each under the bare sha256 hex of its uncompressed stream:
// the DecompressedHashByLayer values beta9's cache reconciler protects and
// re-materialises. libclip reads spans of them by range (verifying every span),
// bounded in time; see docs/GO.md.

// contentCacheOf is the cache a mount may use: none for a nil or typed-nil cache
// or when the caller says it is not available.
func contentCacheOf(c storage.ContentCache, available bool) storage.ContentCache {
	if !available || isNil(c) {
		return nil
	}
	return c
}

// isNil reports a nil interface or one holding a nil pointer (beta9 hands a nil
// *imageContentCache in a non-nil interface when it has no cache).
func isNil(v any) bool {
	if v == nil {
		return true
	}
	r := reflect.ValueOf(v)
	switch r.Kind() {
	case reflect.Pointer, reflect.Map, reflect.Slice, reflect.Func, reflect.Interface, reflect.Chan:
		return r.IsNil()
	}
	return false
}

// routing is the options every call of the cache gets: the routing key is the
// content hash, always.
func routing(hash string) struct{ RoutingKey string } {
	return struct{ RoutingKey string }{RoutingKey: hash}
}

// cacheCode maps a content-cache error onto the codes libclip's callbacks use.
func cacheCode(err error) C.int {
	switch {
	case err == nil:
		return C.CLIP_OK
	case errors.Is(err, storage.ErrContentCacheMiss):
		return C.CLIP_ENOTFOUND
	case errors.Is(err, storage.ErrContentCacheUnavailable):
		return C.CLIP_ENETWORK
	}
	return C.CLIP_ERROR
}

// Every content-cache callback returns within the cache timeout: the cache's
// method runs in a goroutine on Go memory, and one that has not answered by then
// is left to finish on its own (its answer dropped). So a hung cache never holds
// a libclip thread, nor the mount's teardown, for longer than that.

// bounded runs f, giving up after timeout with ErrContentCacheUnavailable.
func bounded[T any](timeout time.Duration, f func() (T, error)) (T, error) {
	type result struct {
		v   T
		err error
	}
	done := make(chan result, 1)
	go func() {
		defer func() {
			if r := recover(); r != nil {
				var zero T
				done <- result{zero, fmt.Errorf("content cache panicked: %v", r)}
			}
		}()
		v, err := f()
		done <- result{v, err}
	}()
	select {
	case r := <-done:
		return r.v, r.err
	case <-time.After(timeout):
		var zero T
		return zero, fmt.Errorf("content cache did not answer within %v: %w", timeout, storage.ErrContentCacheUnavailable)
	}
}

//export clipgoCacheExists
func clipgoCacheExists(key *C.char, size C.uint64_t, h C.uintptr_t) (rc C.int) {
	cb := fromHandle(h)
	defer func() {
		if r := recover(); r != nil {
			cb.recovered(r)
			rc = C.CLIP_ERROR
		}
	}()
	// Only ContentExistsWithSize is trusted: beta9's ContentExists says false
	// on purpose.
	c, ok := cb.cache.(storage.ContentCacheExistsWithSize)
	if !ok {
		return C.CLIP_EUNSUPPORTED
	}
	hash := C.GoString(key)
	found, err := bounded(cb.cacheTimeout, func() (bool, error) {
		return c.ContentExistsWithSize(hash, int64(size), routing(hash))
	})
	switch {
	case err != nil:
		return cacheCode(err)
	case found:
		return 1
	}
	return 0
}

//export clipgoCacheRead
func clipgoCacheRead(key *C.char, offset C.uint64_t, buf *C.uint8_t, length C.uint64_t, h C.uintptr_t) (rc C.int) {
	cb := fromHandle(h)
	defer func() {
		if r := recover(); r != nil {
			cb.recovered(r)
			rc = C.CLIP_ERROR
		}
	}()
	hash := C.GoString(key)
	cache := cb.cache
	data, err := bounded(cb.cacheTimeout, func() ([]byte, error) {
		d := make([]byte, int(length))
		return d, readContent(cache, hash, int64(offset), d)
	})
	if err != nil {
		return cacheCode(err)
	}
	// C memory, valid for this call: filled only once the cache has answered.
	copy(unsafe.Slice((*byte)(unsafe.Pointer(buf)), int(length)), data)
	return C.CLIP_OK
}

// readContent fills dest with the bytes of hash at offset: from files on this host
// if the cache can name them, else straight into dest, else through GetContent.
func readContent(c storage.ContentCache, hash string, offset int64, dest []byte) error {
	if v, ok := c.(storage.ContentCacheClientLocalPageFileViews); ok {
		views, err := v.ClientLocalPageFileViews(hash, offset, int64(len(dest)), routing(hash))
		if err == nil && views != nil && readViews(views, dest) == nil {
			return nil
		}
	}
	if r, ok := c.(storage.ContentCacheReadInto); ok {
		n, err := r.ReadContentInto(hash, offset, dest, routing(hash))
		if err != nil {
			return err
		}
		if n != int64(len(dest)) {
			return errShort(n, len(dest))
		}
		return nil
	}
	data, err := c.GetContent(hash, offset, int64(len(dest)), routing(hash))
	if err != nil {
		return err
	}
	if len(data) != len(dest) {
		return errShort(int64(len(data)), len(dest))
	}
	copy(dest, data)
	return nil
}

func errShort(n int64, want int) error {
	return &Error{Code: CodeFormat, Message: fmt.Sprintf("content cache returned %d bytes of %d", n, want)}
}

// readViews fills dest from local files, in order; the views must cover it.
func readViews(views []storage.ClientLocalPageFileView, dest []byte) error {
	at := 0
	for _, v := range views {
		if v.Length < 0 || at+v.Length > len(dest) {
			return io.ErrUnexpectedEOF
		}
		f, err := os.Open(v.Path)
		if err != nil {
			return err
		}
		_, err = f.ReadAt(dest[at:at+v.Length], v.Offset)
		f.Close()
		if err != nil {
			return err
		}
		at += v.Length
	}
	if at != len(dest) {
		return io.ErrUnexpectedEOF
	}
	return nil
}

//export clipgoCacheStoreFile
func clipgoCacheStoreFile(key, path *C.char, h C.uintptr_t) (rc C.int) {
	cb := fromHandle(h)
	defer func() {
		if r := recover(); r != nil {
			cb.recovered(r)
			rc = C.CLIP_ERROR
		}
	}()
	hash, cache, src := C.GoString(key), cb.cache, C.GoString(path)
	if cb.prepare != nil {
		// PrepareArchiveContent returns once the cache has the layers.
		return cacheCode(storeFile(cache, hash, src))
	}
	// A mount's store: libclip removes its file when this returns; a hard link
	// keeps the bytes for the store, which then runs on its own (whole layers
	// may take long).
	own := src + ".store"
	if err := os.Link(src, own); err != nil {
		return C.CLIP_ERROR
	}
	go func() {
		defer os.Remove(own)
		defer func() { _ = recover() }() // a panicking cache fails its store only
		_ = storeFile(cache, hash, own)
	}()
	return C.CLIP_OK
}

// storeFile stores the file at path under hash: by path if the cache can take
// one, else streamed through StoreContent, which may return without draining its
// channel (the sender then stops).
func storeFile(c storage.ContentCache, hash, path string) error {
	if s, ok := c.(storage.ContentCacheStoreLocalPath); ok {
		_, err := s.StoreContentFromLocalPath(path, hash, routing(hash))
		return err
	}
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	chunks := make(chan []byte, 4)
	done := make(chan struct{})
	sendErr := make(chan error, 1)
	go func() {
		defer close(chunks)
		for {
			buf := make([]byte, 4<<20)
			n, err := io.ReadFull(f, buf)
			if n > 0 {
				select {
				case chunks <- buf[:n]:
				case <-done:
					sendErr <- nil
					return
				}
			}
			if err == io.EOF || err == io.ErrUnexpectedEOF {
				sendErr <- nil
				return
			}
			if err != nil {
				sendErr <- err
				return
			}
		}
	}()
	_, err = c.StoreContent(chunks, hash, routing(hash))
	close(done)
	if rerr := <-sendErr; err == nil && rerr != nil {
		err = rerr
	}
	return err
}
