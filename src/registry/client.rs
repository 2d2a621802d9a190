//! The distribution API client: one [`Client`] per registry repository.
//!
//! It negotiates manifests and indexes (OCI and Docker media types), verifies
//! manifest digests, streams blobs (resuming a dropped stream where it broke), and
//! reads byte ranges of blobs with one `Range` request each. A registry that
//! ignores `Range` (answers `200` with the whole blob) still works: the reader skips
//! to the offset in the stream and stops after the bytes it needs.
//!
//! Requests are retried with exponential backoff on `429`, `5xx`, timeouts and
//! dropped connections (honouring `Retry-After` up to
//! [`retry_wait_max`](super::RegistryOptions::retry_wait_max), within a
//! [`retry_budget`](super::RegistryOptions::retry_budget) of waiting per request).
//! A response that makes no progress for
//! [`stall_timeout`](super::RegistryOptions::stall_timeout) (no byte arrives) is
//! abandoned and retried on a fresh connection; a blob stream that breaks (reset,
//! stall, cut) resumes with a Range request from where it broke. A manifest or
//! config whose body breaks or fails its digest is fetched again.
//! `401` triggers the auth dance of
//! [`super::auth`] once per request. Redirects to blob storage are followed with the
//! `Range` header kept and the `Authorization` header dropped when the host changes
//! (reqwest's redirect policy); a redirect target that refuses the request (an
//! expired signed URL) sends it back to the registry for a fresh redirect, a few
//! times. A `206` whose `Content-Range` is not the range asked for is never read:
//! it is fetched again, up to `refetches` times.
//!
//! Plain HTTP is used only for loopback registries (`localhost`, `127.0.0.0/8`,
//! `::1`), those listed in
//! [`RegistryOptions::plain_http`](super::RegistryOptions::plain_http) and mirrors
//! or locations marked insecure.
//!
//! Mirrors ([`super::mirror`]) are tried in order before the upstream, per
//! request, for the requests their `pull-from-mirror` allows: blobs always,
//! manifests by digest or by tag as configured. Each mirror has its own
//! credentials (looked up for its host; the caller's explicit
//! [`credential`](super::RegistryOptions::credential) goes to the upstream's host
//! only) and its own challenge and token. A mirror that fails (cannot connect,
//! `5xx` after one retry, `404`, refuses access, a digest mismatch) passes the
//! request on to the next one and finally to the upstream; the first failure of
//! each mirror is logged as a warning, later ones at debug. A mirror that failed
//! for other reasons than `404` is skipped for a while (10 s, doubling per
//! consecutive failure up to 5 min), so that a mirror that is down costs one
//! failed request now and then, not one per read.

use std::io::{self, Read};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use reqwest::StatusCode;
use reqwest::blocking::{RequestBuilder, Response};
use reqwest::header::{self, HeaderMap, HeaderValue};

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::limits;
use crate::oci::{self, Desc, ManifestKind, Platform, ResolvedImage};

use super::RegistryOptions;
use super::auth::{self, Challenge, Credential, Resolved};
use super::hedge::{HedgedReader, Latency};
use super::mirror::{PullFromMirror, RequestKind};
use super::proxy::ProxyRules;

/// Bytes and requests over the network, for tests and benchmarks.
#[derive(Debug, Default)]
pub struct TransferStats {
    /// HTTP requests sent (including retries and token requests).
    pub requests: AtomicU64,
    /// Response body bytes received.
    pub bytes: AtomicU64,
}

/// Counters of all registry traffic of this process.
pub static TRANSFER: TransferStats = TransferStats {
    requests: AtomicU64::new(0),
    bytes: AtomicU64::new(0),
};

/// A snapshot of [`TRANSFER`]: `(requests, body bytes)`.
pub fn transfer_snapshot() -> (u64, u64) {
    (
        TRANSFER.requests.load(Ordering::Relaxed),
        TRANSFER.bytes.load(Ordering::Relaxed),
    )
}

/// The manifest media types we accept, best first.
const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.v2+json";

/// How long before its expiry a bearer token is replaced.
const TOKEN_MARGIN: Duration = Duration::from_secs(10);

/// A bearer token and when it stops working.
#[derive(Clone)]
struct Token {
    value: String,
    expires: Instant,
}

#[derive(Default)]
struct AuthState {
    /// Credentials, once resolved (on the first challenge).
    resolved: Option<Resolved>,
    /// The registry's challenge, once seen.
    challenge: Option<Challenge>,
    /// The current bearer token.
    token: Option<Token>,
}

/// How long a failing mirror is first skipped.
const MIRROR_BACKOFF: Duration = Duration::from_secs(10);
/// The longest a failing mirror is skipped.
const MIRROR_BACKOFF_MAX: Duration = Duration::from_secs(300);
/// Attempts per request on a mirror (the next mirror or the upstream is the retry).
const MIRROR_ATTEMPTS: u32 = 2;
/// How many times a request is sent while the storage host the registry
/// redirects it to refuses it (an expired signed URL gets a fresh one from the
/// registry).
const REDIRECT_REFUSALS: u32 = 3;

/// One place the repository is fetched from (a mirror or the upstream), with its
/// own auth state.
struct Site {
    /// `host[:port]` as configured (`docker.io` for Docker Hub): credentials are
    /// looked up for it.
    registry: String,
    repository: String,
    /// `http[s]://host[:port]`.
    base: String,
    /// `None` for the upstream.
    mirror: Option<PullFromMirror>,
    auth: Mutex<AuthState>,
    warned_no_range: AtomicBool,
    /// Whether this mirror's failure was logged as a warning yet.
    warned_failure: AtomicBool,
    /// Consecutive failures, and until when the mirror is skipped.
    backoff: Mutex<(u32, Option<Instant>)>,
    /// The credential callback refused this site: the call stops here.
    refused: AtomicBool,
}

