//! The layer-index cache over the C ABI: a caller-provided cache (a versioned
//! struct of callbacks, `clip_layer_index_cache_callbacks`, answering through
//! `clip_buffer_set`), and the library's own disk cache as a handle
//! (`clip_layer_index_cache_*`), a generic key → bytes store the Go package's
//! `storage.DiskLayerIndexCache` is built on.

use std::ffi::{c_char, c_int, c_uint, c_void};
use std::sync::Arc;

use super::*;
use crate::error::{Error, Result};
use crate::index::cache::{DiskLayerIndexStore, LayerIndexStore};

// ---------------------------------------------------------------------------
// A caller's layer-index cache
// ---------------------------------------------------------------------------

/// Where a `get` callback puts the bytes it found, through `clip_buffer_set`.
pub struct clip_buffer {
    data: Option<Vec<u8>>,
}

/// Answers a layer-index cache `get` callback with `len` bytes at `data` (copied;
/// `data` may be NULL when `len` is 0). A second call replaces the first.
///
/// Returns: 0, or `CLIP_EINVALID` if `buf` is NULL, or `data` is NULL with a
/// non-zero `len`.
/// Thread-safety: only from within the `get` callback that received `buf`.
#[unsafe(no_mangle)]
pub extern "C" fn clip_buffer_set(buf: *mut clip_buffer, data: *const u8, len: usize) -> c_int {
    boundary("clip_buffer_set", || {
        let b = c_mut(buf, "buf")?;
        b.data = Some(c_slice(data, len, "data")?.to_vec());
        Ok(())
    })
}

/// Looks up `key` (a NUL-terminated ASCII string, valid during the call) in a
/// caller's layer-index cache.
///
/// Return 0 after `clip_buffer_set(out, ...)` for a hit; 0 without it, or
/// `CLIP_ENOTFOUND`, for a miss; any other value is an error, which the library
/// treats as a miss (with a warning). The bytes are checked before use: a wrong
/// answer costs time, never a wrong archive.
///
/// Thread-safety: called from indexing threads, possibly concurrently for one
/// call; never after the call returns.
pub type clip_layer_index_get_cb = Option<
    unsafe extern "C" fn(out: *mut clip_buffer, key: *const c_char, payload: *mut c_void) -> c_int,
>;

/// Stores `len` bytes at `data` under `key` in a caller's layer-index cache
/// (both valid during the call only: copy what you keep).
///
/// Return 0 when stored; any other value is a warning, never an error of the
/// build.
///
/// Thread-safety: as the `get` callback.
pub type clip_layer_index_put_cb = Option<
    unsafe extern "C" fn(
        key: *const c_char,
        data: *const u8,
        len: usize,
        payload: *mut c_void,
    ) -> c_int,
>;

/// A caller-provided layer-index cache (`clip_create_options.layer_index_cache`).
/// Initialise with `clip_layer_index_cache_callbacks_init`. Read at the start of
/// the call it is passed to; the callbacks and `payload` must stay valid until
/// that call returns.
#[repr(C)]
pub struct clip_layer_index_cache_callbacks {
    /// `CLIP_LAYER_INDEX_CACHE_CALLBACKS_VERSION`.
    pub version: c_uint,
    /// Looks an artifact up; NULL means every lookup misses.
    pub get: clip_layer_index_get_cb,
    /// Stores an artifact; NULL means nothing is stored.
    pub put: clip_layer_index_put_cb,
    /// Handed to `get` and `put`.
    pub payload: *mut c_void,
}

// SAFETY: `#[repr(C)]` of the version, `Option`s of function pointers and a raw
// pointer, version first; one version so far.
unsafe impl Versioned for clip_layer_index_cache_callbacks {
    const NAME: &'static str = "clip_layer_index_cache_callbacks";
    const SIZES: &'static [usize] = &[std::mem::size_of::<clip_layer_index_cache_callbacks>()];
}

