//! Image references, normalised as the container ecosystem does: `ubuntu` is
//! `docker.io/library/ubuntu:latest`, `host:port/repo:tag`, `repo@sha256:<hex>`, and
//! `oci:/path/to/layout[:tag]` names an image in a local OCI layout.

use std::fmt;
use std::path::PathBuf;

use crate::digest::Digest;
use crate::error::{Error, Result};

/// The registry `docker.io` names.
pub const DOCKER_HUB: &str = "docker.io";

/// A parsed image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    /// An image in a registry.
    Registry(RegistryRef),
    /// An image in a local OCI layout.
    Layout {
        /// The layout directory.
        path: PathBuf,
        /// The tag (`org.opencontainers.image.ref.name`), if given.
        tag: Option<String>,
    },
}

/// An image in a registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryRef {
    /// Registry host\[:port\].
    pub registry: String,
    /// Repository path.
    pub repository: String,
    /// Tag, if any.
    pub tag: Option<String>,
    /// Digest, if any (wins over the tag).
    pub digest: Option<Digest>,
}

impl RegistryRef {
    /// The tag or digest to ask the registry for.
    pub fn reference(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".into(),
        }
    }
}

impl fmt::Display for RegistryRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

impl Reference {
    /// Parses a reference.
    pub fn parse(s: &str) -> Result<Reference> {
        if let Some(rest) = s.strip_prefix("oci:") {
            // oci:/path[:tag]; the tag is after the last ':' if that is after the last '/'.
            let (path, tag) = match rest.rfind(':') {
                Some(i) if i > rest.rfind('/').unwrap_or(0) => {
                    (&rest[..i], Some(rest[i + 1..].to_string()))
                }
                _ => (rest, None),
            };
            if path.is_empty() {
                return Err(Error::Invalid(format!(
                    "reference {s:?}: empty layout path"
                )));
            }
            return Ok(Reference::Layout {
                path: PathBuf::from(path),
                tag: tag.filter(|t| !t.is_empty()),
            });
        }
        Ok(Reference::Registry(parse_registry(s)?))
    }
}

fn parse_registry(s: &str) -> Result<RegistryRef> {
    let bad = |m: &str| Error::Invalid(format!("reference {s:?}: {m}"));
    let (name, digest) = match s.split_once('@') {
        Some((n, d)) => (
            n,
            Some(Digest::parse(d).map_err(|_| bad("invalid digest"))?),
        ),
        None => (s, None),
    };
    let (name, tag) = match name.rfind(':') {
        Some(i) if i > name.rfind('/').unwrap_or(0) => {
            (&name[..i], Some(name[i + 1..].to_string()))
        }
        _ => (name, None),
    };
    if let Some(t) = &tag
        && (t.is_empty()
            || t.len() > 128
            || !t
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)))
    {
        return Err(bad("invalid tag"));
    }
    let (registry, repo) = match name.split_once('/') {
        Some((first, rest))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            (first.to_string(), rest.to_string())
        }
        _ => (DOCKER_HUB.to_string(), name.to_string()),
    };
    let registry = if registry == "index.docker.io" || registry == "registry-1.docker.io" {
        DOCKER_HUB.to_string()
    } else {
        registry
    };
    let repository = if registry == DOCKER_HUB && !repo.contains('/') {
        format!("library/{repo}")
    } else {
        repo
    };
    if repository.is_empty()
        || repository.split('/').any(|c| c.is_empty())
        || !repository
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-/".contains(&b))
    {
        return Err(bad("invalid repository name"));
    }
    let tag = if tag.is_none() && digest.is_none() {
        Some("latest".into())
    } else {
        tag
    };
    Ok(RegistryRef {
        registry,
        repository,
        tag,
        digest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(s: &str) -> RegistryRef {
        match Reference::parse(s).unwrap() {
            Reference::Registry(r) => r,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn normalises() {
        assert_eq!(reg("ubuntu").to_string(), "docker.io/library/ubuntu:latest");
        assert_eq!(reg("localhost:5000/a/b:1").registry, "localhost:5000");
        assert_eq!(reg("127.0.0.1:5000/x").repository, "x");
        let d = Digest::of(b"x");
        let r = reg(&format!("ghcr.io/o/r@{d}"));
        assert_eq!(r.digest, Some(d));
        assert_eq!(r.tag, None);
        assert!(Reference::parse("UPPER/case").is_err());
        assert_eq!(
            Reference::parse("oci:/tmp/l:v1").unwrap(),
            Reference::Layout {
                path: "/tmp/l".into(),
                tag: Some("v1".into())
            }
        );
        assert_eq!(
            Reference::parse("oci:/tmp/l").unwrap(),
            Reference::Layout {
                path: "/tmp/l".into(),
                tag: None
            }
        );
    }
}
