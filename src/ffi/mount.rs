//! Mounts (`clip_mount`): options, the read observer, mount, wait, unmount,
//! counters, free; and preparing a mount's cache ahead of it (`clip_prepare`).

use std::ffi::{c_char, c_int, c_uint, c_void};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use super::*;
use crate::fs::ReadEvent;
use crate::image::{Image, SourceOptions};
use crate::mount::{Mount, MountOptions, ProfileChoice};
use crate::store::{PrepareProgress, Store};
use crate::tier::{S3Tier, Tier, TierOptions};

// ---------------------------------------------------------------------------
// Mounts
// ---------------------------------------------------------------------------

/// A live FUSE mount of an archive.
pub struct clip_mount {
    mount: Mount,
    /// Closed by `clip_mount_free`: no callback of the caller's runs after it.
    gate: Arc<Gate>,
}

/// An attribute of a read event: `key=value`, both C strings.
#[repr(C)]
pub struct clip_attr {
    /// The name (`cache_tier`).
    pub key: *const c_char,
    /// The value (`disk`).
    pub value: *const c_char,
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
    /// What happened (since 0.x with mount options version 3): `clip.read` for a
    /// read the kernel sent (the fields above describe it), or span work below
    /// reads: `clip.disk_cache_read`, `clip.content_cache_read`,
    /// `clip.checkpoint_read`, `clip.layer_decompress` (then `path` is empty,
    /// `offset`/`length` are the span's in the uncompressed layer, `pid` is 0
    /// for background work).
    pub operation: *const c_char,
    /// The sha256 of the uncompressed layer (`sha256:...`), the content tier's key.
    pub decompressed_hash: *const c_char,
    /// `attrs_len` attributes (`cache_result`, `cache_tier`, `fallback`,
    /// `storage_mode`, `content_hash`, `content_cache_result`,
    /// `content_cache_available`, `content_cache_warm`; docs/C-ABI.md lists
    /// their values).
    pub attrs: *const clip_attr,
    /// Number of `attrs`.
    pub attrs_len: usize,
}

/// Told of each file read a mount serves, after the reply, and of the span work
/// below reads (see `clip_read_event.operation`). Reads the kernel answers from
/// its page cache are not seen.
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
    /// Version 2. For a `.rclip` (a v1 archive whose data is an object in S3):
    /// where the data is and how to reach it; NULL for the object the archive
    /// names, with credentials from the `AWS_*` variables. A non-NULL `bucket`
    /// replaces the archive's location (a NULL `key` keeps the archive's key).
    /// Read during the call only; ignored for other archives.
    pub s3: *const clip_s3_options,
    /// Version 2. For a `.rclip`: the full v1 archive, on local disk, to read
    /// the data from instead of S3 (its data offsets are the ones the `.rclip`
    /// records); NULL for none. Ignored for other archives.
    pub data_archive: *const c_char,
    /// Version 3. Free space the span cache leaves on its file system, in bytes:
    /// past it the cache evicts, and serves new spans from memory while it
    /// cannot; 0 for the default (10% of the file system, at most 16 GiB).
    pub cache_min_free_bytes: u64,
    /// Version 3. A content cache of the caller's as the shared content tier
    /// (see `clip_content_cache`), for index-only archives; NULL for none.
    /// Copied during the call; its payload must stay valid until
    /// `clip_mount_free`.
    pub content_cache: *const clip_content_cache,
    /// Version 3. An S3 bucket as the shared content tier: `bucket`, `key` =
    /// the prefix, and how to reach it; NULL for none. Ignored if
    /// `content_cache` is given. Read during the call only.
    pub remote_cache: *const clip_s3_options,
    /// Version 3. The longest a read waits for the content tier before going to
    /// the layer source, in milliseconds; 0 for the default (2000).
    pub content_cache_timeout_ms: c_uint,
    /// Version 3. Non-zero to only read the content tier: layers it lacks are
    /// not stored into it (by default they are, in the background, once a read
    /// had to fetch from the layer source).
    pub content_cache_read_only: c_int,
    /// Version 4. A startup profile file (from `clip_mount_write_profile` or
    /// `clipctl mount --record`) to replay at mount instead of the archive's
    /// embedded one: its spans are fetched in parallel ahead of the workload.
    /// NULL for the embedded profile, if any. A file that cannot be read, is not
    /// a profile, or names other layers is ignored with a warning (logged): the
    /// mount works as without one. Read during the call only.
    pub prefetch_profile: *const c_char,
    /// Version 4. Non-zero to replay no startup profile, embedded or given.
    pub no_prefetch: c_int,
    /// Version 4. Spans a profile's replay fetches at once; 0 for the default
    /// (8).
    pub prefetch_threads: c_uint,
    /// Version 4. Non-zero to record which spans reads touch, in order, for
    /// `clip_mount_write_profile`.
    pub record_profile: c_int,
}

