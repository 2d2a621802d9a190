//! Registry mirrors and rewrites, as containers/image configures them in
//! `registries.conf` (containers-registries.conf(5), version 2), plus mirrors
//! given directly ([`RegistryOptions::registries`](super::RegistryOptions::registries),
//! `clipctl --registry-mirror REGISTRY=MIRROR`).
//!
//! A [`RegistryEntry`] matches image names (`host[/namespace...]/repo`) by its
//! `prefix`; the longest matching prefix wins. Its `location` is where the
//! upstream really is (the matched prefix is replaced by it), and its mirrors are
//! tried in order before the upstream, each with the prefix replaced by the
//! mirror's location in the same way. So a mirror `mirror.example.com` of
//! `docker.io` serves `docker.io/library/ubuntu` as
//! `mirror.example.com/library/ubuntu`, and a mirror
//! `mirror.example.com/hub` as `mirror.example.com/hub/library/ubuntu`.
//!
//! What is read of the file: `[[registry]]` tables with `prefix`, `location`,
//! `insecure`, `blocked`, `mirror-by-digest-only` and `[[registry.mirror]]` tables
//! with `location`, `insecure` and `pull-from-mirror`; the version 1 lists
//! `[registries.insecure]` and `[registries.block]`. Other keys (search
//! registries, short-name aliases, credential helpers) do not concern clip and are
//! ignored; drop-in directories (`registries.conf.d`) are not read.
//!
//! `insecure = true` means plain HTTP here: clip does not speak TLS without
//! verifying the certificate.

use std::path::Path;

use crate::digest::Digest;
use crate::error::{Error, IoContext, Result};
use crate::reference::DOCKER_HUB;

/// Which pulls may use a mirror (`pull-from-mirror` in registries.conf).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PullFromMirror {
    /// Tags, digests and blobs (the default).
    #[default]
    All,
    /// Manifests by digest and blobs; tags are resolved at the upstream, so a
    /// mirror never decides which image a tag names.
    DigestOnly,
    /// Manifests by tag and blobs; manifests by digest come from the upstream.
    TagOnly,
}

impl PullFromMirror {
    /// Parses `all`, `digest-only` or `tag-only`.
    pub fn parse(s: &str) -> Option<PullFromMirror> {
        match s {
            "all" => Some(PullFromMirror::All),
            "digest-only" => Some(PullFromMirror::DigestOnly),
            "tag-only" => Some(PullFromMirror::TagOnly),
            _ => None,
        }
    }

    /// Whether a request of `kind` may go to such a mirror.
    pub fn allows(self, kind: RequestKind) -> bool {
        match (self, kind) {
            (PullFromMirror::All, _) | (_, RequestKind::Blob) => true,
            (PullFromMirror::DigestOnly, k) => k == RequestKind::ManifestByDigest,
            (PullFromMirror::TagOnly, k) => k == RequestKind::ManifestByTag,
        }
    }
}

/// What a registry request fetches, for choosing mirrors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    /// A manifest or index by tag.
    ManifestByTag,
    /// A manifest or index by digest.
    ManifestByDigest,
    /// A blob (config or layer), always by digest.
    Blob,
}

impl RequestKind {
    /// The kind of a manifest request for `reference` (a tag or a digest).
    pub fn manifest(reference: &str) -> RequestKind {
        if Digest::parse(reference).is_ok() {
            RequestKind::ManifestByDigest
        } else {
            RequestKind::ManifestByTag
        }
    }
}

/// One mirror of a registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mirror {
    /// `host[:port][/namespace]`, no scheme.
    pub location: String,
    /// Reached over plain HTTP (loopback mirrors always may be).
    pub insecure: bool,
    /// Which pulls may use it.
    pub pull_from_mirror: PullFromMirror,
}

