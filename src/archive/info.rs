//! A summary of an archive for callers that only want to look at it (the C ABI's
//! `clip_archive_info`, tools): format version, where the layers live, the layers
//! and the image config, as one serializable value.

use serde::Serialize;

use super::{Archive, FORMAT_VERSION};
use crate::oci::{Compression, ImageConfig, Platform};

/// What an archive describes (see [`Archive::info`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Info {
    /// Format version of the archive (the header's).
    pub format_version: u32,
    /// Whether file data lives in OCI layers (an index-only archive) rather than
    /// in the archive's own data layer (v1: `local` or `s3` storage).
    pub index_only: bool,
    /// The tool that wrote the archive.
    pub created_by: String,
    /// Where the image was read from when indexing.
    pub source: String,
    /// Storage type file bytes are fetched from: `"oci"` (a registry or a layout),
    /// `"local"` (this file's DATA section) or `"s3"` (a full archive in a bucket).
    pub storage_type: String,
    /// For `"s3"`: where the full archive is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub s3: Option<crate::s3::S3Location>,
    /// For v1 archives: offset of the DATA section in the full archive.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_offset: Option<u64>,
    /// Registry host\[:port\] a mount fetches layers from (empty if none recorded).
    pub registry: String,
    /// Repository in that registry (empty if none recorded).
    pub repository: String,
    /// Tag or digest in that repository (empty if none recorded).
    pub reference: String,
    /// Digest of the image manifest (empty for an archive of a directory).
    pub manifest_digest: String,
    /// Platform of the image.
    pub platform: Platform,
    /// Span size used when indexing.
    pub span_size: u64,
    /// Layers, bottom first.
    pub layers: Vec<LayerInfo>,
    /// The image config's runtime fields (env, cmd, entrypoint, user,
    /// working_dir, labels, ...).
    pub config: ImageConfig,
    /// Inodes in the merged tree.
    pub inodes: usize,
}

/// One layer in an [`Info`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LayerInfo {
    /// Blob digest.
    pub digest: String,
    /// Media type as in the manifest.
    pub media_type: String,
    /// Actual compression.
    pub compression: Compression,
    /// Compressed (blob) size.
    pub compressed_size: u64,
    /// Uncompressed digest.
    pub diff_id: String,
    /// Uncompressed size.
    pub uncompressed_size: u64,
}

impl Archive {
    /// A summary of this archive.
    pub fn info(&self) -> Info {
        let m = &self.meta;
        let s = m.storage.as_ref();
        let field = |f: fn(&super::StorageRef) -> &String| s.map(f).cloned().unwrap_or_default();
        Info {
            format_version: FORMAT_VERSION,
            index_only: self.is_index_only(),
            created_by: m.created_by.clone(),
            source: m.source.clone(),
            storage_type: self.storage_kind().to_string(),
            s3: s.and_then(|s| s.s3.clone()),
            data_offset: s.and_then(|s| s.data_offset),
            registry: field(|s| &s.registry),
            repository: field(|s| &s.repository),
            reference: field(|s| &s.reference),
            manifest_digest: m.manifest_digest.map(|d| d.to_string()).unwrap_or_default(),
            platform: m.platform.clone(),
            span_size: m.span_size,
            layers: self
                .layers
                .iter()
                .map(|l| LayerInfo {
                    digest: l.digest.to_string(),
                    media_type: l.media_type.clone(),
                    compression: l.compression,
                    compressed_size: l.compressed_size,
                    diff_id: l.diff_id.to_string(),
                    uncompressed_size: l.codec.uncompressed_size,
                })
                .collect(),
            config: m.config.clone(),
            inodes: self.tree.inodes.len(),
        }
    }

    /// [`Archive::info`] as a JSON object.
    pub fn info_json(&self) -> String {
        serde_json::to_string(&self.info()).expect("an Info always serializes")
    }
}