// SAFETY: `clip_mount_options` is `#[repr(C)]` of integers, raw pointers and
// `Option`s of function pointers, version first; version 2 appended `s3` and
// `data_archive` to version 1, which ended before `s3`; version 3 appended
// `cache_min_free_bytes` and the content-tier fields; version 4 the startup
// profile fields.
unsafe impl Versioned for clip_mount_options {
    const NAME: &'static str = "clip_mount_options";
    const SIZES: &'static [usize] = &[
        std::mem::offset_of!(clip_mount_options, s3),
        std::mem::offset_of!(clip_mount_options, cache_min_free_bytes),
        std::mem::offset_of!(clip_mount_options, prefetch_profile),
        std::mem::size_of::<clip_mount_options>(),
    ];
}

/// Fills `opts` with the defaults of `version` (pass `CLIP_MOUNT_OPTIONS_VERSION`;
/// only the fields of that version are written).
///
/// Returns: 0; `CLIP_EINVALID` if `opts` is NULL; `CLIP_EVERSION` for a version
/// this library does not know.
#[unsafe(no_mangle)]
pub extern "C" fn clip_mount_options_init(opts: *mut clip_mount_options, version: c_uint) -> c_int {
    boundary("clip_mount_options_init", || {
        check_version("clip_mount_options", version, CLIP_MOUNT_OPTIONS_VERSION)?;
        let o = c_out_struct(opts, "opts")?;
        write_versioned(
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
                s3: std::ptr::null(),
                data_archive: std::ptr::null(),
                cache_min_free_bytes: 0,
                content_cache: std::ptr::null(),
                remote_cache: std::ptr::null(),
                content_cache_timeout_ms: 0,
                content_cache_read_only: 0,
                prefetch_profile: std::ptr::null(),
                no_prefetch: 0,
                prefetch_threads: 0,
                record_profile: 0,
            },
            version,
        );
        Ok(())
    })
}

/// Mounts the archive at `archive_path` read-only at `mountpoint` (created if
/// missing) and returns once the mount is live. File bytes are fetched on demand:
/// for an index-only archive from the layers, from `opts->layout` if given, else
/// from the registry the archive records, else from the layout it was indexed
/// from if still there; for a v1 archive from its own DATA section; for a
/// `.rclip` from `opts->data_archive` if given, else from the S3 object the
/// archive (or `opts->s3`) names, with ranged GETs.
/// Needs `/dev/fuse` and either root or `fusermount3`.
///
/// Returns: 0; `CLIP_EINVALID` for a NULL or invalid argument or option;
/// `CLIP_EVERSION` for a bad options version or archive version;
/// `CLIP_ENOTFOUND` for a missing archive or layer blob; `CLIP_EFORMAT` for an
/// invalid archive or a layer of the wrong size; `CLIP_EAUTH` for refused
/// credentials; `CLIP_ENETWORK` for an unreachable registry or S3 endpoint;
/// `CLIP_ERROR` if the mount itself fails (the message says why).
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
        let args = mount_args(opts, archive_path)?;
        let gate = args.gate.clone();
        let (mount_opts, stopped) = (args.mount.clone(), args.stopped.clone());
        let mounted = stopped_by_callback(
            args.image(archive_path)
                .and_then(|image| Mount::new(image, mountpoint, &mount_opts)),
            &stopped,
        );
        match mounted {
            Ok(mount) => {
                write_out(out, Box::into_raw(Box::new(clip_mount { mount, gate })));
                Ok(())
            }
            Err(e) => {
                gate.close();
                Err(e)
            }
        }
    })
}

