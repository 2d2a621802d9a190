//! The registry client: the OCI distribution API over HTTPS (plain HTTP only for
//! loopback or when allowed), with authentication, retries and ranged blob reads.
//!
//! - [`auth`]: credentials (given, from a callback, from docker/podman config files
//!   and credential helpers) and the challenge/token dance.
//! - [`client`]: one client per registry host: manifests, blobs, Range reads.
//! - [`source`]: [`source::RegistrySource`], a layer blob as a
//!   [`crate::source::RangeSource`] for mounts.
//! - [`mirror`]: mirrors tried before the upstream, and registries.conf(5).
//! - [`proxy`]: HTTP(S) proxies (`HTTPS_PROXY`, `NO_PROXY`, ...).

pub mod auth;
pub mod client;
pub mod hedge;
pub mod mirror;
pub mod proxy;
pub mod source;

use std::path::PathBuf;
use std::time::Duration;

pub use auth::{Credential, CredentialFn};
pub use client::{Client, TransferStats};
pub use hedge::Hedge;
pub use mirror::{Mirror, PullFromMirror, RegistriesConf, RegistryEntry};
pub use proxy::ProxyConfig;
pub use source::RegistrySource;

/// How to reach registries: credentials, transport and retry policy.
#[derive(Clone)]
pub struct RegistryOptions {
    /// Credentials used for every registry, before anything else is asked.
    pub credential: Option<Credential>,
    /// Asked for credentials per registry and scope; `Ok(None)` falls back to the
    /// default chain (auth file, then anonymous).
    pub callback: Option<CredentialFn>,
    /// A docker `config.json` or podman `auth.json` to read instead of the default
    /// locations (`$DOCKER_CONFIG/config.json`, `~/.docker/config.json`,
    /// `$REGISTRY_AUTH_FILE`, `$XDG_RUNTIME_DIR/containers/auth.json`).
    pub auth_file: Option<PathBuf>,
    /// Registries (host\[:port\]) reached over plain HTTP. Loopback registries always
    /// may be.
    pub plain_http: Vec<String>,
    /// Timeout to connect (default 30 s).
    pub timeout: Duration,
    /// A response that makes no progress for this long (no header or body byte
    /// arrives) is abandoned, and retried on a fresh connection (default 5 s).
    /// Progress-based: a layer streaming for minutes never hits it.
    pub stall_timeout: Duration,
    /// Attempts per request on 429, 5xx, resets, stalls and dropped connections
    /// (at least 1; default 5). A mirror gets at most 2 before the next one is
    /// tried. A blob stream that breaks is resumed with a Range request from where
    /// it broke: it fails after `attempts` breaks in a row without a byte of
    /// progress, or after `8 × attempts` breaks in all.
    pub attempts: u32,
    /// The longest one `Retry-After` (of a 429 or 503) is honoured; a longer one
    /// is waited this long (default 10 s).
    pub retry_wait_max: Duration,
    /// The most time one request spends waiting between its attempts
    /// (`Retry-After` and backoff); past it the registry's answer is the error
    /// (default 30 s).
    pub retry_budget: Duration,
    /// How many times a blob whose bytes fail verification (a layer's digest or
    /// diff_id while indexing, a manifest's or config's digest: corrupted in
    /// flight) is fetched again from its start before the call fails naming it
    /// (default 2).
    pub refetches: u32,
    /// When a lazy range read that makes no progress sends a second, hedged
    /// request for the rest of its range ([`hedge`]; default
    /// [`Hedge::Auto`]: after 4 times the usual time to first byte, 100 ms at
    /// least, half of `stall_timeout` at most).
    pub hedge: Hedge,
    /// Mirrors and rewrites given directly (`clipctl --registry-mirror`). On a
    /// prefix that [`registries_conf`](Self::registries_conf) also has, this one
    /// wins.
    pub registries: RegistriesConf,
    /// A containers-registries.conf(5) file to read mirrors from. `None` reads the
    /// file `$CLIP_REGISTRIES_CONF` names, if set; `/etc/containers/registries.conf`
    /// is never read unless named (a worker's mounts should not change with a file
    /// someone installed for podman).
    pub registries_conf: Option<PathBuf>,
    /// The HTTP(S) proxy (default: from the environment, loopback never proxied).
    pub proxy: ProxyConfig,
}

/// The environment variable naming a registries.conf to read when
/// [`RegistryOptions::registries_conf`] is `None`.
pub const REGISTRIES_CONF_ENV: &str = "CLIP_REGISTRIES_CONF";

impl RegistryOptions {
    /// The mirror configuration: [`registries`](Self::registries), then the
    /// entries of the registries.conf file named by
    /// [`registries_conf`](Self::registries_conf) or `$CLIP_REGISTRIES_CONF` whose
    /// prefix `registries` does not have. Errors name the file.
    pub fn effective_registries(&self) -> crate::Result<RegistriesConf> {
        let file = self.registries_conf.clone().or_else(|| {
            std::env::var_os(REGISTRIES_CONF_ENV)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        });
        let mut conf = self.registries.clone();
        if let Some(f) = file {
            for e in RegistriesConf::load(&f)?.entries {
                if !conf.entries.iter().any(|g| g.prefix == e.prefix) {
                    conf.entries.push(e);
                }
            }
        }
        Ok(conf)
    }
}

impl Default for RegistryOptions {
    fn default() -> RegistryOptions {
        RegistryOptions {
            credential: None,
            callback: None,
            auth_file: None,
            plain_http: Vec::new(),
            timeout: Duration::from_secs(30),
            stall_timeout: Duration::from_secs(5),
            attempts: 5,
            retry_wait_max: Duration::from_secs(10),
            retry_budget: Duration::from_secs(30),
            refetches: 2,
            hedge: Hedge::Auto,
            registries: RegistriesConf::default(),
            registries_conf: None,
            proxy: ProxyConfig::Environment,
        }
    }
}

impl std::fmt::Debug for RegistryOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryOptions")
            .field("credential", &self.credential)
            .field("callback", &self.callback.as_ref().map(|_| "<fn>"))
            .field("auth_file", &self.auth_file)
            .field("plain_http", &self.plain_http)
            .field("timeout", &self.timeout)
            .field("stall_timeout", &self.stall_timeout)
            .field("attempts", &self.attempts)
            .field("retry_wait_max", &self.retry_wait_max)
            .field("retry_budget", &self.retry_budget)
            .field("refetches", &self.refetches)
            .field("hedge", &self.hedge)
            .field("registries", &self.registries)
            .field("registries_conf", &self.registries_conf)
            .field("proxy", &self.proxy)
            .finish()
    }
}