impl Mirror {
    /// A mirror from `http://host[:port][/ns]` (plain HTTP), `https://...` or
    /// `host[:port][/ns]` (HTTPS unless loopback or listed in
    /// [`RegistryOptions::plain_http`](super::RegistryOptions::plain_http)), used
    /// for all pulls.
    pub fn from_url(url: &str) -> Result<Mirror> {
        let (insecure, rest) = if let Some(r) = url.strip_prefix("http://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("https://") {
            (false, r)
        } else if url.contains("://") {
            return Err(Error::Invalid(format!(
                "mirror {url:?}: only http:// and https:// mirrors are supported"
            )));
        } else {
            (false, url)
        };
        let location = rest.trim_end_matches('/').to_string();
        check_location(&location)
            .map_err(|why| Error::Invalid(format!("mirror {url:?}: {why}")))?;
        Ok(Mirror {
            location,
            insecure,
            pull_from_mirror: PullFromMirror::All,
        })
    }
}

/// One `[[registry]]`: the names it matches, where they really are, and mirrors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryEntry {
    /// The image names it applies to: `host[:port][/namespace...]`, or
    /// `*.domain` for every host under a domain.
    pub prefix: String,
    /// Where the prefix really is (`host[:port][/namespace...]`); empty only for a
    /// wildcard prefix (names stay as they are).
    pub location: String,
    /// The upstream is reached over plain HTTP.
    pub insecure: bool,
    /// Pulling names under the prefix is refused.
    pub blocked: bool,
    /// Tried in order before the upstream.
    pub mirrors: Vec<Mirror>,
}

impl RegistryEntry {
    /// An entry for `registry` (also its prefix) with no mirrors.
    pub fn new(registry: &str) -> RegistryEntry {
        let r = normalize_name(registry);
        RegistryEntry {
            prefix: r.clone(),
            location: r,
            insecure: false,
            blocked: false,
            mirrors: Vec::new(),
        }
    }

    /// How many characters of `name` (`host/repository`) the prefix matches, if it
    /// matches: the whole prefix, or for `*.domain` the host.
    fn match_len(&self, name: &str) -> Option<usize> {
        if let Some(domain) = self.prefix.strip_prefix('*') {
            let host = name.split('/').next().unwrap_or(name);
            return host.ends_with(domain).then_some(host.len());
        }
        let rest = name.strip_prefix(self.prefix.as_str())?;
        (rest.is_empty() || rest.starts_with('/')).then_some(self.prefix.len())
    }
}

/// The registry configuration: entries from registries.conf and/or given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegistriesConf {
    /// The `[[registry]]` entries, in file order.
    pub entries: Vec<RegistryEntry>,
}

/// Where one repository is fetched from: a mirror or the upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `host[:port]` (`docker.io` for Docker Hub), as credentials are looked up.
    pub registry: String,
    /// The repository there.
    pub repository: String,
    /// Reached over plain HTTP (besides loopback and `plain_http`).
    pub insecure: bool,
    /// `None` for the upstream; for a mirror, which pulls may use it.
    pub mirror: Option<PullFromMirror>,
}

/// `docker.io` for Docker Hub's other names.
fn normalize_name(name: &str) -> String {
    for alias in ["index.docker.io", "registry-1.docker.io"] {
        if let Some(rest) = name.strip_prefix(alias)
            && (rest.is_empty() || rest.starts_with('/'))
        {
            return format!("{DOCKER_HUB}{rest}");
        }
    }
    name.to_string()
}

/// Checks a location: `host[:port][/namespace...]`, no scheme, no tag.
fn check_location(l: &str) -> std::result::Result<(), String> {
    if l.is_empty() {
        return Err("the location is empty".into());
    }
    if l.contains("://") {
        return Err(format!("location {l:?} must not have a scheme"));
    }
    if l.contains('@') || l.split('/').any(str::is_empty) || l.chars().any(char::is_whitespace) {
        return Err(format!("location {l:?} is not host[:port][/namespace]"));
    }
    Ok(())
}

