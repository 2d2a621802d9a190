//! Cancel tokens (`clip_cancel`), handed to long calls in their options.

use std::ffi::c_int;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::{CLIP_OK, boundary, boundary_void, c_out, c_ref, free_box, write_out};

// ---------------------------------------------------------------------------
// Cancellation
// ---------------------------------------------------------------------------

/// A cancel token: hand it to a long call (in its options), then
/// `clip_cancel_cancel` it from another thread to stop that call, which then
/// returns `CLIP_ECANCELED` promptly and leaves no output behind.
pub struct clip_cancel {
    pub(super) flag: Arc<AtomicBool>,
}

/// Creates a cancel token, not cancelled.
///
/// Returns: 0, or `CLIP_EINVALID` if `out` is NULL.
/// Ownership: `*out` belongs to the caller; free it with `clip_cancel_free` after
/// every call using it has returned.
#[unsafe(no_mangle)]
pub extern "C" fn clip_cancel_new(out: *mut *mut clip_cancel) -> c_int {
    boundary("clip_cancel_new", || {
        let out = c_out(out, "out")?;
        let c = Box::new(clip_cancel {
            flag: Arc::new(AtomicBool::new(false)),
        });
        write_out(out, Box::into_raw(c));
        Ok(())
    })
}

/// Cancels: every call using this token stops as soon as it notices (within
/// milliseconds) and returns `CLIP_ECANCELED`. A token stays cancelled; use a new
/// one for the next call.
///
/// Returns: 0, or `CLIP_EINVALID` if `cancel` is NULL.
/// Thread-safety: may be called from any thread, while the call it stops runs.
#[unsafe(no_mangle)]
pub extern "C" fn clip_cancel_cancel(cancel: *const clip_cancel) -> c_int {
    boundary("clip_cancel_cancel", || {
        c_ref(cancel, "cancel")?.flag.store(true, Ordering::SeqCst);
        Ok(())
    })
}

/// Whether `cancel` was cancelled: 1 if so, 0 if not, `CLIP_EINVALID` if `cancel`
/// is NULL.
///
/// Thread-safety: may be called from any thread.
#[unsafe(no_mangle)]
pub extern "C" fn clip_cancel_is_cancelled(cancel: *const clip_cancel) -> c_int {
    let mut r = 0;
    let rc = boundary("clip_cancel_is_cancelled", || {
        r = c_ref(cancel, "cancel")?.flag.load(Ordering::SeqCst) as c_int;
        Ok(())
    });
    if rc == CLIP_OK { r } else { rc }
}

/// Frees a cancel token. NULL is ignored.
///
/// Ownership: takes `cancel`; no call may still be using it.
#[unsafe(no_mangle)]
pub extern "C" fn clip_cancel_free(cancel: *mut clip_cancel) {
    boundary_void("clip_cancel_free", || free_box(cancel));
}
