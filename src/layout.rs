//! The local OCI image layout: `oci-layout`, `index.json`, `blobs/<alg>/<hex>`, as
//! written by skopeo, buildah, umoci and `docker save --format oci`.
//!
//! Images are named by the `org.opencontainers.image.ref.name` annotation of their
//! entry in `index.json` (a tag such as `latest`). Every blob read is checked against
//! its descriptor's size and digest; `oci-layout`, `index.json`, manifests,
//! indexes and configs are read with a bound ([`MAX_METADATA_BLOB`], the size a
//! descriptor claims), indexes followed at most [`MAX_INDEX_DEPTH`] deep.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::digest::Digest;
use crate::error::{Error, IoContext, Result};
use crate::limits::{self, MAX_INDEX_DEPTH, MAX_METADATA_BLOB};
use crate::oci::{self, Desc, ManifestKind, Platform, ResolvedImage};

/// The annotation that carries an image's tag in `index.json`.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
const CONTAINERD_NAME: &str = "io.containerd.image.name";

/// An opened OCI image layout directory.
#[derive(Debug)]
pub struct Layout {
    root: PathBuf,
    manifests: Vec<Desc>,
}

impl Layout {
    /// Opens the layout at `root`, checking `oci-layout` and parsing `index.json`.
    pub fn open(root: &Path) -> Result<Layout> {
        let wrap = |e: Error| e.with_path(root);
        let marker = root.join("oci-layout");
        let bytes = read_bounded(&marker, MAX_METADATA_BLOB).map_err(|e| match e {
            Error::Io { err, .. } if err.kind() == std::io::ErrorKind::NotFound => wrap(
                Error::NotFound("not an OCI image layout (no oci-layout file)".into()),
            ),
            e => e,
        })?;
        #[derive(serde::Deserialize)]
        struct Marker {
            #[serde(rename = "imageLayoutVersion")]
            version: String,
        }
        let m: Marker = serde_json::from_slice(&bytes)
            .map_err(|e| wrap(Error::format(format!("invalid oci-layout file: {e}"))))?;
        if !m.version.starts_with("1.") {
            return Err(wrap(Error::Unsupported(format!(
                "image layout version {:?}",
                m.version
            ))));
        }
        let index_path = root.join("index.json");
        let bytes = read_bounded(&index_path, MAX_METADATA_BLOB)?;
        let manifests = match oci::parse_manifest_or_index(&bytes, "index.json").map_err(wrap)? {
            ManifestKind::Index(m) => m,
            ManifestKind::Manifest(_) => {
                return Err(wrap(Error::format(
                    "index.json is a manifest, not an index",
                )));
            }
        };
        Ok(Layout {
            root: root.to_path_buf(),
            manifests,
        })
    }

    /// The layout directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The tags of the images in `index.json`, in order.
    pub fn tags(&self) -> Vec<String> {
        self.manifests
            .iter()
            .filter_map(|d| d.annotations.get(REF_NAME).cloned())
            .collect()
    }

