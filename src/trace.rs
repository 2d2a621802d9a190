//! Read tracing: what a mount did to serve its reads, told to an observer.
//!
//! Two kinds of events share one shape ([`ReadEvent`]):
//! - **file reads** ([`OP_READ`]), one per read the kernel sent the mount, with
//!   the path, the range and where its bytes came from (the slowest tier used);
//! - **span work** below them, one per span the store materialised: verified from
//!   the local disk cache ([`OP_DISK_CACHE_READ`], first use in the process), read
//!   from the shared content tier ([`OP_CONTENT_CACHE_READ`]), decoded from the
//!   layer source from its checkpoint ([`OP_CHECKPOINT_READ`]), and whole layers
//!   decoded to warm the tier or prepare the cache ([`OP_LAYER_DECOMPRESS`]).
//!
//! The names and attribute keys are the ones the beta9 worker aggregates (the Go
//! clip's). Observers run synchronously on the thread doing the work and must not
//! block.

use std::sync::Arc;
use std::time::Duration;

use crate::digest::Digest;
use crate::error::Error;

/// A read the kernel sent the mount.
pub const OP_READ: &str = "clip.read";
/// A span verified from the local span cache (its first use in this process).
pub const OP_DISK_CACHE_READ: &str = "clip.disk_cache_read";
/// A span read from the shared content tier (hit, miss, error or timeout).
pub const OP_CONTENT_CACHE_READ: &str = "clip.content_cache_read";
/// Spans decoded from the layer source, from their checkpoint.
pub const OP_CHECKPOINT_READ: &str = "clip.checkpoint_read";
/// A whole layer decoded (to warm the content tier, or by a prepare).
pub const OP_LAYER_DECOMPRESS: &str = "clip.layer_decompress";

/// One event (see the module docs).
#[derive(Debug)]
pub struct ReadEvent<'a> {
    /// One of the `OP_*` names.
    pub operation: &'a str,
    /// For a file read, the file's path in the image (`/etc/os-release`; a file with
    /// several hard links is named by one of them); empty for span work.
    pub path: &'a [u8],
    /// For a file read the offset in the file; for span work the offset in the
    /// uncompressed layer.
    pub offset: u64,
    /// Bytes asked for (file read) or covered (span work).
    pub length: u64,
    /// Bytes served or produced (0 on failure).
    pub bytes_read: u64,
    /// Time the work took.
    pub duration: Duration,
    /// Process that issued the read (0 for span work done in the background).
    pub pid: u32,
    /// Digest of the layer the bytes come from.
    pub layer_digest: &'a Digest,
    /// The uncompressed layer's sha256 (its diff id), the content tier's key.
    pub decompressed_hash: &'a Digest,
    /// Why the work failed, if it did (a file read then answered `EIO`).
    pub error: Option<&'a Error>,
    /// Attributes: `cache_result`, `cache_tier`, `content_cache_result`,
    /// `content_cache_available`, `content_cache_warm`, `fallback`,
    /// `storage_mode`, `content_hash` (see docs/GO.md for their values).
    pub attrs: &'a [(&'a str, &'a str)],
}

/// Told of every event; called from read and background threads, concurrently.
/// Reads the kernel answers from its page cache never reach the mount.
pub type ReadObserver = Arc<dyn Fn(&ReadEvent<'_>) + Send + Sync>;

/// Where a read's bytes came from, slowest last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum Tier {
    /// Nothing was read (an empty read).
    #[default]
    None,
    /// Spans already open and verified in this process.
    Memory,
    /// The local span cache (verified on first use).
    Disk,
    /// The shared content tier.
    ContentCache,
    /// The layer source: registry, layout, S3 or the archive's own data.
    Source,
}

impl Tier {
    /// The `cache_tier` attribute value.
    pub fn name(self) -> &'static str {
        match self {
            Tier::None | Tier::Memory => "memory",
            Tier::Disk => "disk",
            Tier::ContentCache => "content_cache",
            Tier::Source => "source",
        }
    }
}

/// What serving one read involved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadInfo {
    /// The slowest tier a span of the read came from.
    pub tier: Tier,
    /// The content tier was asked and did not deliver (miss, error, timeout), so
    /// the layer source served.
    pub fallback: bool,
}

impl ReadInfo {
    /// Combines the info of two parts of one read.
    pub fn merge(self, o: ReadInfo) -> ReadInfo {
        ReadInfo {
            tier: self.tier.max(o.tier),
            fallback: self.fallback || o.fallback,
        }
    }
}