impl Site {
    /// `registry/repository`, for messages.
    fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The auth state; a panic elsewhere while it was held (a caller's credential
    /// callback, say) does not make it unusable.
    fn auth_state(&self) -> std::sync::MutexGuard<'_, AuthState> {
        self.auth.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn scope(&self) -> String {
        format!("repository:{}:pull", self.repository)
    }

    fn url(&self, kind: &str, reference: &str) -> String {
        format!("{}/v2/{}/{kind}/{reference}", self.base, self.repository)
    }

    fn backoff(&self) -> std::sync::MutexGuard<'_, (u32, Option<Instant>)> {
        self.backoff.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether this mirror is being skipped after failures.
    fn resting(&self) -> bool {
        self.backoff().1.is_some_and(|t| t > Instant::now())
    }

    fn succeeded(&self) {
        if self.mirror.is_some() {
            *self.backoff() = (0, None);
        }
    }

    /// Notes that this mirror failed `what` with `err`.
    fn failed(&self, what: &str, err: &Error) {
        let rest = if matches!(err.code(), crate::error::ErrorCode::NotFound) {
            None
        } else {
            let mut b = self.backoff();
            b.0 = b.0.saturating_add(1);
            let d = MIRROR_BACKOFF
                .saturating_mul(1 << (b.0 - 1).min(5))
                .min(MIRROR_BACKOFF_MAX);
            b.1 = Some(Instant::now() + d);
            Some(d)
        };
        if !self.warned_failure.swap(true, Ordering::Relaxed) {
            tracing::warn!(mirror = %self.registry, %what, error = %err, skipped_for = ?rest, "registry mirror failed; trying the next one");
        } else {
            tracing::debug!(mirror = %self.registry, %what, error = %err, skipped_for = ?rest, "registry mirror failed");
        }
    }
}

/// A client for one repository of one registry, and its mirrors.
pub struct Client {
    http: reqwest::blocking::Client,
    /// The mirrors in order, then the upstream (always last).
    sites: Vec<Site>,
    opts: RegistryOptions,
    /// Time to first byte of range requests, for the hedge delay.
    latency: Latency,
    /// Until when a registry answer (429, 5xx) asked us to wait: no hedges then.
    throttled_until: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Client({})", self.name())
    }
}

