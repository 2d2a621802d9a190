//! The C ABI: `include/clip.h`, generated from this file by cbindgen (`build.rs`).
//!
//! Conventions (libgit2 style, see `docs/` and the header's preamble):
//!
//! - A fallible function returns `int`: `CLIP_OK` (0) or a negative `CLIP_E*` code;
//!   [`clip_error_last`] then gives the calling thread's code and message, which
//!   names the thing at fault. Out-parameters come first and are written only on
//!   success.
//! - Options are versioned structs: `clip_*_options_init(opts, CLIP_*_VERSION)`
//!   fills in the defaults; a NULL options pointer means all defaults. Versions 1
//!   through the current one are accepted, fields are only ever appended.
//! - Handles are opaque and freed by their own function (which accepts NULL);
//!   strings handed out are freed with [`clip_string_free`].
//! - Callbacks take a `void *payload` last. Every exported body runs inside
//!   `catch_unwind`: a panic becomes `CLIP_EPANIC` with a message, never an unwind
//!   into C.
//!
//! This module only adapts: C types in, the Rust API ([`crate::create`],
//! [`crate::archive`], [`crate::mount`], [`crate::log`]) called, codes out. All raw
//! pointer handling goes through the small helpers at the top.
#![allow(non_camel_case_types)]

use std::cell::RefCell;
use std::ffi::{CStr, CString, OsStr, c_char, c_int, c_uint, c_void};
use std::os::unix::ffi::OsStrExt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::archive::Archive;
use crate::create::{CreateOptions, Progress, Stage};
use crate::error::{Error, ErrorCode};
use crate::fs::ReadEvent;
use crate::image::{Image, SourceOptions};
use crate::mount::{Mount, MountOptions};
use crate::oci::Platform;
use crate::registry::{Credential, CredentialFn, RegistryOptions};

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
// Other constants
// ---------------------------------------------------------------------------

/// Current version of `clip_registry_options`.
pub const CLIP_REGISTRY_OPTIONS_VERSION: c_uint = 1;
/// Current version of `clip_create_options`.
pub const CLIP_CREATE_OPTIONS_VERSION: c_uint = 1;
/// Current version of `clip_mount_options`.
pub const CLIP_MOUNT_OPTIONS_VERSION: c_uint = 1;
/// Current version of `clip_stats`.
pub const CLIP_STATS_VERSION: c_uint = 1;

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
struct Failure {
    code: c_int,
    message: String,
}

impl Failure {
    fn new(code: c_int, message: impl Into<String>) -> Failure {
        Failure {
            code,
            message: message.into(),
        }
    }

    fn invalid(message: impl Into<String>) -> Failure {
        Failure::new(CLIP_EINVALID, message)
    }
}

