//! Registry options and credentials (`clip_registry_options`, the credential
//! callback), shared by creating and mounting.

use std::ffi::{c_char, c_int, c_uint, c_void};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::*;
use crate::error::Error;
use crate::registry::{Credential, CredentialFn, Hedge, RegistryOptions};

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
    /// Timeout to connect, in milliseconds (0: the default, 30000).
    pub timeout_ms: c_uint,
    /// Attempts per request on 429, 5xx, resets, stalls and dropped connections
    /// (0: the default, 5). A blob stream that breaks is resumed from where it
    /// broke and fails after this many breaks in a row without progress.
    pub attempts: c_uint,
    /// Version 2. A response that makes no progress (no header or body byte) for
    /// this many milliseconds is abandoned and retried on a fresh connection (0:
    /// the default, 5000).
    pub stall_timeout_ms: c_uint,
    /// Version 2. The longest one `Retry-After` of a 429 or 503 is honoured, in
    /// milliseconds (0: the default, 10000).
    pub retry_wait_max_ms: c_uint,
    /// Version 2. The most time one request waits between its attempts, in
    /// milliseconds; past it the registry's answer is the error (0: the default,
    /// 30000).
    pub retry_budget_ms: c_uint,
    /// Version 2. How many more times a blob whose bytes fail verification is
    /// fetched before the call fails (0: the default, 2).
    pub refetches: c_uint,
    /// Version 2. A lazy read that makes no progress for this many milliseconds
    /// sends a second, hedged request for the rest of its range: 0 for the
    /// default (automatic: 4 times the usual time to first byte, 100 ms at least,
    /// half of the stall timeout at most), -1 for never.
    pub hedge_after_ms: c_int,
}

// SAFETY: `#[repr(C)]`, integers, raw pointers and an `Option` of a function
// pointer (all valid when zeroed), the version first; SIZES from the fields.
unsafe impl Versioned for clip_registry_options {
    const NAME: &'static str = "clip_registry_options";
    const SIZES: &'static [usize] = &[
        std::mem::offset_of!(clip_registry_options, stall_timeout_ms),
        std::mem::size_of::<clip_registry_options>(),
    ];
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
        let ms = |d: Duration| d.as_millis().min(c_uint::MAX as u128) as c_uint;
        write_versioned(
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
                timeout_ms: ms(d.timeout),
                attempts: d.attempts,
                stall_timeout_ms: ms(d.stall_timeout),
                retry_wait_max_ms: ms(d.retry_wait_max),
                retry_budget_ms: ms(d.retry_budget),
                refetches: d.refetches,
                hedge_after_ms: 0,
            },
            version,
        );
        Ok(())
    })
}

/// Checks a struct out-parameter is not NULL.
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
pub(super) fn registry_options(
    p: *const clip_registry_options,
    stopped: &Arc<AtomicBool>,
) -> FfiResult<RegistryOptions> {
    let mut r = RegistryOptions::default();
    if p.is_null() {
        return Ok(r);
    }
    let o = &c_versioned(p, "registry")?;
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
    let ms = |v: c_uint| Duration::from_millis(v as u64);
    if o.stall_timeout_ms > 0 {
        r.stall_timeout = ms(o.stall_timeout_ms);
    }
    if o.retry_wait_max_ms > 0 {
        r.retry_wait_max = ms(o.retry_wait_max_ms);
    }
    if o.retry_budget_ms > 0 {
        r.retry_budget = ms(o.retry_budget_ms);
    }
    if o.refetches > 0 {
        r.refetches = o.refetches;
    }
    r.hedge = match o.hedge_after_ms {
        0 => Hedge::Auto,
        -1 => Hedge::Off,
        v if v > 0 => Hedge::After(Duration::from_millis(v as u64)),
        v => {
            return Err(Failure::invalid(format!(
                "registry->hedge_after_ms {v}: expected 0 (automatic), -1 (never) or a positive number of milliseconds"
            )));
        }
    };
    Ok(r)
}