/// Whether `registry` (host\[:port\]) is a loopback address.
pub fn is_loopback(registry: &str) -> bool {
    let host = match registry.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(rest),
        None => registry.rsplit_once(':').map_or(registry, |(h, _)| h),
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl Client {
    /// A client for `repository` in `registry` (host\[:port\]; `docker.io` is
    /// reached at `registry-1.docker.io`), with the mirrors and rewrites the
    /// options configure. No request is sent yet. Errors if the registries.conf
    /// cannot be read or blocks the registry, or a proxy URL is invalid.
    pub fn new(registry: &str, repository: &str, opts: &RegistryOptions) -> Result<Client> {
        if registry.is_empty() || repository.is_empty() {
            return Err(Error::Invalid(format!(
                "registry {registry:?} and repository {repository:?} must not be empty"
            )));
        }
        let endpoints = opts
            .effective_registries()?
            .endpoints(registry, repository)?;
        let sites = endpoints
            .into_iter()
            .map(|e| {
                let host = if e.registry == crate::reference::DOCKER_HUB {
                    "registry-1.docker.io"
                } else {
                    e.registry.as_str()
                };
                let plain =
                    e.insecure || is_loopback(&e.registry) || opts.plain_http.contains(&e.registry);
                let base = format!("{}://{host}", if plain { "http" } else { "https" });
                Site {
                    base,
                    registry: e.registry,
                    repository: e.repository,
                    mirror: e.mirror,
                    auth: Mutex::new(AuthState::default()),
                    warned_no_range: AtomicBool::new(false),
                    warned_failure: AtomicBool::new(false),
                    backoff: Mutex::new((0, None)),
                    refused: AtomicBool::new(false),
                }
            })
            .collect::<Vec<_>>();
        if sites.len() > 1 {
            let names: Vec<String> = sites.iter().map(|s| s.name()).collect();
            tracing::debug!(%registry, %repository, sites = ?names, "registry mirrors");
        }
        let proxy = ProxyRules::new(&opts.proxy)?;
        let mut builder = reqwest::blocking::Client::builder()
            .user_agent(concat!("clip/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(opts.timeout)
            // reqwest's blocking timeout bounds the wait for the response head and
            // then each body read, not a whole body (layers stream for minutes):
            // progress-based stall detection. A stalled connection is dropped, so
            // the retry opens a fresh one.
            .timeout(opts.stall_timeout.max(Duration::from_millis(100)))
            .pool_max_idle_per_host(16);
        builder = if proxy.any() {
            builder.proxy(reqwest::Proxy::custom(move |url| proxy.proxy_for(url)))
        } else {
            builder.no_proxy()
        };
        let http = builder.build().map_err(|e| {
            Error::Network(format!(
                "registry {registry}: cannot build HTTP client: {e}"
            ))
        })?;
        Ok(Client {
            http,
            sites,
            opts: opts.clone(),
            latency: Latency::new(),
            throttled_until: Mutex::new(None),
        })
    }

    /// The upstream (the last site).
    fn upstream(&self) -> &Site {
        self.sites.last().expect("a client has its upstream")
    }

    /// `registry/repository` of the upstream, for messages.
    pub fn name(&self) -> String {
        self.upstream().name()
    }

    /// The mirrors, then the upstream, as `registry/repository`.
    pub fn sites(&self) -> Vec<String> {
        self.sites.iter().map(Site::name).collect()
    }

    /// Runs `f` on the mirrors that may serve a request of `kind`, in order, then
    /// on the upstream, until one succeeds. A failure of the upstream is returned
    /// with the mirrors' failures noted.
    fn on_sites<T>(
        &self,
        kind: RequestKind,
        what: &str,
        f: impl Fn(&Site) -> Result<T>,
    ) -> Result<T> {
        let mut failures = Vec::new();
        let (upstream, mirrors) = self.sites.split_last().expect("a client has its upstream");
        for site in mirrors {
            if !site.mirror.is_some_and(|m| m.allows(kind)) || site.resting() {
                continue;
            }
            match f(site) {
                Ok(v) => {
                    site.succeeded();
                    return Ok(v);
                }
                Err(e) if site.refused.load(Ordering::Relaxed) => return Err(e),
                Err(e) => {
                    site.failed(what, &e);
                    failures.push(format!("mirror {}: {e}", site.registry));
                }
            }
        }
        f(upstream).map_err(|e| {
            if failures.is_empty() {
                e
            } else {
                with_note(e, &format!("; {}", failures.join("; ")))
            }
        })
    }

    /// The `Authorization` header to send now, if any (fetching or refreshing a
    /// bearer token when needed).
    fn authorization(&self, site: &Site, refresh: bool) -> Result<Option<HeaderValue>> {
        let mut st = site.auth_state();
        let Some(challenge) = st.challenge.clone() else {
            return Ok(None);
        };
        if st.resolved.is_none() {
            let upstream = self.upstream();
            // The caller's explicit credentials are for the upstream's host; a
            // mirror elsewhere gets its own (or none).
            let explicit = site.mirror.is_none() || site.registry == upstream.registry;
            let r = auth::resolve(&site.registry, &site.scope(), &self.opts, explicit)
                .inspect_err(|_| site.refused.store(true, Ordering::Relaxed))?;
            tracing::debug!(registry = %site.registry, origin = %r.origin, "registry credentials");
            st.resolved = Some(r);
        }
        let resolved = st.resolved.clone().expect("resolved above");
        match challenge {
            Challenge::Basic => match &resolved.credential {
                Credential::Basic { username, password } => Ok(Some(basic(username, password))),
                Credential::Token(t) => Ok(Some(bearer(t))),
                _ => Err(unauthorized(
                    site,
                    &resolved,
                    "the registry asks for a username and password",
                )),
            },
            Challenge::Bearer { .. } if matches!(resolved.credential, Credential::Token(_)) => {
                let Credential::Token(t) = &resolved.credential else {
                    unreachable!()
                };
                Ok(Some(bearer(t)))
            }
            Challenge::Bearer {
                realm,
                service,
                scope,
            } => {
                let fresh = st
                    .token
                    .as_ref()
                    .filter(|t| !refresh && t.expires > Instant::now());
                if let Some(t) = fresh {
                    return Ok(Some(bearer(&t.value)));
                }
                let scope = scope.unwrap_or_else(|| site.scope());
                let token =
                    self.fetch_token(site, &realm, service.as_deref(), &scope, &resolved)?;
                let header = bearer(&token.value);
                st.token = Some(token);
                Ok(Some(header))
            }
        }
    }

    /// Gets a bearer token from the token server `realm`.
    fn fetch_token(
        &self,
        site: &Site,
        realm: &str,
        service: Option<&str>,
        scope: &str,
        resolved: &Resolved,
    ) -> Result<Token> {
        let mut query: Vec<(&str, &str)> = vec![("scope", scope)];
        if let Some(s) = service {
            query.push(("service", s));
        }
        let req = match &resolved.credential {
            Credential::IdentityToken(refresh) => {
                let mut form = query.clone();
                form.extend([
                    ("grant_type", "refresh_token"),
                    ("refresh_token", refresh.as_str()),
                    ("client_id", "clip"),
                ]);
                self.http.post(realm).form(&form)
            }
            Credential::Basic { username, password } => self
                .http
                .get(realm)
                .query(&query)
                .header(header::AUTHORIZATION, basic(username, password)),
            _ => self.http.get(realm).query(&query),
        };
        let resp = self.send_retrying(
            site,
            || req.try_clone().expect("token request clones"),
            "token",
        )?;
        let status = resp.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(unauthorized(
                site,
                resolved,
                &format!("token server answered {status}"),
            ));
        }
        if !status.is_success() {
            return Err(Error::Network(format!(
                "token server for registry {}: {status}: {}",
                site.registry,
                error_text(resp)
            )));
        }
        #[derive(serde::Deserialize)]
        struct TokenResponse {
            #[serde(default)]
            token: Option<String>,
            #[serde(default)]
            access_token: Option<String>,
            #[serde(default)]
            expires_in: Option<u64>,
        }
        let body = read_limited(resp, 1 << 20, "the limit for a token response")?;
        let t: TokenResponse = serde_json::from_slice(&body).map_err(|e| {
            Error::Network(format!(
                "token server for registry {}: bad response: {e}",
                site.registry
            ))
        })?;
        let value = t
            .token
            .or(t.access_token)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| {
                Error::Network(format!(
                    "token server for registry {} sent no token",
                    site.registry
                ))
            })?;
        // The distribution spec's default lifetime is 60 s; replace tokens a little
        // before they expire (a fifth of their life, at most TOKEN_MARGIN).
        let life = Duration::from_secs(t.expires_in.unwrap_or(60).max(1));
        let margin = (life / 5).min(TOKEN_MARGIN);
        Ok(Token {
            value,
            expires: Instant::now() + life - margin,
        })
    }

    /// Sends a request built by `build`, retrying transient failures. Returns the
    /// response whatever its status; transport errors after the last attempt are
    /// `Error::Network`.
    fn send_retrying(
        &self,
        site: &Site,
        build: impl Fn() -> RequestBuilder,
        what: &str,
    ) -> Result<Response> {
        let attempts = match site.mirror {
            Some(_) => self.opts.attempts.clamp(1, MIRROR_ATTEMPTS),
            None => self.opts.attempts.max(1),
        };
        let mut delay = Duration::from_millis(100);
        let mut last = String::new();
        // Time spent waiting between attempts, bounded by the retry budget.
        let mut waited = Duration::ZERO;
        let budget = self.opts.retry_budget;
        for attempt in 1..=attempts {
            TRANSFER.requests.fetch_add(1, Ordering::Relaxed);
            match build().send() {
                Ok(resp) if retryable(resp.status()) && attempt < attempts => {
                    let wait = retry_after(resp.headers())
                        .unwrap_or(delay)
                        .min(self.opts.retry_wait_max);
                    if waited + wait > budget {
                        tracing::debug!(%what, status = %resp.status(), ?waited, "retry budget spent");
                        return Ok(resp);
                    }
                    last = format!("{}", resp.status());
                    tracing::debug!(%what, status = %resp.status(), ?wait, "retrying");
                    self.throttle(wait);
                    std::thread::sleep(wait);
                    waited += wait;
                }
                Ok(resp) => return Ok(resp),
                Err(e) if attempt < attempts && waited + delay <= budget => {
                    last = describe_reqwest(&e);
                    tracing::debug!(%what, error = %last, ?delay, "retrying");
                    std::thread::sleep(delay);
                    waited += delay;
                }
                Err(e) => {
                    last = describe_reqwest(&e);
                    break;
                }
            }
            delay = (delay * 2).min(Duration::from_secs(2));
        }
        Err(Error::Network(format!(
            "registry {}: {what}: {last} (after {attempts} attempts)",
            site.registry
        )))
    }

    /// Sends an authenticated request: on `401` learns the challenge (or refreshes
    /// the token) and tries once more. A request the registry redirected that the
    /// redirect target refuses (`400`, `401`, `403`: an expired signed URL) is sent
    /// to the registry again for a fresh redirect, up to [`REDIRECT_REFUSALS`]
    /// times in all.
    fn send(
        &self,
        site: &Site,
        build: impl Fn() -> RequestBuilder,
        what: &str,
    ) -> Result<Response> {
        let mut refresh = false;
        let (mut round, mut refused) = (0, 0);
        loop {
            let auth = self.authorization(site, refresh)?;
            let resp = self.send_retrying(
                site,
                || {
                    let r = build();
                    match &auth {
                        Some(h) => r.header(header::AUTHORIZATION, h.clone()),
                        None => r,
                    }
                },
                what,
            )?;
            if let Some(storage) = refused_redirect(site, &resp) {
                // The storage the registry redirected to refused its signed URL
                // (expired, used up): the registry hands out a fresh one. Our
                // credentials never went there (reqwest drops `Authorization`
                // on a redirect to another host), so this is no auth failure.
                refused += 1;
                if refused >= REDIRECT_REFUSALS {
                    return Err(Error::Network(format!(
                        "{}: {what}: the blob storage {storage} the registry redirected to answered {} {refused} times (an expired or refused redirect URL)",
                        site.name(),
                        resp.status()
                    )));
                }
                tracing::debug!(%what, %storage, status = %resp.status(), "redirect target refused the request; asking the registry again");
                continue;
            }
            if resp.status() != StatusCode::UNAUTHORIZED || round == 2 {
                return Ok(resp);
            }
            round += 1;
            let challenge = resp
                .headers()
                .get_all(header::WWW_AUTHENTICATE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .find_map(auth::parse_challenge);
            let mut st = site.auth_state();
            match challenge {
                Some(c) if st.challenge.as_ref() != Some(&c) || auth.is_none() => {
                    st.challenge = Some(c);
                }
                Some(_) if matches!(st.challenge, Some(Challenge::Bearer { .. })) && !refresh => {
                    // The token we sent was refused (expired early, revoked): get
                    // a new one once.
                    st.token = None;
                    refresh = true;
                }
                _ => {
                    let resolved = st.resolved.clone().unwrap_or(Resolved {
                        credential: Credential::Anonymous,
                        origin: "anonymous".into(),
                    });
                    return Err(unauthorized(
                        site,
                        &resolved,
                        &format!("{what}: 401 Unauthorized"),
                    ));
                }
            }
        }
    }

    /// Turns a non-success status into an error naming `what`.
    fn check(&self, site: &Site, resp: Response, what: &str) -> Result<Response> {
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let text = error_text(resp);
        let msg = format!("{}: {what}: {status}{}", site.name(), text_suffix(&text));
        Err(match status {
            StatusCode::NOT_FOUND => Error::NotFound(msg),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                let st = site.auth_state();
                let origin = st
                    .resolved
                    .as_ref()
                    .map_or("anonymous", |r| r.origin.as_str());
                Error::Auth(format!("{msg} (credentials: {origin})"))
            }
            _ => Error::Network(msg),
        })
    }

    /// Fetches the manifest or index `reference` (tag or digest); returns its bytes
    /// and digest, verified against `reference` when that is a digest.
    pub fn manifest(&self, reference: &str) -> Result<(Vec<u8>, Digest)> {
        self.manifest_limited(reference, (oci::MAX_METADATA_BLOB, METADATA_LIMIT))
    }

    /// [`manifest`](Self::manifest), reading at most `limit` bytes of it.
    fn manifest_limited(&self, reference: &str, limit: (u64, &str)) -> Result<(Vec<u8>, Digest)> {
        let what = format!("manifest {reference}");
        self.on_sites(RequestKind::manifest(reference), &what, |site| {
            self.manifest_at(site, reference, &what, limit)
        })
    }

    fn manifest_at(
        &self,
        site: &Site,
        reference: &str,
        what: &str,
        limit: (u64, &str),
    ) -> Result<(Vec<u8>, Digest)> {
        let url = site.url("manifests", reference);
        self.get_small(
            site,
            || self.http.get(&url).header(header::ACCEPT, MANIFEST_ACCEPT),
            what,
            limit,
            |body| {
                let digest = Digest::of(&body);
                if let Ok(expected) = Digest::parse(reference)
                    && expected != digest
                {
                    return Err(Error::DigestMismatch {
                        what: format!("{} manifest", site.name()),
                        expected: expected.to_string(),
                        actual: digest.to_string(),
                    });
                }
                Ok((body, digest))
            },
        )
    }

    /// GETs a small response (manifest, config) whole, reading at most `limit.0`
    /// bytes (`limit.1` says what the limit is), and checks it with `verify`. A
    /// body that breaks (a reset, a stall, cut short) is fetched again, up to
    /// `attempts` times in all; one that fails `verify` with a digest mismatch
    /// (corrupted in flight), up to `refetches` more times.
    fn get_small<T>(
        &self,
        site: &Site,
        build: impl Fn() -> RequestBuilder,
        what: &str,
        limit: (u64, &str),
        verify: impl Fn(Vec<u8>) -> Result<T>,
    ) -> Result<T> {
        let attempts = match site.mirror {
            Some(_) => self.opts.attempts.clamp(1, MIRROR_ATTEMPTS),
            None => self.opts.attempts.max(1),
        };
        let (mut broke, mut mismatched) = (0, 0);
        let mut delay = Duration::from_millis(100);
        loop {
            let resp = self.check(site, self.send(site, &build, what)?, what)?;
            let e = match read_limited(resp, limit.0, limit.1) {
                Ok(body) => match verify(body) {
                    Ok(v) => return Ok(v),
                    Err(e @ Error::DigestMismatch { .. }) if mismatched < self.opts.refetches => {
                        mismatched += 1;
                        e
                    }
                    Err(e) => return Err(e),
                },
                Err(e @ Error::Network(_)) if broke + 1 < attempts => {
                    broke += 1;
                    e
                }
                Err(e) => return Err(with_note(e, &format!(" ({}: {what})", site.name()))),
            };
            tracing::debug!(%what, error = %e, "fetching it again");
            std::thread::sleep(delay);
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }

    /// Fetches a small blob (config), checking size and digest.
    pub fn small_blob(&self, desc: &Desc) -> Result<Vec<u8>> {
        oci::check_metadata_size(desc)?;
        let what = format!("blob {}", desc.digest);
        self.on_sites(RequestKind::Blob, &what, |site| {
            let url = site.url("blobs", &desc.digest.to_string());
            self.get_small(
                site,
                || self.http.get(&url),
                &what,
                (desc.size, DESCRIPTOR_LIMIT),
                |body| {
                    let actual = Digest::of(&body);
                    if body.len() as u64 != desc.size || actual != desc.digest {
                        return Err(Error::DigestMismatch {
                            what: format!("{} blob", site.name()),
                            expected: desc.digest.to_string(),
                            actual: actual.to_string(),
                        });
                    }
                    Ok(body)
                },
            )
        })
    }

    /// Resolves `reference` to one manifest for `platform` (following indexes),
    /// with its config.
    pub fn resolve(&self, reference: &str, platform: &Platform) -> Result<ResolvedImage> {
        let (mut bytes, mut digest) = self.manifest(reference)?;
        for _ in 0..=limits::MAX_INDEX_DEPTH {
            let what = format!("{} manifest {digest}", self.name());
            match oci::parse_manifest_or_index(&bytes, &what)? {
                ManifestKind::Index(list) => {
                    let d = oci::select_platform(&list, platform, &what)?;
                    oci::check_metadata_size(d)?;
                    (bytes, digest) =
                        self.manifest_limited(&d.digest.to_string(), (d.size, DESCRIPTOR_LIMIT))?;
                }
                ManifestKind::Manifest(m) => {
                    let cbytes = self.small_blob(&m.config)?;
                    let config =
                        oci::parse_config(&cbytes, &format!("config {}", m.config.digest))?;
                    return ResolvedImage::new(digest, m, config);
                }
            }
        }
        Err(limits::exceeded(
            format_args!("{} manifest {reference}", self.name()),
            format_args!("at least {}", limits::MAX_INDEX_DEPTH + 1),
            "nested indexes",
            limits::MAX_INDEX_DEPTH,
            "limits::MAX_INDEX_DEPTH",
        ))
    }

    /// Sends a GET for `digest` from `offset` (to the end, or `len` bytes), returning
    /// the response positioned at `offset`: a `206`, or a `200` whose first
    /// `offset` bytes were skipped when the registry ignores `Range`.
    fn get_blob_at(&self, digest: &Digest, offset: u64, len: Option<u64>) -> Result<Response> {
        let what = format!("blob {digest}");
        self.on_sites(RequestKind::Blob, &what, |site| {
            self.get_blob_from(site, digest, offset, len, &what)
        })
    }

    /// [`get_blob_at`](Self::get_blob_at) from one site. A `206` whose
    /// `Content-Range` is not the range asked for is dropped unread and the request
    /// sent again, up to `refetches` more times; then the error names the blob and
    /// both ranges.
    fn get_blob_from(
        &self,
        site: &Site,
        digest: &Digest,
        offset: u64,
        len: Option<u64>,
        what: &str,
    ) -> Result<Response> {
        let url = site.url("blobs", &digest.to_string());
        let range = match len {
            Some(l) => format!("bytes={offset}-{}", offset + l.max(1) - 1),
            None => format!("bytes={offset}-"),
        };
        let ranged = offset > 0 || len.is_some();
        let mut fetched = 0;
        let resp = loop {
            fetched += 1;
            let resp = self.send(
                site,
                || {
                    let r = self.http.get(&url);
                    if ranged {
                        r.header(header::RANGE, &range)
                    } else {
                        r
                    }
                },
                what,
            )?;
            let mut resp = self.check(site, resp, what)?;
            if ranged && resp.status() == StatusCode::OK {
                if !site.warned_no_range.swap(true, Ordering::Relaxed) {
                    tracing::warn!(registry = %site.registry, "registry ignores Range requests; reading through the stream");
                }
                let skipped = io::copy(&mut (&mut resp).take(offset), &mut io::sink())
                    .map_err(|e| Error::Network(format!("{}: {what}: {e}", site.name())))?;
                TRANSFER.bytes.fetch_add(skipped, Ordering::Relaxed);
                if skipped < offset {
                    return Err(Error::format(format!(
                        "{}: {what} ended after {skipped} bytes, before offset {offset}",
                        site.name()
                    )));
                }
            } else if ranged
                && resp.status() == StatusCode::PARTIAL_CONTENT
                && let Some(got) = wrong_content_range(resp.headers(), offset, len)
            {
                // Other bytes than asked for (a confused cache or proxy): never
                // used; the response is dropped and its connection closed.
                let asked = &range["bytes=".len()..];
                if fetched <= self.opts.refetches {
                    tracing::debug!(%what, %asked, content_range = %got, "wrong Content-Range; fetching it again");
                    std::thread::sleep(Duration::from_millis(100 << (fetched - 1).min(4)));
                    continue;
                }
                return Err(Error::Network(format!(
                    "{}: {what}: asked for bytes {asked}, got Content-Range {got:?} (fetched {fetched} times)",
                    site.name()
                )));
            }
            break resp;
        };
        Ok(resp)
    }

    /// Reads `buf.len()` bytes of blob `digest` at `offset` with one Range request
    /// (hedged when it stalls, resumed from where it broke if the connection
    /// drops; see [`open_blob_range`](Self::open_blob_range)).
    pub fn read_range(
        self: &Arc<Self>,
        digest: &Digest,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<()> {
        let end = offset + buf.len() as u64;
        let mut r = self.open_blob_range(*digest, offset, end);
        let mut done = 0;
        while done < buf.len() {
            match r.read(&mut buf[done..]) {
                Ok(0) => {
                    return Err(Error::format(format!(
                        "{}: blob {digest} ended early at {} (wanted {} bytes at {offset})",
                        self.name(),
                        offset + done as u64,
                        buf.len()
                    )));
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(match e.into_inner().map(|b| b.downcast::<Error>()) {
                        Some(Ok(e)) => *e,
                        Some(Err(e)) => Error::Network(format!(
                            "{}: reading blob {digest} at {}: {e}",
                            self.name(),
                            offset + done as u64
                        )),
                        None => Error::Network(format!(
                            "{}: reading blob {digest} at {}",
                            self.name(),
                            offset + done as u64
                        )),
                    });
                }
            }
        }
        Ok(())
    }

    /// The options this client was made with.
    pub(super) fn options(&self) -> &RegistryOptions {
        &self.opts
    }

    /// Notes that the registry asked for a wait of `d` (no hedges till then).
    fn throttle(&self, d: Duration) {
        let until = Instant::now() + d;
        let mut t = self
            .throttled_until
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if t.is_none_or(|old| old < until) {
            *t = Some(until);
        }
    }

    /// How much longer the registry asked us to wait (zero: not throttled).
    pub(super) fn throttled_for(&self) -> Duration {
        let t = self
            .throttled_until
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        t.map_or(Duration::ZERO, |u| {
            u.saturating_duration_since(Instant::now())
        })
    }

    /// The moving average of this client's time to first byte.
    pub(super) fn latency(&self) -> &Latency {
        &self.latency
    }

    /// Sends a GET for `len` bytes of `digest` from `offset` (see
    /// [`get_blob_at`](Self::get_blob_at)).
    pub(super) fn get_blob_range(
        &self,
        digest: &Digest,
        offset: u64,
        len: u64,
    ) -> Result<Response> {
        self.get_blob_at(digest, offset, Some(len))
    }

    /// Streams the blob `desc` from the start; a dropped connection is resumed with a
    /// Range request from where it broke. Bytes are not verified here (the indexer
    /// hashes the stream).
    pub fn open_blob(self: &Arc<Self>, desc: &Desc) -> BlobReader {
        BlobReader {
            client: Arc::clone(self),
            digest: desc.digest,
            end: desc.size,
            pos: 0,
            resp: None,
            failures: 0,
            breaks: 0,
        }
    }

    /// Streams `[start, end)` of blob `digest` with one Range request, for a lazy
    /// read: a request that makes no progress for the hedge delay
    /// ([`RegistryOptions::hedge`](super::RegistryOptions::hedge)) is raced by a
    /// second one from the last byte received ([`super::hedge`]); a body that
    /// breaks is resumed where it broke.
    pub fn open_blob_range(self: &Arc<Self>, digest: Digest, start: u64, end: u64) -> HedgedReader {
        HedgedReader::new(Arc::clone(self), digest, start, end)
    }
}

/// A streaming reader over a registry blob (see [`Client::open_blob`]).
pub struct BlobReader {
    client: Arc<Client>,
    digest: Digest,
    end: u64,
    pos: u64,
    resp: Option<Response>,
    /// Breaks in a row without a byte of progress.
    failures: u32,
    /// Breaks in all.
    breaks: u32,
}

impl Read for BlobReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.pos >= self.end || buf.is_empty() {
                return Ok(0);
            }
            if self.resp.is_none() {
                let len = (self.pos > 0).then(|| self.end - self.pos);
                let r = self
                    .client
                    .get_blob_at(&self.digest, self.pos, len)
                    .map_err(io::Error::other)?;
                self.resp = Some(r);
            }
            let want = buf.len().min((self.end - self.pos) as usize);
            let r = self
                .resp
                .as_mut()
                .expect("set above")
                .read(&mut buf[..want]);
            let err = match r {
                Ok(0) => io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("connection closed at byte {} of {}", self.pos, self.end),
                ),
                Ok(n) => {
                    self.pos += n as u64;
                    self.failures = 0;
                    TRANSFER.bytes.fetch_add(n as u64, Ordering::Relaxed);
                    return Ok(n);
                }
                Err(e) => e,
            };
            // Dropping the response closes its connection (a stalled one is not
            // reused): the resuming request goes out on a fresh one.
            self.resp = None;
            self.failures += 1;
            self.breaks += 1;
            let attempts = self.client.opts.attempts.max(1);
            if self.failures >= attempts || self.breaks >= attempts.saturating_mul(8) {
                return Err(io::Error::other(format!(
                    "{}: blob {}: {err}",
                    self.client.name(),
                    self.digest
                )));
            }
            tracing::debug!(digest = %self.digest, pos = self.pos, error = %err, "blob stream broke; resuming");
            std::thread::sleep(Duration::from_millis(100 << self.failures.min(4)));
        }
    }
}

