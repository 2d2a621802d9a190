//! OCI and Docker image metadata: manifests, indexes, image configs, media types and
//! platform choice. This module turns raw JSON (from a layout or a registry) into the
//! few facts clip needs, and is the only place that knows the oci-spec types.

use std::collections::BTreeMap;
use std::fmt;

use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, ImageManifest, MediaType};
use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::limits;

pub use crate::limits::MAX_METADATA_BLOB;

/// OCI image index media type.
pub const MT_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image manifest media type.
pub const MT_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Docker manifest list media type.
pub const MT_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker image manifest (schema 2) media type.
pub const MT_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// An uncompressed tar.
    None,
    /// gzip (one or more members).
    Gzip,
    /// zstd (one or more frames).
    Zstd,
}

impl Compression {
    /// The compression a layer media type announces, or an error naming it.
    pub fn from_media_type(mt: &str) -> Result<Compression> {
        let base = mt.trim();
        match base {
            "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar"
            | "application/vnd.docker.image.rootfs.diff.tar" => Ok(Compression::None),
            "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => Ok(Compression::Gzip),
            "application/vnd.oci.image.layer.v1.tar+zstd"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
            | "application/vnd.docker.image.rootfs.diff.tar.zstd" => Ok(Compression::Zstd),
            other => Err(Error::Unsupported(format!("layer media type {other:?}"))),
        }
    }

    /// The compression the first bytes of a blob show (gzip and zstd magic), if any.
    pub fn sniff(head: &[u8]) -> Option<Compression> {
        if head.starts_with(&[0x1f, 0x8b]) {
            Some(Compression::Gzip)
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Some(Compression::Zstd)
        } else {
            None
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        })
    }
}

