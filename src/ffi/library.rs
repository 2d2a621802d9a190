//! Library-wide constants and functions: the options versions and other
//! constants of the header, the version, the last error, strings handed out,
//! the log level.

use std::ffi::{CStr, c_char, c_int, c_uint};
use std::panic::catch_unwind;

use super::*;

// ---------------------------------------------------------------------------
// Other constants
// ---------------------------------------------------------------------------

/// Current version of `clip_registry_options`.
pub const CLIP_REGISTRY_OPTIONS_VERSION: c_uint = 2;
/// Current version of `clip_create_options` (2 added the layer-index cache).
pub const CLIP_CREATE_OPTIONS_VERSION: c_uint = 2;
/// Current version of `clip_layer_index_cache_callbacks`.
pub const CLIP_LAYER_INDEX_CACHE_CALLBACKS_VERSION: c_uint = 1;
/// Current version of `clip_mount_options` (2 added `s3` and `data_archive`, 3 the
/// content tier and the free-space floor, 4 the startup profile).
pub const CLIP_MOUNT_OPTIONS_VERSION: c_uint = 4;
/// Current version of `clip_stats` (2 added the content-tier counters, 3 the
/// startup profile's replay).
pub const CLIP_STATS_VERSION: c_uint = 3;
/// Current version of `clip_pack_options`.
pub const CLIP_PACK_OPTIONS_VERSION: c_uint = 1;
/// Current version of `clip_s3_options`.
pub const CLIP_S3_OPTIONS_VERSION: c_uint = 1;
/// Current version of `clip_upload_options`.
pub const CLIP_UPLOAD_OPTIONS_VERSION: c_uint = 1;
/// Current version of `clip_content_cache`.
pub const CLIP_CONTENT_CACHE_VERSION: c_uint = 1;
/// Current version of `clip_prepare_options`.
pub const CLIP_PREPARE_OPTIONS_VERSION: c_uint = 1;

/// `credential_kind`: no static credential; ask the callback if any, then the
/// default chain (auth file, then anonymous).
pub const CLIP_CREDENTIAL_DEFAULT: c_uint = 0;
/// `credential_kind`: anonymous access, never look anywhere else.
pub const CLIP_CREDENTIAL_ANONYMOUS: c_uint = 1;
/// `credential_kind`: `username` and `password` (or an access token as password).
pub const CLIP_CREDENTIAL_BASIC: c_uint = 2;
/// `credential_kind`: `token`, an identity token or a registry bearer token.
pub const CLIP_CREDENTIAL_TOKEN: c_uint = 3;

/// Progress stage: the layer is about to be read.
pub const CLIP_STAGE_STARTING: c_uint = 1;
/// Progress stage: bytes of the layer were processed (at most every 500 ms).
pub const CLIP_STAGE_PROGRESS: c_uint = 2;
/// Progress stage: the layer is indexed.
pub const CLIP_STAGE_COMPLETED: c_uint = 3;

// ---------------------------------------------------------------------------
// Library-wide functions
// ---------------------------------------------------------------------------

/// The version of the library, `"MAJOR.MINOR.PATCH"`.
///
/// Ownership: a static string; do not free it.
/// Thread-safety: may be called from any thread.
#[unsafe(no_mangle)]
pub extern "C" fn clip_version() -> *const c_char {
    const V: &CStr =
        match CStr::from_bytes_with_nul(concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes()) {
            Ok(v) => v,
            Err(_) => c"unknown",
        };
    // Nothing here can panic, but every exported function catches unwinds.
    catch_unwind(|| V.as_ptr()).unwrap_or(c"unknown".as_ptr())
}

/// The last error of the calling thread: the code and message of the most recent
/// failing `clip_*` call made on this thread. Never NULL; `{CLIP_OK, "no error"}`
/// if no call on this thread has failed. Successful calls do not reset it (see
/// `clip_error_clear`), so read it only right after a call returned an error.
///
/// Ownership: owned by the library; valid until the next failing call on this
/// thread, `clip_error_clear`, or the thread's exit. Do not free it.
/// Thread-safety: per thread.
#[unsafe(no_mangle)]
pub extern "C" fn clip_error_last() -> *const clip_error {
    error::last_error()
}

/// Resets the calling thread's last error to `{CLIP_OK, "no error"}`.
///
/// Thread-safety: per thread.
#[unsafe(no_mangle)]
pub extern "C" fn clip_error_clear() {
    error::clear_last_error();
}

/// Frees a string the library handed out (JSON documents, for example). NULL is
/// ignored.
///
/// Ownership: takes `s`, which must come from this library and not be used again.
/// Never pass it to `free(3)`, nor pass this function memory from elsewhere.
#[unsafe(no_mangle)]
pub extern "C" fn clip_string_free(s: *mut c_char) {
    boundary_void("clip_string_free", || free_string(s));
}

/// Sets the level of the library's log output on stderr: `"trace"`, `"debug"`,
/// `"info"`, `"warn"` (the default), `"error"` or `"off"` (also `"warning"`, and
/// `"none"` or `"disabled"` for `"off"`; case does not matter). The level is also read
/// from the environment variable `CLIP_LOG_LEVEL` the first time any `clip_*`
/// call that can log is made. If the process already installed a global `tracing`
/// subscriber of its own, that one decides and this call changes nothing.
///
/// Returns: 0, or `CLIP_EINVALID` for an unknown level (the message names it).
/// Thread-safety: may be called from any thread, at any time.
#[unsafe(no_mangle)]
pub extern "C" fn clip_set_log_level(level: *const c_char) -> c_int {
    boundary("clip_set_log_level", || {
        crate::log::set_level(c_str(level, "level")?)?;
        Ok(())
    })
}
