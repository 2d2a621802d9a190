//! Return codes and the last-error machinery: how a Rust [`Error`] (or a panic)
//! becomes a `CLIP_E*` code and the calling thread's `clip_error_last`.
//!
//! Every exported body runs inside [`boundary`], which catches unwinds.

use std::cell::RefCell;
use std::ffi::{CString, c_char, c_int};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::{Error, ErrorCode};

// ---------------------------------------------------------------------------
// Return codes
// ---------------------------------------------------------------------------

/// Success.
pub const CLIP_OK: c_int = 0;
/// A failure with no more specific code (I/O, for example).
pub const CLIP_ERROR: c_int = -1;
/// A named thing (file, layout, tag, blob, image) does not exist.
pub const CLIP_ENOTFOUND: c_int = -2;
/// An argument is invalid: a NULL pointer, a string that is not UTF-8, a bad value.
pub const CLIP_EINVALID: c_int = -3;
/// Credentials were missing or refused.
pub const CLIP_EAUTH: c_int = -4;
/// The call was cancelled through its `clip_cancel` token.
pub const CLIP_ECANCELED: c_int = -5;
/// Input data (archive, blob, layout, tar stream) is malformed or fails verification.
pub const CLIP_EFORMAT: c_int = -6;
/// A version this build does not handle: an archive format version, or an options
/// struct version (0, or newer than this library).
pub const CLIP_EVERSION: c_int = -7;
/// Something valid that this build does not support.
pub const CLIP_EUNSUPPORTED: c_int = -8;
/// A callback returned non-zero to stop the call. Never produced by the library
/// itself, so a stop is not mistaken for a failure.
pub const CLIP_EUSER: c_int = -9;
/// Returned by a credential callback: "no opinion", use the default chain (auth
/// file, then anonymous).
pub const CLIP_EPASSTHROUGH: c_int = -10;
/// The library panicked (a bug); the message says where.
pub const CLIP_EPANIC: c_int = -11;
/// A registry could not be reached, or kept failing after retries.
pub const CLIP_ENETWORK: c_int = -12;

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// The last error of the calling thread (see `clip_error_last`).
#[repr(C)]
pub struct clip_error {
    /// A `CLIP_E*` code, or `CLIP_OK` if no call on this thread has failed.
    pub code: c_int,
    /// What went wrong, naming the thing at fault (UTF-8, never NULL).
    pub message: *const c_char,
}

struct LastError {
    message: CString,
    error: clip_error,
}

thread_local! {
    static LAST_ERROR: RefCell<LastError> = RefCell::new(LastError {
        message: CString::default(),
        error: clip_error { code: CLIP_OK, message: c"no error".as_ptr() },
    });
}

/// A failure on its way to C: a code and a message.
#[derive(Debug)]
pub(super) struct Failure {
    pub(super) code: c_int,
    pub(super) message: String,
}

impl Failure {
    pub(super) fn new(code: c_int, message: impl Into<String>) -> Failure {
        Failure {
            code,
            message: message.into(),
        }
    }

    pub(super) fn invalid(message: impl Into<String>) -> Failure {
        Failure::new(CLIP_EINVALID, message)
    }
}

pub(super) fn code_of(code: ErrorCode) -> c_int {
    match code {
        ErrorCode::Generic => CLIP_ERROR,
        ErrorCode::NotFound => CLIP_ENOTFOUND,
        ErrorCode::Invalid => CLIP_EINVALID,
        ErrorCode::Auth => CLIP_EAUTH,
        ErrorCode::Canceled => CLIP_ECANCELED,
        ErrorCode::Format => CLIP_EFORMAT,
        ErrorCode::Version => CLIP_EVERSION,
        ErrorCode::Unsupported => CLIP_EUNSUPPORTED,
        ErrorCode::Network => CLIP_ENETWORK,
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        Failure::new(code_of(e.code()), e.to_string())
    }
}

pub(super) type FfiResult<T = ()> = Result<T, Failure>;

pub(super) fn set_last_error(code: c_int, message: String) -> c_int {
    let message = CString::new(message).unwrap_or_else(|e| {
        CString::new(String::from_utf8_lossy(&e.into_vec()).replace('\0', "?"))
            .expect("no NUL left")
    });
    LAST_ERROR.with(|l| {
        let mut l = l.borrow_mut();
        l.message = message;
        l.error = clip_error {
            code,
            message: l.message.as_ptr(),
        };
    });
    code
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic payload".into())
}

/// Runs the body of an exported function: `Ok` is `CLIP_OK`; an error or a panic
/// sets the thread's last error and returns its code.
pub(super) fn boundary(name: &str, f: impl FnOnce() -> FfiResult) -> c_int {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => CLIP_OK,
        Ok(Err(e)) => set_last_error(e.code, e.message),
        Err(p) => set_last_error(
            CLIP_EPANIC,
            format!("{name}: internal error (panic): {}", panic_message(&*p)),
        ),
    }
}

/// [`boundary`] for functions that return nothing (a panic still sets the last error).
pub(super) fn boundary_void(name: &str, f: impl FnOnce()) {
    boundary(name, || {
        f();
        Ok(())
    });
}

/// A result of a call whose callbacks may have stopped it: then `CLIP_EUSER`.
pub(super) fn stopped_by_callback<T>(r: crate::Result<T>, stopped: &AtomicBool) -> FfiResult<T> {
    r.map_err(|e| {
        if stopped.load(Ordering::SeqCst) {
            Failure::new(CLIP_EUSER, format!("stopped by a callback: {e}"))
        } else {
            e.into()
        }
    })
}

/// The calling thread's last error (`clip_error_last`): never NULL, even if the
/// thread-local is gone or a panic is caught.
pub(super) fn last_error() -> *const clip_error {
    match catch_unwind(|| LAST_ERROR.with(|l| &l.borrow().error as *const clip_error)) {
        Ok(p) => p,
        Err(_) => {
            static PANICKED: SyncError = SyncError(clip_error {
                code: CLIP_EPANIC,
                message: c"clip_error_last: internal error (panic)".as_ptr(),
            });
            &PANICKED.0
        }
    }
}

struct SyncError(clip_error);
// SAFETY: the static's message points to a static string; nothing mutates it.
unsafe impl Sync for SyncError {}

/// Resets the calling thread's last error to `{CLIP_OK, "no error"}`
/// (`clip_error_clear`).
pub(super) fn clear_last_error() {
    let _ = catch_unwind(|| {
        LAST_ERROR.with(|l| {
            let mut l = l.borrow_mut();
            l.message = CString::default();
            l.error = clip_error {
                code: CLIP_OK,
                message: c"no error".as_ptr(),
            };
        })
    });
}