/// What `clip_mount_options` say, read into the Rust API's options.
struct MountArgs {
    /// Our archive, read; `None` for an archive of the Go clip (opened by
    /// [`MountArgs::image`]).
    archive: Option<crate::archive::Archive>,
    source: SourceOptions,
    mount: MountOptions,
    stopped: Arc<AtomicBool>,
    gate: Arc<Gate>,
}

impl MountArgs {
    /// The image to mount or prepare.
    fn image(self, archive_path: &Path) -> crate::Result<Image> {
        match self.archive {
            Some(a) => Image::bind(a, archive_path, &self.source),
            None => Image::open(archive_path, &self.source),
        }
    }
}

/// Reads `opts` (NULL: the defaults) and the archive at `archive_path`.
fn mount_args(opts: *const clip_mount_options, archive_path: &Path) -> FfiResult<MountArgs> {
    let stopped = Arc::new(AtomicBool::new(false));
    let gate = Arc::new(Gate::default());
    let mut src = SourceOptions::default();
    let mut mo = MountOptions::default();
    let mut s3 = None;
    if !opts.is_null() {
        let o = c_versioned(opts, "opts")?;
        if let Some(d) = c_path_opt(o.cache_dir, "opts->cache_dir")? {
            mo.cache_dir = d.to_path_buf();
        }
        if o.cache_max_bytes > 0 {
            mo.cache_max_bytes = o.cache_max_bytes;
        }
        mo.cache_min_free_bytes = o.cache_min_free_bytes;
        mo.allow_other = o.allow_other != 0;
        if o.read_threads > 0 {
            mo.read_threads = o.read_threads as usize;
        }
        if o.event_threads > 0 {
            mo.event_threads = o.event_threads as usize;
        }
        src.layout = c_path_opt(o.layout, "opts->layout")?.map(Path::to_path_buf);
        src.registry = registry_options(o.registry, &stopped)?;
        if !o.s3.is_null() {
            s3 = Some(s3_args(o.s3, "opts->s3")?);
        }
        src.data_archive = c_path_opt(o.data_archive, "opts->data_archive")?.map(Path::to_path_buf);
        let mut tier_opts = TierOptions::default();
        if o.content_cache_timeout_ms > 0 {
            tier_opts.timeout = Duration::from_millis(o.content_cache_timeout_ms as u64);
        }
        tier_opts.warm = o.content_cache_read_only == 0;
        if !o.content_cache.is_null() {
            let t = callback_tier(o.content_cache, "opts->content_cache", gate.clone())?;
            mo.tier = Some(Arc::new(Tier::new(t, tier_opts)));
        } else if !o.remote_cache.is_null() {
            let a = s3_args(o.remote_cache, "opts->remote_cache")?;
            let loc = match a.location {
                Some(l) if a.has_key => l,
                _ => {
                    return Err(Failure::invalid(
                        "opts->remote_cache needs a bucket and a key (the prefix)",
                    ));
                }
            };
            let t = S3Tier::open(&loc, &a.options)?;
            mo.tier = Some(Arc::new(Tier::new(Arc::new(t), tier_opts)));
        }
        if o.version >= 4 {
            if o.no_prefetch != 0 {
                mo.profile = ProfileChoice::Off;
            } else if let Some(p) = c_path_opt(o.prefetch_profile, "opts->prefetch_profile")? {
                mo.profile = ProfileChoice::File(p.to_path_buf());
            }
            if o.prefetch_threads > 0 {
                mo.replay_threads = o.prefetch_threads as usize;
            }
            mo.record_profile = o.record_profile != 0;
        }
        if let Some(cb) = o.read_observer {
            let payload = Payload(o.read_observer_payload);
            let gate = gate.clone();
            // A caller of an older version cannot tell span work from reads.
            let reads_only = o.version < 3;
            mo.read_observer = Some(Arc::new(move |e: &ReadEvent<'_>| {
                if reads_only && e.operation != crate::trace::OP_READ {
                    return;
                }
                let Some(_in) = gate.enter() else { return };
                let path = callback_string(e.path);
                let digest = callback_string(e.layer_digest.to_string().as_bytes());
                let error = e.error.map(|e| callback_string(e.to_string().as_bytes()));
                let op = callback_string(e.operation.as_bytes());
                let dh = callback_string(e.decompressed_hash.to_string().as_bytes());
                let strings: Vec<(std::ffi::CString, std::ffi::CString)> = e
                    .attrs
                    .iter()
                    .map(|(k, v)| (callback_string(k.as_bytes()), callback_string(v.as_bytes())))
                    .collect();
                let attrs: Vec<clip_attr> = strings
                    .iter()
                    .map(|(k, v)| clip_attr {
                        key: k.as_ptr(),
                        value: v.as_ptr(),
                    })
                    .collect();
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
                    operation: op.as_ptr(),
                    decompressed_hash: dh.as_ptr(),
                    attrs: attrs.as_ptr(),
                    attrs_len: attrs.len(),
                };
                // SAFETY: the header documents the observer's contract; `event`
                // and its strings live until the call returns, and the gate keeps
                // the payload's owner alive.
                unsafe { cb(&event, payload.get()) }
            }));
        }
    }
    src.goclip_dir = Some(mo.cache_dir.join("goclip"));
    let (archive, named_key) = if crate::goclip::is_goclip_file(archive_path) {
        let go = crate::goclip::read(archive_path)?;
        let key = match go.storage {
            crate::goclip::Storage::S3(s) => Some(s.key),
            _ => None,
        };
        (None, key)
    } else {
        let a = crate::archive::read(archive_path)?;
        let key = a
            .meta
            .storage
            .as_ref()
            .and_then(|s| s.s3.as_ref())
            .map(|l| l.key.clone());
        (Some(a), key)
    };
    if let Some(a) = s3 {
        src.s3_options = a.options;
        src.s3 = a.location.map(|mut loc| {
            if !a.has_key {
                // A bucket without a key: the key the archive names.
                loc.key = named_key.unwrap_or_default();
            }
            loc
        });
    }
    Ok(MountArgs {
        archive,
        source: src,
        mount: mo,
        stopped,
        gate,
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
    /// Version 2. Spans read from the content tier (verified).
    pub tier_hits: u64,
    /// Version 2. Bytes read from the content tier.
    pub tier_bytes: u64,
    /// Version 2. Content-tier reads and look-ups that found nothing.
    pub tier_misses: u64,
    /// Version 2. Content-tier calls that failed, timed out, were skipped, or
    /// gave bytes that failed verification.
    pub tier_errors: u64,
    /// Version 2. Layers this mount stored into the content tier.
    pub tier_stores: u64,
    /// Version 2. Spans served from memory without caching them (the disk was
    /// below its free-space floor).
    pub uncached: u64,
    /// Version 3. Spans the startup profile's replay fetched ahead of the
    /// workload.
    pub replayed: u64,
    /// Version 3. Spans of the replay not yet handled (0 when it is done or
    /// none runs).
    pub replay_left: u64,
}

// SAFETY: `clip_stats` is `#[repr(C)]` of integers, version first; version 2
// appended the fields from `tier_hits` on, version 3 those from `replayed` on.
unsafe impl Versioned for clip_stats {
    const NAME: &'static str = "clip_stats";
    const SIZES: &'static [usize] = &[
        std::mem::offset_of!(clip_stats, tier_hits),
        std::mem::offset_of!(clip_stats, replayed),
        std::mem::size_of::<clip_stats>(),
    ];
}