    /// Resolves `tag` (or the only image, when `tag` is `None`) to one manifest for
    /// `platform`, reading and verifying the manifest and config blobs.
    pub fn resolve(&self, tag: Option<&str>, platform: &Platform) -> Result<ResolvedImage> {
        let wrap = |e: Error| e.with_path(&self.root);
        let top = match tag {
            Some(t) => self
                .manifests
                .iter()
                .find(|d| {
                    d.annotations.get(REF_NAME).map(String::as_str) == Some(t)
                        || d.annotations.get(CONTAINERD_NAME).map(String::as_str) == Some(t)
                })
                .ok_or_else(|| {
                    let tags = self.tags();
                    wrap(Error::NotFound(format!(
                        "tag {t:?} not found in layout (tags: {})",
                        if tags.is_empty() {
                            "none".into()
                        } else {
                            tags.join(", ")
                        }
                    )))
                })?,
            None => match self.manifests.as_slice() {
                [only] => only,
                [] => return Err(wrap(Error::NotFound("layout holds no image".into()))),
                many => {
                    return Err(wrap(Error::Invalid(format!(
                        "layout holds {} images; name one with a tag (tags: {})",
                        many.len(),
                        self.tags().join(", ")
                    ))));
                }
            },
        };
        let mut desc = top.clone();
        // Follow indexes (possibly nested) down to one manifest.
        for _ in 0..=MAX_INDEX_DEPTH {
            let bytes = self.read_blob(&desc)?;
            match oci::parse_manifest_or_index(&bytes, &format!("manifest {}", desc.digest))
                .map_err(wrap)?
            {
                ManifestKind::Index(list) => {
                    desc = oci::select_platform(&list, platform, &format!("index {}", desc.digest))
                        .map_err(wrap)?
                        .clone();
                }
                ManifestKind::Manifest(m) => {
                    let cbytes = self.read_blob(&m.config)?;
                    let config = oci::parse_config(&cbytes, &format!("config {}", m.config.digest))
                        .map_err(wrap)?;
                    return ResolvedImage::new(desc.digest, m, config).map_err(wrap);
                }
            }
        }
        Err(wrap(limits::exceeded(
            format_args!("index {}", top.digest),
            format_args!("at least {}", MAX_INDEX_DEPTH + 1),
            "nested indexes",
            MAX_INDEX_DEPTH,
            "limits::MAX_INDEX_DEPTH",
        )))
    }

    /// Where the blob `digest` lives.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs").join("sha256").join(digest.hex())
    }

    /// Reads a small blob (manifest, index, config), checking size and digest:
    /// never more than the size its descriptor claims (one byte more shows a
    /// longer file), which may be at most [`MAX_METADATA_BLOB`].
    pub fn read_blob(&self, desc: &Desc) -> Result<Vec<u8>> {
        oci::check_metadata_size(desc)?;
        let path = self.blob_path(&desc.digest);
        let mut data = Vec::with_capacity(desc.size as usize);
        File::open(&path)
            .ctx("opening blob", &path)?
            .take(desc.size + 1)
            .read_to_end(&mut data)
            .ctx("reading blob", &path)?;
        if data.len() as u64 > desc.size {
            return Err(Error::format(format!(
                "blob {} is longer than the {} bytes its descriptor claims",
                desc.digest, desc.size
            ))
            .with_path(&path));
        }
        if data.len() as u64 != desc.size {
            return Err(Error::format(format!(
                "blob {}: size {} does not match its descriptor ({} bytes)",
                desc.digest,
                data.len(),
                desc.size
            ))
            .with_path(&path));
        }
        let actual = Digest::of(&data);
        if actual != desc.digest {
            return Err(Error::DigestMismatch {
                what: format!("blob {}", path.display()),
                expected: desc.digest.to_string(),
                actual: actual.to_string(),
            });
        }
        Ok(data)
    }

    /// Opens a (layer) blob for streaming, checking that its size matches the
    /// descriptor; the digest is verified by whoever reads it.
    pub fn open_blob(&self, desc: &Desc) -> Result<File> {
        let path = self.blob_path(&desc.digest);
        let f = File::open(&path).ctx("opening blob", &path)?;
        let len = f.metadata().ctx("reading metadata of", &path)?.len();
        if len != desc.size {
            return Err(Error::format(format!(
                "blob is {len} bytes but its descriptor says {} (truncated or replaced?)",
                desc.size
            ))
            .with_path(&path));
        }
        Ok(f)
    }
}

/// Reads the file at `path`, refusing one longer than `limit` bytes without
/// reading more than one byte past it.
fn read_bounded(path: &Path, limit: u64) -> Result<Vec<u8>> {
    let mut data = Vec::new();
    File::open(path)
        .ctx("opening", path)?
        .take(limit + 1)
        .read_to_end(&mut data)
        .ctx("reading", path)?;
    if data.len() as u64 > limit {
        return Err(limits::exceeded(
            path.display(),
            format_args!("at least {}", limit + 1),
            "bytes",
            format_args!("{limit} bytes for metadata"),
            "limits::MAX_METADATA_BLOB",
        ));
    }
    Ok(data)
}
