//! The registry client: the OCI distribution API over HTTPS (plain HTTP only for
//! loopback or when allowed), with authentication, retries and ranged blob reads.
//!
//! - [`auth`]: credentials (given, from a callback, from docker/podman config files
//!   and credential helpers) and the challenge/token dance.
//! - [`client`]: one client per registry host: manifests, blobs, Range reads.
//! - [`source`]: [`source::RegistrySource`], a layer blob as a
//!   [`crate::source::RangeSource`] for mounts.

pub mod auth;
pub mod client;
pub mod source;

use std::path::PathBuf;
use std::time::Duration;

pub use auth::{Credential, CredentialFn};
pub use client::{Client, TransferStats};
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
    /// Timeout to connect, and for a response to start.
    pub timeout: Duration,
    /// Attempts per request on 429, 5xx and dropped connections (at least 1).
    pub attempts: u32,
}

impl Default for RegistryOptions {
    fn default() -> RegistryOptions {
        RegistryOptions {
            credential: None,
            callback: None,
            auth_file: None,
            plain_http: Vec::new(),
            timeout: Duration::from_secs(30),
            attempts: 5,
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
            .field("attempts", &self.attempts)
            .finish()
    }
}