fn code_of(code: ErrorCode) -> c_int {
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

type FfiResult<T = ()> = Result<T, Failure>;

fn set_last_error(code: c_int, message: String) -> c_int {
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
fn boundary(name: &str, f: impl FnOnce() -> FfiResult) -> c_int {
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
fn boundary_void(name: &str, f: impl FnOnce()) {
    boundary(name, || {
        f();
        Ok(())
    });
}

// ---------------------------------------------------------------------------
// Pointer helpers: the only places raw pointers are read.
// ---------------------------------------------------------------------------

/// The C string at `p` (argument `name`), which must not be NULL.
fn c_bytes<'a>(p: *const c_char, name: &str) -> FfiResult<&'a [u8]> {
    if p.is_null() {
        return Err(Failure::invalid(format!("argument {name} is NULL")));
    }
    // SAFETY: the header documents every `const char *` argument as a NUL-terminated
    // string that stays valid for the call; `p` is not NULL.
    Ok(unsafe { CStr::from_ptr(p) }.to_bytes())
}

/// The UTF-8 C string at `p`, which must not be NULL.
fn c_str<'a>(p: *const c_char, name: &str) -> FfiResult<&'a str> {
    std::str::from_utf8(c_bytes(p, name)?)
        .map_err(|e| Failure::invalid(format!("argument {name} is not valid UTF-8: {e}")))
}

/// The UTF-8 C string at `p`, or `None` if `p` is NULL.
fn c_str_opt<'a>(p: *const c_char, name: &str) -> FfiResult<Option<&'a str>> {
    if p.is_null() {
        Ok(None)
    } else {
        c_str(p, name).map(Some)
    }
}

/// The path at `p` (any bytes but NUL), which must not be NULL.
fn c_path<'a>(p: *const c_char, name: &str) -> FfiResult<&'a Path> {
    let b = c_bytes(p, name)?;
    if b.is_empty() {
        return Err(Failure::invalid(format!(
            "argument {name} is an empty path"
        )));
    }
    Ok(Path::new(OsStr::from_bytes(b)))
}

/// The path at `p`, or `None` if `p` is NULL.
fn c_path_opt<'a>(p: *const c_char, name: &str) -> FfiResult<Option<&'a Path>> {
    if p.is_null() {
        Ok(None)
    } else {
        c_path(p, name).map(Some)
    }
}

/// The object at `p`, which must not be NULL.
fn c_ref<'a, T>(p: *const T, name: &str) -> FfiResult<&'a T> {
    // SAFETY: the header documents every pointer argument as pointing to a valid,
    // initialised object (a handle not yet freed, or a caller's struct) for the
    // duration of the call; `as_ref` checks NULL.
    unsafe { p.as_ref() }.ok_or_else(|| Failure::invalid(format!("argument {name} is NULL")))
}

/// The object at `p` for writing, which must not be NULL.
fn c_mut<'a, T>(p: *mut T, name: &str) -> FfiResult<&'a mut T> {
    // SAFETY: as for `c_ref`; the header also says no other thread uses the object
    // during the call, so the reference is unique.
    unsafe { p.as_mut() }.ok_or_else(|| Failure::invalid(format!("argument {name} is NULL")))
}

/// Checks an out-parameter is not NULL before any work is done.
fn c_out<T>(p: *mut *mut T, name: &str) -> FfiResult<*mut *mut T> {
    if p.is_null() {
        Err(Failure::invalid(format!("argument {name} is NULL")))
    } else {
        Ok(p)
    }
}

/// Writes `value` to an out-parameter checked with [`c_out`].
fn write_out<T>(out: *mut *mut T, value: *mut T) {
    // SAFETY: `out` was checked non-NULL by `c_out` and points to writable storage
    // for a pointer, as the header requires of out-parameters.
    unsafe { out.write(value) }
}

/// Takes back ownership of a handle handed out by `Box::into_raw`.
fn free_box<T>(p: *mut T) {
    if !p.is_null() {
        // SAFETY: `p` came from `Box::into_raw` in this module (the header requires
        // that a handle be freed once, by its own function) and is not used again.
        drop(unsafe { Box::from_raw(p) });
    }
}

/// Takes back a string handed out by [`out_string`].
fn free_string(s: *mut c_char) {
    if !s.is_null() {
        // SAFETY: `s` came from `CString::into_raw` in `out_string` (the header
        // requires it) and is not used again.
        drop(unsafe { CString::from_raw(s) });
    }
}

/// A string handed out to C, freed with `clip_string_free`.
fn out_string(s: String) -> FfiResult<*mut c_char> {
    CString::new(s)
        .map(CString::into_raw)
        .map_err(|_| Failure::new(CLIP_ERROR, "string contains a NUL byte"))
}

/// A C string argument for a callback (our own strings never hold NUL bytes; one
/// that did is cut there).
fn callback_string(s: &[u8]) -> CString {
    let end = s.iter().position(|&b| b == 0).unwrap_or(s.len());
    CString::new(&s[..end]).expect("cut at the first NUL")
}

/// Checks an options struct's `version` (`what` names the struct).
fn check_version(what: &str, version: c_uint, current: c_uint) -> FfiResult {
    if version == 0 || version > current {
        return Err(Failure::new(
            CLIP_EVERSION,
            format!(
                "{what} version {version} is not supported (this library reads versions 1 to {current}; initialise it with {what}_init)"
            ),
        ));
    }
    Ok(())
}

/// A caller's `void *payload`, handed back to its callback from whichever thread
/// calls it.
#[derive(Clone, Copy)]
struct Payload(*mut c_void);

// SAFETY: the header tells callers that callbacks may be called from other threads
// than the one that passed the payload; the pointer is only ever handed back to
// the caller's own callback, never dereferenced here.
unsafe impl Send for Payload {}
// SAFETY: as above.
unsafe impl Sync for Payload {}

impl Payload {
    /// The pointer (a method, so closures capture the whole `Send` wrapper).
    fn get(self) -> *mut c_void {
        self.0
    }
}

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

/// Resets the calling thread's last error to `{CLIP_OK, "no error"}`.
///
/// Thread-safety: per thread.
#[unsafe(no_mangle)]
pub extern "C" fn clip_error_clear() {
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

// ---------------------------------------------------------------------------
// Cancellation
// ---------------------------------------------------------------------------

/// A cancel token: hand it to a long call (in its options), then
/// `clip_cancel_cancel` it from another thread to stop that call, which then
/// returns `CLIP_ECANCELED` promptly and leaves no output behind.
pub struct clip_cancel {
    flag: Arc<AtomicBool>,
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

// ---------------------------------------------------------------------------
// Registry options and credentials
// ---------------------------------------------------------------------------

/// The answer a credential callback fills in, through `clip_credential_set_*`.
pub struct clip_credential {
    cred: Option<Credential>,
}

/// Asked for credentials for `registry` (`host[:port]`) and `scope`
/// (`repository:<name>:pull`).
///
/// Return 0 after calling one of `clip_credential_set_anonymous`,
/// `clip_credential_set_basic` or `clip_credential_set_token` on `out`;
/// `CLIP_EPASSTHROUGH` for "no opinion" (the default chain is used: auth file,
/// then anonymous); any other value stops the call, which returns `CLIP_EUSER`.
///
/// Thread-safety: called from the library's threads (indexing threads, a mount's
/// read threads), never concurrently for one options struct. `out`, `registry`
/// and `scope` are valid only during the call.
pub type clip_credential_cb = Option<
    unsafe extern "C" fn(
        out: *mut clip_credential,
        registry: *const c_char,
        scope: *const c_char,
        payload: *mut c_void,
    ) -> c_int,
>;

/// Answers a credential callback with anonymous access.
///
/// Returns: 0, or `CLIP_EINVALID` if `cred` is NULL.
#[unsafe(no_mangle)]
pub extern "C" fn clip_credential_set_anonymous(cred: *mut clip_credential) -> c_int {
    boundary("clip_credential_set_anonymous", || {
        c_mut(cred, "cred")?.cred = Some(Credential::Anonymous);
        Ok(())
    })
}

/// Answers a credential callback with a username and password (or access token
/// used as a password). The strings are copied.
///
/// Returns: 0, or `CLIP_EINVALID` if an argument is NULL or not UTF-8.
#[unsafe(no_mangle)]
pub extern "C" fn clip_credential_set_basic(
    cred: *mut clip_credential,
    username: *const c_char,
    password: *const c_char,
) -> c_int {
    boundary("clip_credential_set_basic", || {
        let c = c_mut(cred, "cred")?;
        c.cred = Some(Credential::Basic {
            username: c_str(username, "username")?.to_owned(),
            password: c_str(password, "password")?.to_owned(),
        });
        Ok(())
    })
}

/// Answers a credential callback with a token (an identity token exchanged at the
/// registry's token server, or a bearer token used as is). The string is copied.
///
/// Returns: 0, or `CLIP_EINVALID` if an argument is NULL or not UTF-8.
#[unsafe(no_mangle)]
pub extern "C" fn clip_credential_set_token(
    cred: *mut clip_credential,
    token: *const c_char,
) -> c_int {
    boundary("clip_credential_set_token", || {
        let c = c_mut(cred, "cred")?;
        c.cred = Some(Credential::Token(c_str(token, "token")?.to_owned()));
        Ok(())
    })
}

/// How to reach registries, shared by `clip_create_options` and
/// `clip_mount_options` (which point to one). Initialise with
/// `clip_registry_options_init`.
#[repr(C)]
pub struct clip_registry_options {
    /// `CLIP_REGISTRY_OPTIONS_VERSION`.
    pub version: c_uint,
    /// `CLIP_CREDENTIAL_DEFAULT` (default), `_ANONYMOUS`, `_BASIC` or `_TOKEN`:
    /// credentials used for every registry before anything else is asked.
    pub credential_kind: c_uint,
    /// User name for `CLIP_CREDENTIAL_BASIC`.
    pub username: *const c_char,
    /// Password for `CLIP_CREDENTIAL_BASIC`.
    pub password: *const c_char,
    /// Token for `CLIP_CREDENTIAL_TOKEN`.
    pub token: *const c_char,
    /// Asked for credentials per registry and scope when `credential_kind` is
    /// `CLIP_CREDENTIAL_DEFAULT`; NULL for none.
    pub credential_cb: clip_credential_cb,
    /// Handed to `credential_cb`. Must stay valid while the call (or the mount)
    /// using these options lives.
    pub credential_payload: *mut c_void,
    /// A docker `config.json` or podman `auth.json` to read instead of the default
    /// locations; NULL for the defaults.
    pub auth_file: *const c_char,
    /// Registries (`host[:port]`) to reach over plain HTTP; loopback registries
    /// always may be. An array of `plain_http_count` strings, or NULL.
    pub plain_http: *const *const c_char,
    /// Number of strings in `plain_http`.
    pub plain_http_count: usize,
    /// Timeout to connect and for a response to start, in milliseconds (default
    /// 30000).
    pub timeout_ms: c_uint,
    /// Attempts per request on 429, 5xx and dropped connections (default 5).
    pub attempts: c_uint,
}

/// Fills `opts` with the defaults of `version` (pass
/// `CLIP_REGISTRY_OPTIONS_VERSION`).
///
/// Returns: 0; `CLIP_EINVALID` if `opts` is NULL; `CLIP_EVERSION` for a version
/// this library does not know.
#[unsafe(no_mangle)]
pub extern "C" fn clip_registry_options_init(
    opts: *mut clip_registry_options,
    version: c_uint,
) -> c_int {
    boundary("clip_registry_options_init", || {
        check_version(
            "clip_registry_options",
            version,
            CLIP_REGISTRY_OPTIONS_VERSION,
        )?;
        let o = c_out_struct(opts, "opts")?;
        let d = RegistryOptions::default();
        write_struct(
            o,
            clip_registry_options {
                version,
                credential_kind: CLIP_CREDENTIAL_DEFAULT,
                username: std::ptr::null(),
                password: std::ptr::null(),
                token: std::ptr::null(),
                credential_cb: None,
                credential_payload: std::ptr::null_mut(),
                auth_file: std::ptr::null(),
                plain_http: std::ptr::null(),
                plain_http_count: 0,
                timeout_ms: d.timeout.as_millis().min(c_uint::MAX as u128) as c_uint,
                attempts: d.attempts,
            },
        );
        Ok(())
    })
}

/// Checks a struct out-parameter is not NULL.
fn c_out_struct<T>(p: *mut T, name: &str) -> FfiResult<*mut T> {
    if p.is_null() {
        Err(Failure::invalid(format!("argument {name} is NULL")))
    } else {
        Ok(p)
    }
}

/// Writes a whole struct to an out-parameter checked with [`c_out_struct`].
fn write_struct<T>(p: *mut T, value: T) {
    // SAFETY: `p` is not NULL (checked) and points to writable storage for a `T`,
    // as the header requires; `write` does not read the old, possibly
    // uninitialised, contents.
    unsafe { p.write(value) }
}

/// Calls a C credential callback, one call at a time per options struct.
struct CredentialCallback {
    cb: unsafe extern "C" fn(
        *mut clip_credential,
        *const c_char,
        *const c_char,
        *mut c_void,
    ) -> c_int,
    payload: Payload,
    lock: Mutex<()>,
    /// Set when the callback stopped a call, so the call reports `CLIP_EUSER`.
    stopped: Arc<AtomicBool>,
}

impl CredentialCallback {
    fn ask(&self, registry: &str, scope: &str) -> crate::Result<Option<Credential>> {
        let reg = callback_string(registry.as_bytes());
        let sc = callback_string(scope.as_bytes());
        let mut answer = clip_credential { cred: None };
        let rc = {
            let _one_at_a_time = self.lock.lock().unwrap_or_else(|e| e.into_inner());
            // SAFETY: the header documents the callback's contract; the pointers
            // are valid for the duration of the call.
            unsafe { (self.cb)(&mut answer, reg.as_ptr(), sc.as_ptr(), self.payload.get()) }
        };
        match rc {
            0 => answer.cred.map(Some).ok_or_else(|| {
                Error::Invalid(format!(
                    "the credential callback for {registry} returned 0 but set no credential"
                ))
            }),
            CLIP_EPASSTHROUGH => Ok(None),
            rc => {
                self.stopped.store(true, Ordering::SeqCst);
                Err(Error::Auth(format!(
                    "the credential callback for {registry} ({scope}) stopped the call (returned {rc})"
                )))
            }
        }
    }
}

/// Converts registry options (NULL: defaults). `stopped` is set if a callback
/// stops a call.
fn registry_options(
    p: *const clip_registry_options,
    stopped: &Arc<AtomicBool>,
) -> FfiResult<RegistryOptions> {
    let mut r = RegistryOptions::default();
    if p.is_null() {
        return Ok(r);
    }
    let o = c_ref(p, "registry")?;
    check_version(
        "clip_registry_options",
        o.version,
        CLIP_REGISTRY_OPTIONS_VERSION,
    )?;
    r.credential = match o.credential_kind {
        CLIP_CREDENTIAL_DEFAULT => None,
        CLIP_CREDENTIAL_ANONYMOUS => Some(Credential::Anonymous),
        CLIP_CREDENTIAL_BASIC => Some(Credential::Basic {
            username: c_str(o.username, "registry->username")?.to_owned(),
            password: c_str(o.password, "registry->password")?.to_owned(),
        }),
        CLIP_CREDENTIAL_TOKEN => Some(Credential::Token(
            c_str(o.token, "registry->token")?.to_owned(),
        )),
        k => {
            return Err(Failure::invalid(format!(
                "registry->credential_kind {k} is not a CLIP_CREDENTIAL_* value"
            )));
        }
    };
    if let Some(cb) = o.credential_cb {
        let c = Arc::new(CredentialCallback {
            cb,
            payload: Payload(o.credential_payload),
            lock: Mutex::new(()),
            stopped: stopped.clone(),
        });
        let f: CredentialFn = Arc::new(move |registry: &str, scope: &str| c.ask(registry, scope));
        r.callback = Some(f);
    }
    r.auth_file = c_path_opt(o.auth_file, "registry->auth_file")?.map(Path::to_path_buf);
    if o.plain_http_count > 0 {
        if o.plain_http.is_null() {
            return Err(Failure::invalid(format!(
                "registry->plain_http is NULL but plain_http_count is {}",
                o.plain_http_count
            )));
        }
        // SAFETY: the header documents `plain_http` as an array of
        // `plain_http_count` string pointers valid for the call; it is not NULL.
        let hosts = unsafe { std::slice::from_raw_parts(o.plain_http, o.plain_http_count) };
        for (i, h) in hosts.iter().enumerate() {
            r.plain_http
                .push(c_str(*h, &format!("registry->plain_http[{i}]"))?.to_owned());
        }
    }
    if o.timeout_ms > 0 {
        r.timeout = Duration::from_millis(o.timeout_ms as u64);
    }
    if o.attempts > 0 {
        r.attempts = o.attempts;
    }
    Ok(r)
}

// ---------------------------------------------------------------------------
// Creating archives
// ---------------------------------------------------------------------------

/// One progress event of `clip_index_layout` / `clip_create_from_image`. Fields may
/// be appended in later versions; never copy the struct by value into storage
/// that outlives the callback.
#[repr(C)]
pub struct clip_progress {
    /// `CLIP_STAGE_STARTING`, `CLIP_STAGE_PROGRESS` or `CLIP_STAGE_COMPLETED`.
    pub stage: c_uint,
    /// 1-based index of the layer, bottom first.
    pub layer_index: usize,
    /// Number of layers of the image.
    pub layer_count: usize,
    /// The layer's digest (`sha256:...`).
    pub layer_digest: *const c_char,
    /// Compressed bytes of the layer read so far.
    pub compressed_done: u64,
    /// Compressed size of the layer.
    pub compressed_total: u64,
    /// Uncompressed bytes of the layer so far (its uncompressed size once completed).
    pub uncompressed_done: u64,
    /// Layers completed so far (set on `CLIP_STAGE_COMPLETED`).
    pub completed_layers: usize,
    /// Files in the layer (set on `CLIP_STAGE_COMPLETED`).
    pub files: usize,
    /// Where the layer's bytes come from: `"registry"` or `"local-layout"`.
    pub source: *const c_char,
}

/// Told of indexing progress. For each layer the events come in order: one
/// `STARTING`, any number of `PROGRESS`, one `COMPLETED`; layers are indexed in
/// parallel, so events of different layers interleave.
///
/// Return 0 to go on; any other value stops the call, which returns `CLIP_EUSER`
/// (the call's cancel token, if any, is left alone).
///
/// Thread-safety: called from indexing threads, never concurrently for one call.
/// `progress` and its strings are valid only during the callback.
pub type clip_progress_cb =
    Option<unsafe extern "C" fn(progress: *const clip_progress, payload: *mut c_void) -> c_int>;

/// Options of `clip_index_layout` and `clip_create_from_image`. Initialise with
/// `clip_create_options_init`; NULL options mean the defaults.
#[repr(C)]
pub struct clip_create_options {
    /// `CLIP_CREATE_OPTIONS_VERSION`.
    pub version: c_uint,
    /// A registry image reference (`host/repo[:tag]`) to record in the archive as
    /// where a mount fetches the layers from (the manifest digest is recorded as
    /// its reference); NULL to record none.
    pub storage_ref: *const c_char,
    /// Platform to pick from a multi-platform image, `os/arch[/variant]`; NULL for
    /// this host's.
    pub platform: *const c_char,
    /// Uncompressed bytes between checkpoints (a span); 0 for the default (2 MiB).
    /// Must lie within 64 KiB and 256 MiB.
    pub span_size: u64,
    /// Layers indexed at once; 0 for the number of CPUs.
    pub concurrency: c_uint,
    /// Told of progress; NULL for none.
    pub progress_cb: clip_progress_cb,
    /// Handed to `progress_cb`.
    pub progress_payload: *mut c_void,
    /// How to reach registries; NULL for the defaults. Read during the call only.
    pub registry: *const clip_registry_options,
    /// Cancels the call when cancelled; NULL for none.
    pub cancel: *const clip_cancel,
}

/// Fills `opts` with the defaults of `version` (pass `CLIP_CREATE_OPTIONS_VERSION`).
///
/// Returns: 0; `CLIP_EINVALID` if `opts` is NULL; `CLIP_EVERSION` for a version
/// this library does not know.
#[unsafe(no_mangle)]
pub extern "C" fn clip_create_options_init(
    opts: *mut clip_create_options,
    version: c_uint,
) -> c_int {
    boundary("clip_create_options_init", || {
        check_version("clip_create_options", version, CLIP_CREATE_OPTIONS_VERSION)?;
        let o = c_out_struct(opts, "opts")?;
        write_struct(
            o,
            clip_create_options {
                version,
                storage_ref: std::ptr::null(),
                platform: std::ptr::null(),
                span_size: 0,
                concurrency: 0,
                progress_cb: None,
                progress_payload: std::ptr::null_mut(),
                registry: std::ptr::null(),
                cancel: std::ptr::null(),
            },
        );
        Ok(())
    })
}

/// Calls a C progress callback, one event at a time.
struct ProgressCallback {
    cb: unsafe extern "C" fn(*const clip_progress, *mut c_void) -> c_int,
    payload: Payload,
    lock: Mutex<()>,
    stopped: Arc<AtomicBool>,
}

impl ProgressCallback {
    /// Tells the callback; false once it asked to stop.
    fn tell(&self, p: &Progress) -> bool {
        let digest = callback_string(p.layer_digest.as_bytes());
        let source = callback_string(p.source.as_bytes());
        let event = clip_progress {
            stage: match p.stage {
                Stage::Starting => CLIP_STAGE_STARTING,
                Stage::Progress => CLIP_STAGE_PROGRESS,
                Stage::Completed => CLIP_STAGE_COMPLETED,
            },
            layer_index: p.layer_index,
            layer_count: p.total_layers,
            layer_digest: digest.as_ptr(),
            compressed_done: p.compressed_done,
            compressed_total: p.compressed_total,
            uncompressed_done: p.uncompressed_done,
            completed_layers: p.completed_layers,
            files: p.files,
            source: source.as_ptr(),
        };
        let _one_at_a_time = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        if self.stopped.load(Ordering::SeqCst) {
            return false;
        }
        // SAFETY: the header documents the callback's contract; `event` and its
        // strings live until the callback returns.
        let rc = unsafe { (self.cb)(&event, self.payload.get()) };
        if rc != 0 {
            self.stopped.store(true, Ordering::SeqCst);
        }
        rc == 0
    }
}

/// The Rust options of a create call, and the flag that says a callback stopped it.
fn create_options(p: *const clip_create_options) -> FfiResult<(CreateOptions, Arc<AtomicBool>)> {
    let stopped = Arc::new(AtomicBool::new(false));
    let mut o = CreateOptions::default();
    if p.is_null() {
        return Ok((o, stopped));
    }
    let c = c_ref(p, "opts")?;
    check_version(
        "clip_create_options",
        c.version,
        CLIP_CREATE_OPTIONS_VERSION,
    )?;
    o.storage_ref = c_str_opt(c.storage_ref, "opts->storage_ref")?.map(str::to_owned);
    o.platform = c_str_opt(c.platform, "opts->platform")?
        .map(Platform::parse)
        .transpose()?;
    if c.span_size != 0 {
        o.span_size = c.span_size;
    }
    o.concurrency = c.concurrency as usize;
    if !c.cancel.is_null() {
        o.cancel = c_ref(c.cancel, "opts->cancel")?.flag.clone();
    }
    o.registry = registry_options(c.registry, &stopped)?;
    if let Some(cb) = c.progress_cb {
        let pc = ProgressCallback {
            cb,
            payload: Payload(c.progress_payload),
            lock: Mutex::new(()),
            stopped: stopped.clone(),
        };
        o.progress = Some(Arc::new(move |p: &Progress| pc.tell(p)));
    }
    Ok((o, stopped))
}

/// A result of a call whose callbacks may have stopped it: then `CLIP_EUSER`.
fn stopped_by_callback<T>(r: crate::Result<T>, stopped: &AtomicBool) -> FfiResult<T> {
    r.map_err(|e| {
        if stopped.load(Ordering::SeqCst) {
            Failure::new(CLIP_EUSER, format!("stopped by a callback: {e}"))
        } else {
            e.into()
        }
    })
}

/// Indexes the image `tag` of the OCI image layout at `layout_dir` into an
/// index-only archive at `out_path` (written atomically: on any failure, including
/// cancellation, nothing is left at `out_path`).
///
/// `tag` is the `org.opencontainers.image.ref.name` of the image, or NULL if the
/// layout holds exactly one image. Paths are byte strings; `tag` must be UTF-8.
///
/// Returns: 0; `CLIP_EINVALID` for a NULL or invalid argument or option;
/// `CLIP_EVERSION` for a bad options version; `CLIP_ENOTFOUND` for a missing
/// layout, tag or blob (the message names it); `CLIP_EFORMAT` for malformed
/// layout data; `CLIP_ECANCELED` if `opts->cancel` was cancelled; `CLIP_EUSER`
/// if a callback stopped it; other codes as their names say.
/// Thread-safety: blocks the calling thread; any number of calls may run at once.
#[unsafe(no_mangle)]
pub extern "C" fn clip_index_layout(
    layout_dir: *const c_char,
    tag: *const c_char,
    out_path: *const c_char,
    opts: *const clip_create_options,
) -> c_int {
    boundary("clip_index_layout", || {
        crate::log::init();
        let layout_dir = c_path(layout_dir, "layout_dir")?;
        let tag = c_str_opt(tag, "tag")?;
        let out_path = c_path(out_path, "out_path")?;
        let (o, stopped) = create_options(opts)?;
        let r = crate::create::index_layout(layout_dir, tag, out_path, &o);
        stopped_by_callback(r, &stopped).map(drop)
    })
}

/// Indexes the image `image_ref` names into an index-only archive at `out_path`
/// (written atomically, as by `clip_index_layout`).
///
/// `image_ref` is a registry reference (`registry.example.com/repo:tag`,
/// `repo@sha256:...`, Docker Hub short names) or `oci:/path/to/layout[:tag]`.
///
/// Returns: as `clip_index_layout`; also `CLIP_EAUTH` when the registry refuses
/// the credentials or wants some.
/// Thread-safety: as `clip_index_layout`.
#[unsafe(no_mangle)]
pub extern "C" fn clip_create_from_image(
    image_ref: *const c_char,
    out_path: *const c_char,
    opts: *const clip_create_options,
) -> c_int {
    boundary("clip_create_from_image", || {
        crate::log::init();
        let image_ref = c_str(image_ref, "image_ref")?;
        let out_path = c_path(out_path, "out_path")?;
        let (o, stopped) = create_options(opts)?;
        let r = crate::create::create_from_image(image_ref, out_path, &o);
        stopped_by_callback(r, &stopped).map(drop)
    })
}

// ---------------------------------------------------------------------------
// Archives
// ---------------------------------------------------------------------------

/// An archive read into memory (validated), to inspect.
pub struct clip_archive {
    archive: Archive,
}

/// Reads and validates the archive at `path`.
///
/// Returns: 0; `CLIP_EINVALID` for a NULL argument; `CLIP_ENOTFOUND` if `path`
/// does not exist; `CLIP_EFORMAT` for a file that is not a valid archive (the
/// message says what is wrong); `CLIP_EVERSION` for an archive format version this
/// library does not read.
/// Ownership: `*out` belongs to the caller; close it with `clip_archive_close`.
#[unsafe(no_mangle)]
pub extern "C" fn clip_archive_open(out: *mut *mut clip_archive, path: *const c_char) -> c_int {
    boundary("clip_archive_open", || {
        crate::log::init();
        let out = c_out(out, "out")?;
        let archive = crate::archive::read(c_path(path, "path")?)?;
        write_out(out, Box::into_raw(Box::new(clip_archive { archive })));
        Ok(())
    })
}

/// Describes an archive as a JSON object:
///
/// ```json
/// {"format_version": 1, "index_only": true, "created_by": "clip 0.1.0",
///  "source": "oci:/layout:tag", "storage_type": "oci",
///  "registry": "host:port", "repository": "repo", "reference": "sha256:...",
///  "manifest_digest": "sha256:...",
///  "platform": {"os": "linux", "architecture": "amd64"},
///  "span_size": 2097152,
///  "layers": [{"digest": "sha256:...", "media_type": "...", "compression": "gzip",
///              "compressed_size": 123, "diff_id": "sha256:...",
///              "uncompressed_size": 456}],
///  "config": {"env": ["PATH=..."], "cmd": [...], "entrypoint": [...],
///             "user": "", "working_dir": "/", "labels": {}, ...},
///  "inodes": 42}
/// ```
///
/// `registry`, `repository` and `reference` are empty when the archive records no
/// registry to fetch from. Keys may be added in later versions.
///
/// Returns: 0, or `CLIP_EINVALID` for a NULL argument.
/// Ownership: `*out` belongs to the caller; free it with `clip_string_free`.
/// Thread-safety: any number of threads may call this on one archive at once.
#[unsafe(no_mangle)]
pub extern "C" fn clip_archive_info(out: *mut *mut c_char, archive: *const clip_archive) -> c_int {
    boundary("clip_archive_info", || {
        let out = c_out(out, "out")?;
        let a = c_ref(archive, "archive")?;
        write_out(out, out_string(a.archive.info_json())?);
        Ok(())
    })
}

/// Closes an archive. NULL is ignored.
///
/// Ownership: takes `archive`, which must not be used again.
#[unsafe(no_mangle)]
pub extern "C" fn clip_archive_close(archive: *mut clip_archive) {
    boundary_void("clip_archive_close", || free_box(archive));
}

// ---------------------------------------------------------------------------
// Mounts
// ---------------------------------------------------------------------------

/// A live FUSE mount of an archive.
pub struct clip_mount {
    mount: Mount,
}

/// One file read a mount served (see `clip_read_observer_cb`). Fields may be
/// appended in later versions.
#[repr(C)]
pub struct clip_read_event {
    /// The file's path in the image (`/etc/os-release`): bytes, normally UTF-8; a
    /// file with several hard links is named by one of them.
    pub path: *const c_char,
    /// Offset the kernel asked for.
    pub offset: u64,
    /// Bytes the kernel asked for (within the file).
    pub length: u64,
    /// Bytes served: `length`, or 0 if the read failed.
    pub bytes_read: u64,
    /// Nanoseconds from the read thread taking the request to the reply.
    pub duration_ns: u64,
    /// Process that issued the read.
    pub pid: u32,
    /// Digest of the layer the bytes come from (`sha256:...`).
    pub layer_digest: *const c_char,
    /// `CLIP_OK`, or the `CLIP_E*` code of the failure (the reader got `EIO`).
    pub error_code: c_int,
    /// Why the read failed, or NULL if it did not.
    pub error: *const c_char,
}

/// Told of each file read a mount serves, after the reply. Reads the kernel
/// answers from its page cache are not seen.
///
/// Thread-safety: called from the mount's read threads, concurrently (a slow
/// observer holds a read thread). `event` and its strings are valid only during
/// the call.
pub type clip_read_observer_cb =
    Option<unsafe extern "C" fn(event: *const clip_read_event, payload: *mut c_void)>;

/// Options of `clip_mount_new`. Initialise with `clip_mount_options_init`; NULL
/// options mean the defaults.
#[repr(C)]
pub struct clip_mount_options {
    /// `CLIP_MOUNT_OPTIONS_VERSION`.
    pub version: c_uint,
    /// The span cache directory, shared by mounts and processes; NULL for the
    /// default (`$CLIP_CACHE_DIR`, else `$XDG_CACHE_HOME/clip`, else
    /// `~/.cache/clip`).
    pub cache_dir: *const c_char,
    /// Size limit of the span cache in bytes; 0 for the default (10 GiB).
    pub cache_max_bytes: u64,
    /// Non-zero to let other users access the mount (`allow_other`).
    pub allow_other: c_int,
    /// Threads serving file reads; 0 for the default (8).
    pub read_threads: c_uint,
    /// Threads reading FUSE requests; 0 for the default (2).
    pub event_threads: c_uint,
    /// A local OCI layout holding the layer blobs, used instead of the archive's
    /// storage reference; NULL to fetch from where the archive says.
    pub layout: *const c_char,
    /// How to reach the registry; NULL for the defaults. Its credential callback
    /// and payload must stay valid until `clip_mount_free`: layers are fetched
    /// while the mount lives.
    pub registry: *const clip_registry_options,
    /// Told of every file read, after the reply; NULL for none (then it costs
    /// nothing).
    pub read_observer: clip_read_observer_cb,
    /// Handed to `read_observer`; must stay valid until `clip_mount_free`.
    pub read_observer_payload: *mut c_void,
}

/// Fills `opts` with the defaults of `version` (pass `CLIP_MOUNT_OPTIONS_VERSION`).
///
/// Returns: 0; `CLIP_EINVALID` if `opts` is NULL; `CLIP_EVERSION` for a version
/// this library does not know.
#[unsafe(no_mangle)]
pub extern "C" fn clip_mount_options_init(opts: *mut clip_mount_options, version: c_uint) -> c_int {
    boundary("clip_mount_options_init", || {
        check_version("clip_mount_options", version, CLIP_MOUNT_OPTIONS_VERSION)?;
        let o = c_out_struct(opts, "opts")?;
        write_struct(
            o,
            clip_mount_options {
                version,
                cache_dir: std::ptr::null(),
                cache_max_bytes: 0,
                allow_other: 0,
                read_threads: 0,
                event_threads: 0,
                layout: std::ptr::null(),
                registry: std::ptr::null(),
                read_observer: None,
                read_observer_payload: std::ptr::null_mut(),
            },
        );
        Ok(())
    })
}

/// Mounts the archive at `archive_path` read-only at `mountpoint` (created if
/// missing) and returns once the mount is live. File bytes are fetched on demand
/// from the layers: from `opts->layout` if given, else from the registry the
/// archive records, else from the layout it was indexed from if still there.
/// Needs `/dev/fuse` and either root or `fusermount3`.
///
/// Returns: 0; `CLIP_EINVALID` for a NULL or invalid argument or option;
/// `CLIP_EVERSION` for a bad options version or archive version;
/// `CLIP_ENOTFOUND` for a missing archive or layer blob; `CLIP_EFORMAT` for an
/// invalid archive or a layer of the wrong size; `CLIP_EAUTH` for refused
/// credentials; `CLIP_ERROR` if the mount itself fails (the message says why).
/// Ownership: `*out` belongs to the caller; `clip_mount_free` unmounts and frees it.
/// Thread-safety: blocks until the mount is live.
#[unsafe(no_mangle)]
pub extern "C" fn clip_mount_new(
    out: *mut *mut clip_mount,
    archive_path: *const c_char,
    mountpoint: *const c_char,
    opts: *const clip_mount_options,
) -> c_int {
    boundary("clip_mount_new", || {
        crate::log::init();
        let out = c_out(out, "out")?;
        let archive_path = c_path(archive_path, "archive_path")?;
        let mountpoint = c_path(mountpoint, "mountpoint")?;
        let stopped = Arc::new(AtomicBool::new(false));
        let mut src = SourceOptions::default();
        let mut mo = MountOptions::default();
        if !opts.is_null() {
            let o = c_ref(opts, "opts")?;
            check_version("clip_mount_options", o.version, CLIP_MOUNT_OPTIONS_VERSION)?;
            if let Some(d) = c_path_opt(o.cache_dir, "opts->cache_dir")? {
                mo.cache_dir = d.to_path_buf();
            }
            if o.cache_max_bytes > 0 {
                mo.cache_max_bytes = o.cache_max_bytes;
            }
            mo.allow_other = o.allow_other != 0;
            if o.read_threads > 0 {
                mo.read_threads = o.read_threads as usize;
            }
            if o.event_threads > 0 {
                mo.event_threads = o.event_threads as usize;
            }
            src.layout = c_path_opt(o.layout, "opts->layout")?.map(Path::to_path_buf);
            src.registry = registry_options(o.registry, &stopped)?;
            if let Some(cb) = o.read_observer {
                let payload = Payload(o.read_observer_payload);
                mo.read_observer = Some(Arc::new(move |e: &ReadEvent<'_>| {
                    let path = callback_string(e.path);
                    let digest = callback_string(e.layer_digest.to_string().as_bytes());
                    let error = e.error.map(|e| callback_string(e.to_string().as_bytes()));
                    let event = clip_read_event {
                        path: path.as_ptr(),
                        offset: e.offset,
                        length: e.length,
                        bytes_read: e.bytes_read,
                        duration_ns: e.duration.as_nanos().min(u64::MAX as u128) as u64,
                        pid: e.pid,
                        layer_digest: digest.as_ptr(),
                        error_code: e.error.map_or(CLIP_OK, |e| code_of(e.code())),
                        error: error.as_ref().map_or(std::ptr::null(), |e| e.as_ptr()),
                    };
                    // SAFETY: the header documents the observer's contract; `event`
                    // and its strings live until the call returns.
                    unsafe { cb(&event, payload.get()) }
                }));
            }
        }
        let image = stopped_by_callback(Image::open(archive_path, &src), &stopped)?;
        let mount = stopped_by_callback(Mount::new(image, mountpoint, &mo), &stopped)?;
        write_out(out, Box::into_raw(Box::new(clip_mount { mount })));
        Ok(())
    })
}

/// Blocks until the mount is unmounted from elsewhere (`clip_mount_unmount` on
/// another thread, `fusermount3 -u`, `umount`). Returns at once if it is already
/// unmounted or another thread is waiting.
///
/// Returns: 0; `CLIP_EINVALID` if `mount` is NULL; `CLIP_ERROR` if the FUSE
/// session failed.
/// Thread-safety: may run while another thread calls `clip_mount_unmount` or
/// `clip_mount_stats` on the same mount; not with `clip_mount_free`.
#[unsafe(no_mangle)]
pub extern "C" fn clip_mount_wait(mount: *const clip_mount) -> c_int {
    boundary("clip_mount_wait", || {
        c_ref(mount, "mount")?.mount.wait()?;
        Ok(())
    })
}

/// Unmounts (if still mounted) and waits for the FUSE session to end. Idempotent.
///
/// Returns: 0; `CLIP_EINVALID` if `mount` is NULL; `CLIP_ERROR` if unmounting
/// fails (for example while files are open: the message says so).
/// Thread-safety: as `clip_mount_wait`.
#[unsafe(no_mangle)]
pub extern "C" fn clip_mount_unmount(mount: *const clip_mount) -> c_int {
    boundary("clip_mount_unmount", || {
        c_ref(mount, "mount")?.mount.unmount()?;
        Ok(())
    })
}

/// A mount's counters (see `clip_mount_stats`). Fields may be appended in later
/// versions.
#[repr(C)]
pub struct clip_stats {
    /// Set by the caller to `CLIP_STATS_VERSION`: only the fields of that
    /// version are written.
    pub version: c_uint,
    /// Read requests served.
    pub reads: u64,
    /// Bytes served.
    pub bytes_read: u64,
    /// Spans found in the disk cache.
    pub disk_hits: u64,
    /// Spans fetched from a layer source and decoded.
    pub fetches: u64,
    /// Readers that waited for another reader's fetch of the same span.
    pub fetch_waits: u64,
    /// Cached spans that failed verification and were fetched again.
    pub corrupt: u64,
    /// Spans evicted to stay under the cache size limit.
    pub evicted: u64,
    /// Read-ahead fetches started.
    pub prefetches: u64,
    /// Spans decoded.
    pub spans_decoded: u64,
    /// Uncompressed bytes produced by decoders.
    pub bytes_decoded: u64,
    /// Compressed bytes read from layer sources.
    pub compressed_bytes_read: u64,
}

/// Reads a mount's counters into `*out`, whose `version` the caller sets first.
///
/// Returns: 0; `CLIP_EINVALID` for a NULL argument; `CLIP_EVERSION` for a
/// version this library does not know.
/// Thread-safety: any thread, at any time before `clip_mount_free`.
#[unsafe(no_mangle)]
pub extern "C" fn clip_mount_stats(out: *mut clip_stats, mount: *const clip_mount) -> c_int {
    boundary("clip_mount_stats", || {
        let o = c_mut(out, "out")?;
        check_version("clip_stats", o.version, CLIP_STATS_VERSION)?;
        let s = c_ref(mount, "mount")?.mount.stats();
        // Version 1 has every field below; later versions append.
        *o = clip_stats {
            version: o.version,
            reads: s.reads,
            bytes_read: s.bytes_read,
            disk_hits: s.disk_hits,
            fetches: s.fetches,
            fetch_waits: s.fetch_waits,
            corrupt: s.corrupt,
            evicted: s.evicted,
            prefetches: s.prefetches,
            spans_decoded: s.spans_decoded,
            bytes_decoded: s.bytes_decoded,
            compressed_bytes_read: s.compressed_bytes_read,
        };
        Ok(())
    })
}

/// Unmounts (if still mounted) and frees a mount. NULL is ignored. An unmount
/// failure is logged, not returned: call `clip_mount_unmount` first to see it.
///
/// Ownership: takes `mount`; no other call may be using it.
#[unsafe(no_mangle)]
pub extern "C" fn clip_mount_free(mount: *mut clip_mount) {
    boundary_void("clip_mount_free", || {
        if let Ok(m) = c_ref(mount, "mount")
            && let Err(e) = m.mount.unmount()
        {
            tracing::warn!("clip_mount_free: {e}");
        }
        free_box(mount)
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn last() -> (c_int, String) {
        // SAFETY: clip_error_last never returns NULL and its message is a C string.
        let e = unsafe { &*clip_error_last() };
        // SAFETY: as above.
        let m = unsafe { CStr::from_ptr(e.message) };
        (e.code, m.to_string_lossy().into_owned())
    }

    #[test]
    fn panics_become_codes() {
        let rc = boundary("clip_test", || panic!("boom {}", 42));
        assert_eq!(rc, CLIP_EPANIC);
        let (code, msg) = last();
        assert_eq!(code, CLIP_EPANIC);
        assert!(
            msg.contains("clip_test") && msg.contains("boom 42"),
            "{msg}"
        );
        clip_error_clear();
        assert_eq!(last(), (CLIP_OK, "no error".into()));
    }

    #[test]
    fn null_and_utf8_arguments() {
        assert_eq!(clip_set_log_level(std::ptr::null()), CLIP_EINVALID);
        assert!(last().1.contains("level is NULL"));
        let bad = c"\xff\xfe";
        assert_eq!(clip_set_log_level(bad.as_ptr()), CLIP_EINVALID);
        assert!(last().1.contains("not valid UTF-8"), "{}", last().1);
        assert_eq!(clip_set_log_level(c"chatty".as_ptr()), CLIP_EINVALID);
        assert!(last().1.contains("\"chatty\""));
    }

    #[test]
    fn options_versions() {
        // SAFETY: zeroed is a valid bit pattern for these C structs.
        let mut o: clip_create_options = unsafe { std::mem::zeroed() };
        assert_eq!(clip_create_options_init(&mut o, 0), CLIP_EVERSION);
        assert_eq!(clip_create_options_init(&mut o, 99), CLIP_EVERSION);
        assert!(last().1.contains("clip_create_options version 99"));
        assert_eq!(
            clip_create_options_init(&mut o, CLIP_CREATE_OPTIONS_VERSION),
            CLIP_OK
        );
        assert_eq!(o.version, CLIP_CREATE_OPTIONS_VERSION);
        assert_eq!(
            clip_create_options_init(std::ptr::null_mut(), 1),
            CLIP_EINVALID
        );
    }

    #[test]
    fn version_string() {
        // SAFETY: a static C string.
        let v = unsafe { CStr::from_ptr(clip_version()) };
        assert_eq!(v.to_str().unwrap(), crate::VERSION);
    }
}
