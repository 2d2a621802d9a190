//! Mounts (`clip_mount`): options, the read observer, mount, wait, unmount,
//! counters, free.

use std::ffi::{c_char, c_int, c_uint, c_void};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use super::*;
use crate::fs::ReadEvent;
use crate::image::{Image, SourceOptions};
use crate::mount::{Mount, MountOptions};

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
}

// SAFETY: `clip_mount_options` is `#[repr(C)]` of integers, raw pointers and
// `Option`s of function pointers, version first; version 2 appended `s3` and
// `data_archive` to version 1, which ended before `s3`.
unsafe impl Versioned for clip_mount_options {
    const NAME: &'static str = "clip_mount_options";
    const SIZES: &'static [usize] = &[
        std::mem::offset_of!(clip_mount_options, s3),
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
        let stopped = Arc::new(AtomicBool::new(false));
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
            src.data_archive =
                c_path_opt(o.data_archive, "opts->data_archive")?.map(Path::to_path_buf);
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
        let archive = crate::archive::read(archive_path)?;
        if let Some(a) = s3 {
            src.s3_options = a.options;
            src.s3 = a.location.map(|mut loc| {
                if !a.has_key {
                    // A bucket without a key: the key the archive names.
                    let named = archive.meta.storage.as_ref().and_then(|s| s.s3.as_ref());
                    loc.key = named.map(|l| l.key.clone()).unwrap_or_default();
                }
                loc
            });
        }
        let image = stopped_by_callback(Image::bind(archive, archive_path, &src), &stopped)?;
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
