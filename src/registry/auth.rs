//! Registry credentials and authentication.
//!
//! Credentials for a registry come from the first of these that has an opinion:
//!
//! 1. [`RegistryOptions::credential`](super::RegistryOptions::credential), given by
//!    the caller for every registry (but not for a mirror on another host than
//!    the upstream's);
//! 2. [`RegistryOptions::callback`](super::RegistryOptions::callback), asked per
//!    registry and scope (the C ABI and Go providers land here); `Ok(None)` means
//!    "no opinion", an error fails the request;
//! 3. the environment: `CLIP_REGISTRY_USER_<HOST>` / `CLIP_REGISTRY_PASS_<HOST>`
//!    (host upper-cased, `.`, `-` and `:` as `_`), as the Go clip read them;
//! 4. a docker `config.json` (`auths`, `credHelpers`, `credsStore` through
//!    `docker-credential-*` programs) or podman `auth.json`: the file given, else the
//!    default locations; read with the `docker_credential` crate;
//! 5. anonymous.
//!
//! The registry decides what it wants through `WWW-Authenticate` challenges
//! ([`Challenge`]): `Basic` gets the credentials on every request; `Bearer` sends
//! them once to the token server named by the challenge, and the token (cached per
//! client, refreshed shortly before it expires or when the registry refuses it) goes
//! on every request. Secrets never reach logs or error messages: [`Credential`]'s
//! `Debug` redacts them.

use std::path::Path;
use std::sync::Arc;

use crate::error::Result;

use super::RegistryOptions;

/// Credentials for one registry.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    /// No credentials: anonymous access (bearer tokens may still be issued).
    Anonymous,
    /// A username and password (or access token used as a password).
    Basic {
        /// User name.
        username: String,
        /// Password or token.
        password: String,
    },
    /// A registry bearer token, sent as is (`Authorization: Bearer`).
    Token(String),
    /// An OAuth2 refresh token (docker's `identitytoken`), exchanged at the token
    /// server for access tokens.
    IdentityToken(String),
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Secrets never reach logs or errors.
        match self {
            Credential::Anonymous => f.write_str("Anonymous"),
            Credential::Basic { username, .. } => write!(f, "Basic({username}, <redacted>)"),
            Credential::Token(_) => f.write_str("Token(<redacted>)"),
            Credential::IdentityToken(_) => f.write_str("IdentityToken(<redacted>)"),
        }
    }
}

/// Asked for credentials: `(registry host[:port], scope)`; the scope is
/// `repository:<name>:pull`. `Ok(None)` means "no opinion": fall back to the
/// default chain. An error fails the request that asked (the caller's way to stop).
pub type CredentialFn = Arc<dyn Fn(&str, &str) -> Result<Option<Credential>> + Send + Sync>;

/// Credentials and where they came from (for messages; never the secret itself).
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The credential.
    pub credential: Credential,
    /// Where it came from: "options", "callback", "environment", a config file
    /// path, or "anonymous".
    pub origin: String,
}

/// Resolves the credentials for `registry` and `scope` along the chain described in
/// the module documentation. Without `explicit`, step 1 is skipped: a mirror on
/// another host never gets the credentials the caller gave for the upstream.
pub fn resolve(
    registry: &str,
    scope: &str,
    opts: &RegistryOptions,
    explicit: bool,
) -> Result<Resolved> {
    let found = |credential, origin: &str| Resolved {
        credential,
        origin: origin.to_string(),
    };
    if explicit && let Some(c) = &opts.credential {
        return Ok(found(c.clone(), "options"));
    }
    if let Some(cb) = &opts.callback
        && let Some(c) = cb(registry, scope)?
    {
        return Ok(found(c, "the credential callback"));
    }
    if let Some(c) = from_env(registry) {
        return Ok(found(c, "CLIP_REGISTRY_USER/PASS environment variables"));
    }
    if let Some(r) = from_config(registry, opts.auth_file.as_deref()) {
        return Ok(r);
    }
    Ok(found(Credential::Anonymous, "anonymous"))
}

fn env_key(registry: &str) -> String {
    registry
        .chars()
        .map(|c| match c {
            '.' | '-' | ':' => '_',
            c => c.to_ascii_uppercase(),
        })
        .collect()
}

fn from_env(registry: &str) -> Option<Credential> {
    let key = env_key(registry);
    let user = std::env::var(format!("CLIP_REGISTRY_USER_{key}")).ok()?;
    let pass = std::env::var(format!("CLIP_REGISTRY_PASS_{key}")).ok()?;
    Some(Credential::Basic {
        username: user,
        password: pass,
    })
}

/// The keys a config file may use for `registry`.
fn config_keys(registry: &str) -> Vec<String> {
    if registry == crate::reference::DOCKER_HUB || registry == "index.docker.io" {
        vec![
            "https://index.docker.io/v1/".into(),
            "index.docker.io".into(),
            "docker.io".into(),
        ]
    } else {
        vec![registry.to_string(), format!("https://{registry}")]
    }
}

