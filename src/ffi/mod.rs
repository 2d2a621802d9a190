//! The C ABI: `include/clip.h`, generated from the files of this module by
//! cbindgen (`build.rs`, which lists them in header order).
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
//! [`crate::archive`], [`crate::mount`], [`crate::log`]) called, codes out. One
//! file per concept, like rustls-ffi:
//!
//! - `error`: return codes, `clip_error`, the thread's last error, and
//!   `boundary`, the `catch_unwind` wrapper every exported body runs in;
//! - `library`: the other constants and the library-wide functions (version,
//!   last error, strings, log level);
//! - `cancel`: cancel tokens; `registry`: registry options and credentials;
//! - `layer_cache`: the layer-index cache (a caller's callbacks, the disk cache
//!   as a handle);
//! - `create`: creating index-only archives; `pack`: packing directories into
//!   v1 archives; `s3`: S3 locations, uploads and `.rclip`s; `cache`: the
//!   shared content tier (callbacks) and the gate that stops callbacks once
//!   their owner is freed; `archive`: reading archives; `mount`: mounts and
//!   preparing their cache;
//! - this file: the pointer and string helpers, the only places raw pointers
//!   are read or written.
#![allow(non_camel_case_types)]

// The order of these declarations is the header's order of constants and
// functions: build.rs hands cbindgen this file only, which follows them. So this
// file exports nothing itself (cbindgen would put its items first), and the
// declarations are kept apart so that rustfmt does not sort them.
mod error;

mod library;

mod cancel;

mod registry;

mod layer_cache;

mod cache;

mod create;

mod pack;

mod s3;

mod archive;

mod mount;

use std::ffi::{CStr, CString, OsStr, c_char, c_uint, c_void};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

pub use archive::*;
pub use cache::*;
pub use cancel::*;
pub use create::*;
pub use error::*;
pub use layer_cache::*;
pub use library::*;
pub use mount::*;
pub use pack::*;
pub use registry::*;
pub use s3::*;

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

/// The `len` bytes at `p` (argument `name`); `p` may be NULL only if `len` is 0.
fn c_slice<'a>(p: *const u8, len: usize, name: &str) -> FfiResult<&'a [u8]> {
    if len == 0 {
        return Ok(&[]);
    }
    if p.is_null() {
        return Err(Failure::invalid(format!(
            "argument {name} is NULL but its length is {len}"
        )));
    }
    // SAFETY: the header documents every (pointer, length) argument as `len`
    // readable bytes that stay valid and unchanged for the call; `p` is not NULL.
    Ok(unsafe { std::slice::from_raw_parts(p, len) })
}

/// Takes back bytes handed out as `Box::into_raw` of a `Box<[u8]>` of `len` bytes.
fn free_data(p: *mut u8, len: usize) {
    if !p.is_null() {
        // SAFETY: `p` and `len` came from `Box::<[u8]>::into_raw` in this module
        // (the header requires the length it gave) and are not used again.
        drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(p, len)) });
    }
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

/// A versioned options struct whose all-zero bytes are a valid value (integers,
/// raw pointers, `Option`s of function pointers), so that a caller's older,
/// shorter version of it can be read into a zeroed current one.
///
/// # Safety
///
/// Implement only for `#[repr(C)]` structs made of such fields, whose first
/// field is the `c_uint` version, with `SIZES` right.
unsafe trait Versioned: Sized {
    /// The struct's C name, for messages.
    const NAME: &'static str;
    /// Size in bytes of each version of the struct, version 1 first (fields are
    /// only appended, so a version is a prefix of the next).
    const SIZES: &'static [usize];
}

/// Reads the versioned struct at `p` (argument `name`): checks its version and
/// copies only the fields that version has; later fields read as zero (NULL, 0,
/// no callback).
fn c_versioned<T: Versioned>(p: *const T, name: &str) -> FfiResult<T> {
    if p.is_null() {
        return Err(Failure::invalid(format!("argument {name} is NULL")));
    }
    // SAFETY: `p` is not NULL and, as the header requires, points to an options
    // struct initialised by its `_init`, which begins with its `c_uint` version.
    let version = unsafe { p.cast::<c_uint>().read() };
    check_version(T::NAME, version, T::SIZES.len() as c_uint)?;
    let n = T::SIZES[version as usize - 1];
    let mut v = std::mem::MaybeUninit::<T>::zeroed();
    // SAFETY: the caller's struct of that version has at least `n` bytes, `v` has
    // `size_of::<T>() >= n`, and they do not overlap; the bytes past `n` stay
    // zero, a valid value for every field (the `Versioned` contract).
    unsafe {
        std::ptr::copy_nonoverlapping(p.cast::<u8>(), v.as_mut_ptr().cast::<u8>(), n);
        Ok(v.assume_init())
    }
}