fn unauthorized(site: &Site, resolved: &Resolved, why: &str) -> Error {
    Error::Auth(format!(
        "registry {} refused access to repository {} ({why}; credentials: {})",
        site.registry, site.repository, resolved.origin
    ))
}

/// `e` with `note` appended to its message, keeping its kind.
fn with_note(e: Error, note: &str) -> Error {
    match e {
        Error::NotFound(m) => Error::NotFound(m + note),
        Error::Network(m) => Error::Network(m + note),
        Error::Auth(m) => Error::Auth(m + note),
        Error::Format(m) => Error::Format(m + note),
        Error::Invalid(m) => Error::Invalid(m + note),
        e => e,
    }
}

/// What [`read_limited`]'s limit is, for its error.
const METADATA_LIMIT: &str = "limits::MAX_METADATA_BLOB";
/// The same, when the limit is the size a descriptor claims.
const DESCRIPTOR_LIMIT: &str = "the size its descriptor claims";

/// Reads a response body of at most `limit` bytes (`why`: what the limit is),
/// refusing a longer one without reading more than one byte past it (or at all,
/// when `Content-Length` says so).
fn read_limited(resp: Response, limit: u64, why: &str) -> Result<Vec<u8>> {
    let too_long = |n: &dyn std::fmt::Display| {
        Error::format(format!(
            "registry response of {n} bytes, more than the limit of {limit} ({why})"
        ))
    };
    if let Some(n) = resp.content_length().filter(|&n| n > limit) {
        return Err(too_long(&n));
    }
    let mut body = Vec::new();
    resp.take(limit + 1)
        .read_to_end(&mut body)
        .map_err(|e| Error::Network(format!("reading a registry response: {e}")))?;
    TRANSFER
        .bytes
        .fetch_add(body.len() as u64, Ordering::Relaxed);
    if body.len() as u64 > limit {
        return Err(too_long(&format_args!("at least {}", body.len())));
    }
    Ok(body)
}

