//! Packing directories into self-contained (v1) archives: `clip_pack_dir` and
//! its options.

use std::ffi::{c_char, c_int, c_uint};

use super::*;
use crate::pack::PackOptions;

// ---------------------------------------------------------------------------
// Packing directories (v1 archives)
// ---------------------------------------------------------------------------

/// Options of `clip_pack_dir`. Initialise with `clip_pack_options_init`; NULL
/// options mean the defaults.
#[repr(C)]
pub struct clip_pack_options {
    /// `CLIP_PACK_OPTIONS_VERSION`.
    pub version: c_uint,
    /// Uncompressed bytes per data chunk (each one zstd frame, one hash, the unit
    /// of a cold read); 0 for the default (2 MiB; docs/FORMAT.md says what it
    /// trades). Must lie within 64 KiB and 64 MiB.
    pub chunk_size: u64,
    /// zstd compression level, 1 to 19; 0 for the default (3).
    pub level: c_int,
    /// Threads compressing chunks; 0 for one more than the number of CPUs.
    pub threads: c_uint,
    /// Cancels the call when cancelled; NULL for none.
    pub cancel: *const clip_cancel,
}

/// Fills `opts` with the defaults of `version` (pass `CLIP_PACK_OPTIONS_VERSION`).
///
/// Returns: 0; `CLIP_EINVALID` if `opts` is NULL; `CLIP_EVERSION` for a version
/// this library does not know.
#[unsafe(no_mangle)]
pub extern "C" fn clip_pack_options_init(opts: *mut clip_pack_options, version: c_uint) -> c_int {
    boundary("clip_pack_options_init", || {
        check_version("clip_pack_options", version, CLIP_PACK_OPTIONS_VERSION)?;
        let o = c_out_struct(opts, "opts")?;
        write_struct(
            o,
            clip_pack_options {
                version,
                chunk_size: 0,
                level: 0,
                threads: 0,
                cancel: std::ptr::null(),
            },
        );
        Ok(())
    })
}

/// The Rust options of a pack call.
fn pack_options(p: *const clip_pack_options) -> FfiResult<PackOptions> {
    let mut o = PackOptions::default();
    if p.is_null() {
        return Ok(o);
    }
    let c = c_ref(p, "opts")?;
    check_version("clip_pack_options", c.version, CLIP_PACK_OPTIONS_VERSION)?;
    if c.chunk_size != 0 {
        o.chunk_size = c.chunk_size;
    }
    if c.level != 0 {
        o.level = c.level;
    }
    if c.threads != 0 {
        o.threads = c.threads as usize;
    }
    if !c.cancel.is_null() {
        o.cancel = c_ref(c.cancel, "opts->cancel")?.flag.clone();
    }
    Ok(o)
}

/// Archives the directory tree at `dir` (as a build leaves it, a umoci bundle for
/// example) into a self-contained archive at `out_path` that carries the file
/// contents (a v1 archive, docs/FORMAT.md). Hard links, xattrs, devices, fifos,
/// modes, owners and mtimes are kept; symlinks are stored, never followed;
/// sockets are skipped with a warning. The archive is written atomically: on any
/// failure, including cancellation, nothing is left at `out_path`.
///
/// Returns: 0; `CLIP_EINVALID` for a NULL or invalid argument or option;
/// `CLIP_EVERSION` for a bad options version; `CLIP_ENOTFOUND` if `dir` does not
/// exist; `CLIP_ECANCELED` if `opts->cancel` was cancelled; `CLIP_ERROR` for an
/// unreadable file or one that changed while read (the message names it).
/// Thread-safety: blocks the calling thread (compression runs on the library's
/// threads); any number of calls may run at once.
#[unsafe(no_mangle)]
pub extern "C" fn clip_pack_dir(
    dir: *const c_char,
    out_path: *const c_char,
    opts: *const clip_pack_options,
) -> c_int {
    boundary("clip_pack_dir", || {
        crate::log::init();
        let dir = c_path(dir, "dir")?;
        let out_path = c_path(out_path, "out_path")?;
        let o = pack_options(opts)?;
        crate::pack::pack_dir(dir, out_path, &o)?;
        Ok(())
    })
}