/// `location` + what follows the matched prefix, split into registry and
/// repository.
fn rewrite(location: &str, rest: &str, what: &str) -> Result<(String, String)> {
    let full = format!("{location}{rest}");
    match full.split_once('/') {
        Some((host, repo)) if !repo.is_empty() => Ok((host.to_string(), repo.to_string())),
        _ => Err(Error::Invalid(format!(
            "{what}: {full:?} names no repository (a location must keep a repository after the prefix it replaces)"
        ))),
    }
}

#[derive(serde::Deserialize)]
struct FileV2 {
    #[serde(default)]
    registry: Vec<FileRegistry>,
    #[serde(default)]
    registries: Option<FileV1>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
struct FileRegistry {
    prefix: Option<String>,
    location: Option<String>,
    #[serde(default)]
    insecure: bool,
    #[serde(default)]
    blocked: bool,
    #[serde(default)]
    mirror_by_digest_only: bool,
    #[serde(default)]
    mirror: Vec<FileMirror>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
struct FileMirror {
    location: String,
    #[serde(default)]
    insecure: bool,
    pull_from_mirror: Option<String>,
}

#[derive(serde::Deserialize)]
struct FileV1 {
    #[serde(default)]
    insecure: Option<FileV1List>,
    #[serde(default)]
    block: Option<FileV1List>,
}

#[derive(serde::Deserialize)]
struct FileV1List {
    #[serde(default)]
    registries: Vec<String>,
}

impl RegistriesConf {
    /// Reads a registries.conf file; errors name it.
    pub fn load(path: &Path) -> Result<RegistriesConf> {
        let text = std::fs::read_to_string(path).ctx("reading registries.conf", path)?;
        RegistriesConf::parse(&text).map_err(|e| e.with_path(path))
    }

    /// Parses registries.conf text (version 2, or the version 1 insecure and block
    /// lists).
    pub fn parse(text: &str) -> Result<RegistriesConf> {
        let file: FileV2 = toml::from_str(text).map_err(|e| {
            Error::Invalid(format!(
                "registries.conf is not valid: {}",
                e.to_string().trim()
            ))
        })?;
        let bad = |msg: String| Error::Invalid(format!("registries.conf: {msg}"));
        let mut entries: Vec<RegistryEntry> = Vec::new();
        if let Some(v1) = file.registries {
            if !file.registry.is_empty() {
                return Err(bad(
                    "mixes version 1 ([registries.*]) and version 2 ([[registry]]) tables".into(),
                ));
            }
            let mut add = |list: Option<FileV1List>, insecure: bool, blocked: bool| {
                for r in list.map(|l| l.registries).unwrap_or_default() {
                    let r = normalize_name(&r);
                    match entries.iter_mut().find(|e| e.prefix == r) {
                        Some(e) => {
                            e.insecure |= insecure;
                            e.blocked |= blocked;
                        }
                        None => entries.push(RegistryEntry {
                            insecure,
                            blocked,
                            ..RegistryEntry::new(&r)
                        }),
                    }
                }
            };
            add(v1.insecure, true, false);
            add(v1.block, false, true);
            return Ok(RegistriesConf { entries });
        }
        for (i, r) in file.registry.into_iter().enumerate() {
            let n = i + 1;
            let location = r.location.map(|l| normalize_name(&l)).unwrap_or_default();
            let prefix = match r.prefix {
                Some(p) if !p.is_empty() => normalize_name(&p),
                _ if location.is_empty() => {
                    return Err(bad(format!(
                        "[[registry]] number {n} has neither prefix nor location"
                    )));
                }
                _ => location.clone(),
            };
            let what = format!("[[registry]] with prefix {prefix:?}");
            if let Some(domain) = prefix.strip_prefix("*.") {
                if domain.is_empty() || domain.contains(['/', '*']) {
                    return Err(bad(format!(
                        "{what}: a wildcard prefix must be *.domain, with nothing after the domain"
                    )));
                }
            } else {
                check_location(&prefix).map_err(|w| bad(format!("{what}: prefix: {w}")))?;
                check_location(&location).map_err(|w| bad(format!("{what}: {w}")))?;
            }
            if prefix.starts_with("*.") && !location.is_empty() {
                return Err(bad(format!(
                    "{what}: a wildcard prefix cannot have a location"
                )));
            }
            if entries.iter().any(|e| e.prefix == prefix) {
                return Err(bad(format!("{what} is defined twice")));
            }
            let mut mirrors = Vec::new();
            for m in r.mirror {
                let pull = match m.pull_from_mirror.as_deref() {
                    None if r.mirror_by_digest_only => PullFromMirror::DigestOnly,
                    None => PullFromMirror::All,
                    Some(s) => PullFromMirror::parse(s).ok_or_else(|| {
                        bad(format!(
                            "{what}: mirror {:?}: pull-from-mirror = {s:?} is not \"all\", \"digest-only\" or \"tag-only\"",
                            m.location
                        ))
                    })?,
                };
                if r.mirror_by_digest_only && pull != PullFromMirror::DigestOnly {
                    return Err(bad(format!(
                        "{what}: mirror {:?}: pull-from-mirror = {pull:?} contradicts mirror-by-digest-only = true",
                        m.location
                    )));
                }
                let location = normalize_name(&m.location);
                check_location(&location).map_err(|w| bad(format!("{what}: mirror: {w}")))?;
                mirrors.push(Mirror {
                    location,
                    insecure: m.insecure,
                    pull_from_mirror: pull,
                });
            }
            entries.push(RegistryEntry {
                prefix,
                location,
                insecure: r.insecure,
                blocked: r.blocked,
                mirrors,
            });
        }
        Ok(RegistriesConf { entries })
    }

