//! Limits for hostile input: the bounds clip enforces on everything it reads but
//! does not control (registry responses, OCI layouts, layer tar streams, `.clip`
//! archives, layer-index artifacts, archives of the Go clip), so that such input
//! gets an error naming the thing at fault and the limit it broke, never an
//! out-of-memory, a panic or minutes of work. docs/RELIABILITY.md ("Limits for
//! hostile input") lists every limit with the reason for its value and its test.
//!
//! The limits that several parsers share live here: counts of layers, manifests
//! and entries, metadata blob size, path length and depth, the metadata
//! decompression ratio. Those of one parser's own format stay next to it:
//! [`MAX_EXTENSION_SIZE`](crate::tar::MAX_EXTENSION_SIZE) (PAX and GNU
//! extension headers), the archive reader's section limits
//! ([`archive`](crate::archive)), [`MAX_BODY`](crate::index::cache::MAX_BODY)
//! (layer-index artifacts), the Go-clip reader's section and nesting limits
//! ([`goclip`](crate::goclip)).
//!
//! Every value is far above what real images need (a 166k-entry `node_modules`
//! image, 100-layer images, PATH_MAX-long paths pass with a wide margin) and far
//! below what would exhaust a worker. An error reads
//! `<what>: <found> <unit>, more than the limit of <limit> (limits::<NAME>)`
//! (see [`exceeded`]).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};
use crate::tar::{Entry, EntryKind};

/// Largest manifest, index or config blob read into memory (also a layout's
/// `index.json`): refused when its descriptor claims more, and never read past
/// the size its descriptor claims. Real manifests and configs are a few KiB (a
/// config with a long history some 100 KiB); distribution refuses manifests over
/// 4 MiB.
pub const MAX_METADATA_BLOB: u64 = 16 << 20;

/// Most layers one image (a manifest, a `.clip` archive, a Go-clip archive's
/// storage info) may have. Docker's overlay storage stops at 127 layers and
/// most registries at a few hundred; each layer costs a request and an
/// indexing pass.
pub const MAX_LAYERS: usize = 512;

/// Most manifests one image index (or manifest list, or a layout's
/// `index.json`) may list. Multi-platform images list a dozen or two (with
/// attestations); a layout holding many tags a few hundred.
pub const MAX_INDEX_MANIFESTS: usize = 4096;

/// Most image indexes followed from a reference down to its manifest (an index
/// naming an index is allowed, a chain longer than this is refused). Real images
/// nest one index.
pub const MAX_INDEX_DEPTH: usize = 4;

/// Most tar entries one layer may have (every entry's header is kept in memory
/// until the layers are merged).
pub const MAX_LAYER_ENTRIES: u64 = 10_000_000;

/// Most entries one image may have: the tar entries of all its layers together
/// while indexing, the directory entries of a `.clip` archive's tree, the nodes
/// of a Go-clip archive's index. A 166k-entry `node_modules` image is 60 times
/// below it.
pub const MAX_IMAGE_ENTRIES: u64 = 10_000_000;

/// Most bytes of entry metadata (paths, link targets, xattr names and values)
/// one image's tar entries may carry, all layers together (and so one layer):
/// what stays in memory besides the entries' fixed fields. 10 million entries
/// with 200-byte paths fit.
pub const MAX_ENTRY_BYTES: u64 = 2 << 30;

/// Longest path, in bytes: of a tar entry, of a hard link or symlink target, of
/// a file in a `.clip` archive's tree or a Go-clip archive's index. Linux's
/// `PATH_MAX` (4096, with the NUL) is what a system call accepts.
pub const MAX_PATH_LEN: usize = 4096;

/// Most components (`a/b/c` has 3; empty and `.` ones do not count) of the same
/// paths: a path of `MAX_PATH_LEN` bytes has at most 2048, and a walk costs a
/// lookup per component.
pub const MAX_PATH_DEPTH: usize = 1024;