/// The message of a registry error response (`{"errors":[{"code","message"}]}`),
/// or the start of the body.
fn error_text(resp: Response) -> String {
    let mut body = Vec::new();
    let _ = resp.take(4096).read_to_end(&mut body);
    #[derive(serde::Deserialize)]
    struct Errors {
        errors: Vec<ErrorItem>,
    }
    #[derive(serde::Deserialize)]
    struct ErrorItem {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    if let Ok(e) = serde_json::from_slice::<Errors>(&body) {
        return e
            .errors
            .iter()
            .map(|i| format!("{} {}", i.code, i.message).trim().to_string())
            .collect::<Vec<_>>()
            .join("; ");
    }
    let text: String = String::from_utf8_lossy(&body).chars().take(200).collect();
    text.trim().to_string()
}

fn text_suffix(text: &str) -> String {
    if text.is_empty() {
        String::new()
    } else {
        format!(" ({text})")
    }
}

/// The first and last byte positions and the size (`None` for `*`) of a
/// `Content-Range: bytes <first>-<last>/<size>` value, if it has that form (`None`
/// for anything else, as `bytes */<size>`).
pub fn content_range(value: &str) -> Option<(u64, u64, Option<u64>)> {
    let (range, size) = value.trim().strip_prefix("bytes ")?.split_once('/')?;
    let (first, last) = range.split_once('-')?;
    let (first, last) = (first.trim().parse().ok()?, last.trim().parse().ok()?);
    let size = match size.trim() {
        "*" => None,
        s => Some(s.parse().ok()?),
    };
    (first <= last).then_some((first, last, size))
}

/// The first byte position of a `Content-Range: bytes <first>-<last>/<size>` value,
/// if it has that form (`None` for anything else, as `bytes */<size>`).
pub fn content_range_start(value: &str) -> Option<u64> {
    value
        .strip_prefix("bytes ")?
        .split('-')
        .next()?
        .parse()
        .ok()
}

/// The `Content-Range` of a `206` answering a request for `len` bytes (`None`: to
/// the end) from `offset`, when it is not that range: another first byte, or
/// another last byte (unless the blob ends before the one asked for), or no
/// `bytes <first>-<last>/<size>` at all. A `206` without the header passes.
fn wrong_content_range(h: &HeaderMap, offset: u64, len: Option<u64>) -> Option<String> {
    let value = h.get(header::CONTENT_RANGE)?;
    let text = String::from_utf8_lossy(value.as_bytes()).into_owned();
    let Some((first, last, size)) = content_range(&text) else {
        return Some(text);
    };
    let ends_blob = size.is_some_and(|s| last + 1 == s);
    let right_end = match len {
        Some(l) => {
            let asked = offset + l.max(1) - 1;
            last == asked || (last < asked && ends_blob)
        }
        None => size.is_none() || ends_blob,
    };
    (first != offset || !right_end || size.is_some_and(|s| last >= s)).then_some(text)
}

/// The `host[:port]` a request was redirected to, if that host (another origin
/// than `site`'s) answered `400`, `401` or `403`: blob storage refusing a signed
/// URL (S3 and CloudFront answer `403` to an expired one, GCS `400`).
fn refused_redirect(site: &Site, resp: &Response) -> Option<String> {
    if !matches!(resp.status().as_u16(), 400 | 401 | 403) {
        return None;
    }
    let url = resp.url();
    let base = reqwest::Url::parse(&site.base).ok()?;
    if url.origin() == base.origin() {
        return None;
    }
    let host = url.host_str()?;
    Some(match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_string(),
    })
}

