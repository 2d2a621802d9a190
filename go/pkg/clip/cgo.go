package clip

/*
#cgo pkg-config: clip
#include <stdlib.h>
#include <clip.h>
*/
import "C"

import (
	"runtime"
	"runtime/cgo"
	"sync/atomic"
	"unsafe"
)

// call runs f, a call into libclip that returns a CLIP_* code, on one locked OS
// thread together with clip_error_last, so the message read is that call's.
func call(f func() C.int) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	rc := f()
	if rc == C.CLIP_OK {
		return nil
	}
	e := C.clip_error_last()
	msg := C.GoString(e.message)
	if e.code != rc {
		// The call failed without recording its error (it should not happen);
		// keep the code it returned.
		msg = "unknown error"
	}
	return &Error{Code: Code(rc), Message: msg}
}

// cstrings is the C strings an options struct points to, freed together.
type cstrings []*C.char

// str returns s as a C string owned by cs; "" gives NULL.
func (cs *cstrings) str(s string) *C.char {
	if s == "" {
		return nil
	}
	p := C.CString(s)
	*cs = append(*cs, p)
	return p
}

// bytes returns s as a C string owned by cs, never NULL.
func (cs *cstrings) bytes(s string) *C.char {
	p := C.CString(s)
	*cs = append(*cs, p)
	return p
}

func (cs *cstrings) free() {
	for _, p := range *cs {
		C.free(unsafe.Pointer(p))
	}
	*cs = nil
}

// cAlloc returns zeroed C memory for one T (C structs handed to libclip live in C
// memory, never Go memory: they hold callback payloads).
func cAlloc[T any]() *T {
	var zero T
	return (*T)(C.calloc(1, C.size_t(unsafe.Sizeof(zero))))
}

func cFree[T any](p *T) { C.free(unsafe.Pointer(p)) }

// liveHandles counts cgo handles made by newHandle and not yet deleted; the tests
// check it returns to zero.
var liveHandles atomic.Int64

// newHandle wraps cgo.NewHandle; every handle is deleted with deleteHandle once the
// call or mount it serves is over.
func newHandle(v any) cgo.Handle {
	liveHandles.Add(1)
	return cgo.NewHandle(v)
}

func deleteHandle(h cgo.Handle) {
	h.Delete()
	liveHandles.Add(-1)
}

// Version returns the version of the libclip in use.
func Version() string { return C.GoString(C.clip_version()) }