/// Largest ratio of uncompressed to stored bytes of a compressed metadata
/// section (a `.clip` archive's zstd sections, a layer-index artifact's body),
/// refused before anything is inflated. Real sections compress up to ~20:1 (see
/// docs/RELIABILITY.md); zstd itself reaches ~32000:1 on zeros, so without it a
/// file of a few KiB could make a reader inflate gigabytes.
pub const MAX_RATIO: u64 = 1000;

/// Sections that inflate to at most this many bytes are never refused for their
/// ratio (a tiny section of zeros may well exceed [`MAX_RATIO`]).
pub const RATIO_FREE_BYTES: u64 = 1 << 20;

/// The error for `what` exceeding a limit: `<what>: <found> <unit>, more than
/// the limit of <limit> (<name>)`, `name` naming the constant
/// (`limits::MAX_LAYERS`).
pub fn exceeded(
    what: impl fmt::Display,
    found: impl fmt::Display,
    unit: &str,
    limit: impl fmt::Display,
    name: &str,
) -> Error {
    Error::format(format!(
        "{what}: {found} {unit}, more than the limit of {limit} ({name})"
    ))
}

/// Refuses `found` things of `what` over `limit` (see [`exceeded`]).
pub fn check_count(
    what: impl fmt::Display,
    found: u64,
    unit: &str,
    limit: u64,
    name: &str,
) -> Result<()> {
    if found > limit {
        return Err(exceeded(what, found, unit, limit, name));
    }
    Ok(())
}

/// A path for an error message: lossy UTF-8, quoted, its first 64 bytes and its
/// length when longer (a hostile path may be megabytes).
pub fn show_path(path: &[u8]) -> String {
    const SHOWN: usize = 64;
    if path.len() <= SHOWN {
        format!("{:?}", String::from_utf8_lossy(path))
    } else {
        format!(
            "{:?}… ({} bytes)",
            String::from_utf8_lossy(&path[..SHOWN]),
            path.len()
        )
    }
}

