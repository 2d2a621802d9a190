//! Creating index-only archives (`clip_index_layout`, `clip_create_from_image`)
//! and their options and progress callback.

use std::ffi::{c_char, c_int, c_uint, c_void};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use super::*;
use crate::create::{CreateOptions, Progress, Stage};
use crate::oci::Platform;
use crate::tier::{Tier, TierOptions};
use std::path::Path;

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
    /// Where the layer's bytes come from: `"registry"` or `"local-layout"`, or
    /// `"index-cache"` when its index came from the layer-index cache (no byte
    /// of the layer read; `STARTING` and `COMPLETED` only).
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
    /// (Version 2.) A directory for the library's disk layer-index cache
    /// (created if missing; see `clip_layer_index_cache_open`): a layer indexed
    /// before with the same span size is not read again, and the archive is the
    /// same. A directory that cannot be opened or written is a warning, never an
    /// error. NULL for none.
    pub layer_index_cache_dir: *const c_char,
    /// (Version 2.) Size limit of `layer_index_cache_dir` in bytes; 0 for 1 GiB.
    pub layer_index_cache_max_bytes: u64,
    /// (Version 2.) A caller-provided layer-index cache instead of
    /// `layer_index_cache_dir` (setting both is `CLIP_EINVALID`); NULL for none.
    /// Read at the start of the call; its callbacks are called during it.
    pub layer_index_cache: *const clip_layer_index_cache_callbacks,
    /// (Version 2.) A content cache of the caller's (see `clip_content_cache`),
    /// keyed here by the bare hex of a layer's (compressed) digest: a layer blob
    /// it holds with exactly the layer's size (`exists` says 1) is read from it,
    /// the digest verified as it streams (any failure: the layer source is read
    /// instead); a blob read from the source is then stored into it (best
    /// effort). NULL for none. Its callbacks are not called after the call
    /// returns.
    pub content_cache: *const clip_content_cache,
    /// (Version 2.) Where a blob is spooled for `content_cache` while it is
    /// indexed; NULL for the system's temporary directory.
    pub content_cache_dir: *const c_char,
}

// SAFETY: `clip_create_options` is `#[repr(C)]` of integers, raw pointers and
// `Option`s of function pointers, version first; version 2 appended the
// layer-index cache fields to version 1, which ended after `cancel`.
unsafe impl Versioned for clip_create_options {
    const NAME: &'static str = "clip_create_options";
    const SIZES: &'static [usize] = &[
        std::mem::offset_of!(clip_create_options, layer_index_cache_dir),
        std::mem::size_of::<clip_create_options>(),
    ];
}

/// Fills `opts` with the defaults of `version` (pass `CLIP_CREATE_OPTIONS_VERSION`;
/// only the fields of that version are written).
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
        write_versioned(
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
                layer_index_cache_dir: std::ptr::null(),
                layer_index_cache_max_bytes: 0,
                layer_index_cache: std::ptr::null(),
                content_cache: std::ptr::null(),
                content_cache_dir: std::ptr::null(),
            },
            version,
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

/// The Rust options of a create call, the flag that says a callback stopped it,
/// and the gate to close when the call returns.
fn create_options(
    p: *const clip_create_options,
) -> FfiResult<(CreateOptions, Arc<AtomicBool>, Arc<Gate>)> {
    let stopped = Arc::new(AtomicBool::new(false));
    let gate = Arc::new(Gate::default());
    let mut o = CreateOptions::default();
    if p.is_null() {
        return Ok((o, stopped, gate));
    }
    let c = c_versioned(p, "opts")?;
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
    o.layer_index_cache = layer_index_cache(
        c.layer_index_cache_dir,
        c.layer_index_cache_max_bytes,
        c.layer_index_cache,
    )?;
    if let Some(cb) = c.progress_cb {
        let pc = ProgressCallback {
            cb,
            payload: Payload(c.progress_payload),
            lock: Mutex::new(()),
            stopped: stopped.clone(),
        };
        o.progress = Some(Arc::new(move |p: &Progress| pc.tell(p)));
    }
    if !c.content_cache.is_null() {
        let t = callback_tier(c.content_cache, "opts->content_cache", gate.clone())?;
        o.content_tier = Some(Arc::new(Tier::new(t, TierOptions::default())));
        o.spool_dir =
            c_path_opt(c.content_cache_dir, "opts->content_cache_dir")?.map(Path::to_path_buf);
    }
    Ok((o, stopped, gate))
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
        let (o, stopped, gate) = create_options(opts)?;
        let r = crate::create::index_layout(layout_dir, tag, out_path, &o);
        gate.close();
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
        let (o, stopped, gate) = create_options(opts)?;
        let r = crate::create::create_from_image(image_ref, out_path, &o);
        gate.close();
        stopped_by_callback(r, &stopped).map(drop)
    })
}
