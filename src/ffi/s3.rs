//! Archives kept in S3 (v1 `.rclip`): the S3 location and credentials
//! (`clip_s3_options`), uploading an archive (`clip_upload`) and writing the
//! metadata-only `.rclip` that names one (`clip_write_remote`).

use std::ffi::{c_char, c_int, c_uint, c_void};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::*;
use crate::s3::{S3Credentials, S3Location, S3Options};

// ---------------------------------------------------------------------------
// S3 locations and credentials
// ---------------------------------------------------------------------------

/// Where an archive lives in S3 and how to reach it, for `clip_upload`,
/// `clip_write_remote` and `clip_mount_options.s3`. Initialise with
/// `clip_s3_options_init`.
#[repr(C)]
pub struct clip_s3_options {
    /// `CLIP_S3_OPTIONS_VERSION`.
    pub version: c_uint,
    /// The bucket. Required by `clip_upload` and `clip_write_remote`; in
    /// `clip_mount_options`, NULL keeps the location the `.rclip` names (then
    /// `key`, `region`, `endpoint` and `path_style` are ignored too).
    pub bucket: *const c_char,
    /// The object key (`image.clip`, may hold slashes). Required by `clip_upload`
    /// and `clip_write_remote`; in `clip_mount_options`, NULL keeps the key the
    /// `.rclip` names.
    pub key: *const c_char,
    /// The region; NULL for the default (`AWS_REGION`, else `us-east-1`).
    pub region: *const c_char,
    /// The endpoint URL (`http://127.0.0.1:7070`); NULL for AWS.
    pub endpoint: *const c_char,
    /// Non-zero for path-style requests (`endpoint/bucket/key`), as most
    /// S3-compatible servers want.
    pub path_style: c_int,
    /// Access key id. NULL (or an empty string, as is `secret_key`) for the
    /// standard chain: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
    /// `AWS_SESSION_TOKEN`. Never logged.
    pub access_key: *const c_char,
    /// Secret access key, with `access_key`. Never logged.
    pub secret_key: *const c_char,
    /// Session token with `access_key`; NULL for none.
    pub session_token: *const c_char,
    /// Retries of a failed request (connection errors, timeouts, 5xx), with
    /// exponential backoff; 0 for the default (5).
    pub retries: c_uint,
    /// Connect timeout, and the longest wait for the next bytes of a response,
    /// in milliseconds; 0 for the default (30000).
    pub timeout_ms: c_uint,
}

/// Fills `opts` with the defaults of `version` (pass `CLIP_S3_OPTIONS_VERSION`):
/// no location, credentials from the environment.
///
/// Returns: 0; `CLIP_EINVALID` if `opts` is NULL; `CLIP_EVERSION` for a version
/// this library does not know.
#[unsafe(no_mangle)]
pub extern "C" fn clip_s3_options_init(opts: *mut clip_s3_options, version: c_uint) -> c_int {
    boundary("clip_s3_options_init", || {
        check_version("clip_s3_options", version, CLIP_S3_OPTIONS_VERSION)?;
        let o = c_out_struct(opts, "opts")?;
        write_struct(
            o,
            clip_s3_options {
                version,
                bucket: std::ptr::null(),
                key: std::ptr::null(),
                region: std::ptr::null(),
                endpoint: std::ptr::null(),
                path_style: 0,
                access_key: std::ptr::null(),
                secret_key: std::ptr::null(),
                session_token: std::ptr::null(),
                retries: 0,
                timeout_ms: 0,
            },
        );
        Ok(())
    })
}

/// S3 options read from C: the location if a bucket is given (`key` may then
/// still be `None`: "the archive's"), and how to reach it.
pub(super) struct S3Args {
    /// The location; `None` without a bucket.
    pub(super) location: Option<S3Location>,
    /// Whether a key was given (a location without one takes the archive's key).
    pub(super) has_key: bool,
    /// Credentials, retries, timeout.
    pub(super) options: S3Options,
}