/// Reads a mount's counters into `*out`, whose `version` the caller sets first.
///
/// Returns: 0; `CLIP_EINVALID` for a NULL argument; `CLIP_EVERSION` for a
/// version this library does not know.
/// Thread-safety: any thread, at any time before `clip_mount_free`.
#[unsafe(no_mangle)]
pub extern "C" fn clip_mount_stats(out: *mut clip_stats, mount: *const clip_mount) -> c_int {
    boundary("clip_mount_stats", || {
        let version = c_ref(out.cast_const(), "out")?.version;
        check_version("clip_stats", version, CLIP_STATS_VERSION)?;
        let s = c_ref(mount, "mount")?.mount.stats();
        // Only the fields of the caller's version are written.
        let value = clip_stats {
            version,
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
            tier_hits: s.tier_hits,
            tier_bytes: s.tier_bytes,
            tier_misses: s.tier_misses,
            tier_errors: s.tier_errors,
            tier_stores: s.tier_stores,
            uncached: s.uncached,
            replayed: s.replayed,
            replay_left: s.replay_left,
        };
        write_versioned(out, value, version);
        Ok(())
    })
}

/// Writes the startup profile recorded so far (the mount was made with
/// `record_profile`) to `path`, atomically: which layer ranges reads touched, in
/// order, with their timing. Replay it with `clip_mount_options.prefetch_profile`
/// or embed it with `clipctl profile add`. Best called once the workload has
/// started (or the mount is unmounted): later reads are not in the file.
///
/// Returns: 0; `CLIP_EINVALID` for a NULL argument or a mount made without
/// `record_profile`; `CLIP_ERROR` if the file cannot be written.
/// Thread-safety: any thread, at any time before `clip_mount_free`.
#[unsafe(no_mangle)]
pub extern "C" fn clip_mount_write_profile(mount: *const clip_mount, path: *const c_char) -> c_int {
    boundary("clip_mount_write_profile", || {
        let m = c_ref(mount, "mount")?;
        let path = c_path(path, "path")?;
        let p = m.mount.recorded_profile().ok_or_else(|| {
            Failure::invalid("the mount records no profile (set clip_mount_options.record_profile)")
        })?;
        p.write(path)?;
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
        if let Ok(m) = c_ref(mount, "mount") {
            if let Err(e) = m.mount.unmount() {
                tracing::warn!("clip_mount_free: {e}");
            }
            m.gate.close();
        }
        free_box(mount)
    });
}

