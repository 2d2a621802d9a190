//! The shared content tier from C: a caller's cache behind callbacks
//! (`clip_content_cache`), or an S3 bucket (`clip_mount_options.remote_cache`),
//! and the gate that keeps callbacks from running after their owner is freed.

use std::ffi::{c_char, c_int, c_uint, c_void};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use super::*;
use crate::tier::{ContentTier, TierError};

// ---------------------------------------------------------------------------
// Content-cache callbacks
// ---------------------------------------------------------------------------

/// A content cache of the caller's (a cluster cache) used as the shared content
/// tier of a mount: whole uncompressed layers, each under the bare sha256 hex of
/// its uncompressed stream (`DecompressedHash`), read by range. Initialise with
/// `clip_content_cache_init`.
///
/// Callbacks return `CLIP_OK` on success, `CLIP_ENOTFOUND` for "not held" (a
/// miss), `CLIP_ENETWORK` for "unavailable now" (the tier is then not asked for
/// a while), any other negative code for another failure. No failure fails a
/// read: the layer source serves it.
///
/// Thread-safety: the callbacks are called from the library's threads,
/// concurrently. A read waits for a callback at most
/// `clip_mount_options.content_cache_timeout_ms` and then goes on without it;
/// the callback keeps its thread until it returns. `clip_mount_free` (and
/// `clip_prepare` before returning) waits for callbacks in progress and calls
/// none after, so `payload` need only stay valid until then. Strings and buffers
/// are valid only during a call.
#[repr(C)]
pub struct clip_content_cache {
    /// `CLIP_CONTENT_CACHE_VERSION`.
    pub version: c_uint,
    /// Whether the cache holds `key` with exactly `size` bytes: 1 if so, 0 if
    /// not, `CLIP_EUNSUPPORTED` if it cannot tell (reads are then tried), or an
    /// error code. NULL: it cannot tell.
    pub exists:
        Option<unsafe extern "C" fn(key: *const c_char, size: u64, payload: *mut c_void) -> c_int>,
    /// Fills all `len` bytes of `buf` with the bytes of `key` at `offset`.
    /// Required.
    pub read: Option<
        unsafe extern "C" fn(
            key: *const c_char,
            offset: u64,
            buf: *mut u8,
            len: u64,
            payload: *mut c_void,
        ) -> c_int,
    >,
    /// Stores the file at `path` (the whole uncompressed layer) under `key`;
    /// called from a background thread and may take long. NULL: the cache is
    /// only read.
    pub store_file: Option<
        unsafe extern "C" fn(
            key: *const c_char,
            path: *const c_char,
            payload: *mut c_void,
        ) -> c_int,
    >,
    /// Handed to the callbacks.
    pub payload: *mut c_void,
}

/// Fills `cache` with the defaults of `version` (pass
/// `CLIP_CONTENT_CACHE_VERSION`): no callbacks.
///
/// Returns: 0; `CLIP_EINVALID` if `cache` is NULL; `CLIP_EVERSION` for a version
/// this library does not know.
#[unsafe(no_mangle)]
pub extern "C" fn clip_content_cache_init(
    cache: *mut clip_content_cache,
    version: c_uint,
) -> c_int {
    boundary("clip_content_cache_init", || {
        check_version("clip_content_cache", version, CLIP_CONTENT_CACHE_VERSION)?;
        let o = c_out_struct(cache, "cache")?;
        write_struct(
            o,
            clip_content_cache {
                version,
                exists: None,
                read: None,
                store_file: None,
                payload: std::ptr::null_mut(),
            },
        );
        Ok(())
    })
}

/// Lets callbacks run until it is closed, then none; `close` waits for those in
/// progress.
#[derive(Default)]
pub(super) struct Gate {
    closed: AtomicBool,
    active: Mutex<usize>,
    idle: Condvar,
}

/// A callback in progress (see [`Gate::enter`]).
pub(super) struct Entered<'a>(&'a Gate);

impl Drop for Entered<'_> {
    fn drop(&mut self) {
        let mut n = self.0.active.lock().unwrap_or_else(|e| e.into_inner());
        *n -= 1;
        if *n == 0 {
            self.0.idle.notify_all();
        }
    }
}