/// Reads `clip_s3_options` (`name` names the argument in messages).
pub(super) fn s3_args(p: *const clip_s3_options, name: &str) -> FfiResult<S3Args> {
    let o = c_ref(p, name)?;
    check_version("clip_s3_options", o.version, CLIP_S3_OPTIONS_VERSION)?;
    let field = |f: *const c_char, n: &str| -> FfiResult<Option<String>> {
        Ok(c_str_opt(f, &format!("{name}->{n}"))?
            .filter(|s| !s.is_empty())
            .map(str::to_owned))
    };
    let mut options = S3Options::default();
    let access_key = field(o.access_key, "access_key")?;
    let secret_key = field(o.secret_key, "secret_key")?;
    options.credentials = match (access_key, secret_key) {
        (Some(access_key), Some(secret_key)) => Some(S3Credentials {
            access_key,
            secret_key,
            session_token: field(o.session_token, "session_token")?,
        }),
        (None, None) => None,
        _ => {
            return Err(Failure::invalid(format!(
                "{name}: access_key and secret_key go together (give both, or neither for the AWS_* variables)"
            )));
        }
    };
    if o.retries > 0 {
        options.retries = o.retries as usize;
    }
    if o.timeout_ms > 0 {
        options.timeout = Duration::from_millis(o.timeout_ms as u64);
    }
    let key = field(o.key, "key")?;
    let has_key = key.is_some();
    let region = field(o.region, "region")?.unwrap_or_default();
    let endpoint = field(o.endpoint, "endpoint")?.unwrap_or_default();
    let location = field(o.bucket, "bucket")?.map(|bucket| S3Location {
        bucket,
        key: key.unwrap_or_default(),
        region,
        endpoint,
        path_style: o.path_style != 0,
    });
    Ok(S3Args {
        location,
        has_key,
        options,
    })
}

/// A complete location (bucket and key), as `clip_upload` and
/// `clip_write_remote` need.
fn full_location(a: &S3Args, name: &str) -> FfiResult<S3Location> {
    match &a.location {
        Some(l) if a.has_key => Ok(l.clone()),
        Some(_) => Err(Failure::invalid(format!("{name}->key is NULL or empty"))),
        None => Err(Failure::invalid(format!("{name}->bucket is NULL or empty"))),
    }
}

// ---------------------------------------------------------------------------
// Uploading archives
// ---------------------------------------------------------------------------

/// Told how much of an upload is done: `percent` from 0 to 100 (100 once the
/// whole archive is stored), never decreasing; the same value may repeat.
///
/// Return 0 to go on; any other value stops the upload, which returns
/// `CLIP_EUSER` (the call's cancel token, if any, is left alone). A stop asked
/// on 100, once the whole archive is stored, comes too late: the call completes.
///
/// Thread-safety: called from the library's threads, never concurrently for
/// one call, and never after `clip_upload` returned.
pub type clip_upload_progress_cb =
    Option<unsafe extern "C" fn(percent: c_uint, payload: *mut c_void) -> c_int>;

/// Options of `clip_upload`. Initialise with `clip_upload_options_init`; NULL
/// options mean the defaults.
#[repr(C)]
pub struct clip_upload_options {
    /// `CLIP_UPLOAD_OPTIONS_VERSION`.
    pub version: c_uint,
    /// Told of upload progress; NULL for none.
    pub progress_cb: clip_upload_progress_cb,
    /// Handed to `progress_cb`.
    pub progress_payload: *mut c_void,
    /// Cancels the call when cancelled; NULL for none.
    pub cancel: *const clip_cancel,
}

/// Fills `opts` with the defaults of `version` (pass
/// `CLIP_UPLOAD_OPTIONS_VERSION`).
///
/// Returns: 0; `CLIP_EINVALID` if `opts` is NULL; `CLIP_EVERSION` for a version
/// this library does not know.
#[unsafe(no_mangle)]
pub extern "C" fn clip_upload_options_init(
    opts: *mut clip_upload_options,
    version: c_uint,
) -> c_int {
    boundary("clip_upload_options_init", || {
        check_version("clip_upload_options", version, CLIP_UPLOAD_OPTIONS_VERSION)?;
        let o = c_out_struct(opts, "opts")?;
        write_struct(
            o,
            clip_upload_options {
                version,
                progress_cb: None,
                progress_payload: std::ptr::null_mut(),
                cancel: std::ptr::null(),
            },
        );
        Ok(())
    })
}