/// Fills `cbs` with the defaults of `version` (pass
/// `CLIP_LAYER_INDEX_CACHE_CALLBACKS_VERSION`): no callbacks, NULL payload.
///
/// Returns: 0; `CLIP_EINVALID` if `cbs` is NULL; `CLIP_EVERSION` for a version
/// this library does not know.
#[unsafe(no_mangle)]
pub extern "C" fn clip_layer_index_cache_callbacks_init(
    cbs: *mut clip_layer_index_cache_callbacks,
    version: c_uint,
) -> c_int {
    boundary("clip_layer_index_cache_callbacks_init", || {
        check_version(
            "clip_layer_index_cache_callbacks",
            version,
            CLIP_LAYER_INDEX_CACHE_CALLBACKS_VERSION,
        )?;
        let o = c_out_struct(cbs, "cbs")?;
        write_versioned(
            o,
            clip_layer_index_cache_callbacks {
                version,
                get: None,
                put: None,
                payload: std::ptr::null_mut(),
            },
            version,
        );
        Ok(())
    })
}

/// A [`LayerIndexStore`] calling a C caller's callbacks.
pub(super) struct CallbackStore {
    get: clip_layer_index_get_cb,
    put: clip_layer_index_put_cb,
    payload: Payload,
}

impl CallbackStore {
    /// The store of the callbacks struct at `p` (argument `name`).
    pub(super) fn from_c(
        p: *const clip_layer_index_cache_callbacks,
        name: &str,
    ) -> FfiResult<CallbackStore> {
        let c = c_versioned(p, name)?;
        Ok(CallbackStore {
            get: c.get,
            put: c.put,
            payload: Payload(c.payload),
        })
    }
}

fn callback_failed(what: &str, rc: c_int) -> Error {
    Error::Network(format!("layer-index cache callback {what} returned {rc}"))
}

impl LayerIndexStore for CallbackStore {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let Some(cb) = self.get else {
            return Ok(None);
        };
        let k = callback_string(key.as_bytes());
        let mut out = clip_buffer { data: None };
        // SAFETY: the header documents the callback's contract; `out` and `k` live
        // until it returns.
        let rc = unsafe { cb(&mut out, k.as_ptr(), self.payload.get()) };
        match rc {
            0 => Ok(out.data),
            CLIP_ENOTFOUND => Ok(None),
            rc => Err(callback_failed("get", rc)),
        }
    }

    fn put(&self, key: &str, data: &[u8]) -> Result<()> {
        let Some(cb) = self.put else {
            return Ok(());
        };
        let k = callback_string(key.as_bytes());
        // SAFETY: as for `get`; `data` lives until the callback returns.
        let rc = unsafe { cb(k.as_ptr(), data.as_ptr(), data.len(), self.payload.get()) };
        if rc == 0 {
            Ok(())
        } else {
            Err(callback_failed("put", rc))
        }
    }

    fn describe(&self) -> String {
        "the caller's layer-index cache".into()
    }
}

/// The disk cache at `dir`, or none (with a warning) if it cannot be opened: a
/// cache only saves time, it never fails a build.
pub(super) fn open_disk(dir: &std::path::Path, max_bytes: u64) -> Option<Arc<dyn LayerIndexStore>> {
    match DiskLayerIndexStore::open(dir, max_bytes) {
        Ok(s) => Some(Arc::new(s)),
        Err(e) => {
            tracing::warn!("layer-index cache not used: {e}");
            None
        }
    }
}

/// The layer-index cache of a create call: the disk cache at `dir` (bounded to
/// `max_bytes`), or the caller's callbacks at `cbs`, or none.
pub(super) fn layer_index_cache(
    dir: *const c_char,
    max_bytes: u64,
    cbs: *const clip_layer_index_cache_callbacks,
) -> FfiResult<Option<Arc<dyn LayerIndexStore>>> {
    let dir = c_path_opt(dir, "opts->layer_index_cache_dir")?;
    match (dir, cbs.is_null()) {
        (Some(_), false) => Err(Failure::invalid(
            "opts->layer_index_cache_dir and opts->layer_index_cache are both set (pass one)",
        )),
        (Some(d), true) => Ok(open_disk(d, max_bytes)),
        (None, false) => Ok(Some(Arc::new(CallbackStore::from_c(
            cbs,
            "opts->layer_index_cache",
        )?))),
        (None, true) => Ok(None),
    }
}

// ---------------------------------------------------------------------------
// The disk cache as a handle
// ---------------------------------------------------------------------------

/// The library's disk layer-index cache: a directory of files, one per key,
/// written atomically (temporary file + rename), bounded in size (least recently
/// used out), shareable by several processes. Keys may be any bytes; each maps to
/// one file inside the directory (docs/FORMAT.md, "Disk store").
pub struct clip_layer_index_cache {
    store: DiskLayerIndexStore,
}