impl Gate {
    /// Enters, unless closed.
    pub(super) fn enter(&self) -> Option<Entered<'_>> {
        let mut n = self.active.lock().unwrap_or_else(|e| e.into_inner());
        if self.closed.load(Ordering::SeqCst) {
            return None;
        }
        *n += 1;
        Some(Entered(self))
    }

    /// Closes and waits for callbacks in progress to return.
    pub(super) fn close(&self) {
        let mut n = self.active.lock().unwrap_or_else(|e| e.into_inner());
        self.closed.store(true, Ordering::SeqCst);
        while *n > 0 {
            n = self.idle.wait(n).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// A [`ContentTier`] over a caller's callbacks.
struct CallbackTier {
    exists: Option<unsafe extern "C" fn(*const c_char, u64, *mut c_void) -> c_int>,
    read: unsafe extern "C" fn(*const c_char, u64, *mut u8, u64, *mut c_void) -> c_int,
    store_file: Option<unsafe extern "C" fn(*const c_char, *const c_char, *mut c_void) -> c_int>,
    payload: Payload,
    gate: Arc<Gate>,
}

fn callback_error(rc: c_int, what: &str) -> TierError {
    match rc {
        CLIP_ENOTFOUND => TierError::Miss,
        CLIP_ENETWORK => {
            TierError::Unavailable(format!("the content cache's {what} said unavailable"))
        }
        rc => TierError::Failed(format!("the content cache's {what} returned {rc}")),
    }
}

fn closed() -> TierError {
    TierError::Unavailable("the mount was freed".into())
}

impl ContentTier for CallbackTier {
    fn describe(&self) -> String {
        "the caller's content cache".into()
    }

    fn exists(&self, key: &str, size: u64) -> Result<Option<bool>, TierError> {
        let Some(f) = self.exists else {
            return Ok(None);
        };
        let _in = self.gate.enter().ok_or_else(closed)?;
        let key = callback_string(key.as_bytes());
        // SAFETY: the header documents the callback's contract; `key` lives until
        // it returns, and the gate keeps the payload's owner alive.
        let rc = unsafe { f(key.as_ptr(), size, self.payload.get()) };
        match rc {
            1 => Ok(Some(true)),
            0 => Ok(Some(false)),
            CLIP_EUNSUPPORTED => Ok(None),
            rc => Err(callback_error(rc, "exists")),
        }
    }

    fn read_into(&self, key: &str, offset: u64, buf: &mut [u8]) -> Result<(), TierError> {
        let _in = self.gate.enter().ok_or_else(closed)?;
        let key = callback_string(key.as_bytes());
        // SAFETY: as in `exists`; `buf` is valid for `buf.len()` writable bytes
        // during the call.
        let rc = unsafe {
            (self.read)(
                key.as_ptr(),
                offset,
                buf.as_mut_ptr(),
                buf.len() as u64,
                self.payload.get(),
            )
        };
        match rc {
            CLIP_OK => Ok(()),
            rc => Err(callback_error(rc, "read")),
        }
    }

    fn store_file(&self, key: &str, path: &Path) -> Result<(), TierError> {
        let Some(f) = self.store_file else {
            return Err(TierError::Failed("the content cache is read-only".into()));
        };
        let _in = self.gate.enter().ok_or_else(closed)?;
        let key = callback_string(key.as_bytes());
        let path = callback_string(path.as_os_str().as_encoded_bytes());
        // SAFETY: as in `exists`; `path` lives until the call returns.
        let rc = unsafe { f(key.as_ptr(), path.as_ptr(), self.payload.get()) };
        match rc {
            CLIP_OK => Ok(()),
            rc => Err(callback_error(rc, "store_file")),
        }
    }
}

/// The tier a `clip_content_cache` (argument `name`) describes, behind `gate`.
pub(super) fn callback_tier(
    p: *const clip_content_cache,
    name: &str,
    gate: Arc<Gate>,
) -> FfiResult<Arc<dyn ContentTier>> {
    let c = c_ref(p, name)?;
    check_version("clip_content_cache", c.version, CLIP_CONTENT_CACHE_VERSION)?;
    let read = c
        .read
        .ok_or_else(|| Failure::invalid(format!("{name}->read is NULL")))?;
    Ok(Arc::new(CallbackTier {
        exists: c.exists,
        read,
        store_file: c.store_file,
        payload: Payload(c.payload),
        gate,
    }))
}