/// Writes the fields of version `version` of `value` to `p` (checked with
/// [`c_out_struct`], `version` with [`check_version`]), and nothing past them: an
/// older caller's struct is shorter.
fn write_versioned<T: Versioned>(p: *mut T, value: T, version: c_uint) {
    let n = T::SIZES[version as usize - 1];
    // SAFETY: `p` is not NULL and points to writable storage for the struct of
    // that version, `n` bytes, as the header requires; `value` is a whole `T`.
    unsafe { std::ptr::copy_nonoverlapping((&value as *const T).cast::<u8>(), p.cast::<u8>(), n) }
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

#[cfg(test)]
mod tests {
    use std::ffi::c_int;

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

    /// Fills `buf` with bytes that are not the struct's, lets `init` write a
    /// version-1 `T` at its start, and checks it wrote nothing past version 1.
    fn init_v1<T: Versioned>(
        buf: &mut [u64],
        init: extern "C" fn(*mut T, c_uint) -> c_int,
    ) -> *mut T {
        let v1 = T::SIZES[0];
        assert!(v1 < std::mem::size_of::<T>() && buf.len() * 8 >= std::mem::size_of::<T>());
        buf.fill(u64::from_ne_bytes([0xAA; 8]));
        let p = buf.as_mut_ptr().cast::<T>();
        assert_eq!(init(p, 1), CLIP_OK);
        let bytes = buf
            .iter()
            .flat_map(|w| w.to_ne_bytes())
            .collect::<Vec<u8>>();
        assert!(
            bytes[v1..].iter().all(|&b| b == 0xAA),
            "{} init wrote past version 1",
            T::NAME
        );
        p
    }

    #[test]
    fn older_mount_options() {
        // A version-1 caller's struct, followed by bytes that are not its own.
        let full = std::mem::size_of::<clip_mount_options>();
        let mut buf = vec![0u64; full / 8 + 4];
        let p = init_v1(&mut buf, clip_mount_options_init);
        let o = c_versioned(p.cast_const(), "opts").unwrap();
        assert_eq!(o.version, 1);
        assert!(o.s3.is_null() && o.data_archive.is_null());
        // A current struct reads whole; an unknown version is refused.
        let mut cur = vec![0u64; full / 8 + 1];
        let p = cur.as_mut_ptr().cast::<clip_mount_options>();
        assert_eq!(
            clip_mount_options_init(p, CLIP_MOUNT_OPTIONS_VERSION),
            CLIP_OK
        );
        assert_eq!(
            c_versioned(p.cast_const(), "opts").unwrap().version,
            CLIP_MOUNT_OPTIONS_VERSION
        );
        cur[0] = (CLIP_MOUNT_OPTIONS_VERSION + 1) as u64;
        assert_eq!(
            c_versioned(p.cast_const(), "opts").err().map(|f| f.code),
            Some(CLIP_EVERSION)
        );
    }

    #[test]
    fn older_registry_options() {
        use crate::registry::{Hedge, RegistryOptions};
        use std::sync::Arc;
        use std::sync::atomic::AtomicBool;
        use std::time::Duration;
        let stopped = Arc::new(AtomicBool::new(false));
        let d = RegistryOptions::default();
        // A version-1 caller's struct: init writes nothing past it, and the
        // version-2 fields read as their defaults.
        let full = std::mem::size_of::<clip_registry_options>();
        let mut buf = vec![0u64; full / 8 + 4];
        let p = init_v1(&mut buf, clip_registry_options_init);
        let r = registry_options(p.cast_const(), &stopped).unwrap();
        assert_eq!(r.stall_timeout, d.stall_timeout);
        assert_eq!(r.refetches, d.refetches);
        assert_eq!(r.hedge, Hedge::Auto);
        // Version 2 sets the retry policy; 0 keeps a default.
        let mut cur = vec![0u64; full / 8 + 1];
        let p = cur.as_mut_ptr().cast::<clip_registry_options>();
        assert_eq!(
            clip_registry_options_init(p, CLIP_REGISTRY_OPTIONS_VERSION),
            CLIP_OK
        );
        // SAFETY: `p` points to an initialised struct inside `cur`.
        let o = unsafe { &mut *p };
        assert_eq!(o.stall_timeout_ms, 5000);
        o.stall_timeout_ms = 1500;
        o.retry_budget_ms = 0;
        o.refetches = 4;
        o.hedge_after_ms = -1;
        let r = registry_options(p.cast_const(), &stopped).unwrap();
        assert_eq!(r.stall_timeout, Duration::from_millis(1500));
        assert_eq!(r.retry_budget, d.retry_budget);
        assert_eq!(r.refetches, 4);
        assert_eq!(r.hedge, Hedge::Off);
        // SAFETY: as above.
        let o = unsafe { &mut *p };
        o.hedge_after_ms = 250;
        let r = registry_options(p.cast_const(), &stopped).unwrap();
        assert_eq!(r.hedge, Hedge::After(Duration::from_millis(250)));
        // SAFETY: as above.
        let o = unsafe { &mut *p };
        o.hedge_after_ms = -7;
        let e = registry_options(p.cast_const(), &stopped).err().unwrap();
        assert_eq!(e.code, CLIP_EINVALID);
        assert!(e.message.contains("hedge_after_ms -7"), "{}", e.message);
    }

    #[test]
    fn version_string() {
        // SAFETY: a static C string.
        let v = unsafe { CStr::from_ptr(clip_version()) };
        assert_eq!(v.to_str().unwrap(), crate::VERSION);
    }
}