// ---------------------------------------------------------------------------
// Preparing a mount's cache
// ---------------------------------------------------------------------------

/// Progress of `clip_prepare`.
#[repr(C)]
pub struct clip_prepare_progress {
    /// Layers done.
    pub completed: u64,
    /// Layers in the image.
    pub total: u64,
    /// Uncompressed bytes of the layers done.
    pub bytes: u64,
}

/// Told of `clip_prepare`'s progress: first with `completed` 0, then once per
/// finished layer (`completed` 1..total), serially, from the library's threads.
/// Return 0 to go on, non-zero to stop (the call then returns `CLIP_EUSER`).
/// `progress` is valid only during the call.
pub type clip_prepare_progress_cb = Option<
    unsafe extern "C" fn(progress: *const clip_prepare_progress, payload: *mut c_void) -> c_int,
>;

/// Options of `clip_prepare`. Initialise with `clip_prepare_options_init`.
#[repr(C)]
pub struct clip_prepare_options {
    /// `CLIP_PREPARE_OPTIONS_VERSION`.
    pub version: c_uint,
    /// Spans fetched at once (runs of spans, across layers); 0 for the default (8).
    pub concurrency: c_uint,
    /// Told of progress; NULL for none.
    pub progress: clip_prepare_progress_cb,
    /// Handed to `progress`.
    pub progress_payload: *mut c_void,
    /// Cancels the call; NULL for none.
    pub cancel: *const clip_cancel,
}