fn retryable(s: StatusCode) -> bool {
    s == StatusCode::TOO_MANY_REQUESTS
        || s == StatusCode::REQUEST_TIMEOUT
        || matches!(s.as_u16(), 500 | 502 | 503 | 504)
}

fn retry_after(h: &HeaderMap) -> Option<Duration> {
    h.get(header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

/// A reqwest error without its URL (URLs may carry tokens in query strings).
fn describe_reqwest(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    let mut cause = String::new();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        cause = s.to_string();
        src = s.source();
    }
    if cause.is_empty() {
        kind.to_string()
    } else {
        format!("{kind}: {cause}")
    }
}

fn basic(user: &str, pass: &str) -> HeaderValue {
    let enc = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
    let mut v = HeaderValue::from_str(&format!("Basic {enc}")).expect("base64 is a valid header");
    v.set_sensitive(true);
    v
}

fn bearer(token: &str) -> HeaderValue {
    let mut v = HeaderValue::from_str(&format!("Bearer {token}"))
        .unwrap_or_else(|_| HeaderValue::from_static("Bearer invalid-token"));
    v.set_sensitive(true);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_detection() {
        for r in [
            "localhost:5000",
            "127.0.0.1:5000",
            "127.1.2.3",
            "[::1]:5000",
            "localhost",
        ] {
            assert!(is_loopback(r), "{r}");
        }
        for r in [
            "docker.io",
            "10.0.0.1:5000",
            "example.com:443",
            "[fe80::1]:5000",
        ] {
            assert!(!is_loopback(r), "{r}");
        }
    }

    #[test]
    fn content_range_parsing() {
        assert_eq!(content_range("bytes 0-99/1000"), Some((0, 99, Some(1000))));
        assert_eq!(content_range("bytes 5-5/*"), Some((5, 5, None)));
        for bad in [
            "bytes */1000",
            "bytes 9-1/10",
            "bytes 1-/10",
            "items 0-1/2",
            "",
        ] {
            assert_eq!(content_range(bad), None, "{bad}");
        }
    }

    #[test]
    fn content_range_must_be_the_range_asked_for() {
        let wrong = |v: &str, offset, len| {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_RANGE, HeaderValue::from_str(v).unwrap());
            wrong_content_range(&h, offset, len).is_some()
        };
        // Exactly the range, or to the end of a blob shorter than asked.
        assert!(!wrong("bytes 100-199/1000", 100, Some(100)));
        assert!(!wrong("bytes 100-999/1000", 100, Some(2000)));
        assert!(!wrong("bytes 100-999/1000", 100, None));
        assert!(!wrong("bytes 100-999/*", 100, None));
        // Another start, a shorter or longer range, a last byte past the size.
        assert!(wrong("bytes 1124-1223/5000", 100, Some(100)));
        assert!(wrong("bytes 100-150/1000", 100, Some(100)));
        assert!(wrong("bytes 100-299/1000", 100, Some(100)));
        assert!(wrong("bytes 100-500/1000", 100, None));
        assert!(wrong("bytes 100-199/150", 100, Some(100)));
        assert!(wrong("bytes */1000", 100, Some(100)));
        // No header: not checked.
        assert!(wrong_content_range(&HeaderMap::new(), 100, Some(100)).is_none());
    }
}