/// The number of components of a `/`-separated path, empty and `.` ones not
/// counted.
pub fn path_depth(path: &[u8]) -> usize {
    path.split(|&b| b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
        .count()
}

/// Refuses a path (`what` is a path, a link target, ... of `owner`) longer than
/// [`MAX_PATH_LEN`] bytes or deeper than [`MAX_PATH_DEPTH`] components.
pub fn check_path(owner: impl fmt::Display, what: &str, path: &[u8]) -> Result<()> {
    if path.len() > MAX_PATH_LEN {
        return Err(exceeded(
            format_args!("{owner}: {what}"),
            path.len(),
            "bytes",
            MAX_PATH_LEN,
            "limits::MAX_PATH_LEN",
        ));
    }
    let depth = path_depth(path);
    if depth > MAX_PATH_DEPTH {
        return Err(exceeded(
            format_args!("{owner}: {what}"),
            depth,
            "components",
            MAX_PATH_DEPTH,
            "limits::MAX_PATH_DEPTH",
        ));
    }
    Ok(())
}

/// The bytes of metadata an entry keeps in memory besides its fixed fields:
/// path, link target, xattr names and values.
pub fn entry_bytes(e: &Entry) -> u64 {
    let x: usize = e.xattrs.iter().map(|(k, v)| k.len() + v.len()).sum();
    (e.path.len() + e.link_target.len() + x) as u64
}

/// Checks one tar entry's path and link target (see [`check_path`]).
pub fn check_entry(e: &Entry) -> Result<()> {
    let owner = format_args!("tar entry {}", show_path(&e.path));
    check_path(owner, "path", &e.path)?;
    if matches!(e.kind, EntryKind::Hardlink | EntryKind::Symlink) {
        check_path(
            format_args!("tar entry {}", show_path(&e.path)),
            "link target",
            &e.link_target,
        )?;
    }
    Ok(())
}

/// Counts the entries of one layer (or one artifact) as they are parsed, with
/// their metadata bytes, refusing the one that passes [`MAX_LAYER_ENTRIES`] or
/// [`MAX_ENTRY_BYTES`] (and any whose paths break [`check_entry`]).
#[derive(Debug)]
pub struct LayerBudget {
    entries: u64,
    bytes: u64,
    max_entries: u64,
    max_bytes: u64,
}

impl Default for LayerBudget {
    fn default() -> LayerBudget {
        LayerBudget::new(MAX_LAYER_ENTRIES, MAX_ENTRY_BYTES)
    }
}

impl LayerBudget {
    /// A budget of `max_entries` entries and `max_bytes` bytes of metadata (the
    /// default is the limits'; tests use small ones).
    pub fn new(max_entries: u64, max_bytes: u64) -> LayerBudget {
        LayerBudget {
            entries: 0,
            bytes: 0,
            max_entries,
            max_bytes,
        }
    }

    /// Accounts for `e`, checking its paths and the layer's totals.
    pub fn add(&mut self, e: &Entry) -> Result<()> {
        check_entry(e)?;
        self.entries += 1;
        if self.entries > self.max_entries {
            return Err(exceeded(
                "tar stream",
                format_args!("at least {}", self.entries),
                "entries",
                self.max_entries,
                "limits::MAX_LAYER_ENTRIES",
            ));
        }
        self.bytes += entry_bytes(e);
        if self.bytes > self.max_bytes {
            return Err(exceeded(
                format_args!("tar stream (at entry {})", show_path(&e.path)),
                self.bytes,
                "bytes of paths, link targets and xattrs",
                self.max_bytes,
                "limits::MAX_ENTRY_BYTES",
            ));
        }
        Ok(())
    }

    /// Entries accounted for.
    pub fn entries(&self) -> u64 {
        self.entries
    }

    /// Metadata bytes accounted for.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

/// The entries of all layers of one image, as each layer's index is done (layers
/// are indexed in parallel): refuses the layer that takes the image past
/// [`MAX_IMAGE_ENTRIES`] or [`MAX_ENTRY_BYTES`]. Memory stays below the image's
/// limits plus one layer's per indexing thread.
#[derive(Debug)]
pub struct ImageBudget {
    entries: AtomicU64,
    bytes: AtomicU64,
    max_entries: u64,
    max_bytes: u64,
}

impl Default for ImageBudget {
    fn default() -> ImageBudget {
        ImageBudget::new(MAX_IMAGE_ENTRIES, MAX_ENTRY_BYTES)
    }
}

impl ImageBudget {
    /// A budget of `max_entries` entries and `max_bytes` bytes of metadata.
    pub fn new(max_entries: u64, max_bytes: u64) -> ImageBudget {
        ImageBudget {
            entries: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            max_entries,
            max_bytes,
        }
    }

    /// Adds a layer of `entries` entries with `bytes` bytes of metadata to the
    /// image `what` (`image sha256:…`).
    pub fn add_layer(&self, what: impl fmt::Display, entries: u64, bytes: u64) -> Result<()> {
        let e = self.entries.fetch_add(entries, Ordering::SeqCst) + entries;
        let b = self.bytes.fetch_add(bytes, Ordering::SeqCst) + bytes;
        check_count(
            &what,
            e,
            "tar entries in its layers",
            self.max_entries,
            "limits::MAX_IMAGE_ENTRIES",
        )?;
        check_count(
            &what,
            b,
            "bytes of paths, link targets and xattrs in its layers",
            self.max_bytes,
            "limits::MAX_ENTRY_BYTES",
        )
    }
}

/// Refuses a compressed section (`what`) of `stored` bytes that claims to inflate
/// to `raw` bytes, when that is over [`MAX_RATIO`] times `stored` and over
/// [`RATIO_FREE_BYTES`]: called before anything is inflated.
pub fn check_ratio(what: impl fmt::Display, stored: u64, raw: u64) -> Result<()> {
    if raw > RATIO_FREE_BYTES && raw > stored.saturating_mul(MAX_RATIO) {
        return Err(Error::format(format!(
            "{what}: {raw} bytes inflated from {stored} stored (a ratio of {}:1), more than the limit of {MAX_RATIO}:1 (limits::MAX_RATIO)",
            raw / stored.max(1)
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &[u8], kind: EntryKind, target: &[u8]) -> Entry {
        Entry {
            path: path.to_vec(),
            kind,
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: 0,
            mtime_nsec: 0,
            size: 0,
            data_offset: 0,
            link_target: target.to_vec(),
            dev_major: 0,
            dev_minor: 0,
            xattrs: Vec::new(),
            header_offset: 0,
        }
    }

    #[test]
    fn paths_at_the_limits_pass_and_one_more_fails() {
        let long = vec![b'a'; MAX_PATH_LEN];
        assert!(check_entry(&entry(&long, EntryKind::File, b"")).is_ok());
        let e = check_entry(&entry(
            &[long.as_slice(), b"b"].concat(),
            EntryKind::File,
            b"",
        ))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("path: 4097 bytes, more than the limit of 4096 (limits::MAX_PATH_LEN)"),
            "{e}"
        );
        assert!(e.contains("(4097 bytes)"), "the path is shown cut: {e}");
        let deep = b"a/".repeat(MAX_PATH_DEPTH);
        assert!(check_entry(&entry(&deep, EntryKind::Directory, b"")).is_ok());
        // `.` and empty components do not count.
        assert!(
            check_entry(&entry(
                &[b"./".as_slice(), &deep, b"//./"].concat(),
                EntryKind::Directory,
                b""
            ))
            .is_ok()
        );
        let e = check_entry(&entry(
            &[deep.as_slice(), b"f"].concat(),
            EntryKind::File,
            b"",
        ))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("1025 components, more than the limit of 1024 (limits::MAX_PATH_DEPTH)"),
            "{e}"
        );
        let e = check_entry(&entry(b"l", EntryKind::Symlink, &b"../".repeat(1500)))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("tar entry \"l\": link target: 4500 bytes"),
            "{e}"
        );
        // A file's (ignored) link field is not checked.
        assert!(check_entry(&entry(b"f", EntryKind::File, &[b'x'; 5000])).is_ok());
    }

    #[test]
    fn budgets_refuse_the_entry_past_the_limit() {
        let mut b = LayerBudget::new(2, 1 << 20);
        b.add(&entry(b"a", EntryKind::File, b"")).unwrap();
        b.add(&entry(b"b", EntryKind::File, b"")).unwrap();
        let e = b
            .add(&entry(b"c", EntryKind::File, b""))
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "tar stream: at least 3 entries, more than the limit of 2 (limits::MAX_LAYER_ENTRIES)"
        );
        let mut b = LayerBudget::new(10, 10);
        b.add(&entry(b"abcde", EntryKind::Symlink, b"fghij"))
            .unwrap();
        let e = b
            .add(&entry(b"k", EntryKind::File, b""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("11 bytes of paths, link targets and xattrs, more than the limit of 10 (limits::MAX_ENTRY_BYTES)"), "{e}");
        let i = ImageBudget::new(5, 100);
        i.add_layer("image", 3, 10).unwrap();
        let e = i.add_layer("image", 3, 10).unwrap_err().to_string();
        assert_eq!(
            e,
            "image: 6 tar entries in its layers, more than the limit of 5 (limits::MAX_IMAGE_ENTRIES)"
        );
    }

    #[test]
    fn ratios() {
        // Small sections pass whatever their ratio; large ones up to MAX_RATIO.
        check_ratio("s", 1, RATIO_FREE_BYTES).unwrap();
        check_ratio("s", 2 << 20, (2 << 20) * MAX_RATIO).unwrap();
        let e = check_ratio("section 6", 1200, 4 << 30)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "section 6: 4294967296 bytes inflated from 1200 stored (a ratio of 3579139:1), more than the limit of 1000:1 (limits::MAX_RATIO)"
        );
        assert!(check_ratio("s", 0, 2 << 20).is_err());
    }
}
