//! The `.clip` archive format: see `docs/FORMAT.md` for the byte layout.
//!
//! An archive is a 64-byte header, sections, and a section table. The header names
//! the format version and holds a checksum of the table; the table lists each
//! section's id, flags, offset, stored and raw lengths, and a checksum of its stored
//! bytes. Readers are strict: wrong magic, a version they do not read, unknown
//! header flags, a section outside the file, a checksum mismatch, an unknown
//! *required* section or any inconsistency inside a section is an error naming the
//! problem. Unknown optional sections are skipped.

mod info;
mod reader;
mod writer;

use serde::{Deserialize, Serialize};

use crate::codec::CodecIndex;
use crate::digest::Digest;
use crate::oci::{Compression, ImageConfig, Platform};
use crate::tree::Tree;

pub use info::{Info, LayerInfo};
pub use reader::{parse, read};
pub use writer::{ArchiveWriter, set_profile, write};

/// The 8 magic bytes every archive starts with.
pub const MAGIC: [u8; 8] = *b"\x89CLIP\r\n\x1a";
/// The format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Size of the fixed header.
pub const HEADER_SIZE: usize = 64;
/// Size of one section table entry.
pub const SECTION_ENTRY_SIZE: usize = 48;
/// Size of one stored checkpoint record.
pub const CHECKPOINT_SIZE: usize = 32;
/// Size of one stored span record.
pub const SPAN_SIZE: usize = 44;

/// Section flag: readers that do not know this section must refuse the archive.
pub const FLAG_REQUIRED: u32 = 1;
/// Section flag: the stored bytes are one zstd frame.
pub const FLAG_ZSTD: u32 = 2;

/// Section identifiers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum SectionId {
    /// JSON: [`Meta`].
    Meta = 1,
    /// JSON: an array of [`LayerMeta`].
    Layers = 2,
    /// Checkpoint records of all layers.
    Checkpoints = 3,
    /// Span records of all layers.
    Spans = 4,
    /// Compressed checkpoint windows.
    Windows = 5,
    /// The inode table.
    Inodes = 6,
    /// The dirent table.
    Dirents = 7,
    /// The xattr table.
    Xattrs = 8,
    /// The string table.
    Strings = 9,
    /// File data of a v1 archive: the data layer's zstd frames (never loaded whole).
    Data = 10,
    /// Optional: a startup profile ([`crate::profile::Profile`], JSON), replayed
    /// by default when the archive is mounted.
    Profile = 11,
}

impl SectionId {
    /// All sections this version knows (DATA, when present, is written first).
    pub const ALL: [SectionId; 11] = [
        SectionId::Meta,
        SectionId::Layers,
        SectionId::Checkpoints,
        SectionId::Spans,
        SectionId::Windows,
        SectionId::Inodes,
        SectionId::Dirents,
        SectionId::Xattrs,
        SectionId::Strings,
        SectionId::Data,
        SectionId::Profile,
    ];

    /// The id for a number, if this version knows it.
    pub fn from_u32(v: u32) -> Option<SectionId> {
        SectionId::ALL.into_iter().find(|s| *s as u32 == v)
    }
}

/// Storage type of an index-only archive: layers in a registry or a layout.
pub const STORAGE_OCI: &str = "oci";
/// Storage type of a v1 archive whose data is its own DATA section.
pub const STORAGE_LOCAL: &str = "local";
/// Storage type of a metadata-only v1 archive (`.rclip`) whose data is a full
/// archive in an S3 bucket.
pub const STORAGE_S3: &str = "s3";

/// Where a mount fetches file bytes from at run time.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StorageRef {
    /// Storage type: [`STORAGE_OCI`], [`STORAGE_LOCAL`] or [`STORAGE_S3`].
    #[serde(rename = "type")]
    pub kind: String,
    /// Registry host\[:port\] (empty for a local layout).
    #[serde(default)]
    pub registry: String,
    /// Repository path within the registry (or the layout directory).
    #[serde(default)]
    pub repository: String,
    /// Tag or digest; after indexing, the manifest digest.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reference: String,
    /// `s3`: where the full archive holding the data lives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<crate::s3::S3Location>,
    /// `local` and `s3`: offset of the DATA section in the full archive; the data
    /// layer's compressed offsets count from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_offset: Option<u64>,
}