/// Opens (creating it if needed) the disk layer-index cache in `dir`, bounded to
/// `max_bytes` (0: 1 GiB). `create` with `opts->layer_index_cache_dir` set to the
/// same directory and limit uses the same files.
///
/// Returns: 0; `CLIP_EINVALID` for a NULL argument or a `dir` that is not a
/// directory; other codes for I/O failures (the message names the directory).
/// Ownership: `*out` is freed with `clip_layer_index_cache_free`.
/// Thread-safety: the handle may be used from any number of threads at once.
#[unsafe(no_mangle)]
pub extern "C" fn clip_layer_index_cache_open(
    out: *mut *mut clip_layer_index_cache,
    dir: *const c_char,
    max_bytes: u64,
) -> c_int {
    boundary("clip_layer_index_cache_open", || {
        let out = c_out(out, "out")?;
        let dir = c_path(dir, "dir")?;
        let store = DiskLayerIndexStore::open(dir, max_bytes)?;
        write_out(
            out,
            Box::into_raw(Box::new(clip_layer_index_cache { store })),
        );
        Ok(())
    })
}

/// Reads the bytes stored under the `key_len` bytes at `key` (any bytes).
///
/// Returns: 0 with `*out_data`/`*out_len` set; `CLIP_ENOTFOUND` if nothing is
/// stored under `key` (the out-parameters untouched); `CLIP_EINVALID` for a NULL
/// argument or an empty or over-long (4096) key; other codes for I/O failures.
/// Ownership: `*out_data` is freed with `clip_data_free(*out_data, *out_len)`.
/// Thread-safety: any thread, concurrently.
#[unsafe(no_mangle)]
pub extern "C" fn clip_layer_index_cache_get(
    out_data: *mut *mut u8,
    out_len: *mut usize,
    cache: *const clip_layer_index_cache,
    key: *const u8,
    key_len: usize,
) -> c_int {
    boundary("clip_layer_index_cache_get", || {
        let out_data = c_out(out_data, "out_data")?;
        let out_len = c_mut(out_len, "out_len")?;
        let cache = c_ref(cache, "cache")?;
        let key = c_slice(key, key_len, "key")?;
        match cache.store.get_bytes(key)? {
            None => Err(Failure::new(
                CLIP_ENOTFOUND,
                format!(
                    "no entry for key {:?} in {}",
                    String::from_utf8_lossy(key),
                    cache.store.describe()
                ),
            )),
            Some(data) => {
                let len = data.len();
                write_out(
                    out_data,
                    Box::into_raw(data.into_boxed_slice()).cast::<u8>(),
                );
                *out_len = len;
                Ok(())
            }
        }
    })
}

/// Stores the `len` bytes at `data` under the `key_len` bytes at `key`,
/// atomically, then evicts the least recently used entries if the cache is past
/// its limit.
///
/// Returns: 0; `CLIP_EINVALID` for a NULL argument, a bad key, or data larger than
/// the limit; other codes for I/O failures (the message names the file).
/// Thread-safety: any thread, concurrently (and other processes sharing the
/// directory).
#[unsafe(no_mangle)]
pub extern "C" fn clip_layer_index_cache_put(
    cache: *const clip_layer_index_cache,
    key: *const u8,
    key_len: usize,
    data: *const u8,
    len: usize,
) -> c_int {
    boundary("clip_layer_index_cache_put", || {
        let cache = c_ref(cache, "cache")?;
        let key = c_slice(key, key_len, "key")?;
        let data = c_slice(data, len, "data")?;
        cache.store.put_bytes(key, data)?;
        Ok(())
    })
}

/// Frees a cache handle; NULL is accepted.
///
/// Thread-safety: no other call may be using `cache`.
#[unsafe(no_mangle)]
pub extern "C" fn clip_layer_index_cache_free(cache: *mut clip_layer_index_cache) {
    boundary_void("clip_layer_index_cache_free", || free_box(cache));
}

/// Frees bytes handed out by `clip_layer_index_cache_get`, with the length it
/// gave; NULL is accepted.
#[unsafe(no_mangle)]
pub extern "C" fn clip_data_free(data: *mut u8, len: usize) {
    boundary_void("clip_data_free", || free_data(data, len));
}