/// Uploads the archive at `archive_path` (a full v1 archive, from
/// `clip_pack_dir`) to `s3->bucket`/`s3->key`, then writes the metadata-only
/// `.rclip` naming that object to `rclip_path` (atomically; nothing is left
/// there if the upload fails or is cancelled). Large archives go up in parts,
/// each retried.
///
/// Returns: 0; `CLIP_EINVALID` for a NULL or invalid argument (a missing bucket
/// or key); `CLIP_EVERSION` for a bad options version; `CLIP_ENOTFOUND` for a
/// missing archive or bucket; `CLIP_EFORMAT` if `archive_path` is not a full v1
/// archive; `CLIP_EAUTH` for refused credentials; `CLIP_ENETWORK` when the
/// endpoint cannot be reached; `CLIP_ECANCELED` if `opts->cancel` was
/// cancelled; `CLIP_EUSER` if the progress callback stopped it.
/// Thread-safety: blocks the calling thread; any number of calls may run at once.
#[unsafe(no_mangle)]
pub extern "C" fn clip_upload(
    archive_path: *const c_char,
    rclip_path: *const c_char,
    s3: *const clip_s3_options,
    opts: *const clip_upload_options,
) -> c_int {
    boundary("clip_upload", || {
        crate::log::init();
        let archive_path = c_path(archive_path, "archive_path")?;
        let rclip_path = c_path(rclip_path, "rclip_path")?;
        let a = s3_args(s3, "s3")?;
        let loc = full_location(&a, "s3")?;
        let mut cb = None;
        let mut cancel = None;
        if !opts.is_null() {
            let o = c_ref(opts, "opts")?;
            check_version(
                "clip_upload_options",
                o.version,
                CLIP_UPLOAD_OPTIONS_VERSION,
            )?;
            cb = o.progress_cb.map(|cb| (cb, Payload(o.progress_payload)));
            if !o.cancel.is_null() {
                cancel = Some(c_ref(o.cancel, "opts->cancel")?.flag.clone());
            }
        }
        let stopped = AtomicBool::new(false);
        let never = AtomicBool::new(false);
        let mut progress = |percent: u8| -> bool {
            let Some((cb, payload)) = cb else {
                return true;
            };
            // SAFETY: the header documents the callback's contract; it is called
            // on this thread, during the call.
            let rc = unsafe { cb(percent.min(100) as c_uint, payload.get()) };
            if rc != 0 {
                stopped.store(true, Ordering::SeqCst);
            }
            rc == 0
        };
        let r = crate::pack::upload(
            archive_path,
            rclip_path,
            &loc,
            &a.options,
            &mut progress,
            cancel.as_deref().unwrap_or(&never),
        );
        stopped_by_callback(r, &stopped)
    })
}

/// Writes to `out_path` a metadata-only `.rclip` for the archive at
/// `archive_path` (a full v1 archive, or another `.rclip`), naming
/// `s3->bucket`/`s3->key` as where its data lives (`ClipArchiver.
/// CreateRemoteArchive` of the Go clip). Nothing is uploaded and no request is
/// made; `s3`'s credentials are not used. Written atomically.
///
/// Returns: 0; `CLIP_EINVALID` for a NULL or invalid argument (a missing bucket
/// or key); `CLIP_EVERSION` for a bad options version; `CLIP_ENOTFOUND` for a
/// missing archive; `CLIP_EFORMAT` if it is not a v1 archive.
/// Thread-safety: any thread; any number of calls may run at once.
#[unsafe(no_mangle)]
pub extern "C" fn clip_write_remote(
    archive_path: *const c_char,
    out_path: *const c_char,
    s3: *const clip_s3_options,
) -> c_int {
    boundary("clip_write_remote", || {
        crate::log::init();
        let archive_path = c_path(archive_path, "archive_path")?;
        let out_path = c_path(out_path, "out_path")?;
        let a = s3_args(s3, "s3")?;
        let loc = full_location(&a, "s3")?;
        crate::pack::write_remote(archive_path, &loc, out_path)?;
        Ok(())
    })
}
