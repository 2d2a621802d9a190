package clip

/*
#include <clip.h>
*/
import "C"

import "fmt"

// Code is a libclip error code (CLIP_E* in clip.h).
type Code int

// The codes, with the same values as in clip.h.
const (
	CodeError       Code = C.CLIP_ERROR        // no more specific code (I/O, ...)
	CodeNotFound    Code = C.CLIP_ENOTFOUND    // a layout, tag, blob, archive or file is missing
	CodeInvalid     Code = C.CLIP_EINVALID     // an invalid argument or option
	CodeAuth        Code = C.CLIP_EAUTH        // credentials missing or refused
	CodeCanceled    Code = C.CLIP_ECANCELED    // the context was cancelled
	CodeFormat      Code = C.CLIP_EFORMAT      // malformed input (archive, layout, blob)
	CodeVersion     Code = C.CLIP_EVERSION     // an archive or options version this build does not read
	CodeUnsupported Code = C.CLIP_EUNSUPPORTED // valid input this build does not support
	CodeCallback    Code = C.CLIP_EUSER        // a callback of this package stopped the call
	CodePanic       Code = C.CLIP_EPANIC       // a bug in libclip (a panic was caught)
	CodeNetwork     Code = C.CLIP_ENETWORK     // a registry unreachable, or failing after retries
)

var codeNames = map[Code]string{
	CodeError: "error", CodeNotFound: "not found", CodeInvalid: "invalid argument",
	CodeAuth: "unauthorized", CodeCanceled: "canceled", CodeFormat: "bad format",
	CodeVersion: "unsupported version", CodeUnsupported: "unsupported",
	CodeCallback: "stopped by a callback", CodePanic: "internal error", CodeNetwork: "network error",
}

func (c Code) String() string {
	if n, ok := codeNames[c]; ok {
		return n
	}
	return fmt.Sprintf("code %d", int(c))
}

// Error is an error reported by libclip: its code and its message, which names
// the thing at fault. errors.Is matches it against the Err* sentinels by code, and
// against its cause (context.Canceled, common.ErrFileHeaderMismatch) when it has one.
type Error struct {
	Code    Code
	Message string
	cause   error
}

func (e *Error) Error() string { return "clip: " + e.Message }

// Is reports whether target is an *Error of the same code.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Code == e.Code
}

// Unwrap returns the cause, if any.
func (e *Error) Unwrap() error { return e.cause }

// Sentinels for errors.Is, one per code.
var (
	ErrGeneric     = &Error{Code: CodeError, Message: CodeError.String()}
	ErrNotFound    = &Error{Code: CodeNotFound, Message: CodeNotFound.String()}
	ErrInvalid     = &Error{Code: CodeInvalid, Message: CodeInvalid.String()}
	ErrAuth        = &Error{Code: CodeAuth, Message: CodeAuth.String()}
	ErrCanceled    = &Error{Code: CodeCanceled, Message: CodeCanceled.String()}
	ErrFormat      = &Error{Code: CodeFormat, Message: CodeFormat.String()}
	ErrVersion     = &Error{Code: CodeVersion, Message: CodeVersion.String()}
	ErrUnsupported = &Error{Code: CodeUnsupported, Message: CodeUnsupported.String()}
	ErrCallback    = &Error{Code: CodeCallback, Message: CodeCallback.String()}
	ErrPanic       = &Error{Code: CodePanic, Message: CodePanic.String()}
	ErrNetwork     = &Error{Code: CodeNetwork, Message: CodeNetwork.String()}
)