/// A target platform: `os/architecture[/variant]`, in Go's names (`linux/amd64`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    /// Operating system (`linux`).
    pub os: String,
    /// CPU architecture (`amd64`, `arm64`, ...).
    pub architecture: String,
    /// Optional variant (`v8`, `v7`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Platform {
    /// The platform of this host.
    pub fn host() -> Platform {
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "arm" => "arm",
            "powerpc64" => "ppc64le",
            "s390x" => "s390x",
            "riscv64" => "riscv64",
            other => other,
        };
        Platform {
            os: "linux".into(),
            architecture: arch.into(),
            variant: None,
        }
    }

    /// Parses `os/arch[/variant]`.
    pub fn parse(s: &str) -> Result<Platform> {
        let parts: Vec<&str> = s.split('/').collect();
        match parts.as_slice() {
            [os, arch] if !os.is_empty() && !arch.is_empty() => Ok(Platform {
                os: os.to_string(),
                architecture: arch.to_string(),
                variant: None,
            }),
            [os, arch, variant] if !os.is_empty() && !arch.is_empty() && !variant.is_empty() => {
                Ok(Platform {
                    os: os.to_string(),
                    architecture: arch.to_string(),
                    variant: Some(variant.to_string()),
                })
            }
            _ => Err(Error::Invalid(format!(
                "platform {s:?}: expected os/arch or os/arch/variant"
            ))),
        }
    }

    /// Whether an image built for `other` runs here. A missing variant on our side
    /// accepts any variant; `arm64` treats a missing variant as `v8`.
    pub fn matches(&self, other: &Platform) -> bool {
        if self.os != other.os || self.architecture != other.architecture {
            return false;
        }
        let norm = |v: &Option<String>| match (self.architecture.as_str(), v.as_deref()) {
            ("arm64", None) => Some("v8".to_string()),
            (_, v) => v.map(str::to_string),
        };
        match &self.variant {
            None => true,
            Some(_) => norm(&self.variant) == norm(&other.variant),
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// A descriptor, reduced to what clip uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desc {
    /// Media type.
    pub media_type: String,
    /// Content digest.
    pub digest: Digest,
    /// Size in bytes.
    pub size: u64,
    /// Platform, for entries of an index.
    pub platform: Option<Platform>,
    /// Annotations (sorted).
    pub annotations: BTreeMap<String, String>,
}

impl Desc {
    fn from_spec(d: &Descriptor) -> Result<Desc> {
        Ok(Desc {
            media_type: d.media_type().to_string(),
            digest: Digest::parse(d.digest().as_ref())?,
            size: d.size(),
            platform: d.platform().as_ref().map(|p| Platform {
                os: p.os().to_string(),
                architecture: p.architecture().to_string(),
                variant: p.variant().clone(),
            }),
            annotations: d
                .annotations()
                .as_ref()
                .map(|a| a.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                .unwrap_or_default(),
        })
    }

    /// Whether this descriptor points at an index (OCI index or Docker manifest list).
    pub fn is_index(&self) -> bool {
        self.media_type == MT_OCI_INDEX || self.media_type == MT_DOCKER_LIST
    }
}

/// What a manifest-or-index blob turned out to be.
#[derive(Debug, Clone)]
pub enum ManifestKind {
    /// An image manifest.
    Manifest(Manifest),
    /// An index of manifests (multi-platform).
    Index(Vec<Desc>),
}

/// An image manifest, reduced to what clip uses.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// The manifest's media type (OCI or Docker).
    pub media_type: String,
    /// The config blob.
    pub config: Desc,
    /// The layers, bottom first.
    pub layers: Vec<Desc>,
}

/// Parses a manifest or an index, deciding by its `mediaType` field or, when that is
/// absent (allowed by OCI), by its shape. A manifest of more than
/// [`limits::MAX_LAYERS`] layers, an index of more than
/// [`limits::MAX_INDEX_MANIFESTS`] manifests is refused.
pub fn parse_manifest_or_index(bytes: &[u8], what: &str) -> Result<ManifestKind> {
    #[derive(Deserialize)]
    struct Probe {
        #[serde(rename = "mediaType", default)]
        media_type: Option<String>,
        #[serde(default)]
        manifests: Option<serde_json::Value>,
        #[serde(default)]
        layers: Option<serde_json::Value>,
    }
    let probe: Probe = serde_json::from_slice(bytes)
        .map_err(|e| Error::format(format!("{what}: not a JSON manifest: {e}")))?;
    let is_index = match probe.media_type.as_deref() {
        Some(MT_OCI_INDEX) | Some(MT_DOCKER_LIST) => true,
        Some(MT_OCI_MANIFEST) | Some(MT_DOCKER_MANIFEST) => false,
        Some(other) => {
            return Err(Error::Unsupported(format!(
                "{what}: media type {other:?} is not an image manifest or index"
            )));
        }
        None => probe.manifests.is_some() && probe.layers.is_none(),
    };
    if is_index {
        let idx = ImageIndex::from_reader(bytes)
            .map_err(|e| Error::format(format!("{what}: invalid image index: {e}")))?;
        limits::check_count(
            what,
            idx.manifests().len() as u64,
            "manifests",
            limits::MAX_INDEX_MANIFESTS as u64,
            "limits::MAX_INDEX_MANIFESTS",
        )?;
        let descs = idx
            .manifests()
            .iter()
            .map(Desc::from_spec)
            .collect::<Result<Vec<_>>>()?;
        Ok(ManifestKind::Index(descs))
    } else {
        let m = ImageManifest::from_reader(bytes)
            .map_err(|e| Error::format(format!("{what}: invalid image manifest: {e}")))?;
        limits::check_count(
            what,
            m.layers().len() as u64,
            "layers",
            limits::MAX_LAYERS as u64,
            "limits::MAX_LAYERS",
        )?;
        let media_type = match m.media_type() {
            Some(mt) => mt.to_string(),
            None => MediaType::ImageManifest.to_string(),
        };
        Ok(ManifestKind::Manifest(Manifest {
            media_type,
            config: Desc::from_spec(m.config())?,
            layers: m
                .layers()
                .iter()
                .map(Desc::from_spec)
                .collect::<Result<Vec<_>>>()?,
        }))
    }
}

/// Refuses a metadata blob (manifest, index, config) whose descriptor claims more
/// than [`MAX_METADATA_BLOB`] bytes, before it is read. Readers then read at most
/// the size the descriptor claims (and one byte more, to see a longer body).
pub fn check_metadata_size(desc: &Desc) -> Result<()> {
    if desc.size > MAX_METADATA_BLOB {
        return Err(limits::exceeded(
            format_args!("blob {} ({})", desc.digest, desc.media_type),
            desc.size,
            "bytes by its descriptor",
            format_args!("{MAX_METADATA_BLOB} bytes for metadata"),
            "limits::MAX_METADATA_BLOB",
        ));
    }
    Ok(())
}

/// Picks the manifest for `platform` from an index, or explains what is there.
/// When no manifest matches, a nested index for `platform` (or for no platform)
/// is picked, for the caller to follow (at most [`limits::MAX_INDEX_DEPTH`]
/// deep), as containerd does.
pub fn select_platform<'a>(
    manifests: &'a [Desc],
    platform: &Platform,
    what: &str,
) -> Result<&'a Desc> {
    manifests
        .iter()
        .filter(|d| !d.is_index())
        .find(|d| d.platform.as_ref().is_some_and(|p| platform.matches(p)))
        .or_else(|| {
            manifests
                .iter()
                .filter(|d| d.is_index())
                .find(|d| d.platform.as_ref().is_none_or(|p| platform.matches(p)))
        })
        .ok_or_else(|| {
            let have: Vec<String> = manifests
                .iter()
                .filter_map(|d| d.platform.as_ref().map(|p| p.to_string()))
                .collect();
            Error::NotFound(format!(
                "{what}: no image for platform {platform} (available: {})",
                if have.is_empty() {
                    "none".into()
                } else {
                    have.join(", ")
                }
            ))
        })
}