    /// Adds `mirror` to the entry whose prefix is `registry`, after its other
    /// mirrors (creating the entry if there is none).
    pub fn add_mirror(&mut self, registry: &str, mirror: Mirror) {
        let prefix = normalize_name(registry);
        match self.entries.iter_mut().find(|e| e.prefix == prefix) {
            Some(e) => e.mirrors.push(mirror),
            None => {
                let mut e = RegistryEntry::new(&prefix);
                e.mirrors.push(mirror);
                self.entries.push(e);
            }
        }
    }

    /// The entry for `registry`/`repository`: the longest matching prefix (the
    /// first of equal ones).
    pub fn find(&self, registry: &str, repository: &str) -> Option<&RegistryEntry> {
        let name = format!("{}/{repository}", normalize_name(registry));
        let mut best: Option<(usize, &RegistryEntry)> = None;
        for e in &self.entries {
            if let Some(len) = e.match_len(&name)
                && best.is_none_or(|(b, _)| len > b)
            {
                best = Some((len, e));
            }
        }
        best.map(|(_, e)| e)
    }

    /// Where to fetch `registry`/`repository` from: the mirrors of its entry, in
    /// order, then the upstream (the last element, always there). Errors if the
    /// entry blocks it or a rewrite leaves no repository.
    pub fn endpoints(&self, registry: &str, repository: &str) -> Result<Vec<Endpoint>> {
        let registry = normalize_name(registry);
        let upstream = Endpoint {
            registry: registry.clone(),
            repository: repository.to_string(),
            insecure: false,
            mirror: None,
        };
        let Some(entry) = self.find(&registry, repository) else {
            return Ok(vec![upstream]);
        };
        let name = format!("{registry}/{repository}");
        let what = format!("{name} (registries.conf prefix {:?})", entry.prefix);
        if entry.blocked {
            return Err(Error::Invalid(format!(
                "{what}: pulling from this registry is blocked"
            )));
        }
        let len = entry.match_len(&name).expect("the entry matched");
        let rest = &name[len..];
        let mut out = Vec::with_capacity(entry.mirrors.len() + 1);
        for m in &entry.mirrors {
            let (r, repo) = rewrite(&m.location, rest, &format!("{what}: mirror {}", m.location))?;
            out.push(Endpoint {
                registry: normalize_name(&r),
                repository: repo,
                insecure: m.insecure,
                mirror: Some(m.pull_from_mirror),
            });
        }
        let (r, repo) = if entry.location.is_empty() {
            (registry.clone(), repository.to_string())
        } else {
            rewrite(&entry.location, rest, &what)?
        };
        out.push(Endpoint {
            registry: normalize_name(&r),
            repository: repo,
            insecure: entry.insecure,
            mirror: None,
        });
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONF: &str = r#"
unqualified-search-registries = ["docker.io"]
short-name-mode = "enforcing"

[[registry]]
location = "docker.io"
[[registry.mirror]]
location = "mirror.gcr.io"
[[registry.mirror]]
location = "10.0.0.5:5000/hub"
insecure = true
pull-from-mirror = "digest-only"

[[registry]]
prefix = "example.com/team"
location = "internal.example.com:5000/mirror/team"
insecure = true

[[registry]]
prefix = "example.com"
location = "example.com"
[[registry.mirror]]
location = "cache.local"
pull-from-mirror = "tag-only"

[[registry]]
prefix = "*.blocked.io"
blocked = true

[[registry]]
location = "quay.io"
mirror-by-digest-only = true
[[registry.mirror]]
location = "quay-cache.local"

[aliases]
"fedora" = "registry.fedoraproject.org/fedora"
"#;

    fn ep(r: &str, repo: &str, insecure: bool, mirror: Option<PullFromMirror>) -> Endpoint {
        Endpoint {
            registry: r.into(),
            repository: repo.into(),
            insecure,
            mirror,
        }
    }

    #[test]
    fn parses_v2_and_rewrites_longest_prefix() {
        let c = RegistriesConf::parse(CONF).unwrap();
        assert_eq!(c.entries.len(), 5);
        assert_eq!(
            c.endpoints("docker.io", "library/ubuntu").unwrap(),
            vec![
                ep(
                    "mirror.gcr.io",
                    "library/ubuntu",
                    false,
                    Some(PullFromMirror::All)
                ),
                ep(
                    "10.0.0.5:5000",
                    "hub/library/ubuntu",
                    true,
                    Some(PullFromMirror::DigestOnly)
                ),
                ep("docker.io", "library/ubuntu", false, None),
            ]
        );
        // Docker Hub's other names find the docker.io entry.
        assert_eq!(
            c.endpoints("index.docker.io", "library/ubuntu")
                .unwrap()
                .len(),
            3
        );
        // The longer prefix wins, and its location replaces it.
        assert_eq!(
            c.endpoints("example.com", "team/app").unwrap(),
            vec![ep(
                "internal.example.com:5000",
                "mirror/team/app",
                true,
                None
            )]
        );
        // Prefixes match whole path components.
        assert_eq!(
            c.endpoints("example.com", "teamster/app").unwrap(),
            vec![
                ep(
                    "cache.local",
                    "teamster/app",
                    false,
                    Some(PullFromMirror::TagOnly)
                ),
                ep("example.com", "teamster/app", false, None),
            ]
        );
        assert_eq!(
            c.endpoints("example.community", "x").unwrap(),
            vec![ep("example.community", "x", false, None)]
        );
        let e = c.endpoints("a.blocked.io", "x").unwrap_err().to_string();
        assert!(e.contains("blocked") && e.contains("*.blocked.io"), "{e}");
        assert!(c.endpoints("blocked.io", "x").is_ok());
        assert_eq!(
            c.endpoints("quay.io", "a/b").unwrap()[0].mirror,
            Some(PullFromMirror::DigestOnly)
        );
    }

    #[test]
    fn pull_from_mirror_kinds() {
        use PullFromMirror::*;
        use RequestKind::*;
        assert!(All.allows(ManifestByTag) && All.allows(ManifestByDigest));
        assert!(!DigestOnly.allows(ManifestByTag) && DigestOnly.allows(ManifestByDigest));
        assert!(TagOnly.allows(ManifestByTag) && !TagOnly.allows(ManifestByDigest));
        assert!(All.allows(Blob) && DigestOnly.allows(Blob) && TagOnly.allows(Blob));
        assert_eq!(RequestKind::manifest("v1"), ManifestByTag);
        assert_eq!(
            RequestKind::manifest(&format!("sha256:{}", "a".repeat(64))),
            ManifestByDigest
        );
    }

    #[test]
    fn v1_lists() {
        let c = RegistriesConf::parse(
            "[registries.search]\nregistries = ['docker.io']\n\
             [registries.insecure]\nregistries = ['10.1.1.1:5000']\n\
             [registries.block]\nregistries = ['evil.io']\n",
        )
        .unwrap();
        assert_eq!(
            c.endpoints("10.1.1.1:5000", "x").unwrap(),
            vec![ep("10.1.1.1:5000", "x", true, None)]
        );
        assert!(c.endpoints("evil.io", "x").is_err());
    }

    #[test]
    fn malformed_files_are_clear_errors() {
        for (text, want) in [
            ("[[registry]\nlocation = 'x'", "not valid"),
            ("[[registry]]\ninsecure = 'yes'", "not valid"),
            (
                "[[registry]]\ninsecure = true",
                "neither prefix nor location",
            ),
            ("[[registry]]\nlocation = 'https://x.io'", "scheme"),
            (
                "[[registry]]\nlocation = 'x.io'\n[[registry.mirror]]\nlocation = 'm.io'\npull-from-mirror = 'sometimes'",
                "pull-from-mirror",
            ),
            (
                "[[registry]]\nlocation = 'x.io'\n[[registry]]\nprefix = 'x.io'\nlocation = 'y.io'",
                "twice",
            ),
            (
                "[[registry]]\nprefix = '*.x.io'\nlocation = 'y.io'",
                "wildcard",
            ),
            (
                "[[registry]]\nlocation = 'x.io'\n[registries.block]\nregistries = []",
                "mixes",
            ),
        ] {
            let e = RegistriesConf::parse(text).unwrap_err();
            assert!(e.to_string().contains(want), "{text:?}: {e}");
            assert_eq!(e.code(), crate::error::ErrorCode::Invalid);
        }
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("registries.conf");
        std::fs::write(&f, "[[registry]\n").unwrap();
        let e = RegistriesConf::load(&f).unwrap_err().to_string();
        assert!(e.contains(&f.display().to_string()), "{e}");
        let e = RegistriesConf::load(&dir.path().join("none")).unwrap_err();
        assert!(e.to_string().contains("none"), "{e}");
    }

    #[test]
    fn mirrors_from_urls() {
        let mut c = RegistriesConf::default();
        c.add_mirror(
            "docker.io",
            Mirror::from_url("http://127.0.0.1:5001/").unwrap(),
        );
        c.add_mirror("docker.io", Mirror::from_url("cache.local/hub").unwrap());
        let e = c.endpoints("docker.io", "library/alpine").unwrap();
        assert_eq!(
            e,
            vec![
                ep(
                    "127.0.0.1:5001",
                    "library/alpine",
                    true,
                    Some(PullFromMirror::All)
                ),
                ep(
                    "cache.local",
                    "hub/library/alpine",
                    false,
                    Some(PullFromMirror::All)
                ),
                ep("docker.io", "library/alpine", false, None),
            ]
        );
        assert!(Mirror::from_url("ftp://x").is_err());
        assert!(Mirror::from_url("http://").is_err());
    }
}