/// Fills `opts` with the defaults of `version` (pass
/// `CLIP_PREPARE_OPTIONS_VERSION`).
///
/// Returns: 0; `CLIP_EINVALID` if `opts` is NULL; `CLIP_EVERSION` for a version
/// this library does not know.
#[unsafe(no_mangle)]
pub extern "C" fn clip_prepare_options_init(
    opts: *mut clip_prepare_options,
    version: c_uint,
) -> c_int {
    boundary("clip_prepare_options_init", || {
        check_version(
            "clip_prepare_options",
            version,
            CLIP_PREPARE_OPTIONS_VERSION,
        )?;
        let o = c_out_struct(opts, "opts")?;
        write_struct(
            o,
            clip_prepare_options {
                version,
                concurrency: 0,
                progress: None,
                progress_payload: std::ptr::null_mut(),
                cancel: std::ptr::null(),
            },
        );
        Ok(())
    })
}

/// Fetches and verifies every span of every layer of the archive at
/// `archive_path` into the span cache `mount_opts` names (from its content tier
/// first), so that a mount with the same options then reads nothing from the
/// layer sources; layers the content tier lacks are stored into it (unless
/// `content_cache_read_only`), and the call waits for that. `mount_opts` are read
/// as by `clip_mount_new` (NULL: defaults); nothing is mounted.
///
/// Returns: 0; the codes of `clip_mount_new` for bad options or archives;
/// `CLIP_ECANCELED` if `opts->cancel` was cancelled; `CLIP_EUSER` if the progress
/// callback stopped it; `CLIP_ENETWORK` / `CLIP_EAUTH` / `CLIP_EFORMAT` if a layer
/// cannot be fetched or fails verification.
/// Thread-safety: blocks until done; callbacks of `mount_opts` are not called
/// after it returns.
#[unsafe(no_mangle)]
pub extern "C" fn clip_prepare(
    archive_path: *const c_char,
    mount_opts: *const clip_mount_options,
    opts: *const clip_prepare_options,
) -> c_int {
    boundary("clip_prepare", || {
        crate::log::init();
        let archive_path = c_path(archive_path, "archive_path")?;
        let mut concurrency = 8usize;
        let mut cb: clip_prepare_progress_cb = None;
        let mut payload = Payload(std::ptr::null_mut());
        let mut cancel = Arc::new(AtomicBool::new(false));
        if !opts.is_null() {
            let o = c_ref(opts, "opts")?;
            check_version(
                "clip_prepare_options",
                o.version,
                CLIP_PREPARE_OPTIONS_VERSION,
            )?;
            if o.concurrency > 0 {
                concurrency = o.concurrency as usize;
            }
            cb = o.progress;
            payload = Payload(o.progress_payload);
            if !o.cancel.is_null() {
                cancel = c_ref(o.cancel, "opts->cancel")?.flag.clone();
            }
        }
        let args = mount_args(mount_opts, archive_path)?;
        let gate = args.gate.clone();
        let mut user_stop = false;
        let (cache_dir, store_options) = (args.mount.cache_dir.clone(), args.mount.store_options());
        let stopped = args.stopped.clone();
        let r = args
            .image(archive_path)
            .and_then(|image| Store::with_options(Arc::new(image), &cache_dir, store_options))
            .and_then(|store| {
                let mut progress = |p: PrepareProgress| {
                    let Some(f) = cb else { return true };
                    let c = clip_prepare_progress {
                        completed: p.completed as u64,
                        total: p.total as u64,
                        bytes: p.bytes,
                    };
                    // SAFETY: the header documents the callback's contract; `c`
                    // lives until it returns.
                    let go_on = unsafe { f(&c, payload.get()) } == 0;
                    user_stop |= !go_on;
                    go_on
                };
                store.prepare(concurrency, &mut progress, &cancel)
            });
        gate.close();
        match r {
            Err(crate::Error::Canceled) if user_stop => {
                Err(Failure::new(CLIP_EUSER, "stopped by the progress callback"))
            }
            r => Ok(stopped_by_callback(r, &stopped)?),
        }
    })
}