/// The runtime fields of an image config that a container platform needs, plus the
/// layers' diff_ids.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    /// Platform the image was built for.
    pub os: String,
    /// Architecture the image was built for.
    pub architecture: String,
    /// Variant, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// Creation time as written in the config (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// Author.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    /// Environment, `KEY=value`.
    #[serde(default)]
    pub env: Vec<String>,
    /// Default command.
    #[serde(default)]
    pub cmd: Vec<String>,
    /// Entrypoint.
    #[serde(default)]
    pub entrypoint: Vec<String>,
    /// User to run as.
    #[serde(default)]
    pub user: String,
    /// Working directory.
    #[serde(default)]
    pub working_dir: String,
    /// Labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Exposed ports (`80/tcp`).
    #[serde(default)]
    pub exposed_ports: Vec<String>,
    /// Volumes.
    #[serde(default)]
    pub volumes: Vec<String>,
    /// Stop signal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    /// The uncompressed layer digests, bottom first.
    #[serde(default)]
    pub diff_ids: Vec<String>,
}

/// Parses an image config blob.
pub fn parse_config(bytes: &[u8], what: &str) -> Result<ImageConfig> {
    let c = ImageConfiguration::from_reader(bytes)
        .map_err(|e| Error::format(format!("{what}: invalid image config: {e}")))?;
    let mut out = ImageConfig {
        os: c.os().to_string(),
        architecture: c.architecture().to_string(),
        variant: c.variant().clone(),
        created: c.created().clone(),
        author: c.author().clone(),
        diff_ids: c.rootfs().diff_ids().clone(),
        ..Default::default()
    };
    if let Some(cfg) = c.config() {
        out.env = cfg.env().clone().unwrap_or_default();
        out.cmd = cfg.cmd().clone().unwrap_or_default();
        out.entrypoint = cfg.entrypoint().clone().unwrap_or_default();
        out.user = cfg.user().clone().unwrap_or_default();
        out.working_dir = cfg.working_dir().clone().unwrap_or_default();
        out.labels = cfg
            .labels()
            .as_ref()
            .map(|l| l.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        out.exposed_ports = cfg.exposed_ports().clone().unwrap_or_default();
        out.volumes = cfg.volumes().clone().unwrap_or_default();
        out.stop_signal = cfg.stop_signal().clone();
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platform_matching() {
        let host = Platform::parse("linux/arm64").unwrap();
        assert!(host.matches(&Platform::parse("linux/arm64/v8").unwrap()));
        let v8 = Platform::parse("linux/arm64/v8").unwrap();
        assert!(v8.matches(&Platform::parse("linux/arm64").unwrap()));
        assert!(!v8.matches(&Platform::parse("linux/amd64").unwrap()));
        assert!(Platform::parse("linux").is_err());
    }

    #[test]
    fn media_types() {
        assert_eq!(
            Compression::from_media_type("application/vnd.docker.image.rootfs.diff.tar.gzip")
                .unwrap(),
            Compression::Gzip
        );
        assert!(Compression::from_media_type("text/plain").is_err());
    }
}

/// One layer of a resolved image.
#[derive(Debug, Clone)]
pub struct Layer {
    /// The layer blob's descriptor.
    pub desc: Desc,
    /// Compression announced by the media type.
    pub compression: Compression,
    /// Digest of the uncompressed tar, from the image config.
    pub diff_id: Digest,
}

/// An image resolved down to one manifest, its config and its layers.
#[derive(Debug, Clone)]
pub struct ResolvedImage {
    /// Digest of the manifest chosen (after platform selection).
    pub manifest_digest: Digest,
    /// The manifest.
    pub manifest: Manifest,
    /// The image config.
    pub config: ImageConfig,
    /// The layers, bottom first, with their diff_ids.
    pub layers: Vec<Layer>,
    /// The platform of the chosen manifest.
    pub platform: Platform,
}

impl ResolvedImage {
    /// Pairs manifest layers with config diff_ids, checking that they agree.
    pub fn new(
        manifest_digest: Digest,
        manifest: Manifest,
        config: ImageConfig,
    ) -> Result<ResolvedImage> {
        if manifest.layers.len() != config.diff_ids.len() {
            return Err(Error::format(format!(
                "manifest {manifest_digest} has {} layers but its config lists {} diff_ids",
                manifest.layers.len(),
                config.diff_ids.len()
            )));
        }
        let layers = manifest
            .layers
            .iter()
            .zip(&config.diff_ids)
            .map(|(desc, diff_id)| {
                Ok(Layer {
                    compression: Compression::from_media_type(&desc.media_type)
                        .map_err(|e| e.with_layer(desc.digest))?,
                    diff_id: Digest::parse(diff_id).map_err(|e| e.with_layer(desc.digest))?,
                    desc: desc.clone(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let platform = Platform {
            os: config.os.clone(),
            architecture: config.architecture.clone(),
            variant: config.variant.clone(),
        };
        Ok(ResolvedImage {
            manifest_digest,
            manifest,
            config,
            layers,
            platform,
        })
    }
}