fn convert(c: docker_credential::DockerCredential) -> Credential {
    match c {
        docker_credential::DockerCredential::UsernamePassword(username, password) => {
            Credential::Basic { username, password }
        }
        docker_credential::DockerCredential::IdentityToken(t) => Credential::IdentityToken(t),
    }
}

fn from_config(registry: &str, file: Option<&Path>) -> Option<Resolved> {
    use docker_credential::CredentialRetrievalError as E;
    let keys = config_keys(registry);
    let note = |e: &E, origin: &str| match e {
        E::NoCredentialConfigured | E::ConfigNotFound => {}
        // The default locations need not exist (the crate reports a missing file
        // as a read error); a file given explicitly must.
        E::ConfigReadError if file.is_none() => {}
        // A configured helper that fails is worth a warning: the registry will
        // likely refuse the anonymous request that follows.
        other => tracing::warn!(%registry, "{origin}: {other}; trying anonymous access"),
    };
    if let Some(path) = file {
        let origin = path.display().to_string();
        for key in &keys {
            let f = match std::fs::File::open(path) {
                Ok(f) => f,
                Err(e) => {
                    tracing::warn!(%registry, "cannot read auth file {origin}: {e}");
                    return None;
                }
            };
            match docker_credential::get_credential_from_reader(f, key) {
                Ok(c) => {
                    return Some(Resolved {
                        credential: convert(c),
                        origin,
                    });
                }
                Err(e) => note(&e, &origin),
            }
        }
        return None;
    }
    for key in &keys {
        match docker_credential::get_credential(key) {
            Ok(c) => {
                return Some(Resolved {
                    credential: convert(c),
                    origin: "docker config.json".into(),
                });
            }
            Err(e) => note(&e, "docker config.json"),
        }
    }
    for key in &keys {
        if let Ok(c) = docker_credential::get_podman_credential(key) {
            return Some(Resolved {
                credential: convert(c),
                origin: "podman auth.json".into(),
            });
        }
    }
    None
}

/// A parsed `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    /// `Basic realm=...`: send the credentials on every request.
    Basic,
    /// `Bearer realm=...,service=...,scope=...`: get a token from `realm`.
    Bearer {
        /// The token server URL.
        realm: String,
        /// The `service` parameter to pass on.
        service: Option<String>,
        /// The scope the registry asked for, if it said.
        scope: Option<String>,
    },
}

/// Parses a `WWW-Authenticate` header value (one challenge; quoted values may hold
/// commas).
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, rest) = header
        .split_once(char::is_whitespace)
        .unwrap_or((header, ""));
    let params = parse_params(rest);
    let get = |k: &str| {
        params
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(k))
            .map(|(_, v)| v.clone())
    };
    if scheme.eq_ignore_ascii_case("basic") {
        Some(Challenge::Basic)
    } else if scheme.eq_ignore_ascii_case("bearer") {
        Some(Challenge::Bearer {
            realm: get("realm")?,
            service: get("service"),
            scope: get("scope"),
        })
    } else {
        None
    }
}

fn parse_params(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace() || *c == ',') {
            chars.next();
        }
        let name: String = std::iter::from_fn(|| chars.next_if(|c| *c != '=' && *c != ','))
            .collect::<String>()
            .trim()
            .to_string();
        if name.is_empty() {
            return out;
        }
        if chars.next_if_eq(&'=').is_none() {
            continue;
        }
        let mut value = String::new();
        if chars.next_if_eq(&'"').is_some() {
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            value = std::iter::from_fn(|| chars.next_if(|c| *c != ','))
                .collect::<String>()
                .trim()
                .to_string();
        }
        out.push((name, value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_challenges() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/ubuntu:pull,push""#,
        );
        assert_eq!(
            c,
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/ubuntu:pull,push".into()),
            })
        );
        assert_eq!(
            parse_challenge(r#"Basic realm="Registry Realm""#),
            Some(Challenge::Basic)
        );
        assert_eq!(parse_challenge("Negotiate abc"), None);
        assert_eq!(
            parse_challenge(r#"Bearer service="x""#),
            None,
            "realm is required"
        );
    }

    #[test]
    fn env_keys_are_shell_safe() {
        assert_eq!(
            env_key("my-reg.example.com:5000"),
            "MY_REG_EXAMPLE_COM_5000"
        );
    }

    #[test]
    fn debug_never_shows_secrets() {
        let c = Credential::Basic {
            username: "u".into(),
            password: "hunter2".into(),
        };
        assert!(!format!("{c:?}").contains("hunter2"));
        assert!(!format!("{:?}", Credential::Token("tok123".into())).contains("tok123"));
    }
}