impl StorageRef {
    /// Storage of a v1 archive whose DATA section starts at `data_offset`.
    pub fn local(data_offset: u64) -> StorageRef {
        StorageRef {
            kind: STORAGE_LOCAL.into(),
            data_offset: Some(data_offset),
            ..Default::default()
        }
    }
}

/// Archive-wide metadata (the META section).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// The tool that wrote the archive (`clip 0.1.0`).
    pub created_by: String,
    /// Where the image was read from when indexing (`oci:/path:tag`, a reference).
    pub source: String,
    /// Where a mount fetches layer bytes from, if recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<StorageRef>,
    /// Digest of the image manifest (none for an archive of a directory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest_digest: Option<Digest>,
    /// Platform of the image (for a directory: the host's).
    pub platform: Platform,
    /// The image config's runtime fields (empty for a directory).
    #[serde(default)]
    pub config: ImageConfig,
    /// Span size used when indexing.
    pub span_size: u64,
}

/// Per-layer metadata (the LAYERS section), minus the checkpoint and span tables.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerMeta {
    /// Blob digest.
    pub digest: Digest,
    /// Media type as in the manifest.
    pub media_type: String,
    /// Compressed size.
    pub compressed_size: u64,
    /// Actual compression.
    pub compression: Compression,
    /// Uncompressed digest.
    pub diff_id: Digest,
    /// Uncompressed size.
    pub uncompressed_size: u64,
    /// First checkpoint record of this layer and their number.
    pub checkpoints: [u64; 2],
    /// First span record of this layer and their number.
    pub spans: [u64; 2],
}

/// One layer as an archive stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerRecord {
    /// Blob digest.
    pub digest: Digest,
    /// Media type as in the manifest.
    pub media_type: String,
    /// Compressed size.
    pub compressed_size: u64,
    /// Actual compression.
    pub compression: Compression,
    /// Uncompressed digest.
    pub diff_id: Digest,
    /// Checkpoints and spans.
    pub codec: CodecIndex,
}

/// A whole archive in memory (for a v1 archive: everything but its file data).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Archive {
    /// Archive-wide metadata.
    pub meta: Meta,
    /// Layers, bottom first; a v1 archive has one, its data layer.
    pub layers: Vec<LayerRecord>,
    /// The merged tree.
    pub tree: Tree,
    /// Where the DATA section lies in the file this was read from (`None` for an
    /// index-only archive or a `.rclip`).
    pub data: Option<DataSection>,
    /// The embedded startup profile (section PROFILE), as stored: its JSON is
    /// checked when a mount replays it, and a bad one is ignored with a warning.
    pub profile: Option<Vec<u8>>,
}

/// The position of a DATA section in an archive file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataSection {
    /// Offset from the start of the file.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
}

/// Media type of the data layer of a v1 archive.
pub const DATA_MEDIA_TYPE: &str = "application/vnd.clip.data.v1.zstd-chunks";

impl Archive {
    /// The storage type file bytes come from: [`STORAGE_OCI`] for an index-only
    /// archive (also when none is recorded), else the v1 kind.
    pub fn storage_kind(&self) -> &str {
        self.meta
            .storage
            .as_ref()
            .map_or(STORAGE_OCI, |s| s.kind.as_str())
    }

    /// Whether file data lives in OCI layers rather than in a v1 data layer.
    pub fn is_index_only(&self) -> bool {
        self.storage_kind() == STORAGE_OCI
    }
}

/// 128-bit BLAKE3 checksum used for sections and the section table.
pub(crate) fn checksum(data: &[u8]) -> [u8; 16] {
    let h = blake3::hash(data);
    h.as_bytes()[..16].try_into().expect("16 bytes")
}
