//! The layer-index cache: what indexing one layer produced ([`LayerIndex`]), kept
//! as an **artifact** in our own binary format under a key naming the layer, the
//! artifact version and the span size, so that indexing the same layer again (in
//! another image, on another worker) reads none of its bytes.
//!
//! - [`key()`] gives `clip-layer-index/rs<ARTIFACT_VERSION>/span<SPAN_BYTES>/sha256_<hex>`.
//!   It differs from the Go clip's `clip-layer-index/v1/cp<MiB>/sha256_<hex>`, whose
//!   values are gob `LayerArtifact`s that beta9 shares across workers: we never
//!   write different bytes under those keys.
//! - [`encode()`] / [`decode()`]: the artifact (docs/FORMAT.md, "Layer-index
//!   artifacts"): magic, version, a header naming the layer digest, compressed
//!   size, span size and diff id, a zstd-compressed body (checkpoints, spans, tar
//!   entries), and a BLAKE3 checksum over all of it. The decoder checks every
//!   length and bound, and that the artifact is the one the caller expects.
//! - [`LayerIndexStore`]: where artifacts live (a key → bytes store), with
//!   [`DiskLayerIndexStore`], a bounded directory safe for several processes. The C
//!   ABI adds one that calls back into the caller (the Go package's
//!   `storage.LayerIndexCache`).
//!
//! A cache only ever saves work: a missing, corrupt or mismatching artifact is a
//! miss (with a warning), and a failed store never fails a build.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::codec::{Checkpoint, CheckpointKind, CodecIndex, Span};
use crate::digest::Digest;
use crate::error::{Error, IoContext, Result};
use crate::index::LayerIndex;
use crate::limits;
use crate::oci::{Compression, Layer};
use crate::tar::{Entry, EntryKind};

/// Version of the artifact format; part of every key, so a new version never
/// reads (or overwrites) an old one's artifacts.
pub const ARTIFACT_VERSION: u32 = 1;

/// First bytes of every artifact: non-ASCII, then `CLIX`, CRLF and ^Z, like the
/// archive's magic (a text-mode or truncating transfer shows).
pub const ARTIFACT_MAGIC: [u8; 8] = *b"\x89CLIX\r\n\x1a";

/// Size of the fixed header.
const HEADER_LEN: usize = 128;
/// Size of the trailing checksum (BLAKE3, full 32 bytes).
const CHECKSUM_LEN: usize = 32;
/// Largest decompressed body accepted (a layer with millions of files stays
/// far below it; a hostile header cannot make us allocate more). The body is
/// also bounded by [`limits::MAX_RATIO`] before it is inflated, and its entries
/// by [`limits::MAX_LAYER_ENTRIES`] and the path limits.
pub const MAX_BODY: u64 = 1 << 30;
/// Largest single string (path, link target, xattr name or value).
const MAX_STRING: u32 = 64 << 20;
/// zstd level of the body: artifacts are written once and read many times.
const BODY_ZSTD_LEVEL: i32 = 9;

/// The cache key of the artifact for the layer `digest` indexed with spans of
/// `span_size` bytes.
pub fn key(digest: &Digest, span_size: u64) -> String {
    format!(
        "clip-layer-index/rs{ARTIFACT_VERSION}/span{span_size}/sha256_{}",
        digest.hex()
    )
}

fn compression_code(c: Compression) -> u8 {
    match c {
        Compression::None => 0,
        Compression::Gzip => 1,
        Compression::Zstd => 2,
    }
}

fn kind_code(k: EntryKind) -> u8 {
    match k {
        EntryKind::File => 0,
        EntryKind::Hardlink => 1,
        EntryKind::Symlink => 2,
        EntryKind::CharDevice => 3,
        EntryKind::BlockDevice => 4,
        EntryKind::Directory => 5,
        EntryKind::Fifo => 6,
    }
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

/// Encodes `li`, indexed with spans of `span_size` bytes, as an artifact.
pub fn encode(li: &LayerIndex, span_size: u64) -> Result<Vec<u8>> {
    let r = &li.record;
    let mut body = Vec::new();
    body.extend_from_slice(&r.codec.uncompressed_size.to_le_bytes());
    body.extend_from_slice(&(r.codec.checkpoints.len() as u32).to_le_bytes());
    for c in &r.codec.checkpoints {
        body.extend_from_slice(&c.in_offset.to_le_bytes());
        body.extend_from_slice(&c.out_offset.to_le_bytes());
        body.push(c.bits);
        body.push(match c.kind {
            CheckpointKind::Start => 0,
            CheckpointKind::Block => 1,
        });
        match &c.window {
            Some(w) => {
                body.push(1);
                put_bytes(&mut body, w);
            }
            None => body.push(0),
        }
    }
    body.extend_from_slice(&(r.codec.spans.len() as u32).to_le_bytes());
    for s in &r.codec.spans {
        body.extend_from_slice(&s.out_offset.to_le_bytes());
        body.extend_from_slice(&s.checkpoint.to_le_bytes());
        body.extend_from_slice(&s.hash);
    }
    body.extend_from_slice(&(li.entries.len() as u32).to_le_bytes());
    for e in &li.entries {
        put_bytes(&mut body, &e.path);
        body.push(kind_code(e.kind));
        body.extend_from_slice(&e.mode.to_le_bytes());
        body.extend_from_slice(&e.uid.to_le_bytes());
        body.extend_from_slice(&e.gid.to_le_bytes());
        body.extend_from_slice(&e.mtime.to_le_bytes());
        body.extend_from_slice(&e.mtime_nsec.to_le_bytes());
        body.extend_from_slice(&e.size.to_le_bytes());
        body.extend_from_slice(&e.data_offset.to_le_bytes());
        body.extend_from_slice(&e.header_offset.to_le_bytes());
        put_bytes(&mut body, &e.link_target);
        body.extend_from_slice(&e.dev_major.to_le_bytes());
        body.extend_from_slice(&e.dev_minor.to_le_bytes());
        body.extend_from_slice(&(e.xattrs.len() as u32).to_le_bytes());
        for (n, v) in &e.xattrs {
            put_bytes(&mut body, n);
            put_bytes(&mut body, v);
        }
    }
    if body.len() as u64 > MAX_BODY {
        return Err(Error::Invalid(format!(
            "layer {}: index is {} bytes, more than an artifact holds",
            r.digest,
            body.len()
        )));
    }
    let stored = zstd::bulk::compress(&body, BODY_ZSTD_LEVEL)
        .map_err(|e| Error::format(format!("compressing a layer-index artifact: {e}")))?;
    let mut out = Vec::with_capacity(HEADER_LEN + stored.len() + CHECKSUM_LEN);
    out.extend_from_slice(&ARTIFACT_MAGIC);
    out.extend_from_slice(&ARTIFACT_VERSION.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes()); // flags
    out.extend_from_slice(&span_size.to_le_bytes());
    out.extend_from_slice(&r.compressed_size.to_le_bytes());
    out.extend_from_slice(r.digest.bytes());
    out.extend_from_slice(r.diff_id.bytes());
    out.push(compression_code(r.compression));
    out.extend_from_slice(&[0u8; 7]);
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(&(stored.len() as u64).to_le_bytes());
    out.resize(HEADER_LEN, 0);
    out.extend_from_slice(&stored);
    let sum = blake3::hash(&out);
    out.extend_from_slice(sum.as_bytes());
    Ok(out)
}

/// A checked reader over a byte slice: every read names what it reads, and
/// running past the end is an error, never a panic.
struct Cursor<'a> {
    b: &'a [u8],
    pos: usize,
    key: &'a str,
}

impl<'a> Cursor<'a> {
    fn bad(&self, what: &str) -> Error {
        Error::format(format!(
            "layer-index artifact {}: {what} (at body byte {})",
            self.key, self.pos
        ))
    }
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        if self.b.len() - self.pos < n {
            return Err(self.bad(&format!("truncated {what}")));
        }
        let s = &self.b[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.take(1, what)?[0])
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(
            self.take(4, what)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(
            self.take(8, what)?.try_into().expect("8 bytes"),
        ))
    }
    fn bytes(&mut self, what: &str) -> Result<Vec<u8>> {
        let n = self.u32(what)?;
        if n > MAX_STRING {
            return Err(self.bad(&format!("{what} of {n} bytes")));
        }
        Ok(self.take(n as usize, what)?.to_vec())
    }
    /// A record count, checked against the bytes left (each record is at least
    /// `min_size` bytes), so a bad count cannot make us allocate much.
    fn count(&mut self, what: &str, min_size: usize) -> Result<usize> {
        let n = self.u32(what)? as usize;
        if n.saturating_mul(min_size) > self.b.len() - self.pos {
            return Err(self.bad(&format!("{n} {what} do not fit in the body")));
        }
        Ok(n)
    }
}

/// Decodes the artifact `bytes` stored under `key` and checks it is the index of
/// `layer` with spans of `span_size` bytes. The record's media type is the
/// layer's (from the manifest, which may differ between images sharing a blob),
/// so the result is exactly what indexing `layer` gives.
pub fn decode(bytes: &[u8], key: &str, layer: &Layer, span_size: u64) -> Result<LayerIndex> {
    let bad = |m: String| Error::format(format!("layer-index artifact {key}: {m}"));
    if bytes.len() < HEADER_LEN + CHECKSUM_LEN {
        return Err(bad(format!("{} bytes is too short", bytes.len())));
    }
    if bytes[..8] != ARTIFACT_MAGIC {
        return Err(bad("not a clip layer-index artifact (bad magic)".into()));
    }
    let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().expect("4 bytes"));
    let u64_at = |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().expect("8 bytes"));
    let version = u32_at(8);
    if version != ARTIFACT_VERSION {
        return Err(bad(format!(
            "artifact version {version} (this build reads version {ARTIFACT_VERSION})"
        )));
    }
    let (body_end, sum) = bytes.split_at(bytes.len() - CHECKSUM_LEN);
    if blake3::hash(body_end).as_bytes() != sum {
        return Err(bad("checksum mismatch (corrupt artifact)".into()));
    }
    if u32_at(12) != 0 {
        return Err(bad(format!("unknown flags {:#x}", u32_at(12))));
    }
    let a_span = u64_at(16);
    let a_size = u64_at(24);
    let a_digest = Digest::from_bytes(bytes[32..64].try_into().expect("32 bytes"));
    let a_diff = Digest::from_bytes(bytes[64..96].try_into().expect("32 bytes"));
    let compression = match bytes[96] {
        0 => Compression::None,
        1 => Compression::Gzip,
        2 => Compression::Zstd,
        c => return Err(bad(format!("unknown compression {c}"))),
    };
    let raw_len = u64_at(104);
    let stored_len = u64_at(112);
    if bytes[97..104]
        .iter()
        .chain(&bytes[120..HEADER_LEN])
        .any(|&b| b != 0)
    {
        return Err(bad("reserved header bytes are not zero".into()));
    }
    if a_digest != layer.desc.digest {
        return Err(bad(format!(
            "is for layer {a_digest}, not {}",
            layer.desc.digest
        )));
    }
    if a_size != layer.desc.size {
        return Err(bad(format!(
            "says the layer is {a_size} bytes, the manifest {}",
            layer.desc.size
        )));
    }
    if a_span != span_size {
        return Err(bad(format!("has spans of {a_span} bytes, not {span_size}")));
    }
    if a_diff != layer.diff_id {
        return Err(bad(format!(
            "says the layer's diff_id is {a_diff}, the image config {}",
            layer.diff_id
        )));
    }
    let what = format!("layer-index artifact {key}: body");
    if raw_len > MAX_BODY {
        return Err(limits::exceeded(
            &what,
            raw_len,
            "bytes",
            MAX_BODY,
            "index::cache::MAX_BODY",
        ));
    }
    if stored_len != (body_end.len() - HEADER_LEN) as u64 {
        return Err(bad(format!(
            "header says {stored_len} body bytes, the artifact has {}",
            body_end.len() - HEADER_LEN
        )));
    }
    limits::check_ratio(&what, stored_len, raw_len)?;
    let body = crate::codec::zstd::decompress_exact(&body_end[HEADER_LEN..], raw_len)
        .map_err(|e| bad(format!("body: {e}")))?;
    let mut c = Cursor {
        b: &body,
        pos: 0,
        key,
    };
    let mut codec = CodecIndex {
        uncompressed_size: c.u64("uncompressed size")?,
        ..Default::default()
    };
    let n = c.count("checkpoints", 19)?;
    codec.checkpoints.reserve(n);
    for _ in 0..n {
        let in_offset = c.u64("checkpoint")?;
        let out_offset = c.u64("checkpoint")?;
        let bits = c.u8("checkpoint")?;
        let kind = match c.u8("checkpoint")? {
            0 => CheckpointKind::Start,
            1 => CheckpointKind::Block,
            k => return Err(c.bad(&format!("unknown checkpoint kind {k}"))),
        };
        let window = match c.u8("checkpoint")? {
            0 => None,
            1 => Some(c.bytes("window")?),
            w => return Err(c.bad(&format!("bad window flag {w}"))),
        };
        codec.checkpoints.push(Checkpoint {
            in_offset,
            bits,
            out_offset,
            kind,
            window,
        });
    }
    let n = c.count("spans", 44)?;
    codec.spans.reserve(n);
    for _ in 0..n {
        codec.spans.push(Span {
            out_offset: c.u64("span")?,
            checkpoint: c.u32("span")?,
            hash: c.take(32, "span")?.try_into().expect("32 bytes"),
        });
    }
    codec
        .validate(layer.desc.size)
        .map_err(|e| bad(e.to_string()))?;
    let n = c.count("entries", 77)?;
    limits::check_count(
        format_args!("layer-index artifact {key}"),
        n as u64,
        "entries",
        limits::MAX_LAYER_ENTRIES,
        "limits::MAX_LAYER_ENTRIES",
    )?;
    let mut budget = limits::LayerBudget::default();
    let mut entries = Vec::with_capacity(n);
    for _ in 0..n {
        let path = c.bytes("entry path")?;
        let kind = match c.u8("entry")? {
            0 => EntryKind::File,
            1 => EntryKind::Hardlink,
            2 => EntryKind::Symlink,
            3 => EntryKind::CharDevice,
            4 => EntryKind::BlockDevice,
            5 => EntryKind::Directory,
            6 => EntryKind::Fifo,
            k => return Err(c.bad(&format!("unknown entry kind {k}"))),
        };
        let mut e = Entry {
            path,
            kind,
            mode: c.u32("entry")?,
            uid: c.u64("entry")?,
            gid: c.u64("entry")?,
            mtime: c.u64("entry")? as i64,
            mtime_nsec: c.u32("entry")?,
            size: c.u64("entry")?,
            data_offset: c.u64("entry")?,
            header_offset: c.u64("entry")?,
            link_target: Vec::new(),
            dev_major: 0,
            dev_minor: 0,
            xattrs: Vec::new(),
        };
        e.link_target = c.bytes("link target")?;
        e.dev_major = c.u32("entry")?;
        e.dev_minor = c.u32("entry")?;
        let nx = c.count("xattrs", 8)?;
        for _ in 0..nx {
            let name = c.bytes("xattr name")?;
            let value = c.bytes("xattr value")?;
            e.xattrs.push((name, value));
        }
        if e.mode > 0o7777
            || e.mtime_nsec >= 1_000_000_000
            || e.header_offset > e.data_offset
            || e.data_offset
                .checked_add(e.size)
                .is_none_or(|end| end > codec.uncompressed_size)
        {
            return Err(c.bad(&format!(
                "entry {:?} is out of range",
                String::from_utf8_lossy(&e.path)
            )));
        }
        budget.add(&e).map_err(|err| bad(err.to_string()))?;
        entries.push(e);
    }
    if c.pos != body.len() {
        return Err(c.bad("trailing bytes after the entries"));
    }
    Ok(LayerIndex {
        record: crate::archive::LayerRecord {
            digest: a_digest,
            media_type: layer.desc.media_type.clone(),
            compressed_size: a_size,
            compression,
            diff_id: a_diff,
            codec,
        },
        entries,
    })
}

/// Where layer-index artifacts live: a key → bytes store. Implementations decide
/// durability and sharing; callers treat every error as a miss (`get`) or as
/// nothing stored (`put`).
pub trait LayerIndexStore: Send + Sync {
    /// The bytes stored under `key`, or `None` if there are none.
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>>;
    /// Stores `data` under `key`, replacing what was there.
    fn put(&self, key: &str, data: &[u8]) -> Result<()>;
    /// Names the store, for messages (`"disk layer-index cache /var/cache/clip/li"`).
    fn describe(&self) -> String;
}

/// Default size limit of a [`DiskLayerIndexStore`]: 1 GiB (an artifact is a few
/// hundred KiB to a few MiB per layer, so thousands of layers).
pub const DEFAULT_DISK_LIMIT: u64 = 1 << 30;

/// Temporary files older than this are left over from a crashed writer and are
/// removed by the next eviction pass.
const STALE_TEMP: Duration = Duration::from_secs(3600);

/// Prefix of temporary files; entry names never start with a dot.
const TEMP_PREFIX: &str = ".tmp-";

/// A [`LayerIndexStore`] in a directory: one file per key, written to a temporary
/// file and renamed (readers never see half a file; several processes may share
/// the directory), bounded in total size (least recently used first out: a hit
/// bumps the file's mtime, and a put that takes the total past the limit evicts
/// the oldest files down to 90% of it).
///
/// Keys may be any bytes: a file's name is the key with every byte outside
/// `[A-Za-z0-9._-]` replaced by `_` (cut to 96 bytes), then `-` and 32 hex digits
/// of the key's BLAKE3 hash. A name is thus always one plain path component inside
/// the directory (never `..`, never a `/`), and distinct keys never share a file.
pub struct DiskLayerIndexStore {
    dir: PathBuf,
    limit: u64,
}

impl DiskLayerIndexStore {
    /// Opens (creating it if needed) the store in `dir`, bounded to `limit` bytes
    /// (0: [`DEFAULT_DISK_LIMIT`]). Files are created readable by their owner
    /// only (an index lists an image's files).
    pub fn open(dir: impl AsRef<Path>, limit: u64) -> Result<DiskLayerIndexStore> {
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir).ctx("creating layer-index cache directory", &dir)?;
        if !dir.is_dir() {
            return Err(Error::Invalid(format!(
                "layer-index cache {} is not a directory",
                dir.display()
            )));
        }
        Ok(DiskLayerIndexStore {
            dir,
            limit: if limit == 0 {
                DEFAULT_DISK_LIMIT
            } else {
                limit
            },
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The size limit in bytes.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// The file holding `key` (see the type's docs for the mapping).
    pub fn path_of(&self, key: &[u8]) -> PathBuf {
        self.dir.join(file_name(key))
    }

    /// The bytes stored under `key` (any bytes), or `None`.
    pub fn get_bytes(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        check_key(key)?;
        let p = self.path_of(key);
        match std::fs::read(&p) {
            Ok(data) => {
                // Least recently used goes first: a hit makes the file young.
                // Best effort (a read-only cache still serves).
                if let Ok(f) = std::fs::File::options().write(true).open(&p) {
                    let _ = f.set_modified(SystemTime::now());
                }
                Ok(Some(data))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("reading", &p, e)),
        }
    }

    /// Stores `data` under `key` (any bytes), atomically, then evicts if the
    /// directory is past its limit.
    pub fn put_bytes(&self, key: &[u8], data: &[u8]) -> Result<()> {
        check_key(key)?;
        if data.len() as u64 > self.limit {
            return Err(Error::Invalid(format!(
                "{} bytes do not fit in layer-index cache {} (limit {})",
                data.len(),
                self.dir.display(),
                self.limit
            )));
        }
        let p = self.path_of(key);
        let mut tmp = tempfile::Builder::new()
            .prefix(TEMP_PREFIX)
            .tempfile_in(&self.dir)
            .ctx("creating a temporary file in", &self.dir)?;
        tmp.write_all(data).ctx("writing", tmp.path())?;
        tmp.as_file().sync_data().ctx("syncing", tmp.path())?;
        tmp.persist(&p)
            .map_err(|e| Error::io("renaming into", &p, e.error))?;
        self.evict();
        Ok(())
    }

    /// Removes the least recently used entries until the directory holds at most
    /// 90% of the limit (if it holds more than the limit), and stale temporary
    /// files. Races with other processes are harmless: a file gone already is
    /// skipped, and a reader that loses its file has a miss.
    fn evict(&self) {
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let now = SystemTime::now();
        let mut files = Vec::new();
        let mut total = 0u64;
        for e in rd.flatten() {
            let Ok(md) = e.metadata() else { continue };
            if !md.is_file() {
                continue;
            }
            let mtime = md.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            if e.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
                if now.duration_since(mtime).is_ok_and(|age| age > STALE_TEMP) {
                    let _ = std::fs::remove_file(e.path());
                }
                continue;
            }
            total += md.len();
            files.push((mtime, md.len(), e.path()));
        }
        if total <= self.limit {
            return;
        }
        files.sort();
        let target = self.limit / 10 * 9;
        for (_, len, path) in files {
            if total <= target {
                break;
            }
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    tracing::debug!(path = %path.display(), "layer-index cache: evicted");
                    total -= len;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => total -= len,
                Err(e) => {
                    tracing::warn!(path = %path.display(), "layer-index cache: evicting: {e}");
                }
            }
        }
    }
}

impl LayerIndexStore for DiskLayerIndexStore {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.get_bytes(key.as_bytes())
    }

    fn put(&self, key: &str, data: &[u8]) -> Result<()> {
        self.put_bytes(key.as_bytes(), data)
    }

    fn describe(&self) -> String {
        format!("disk layer-index cache {}", self.dir.display())
    }
}

/// Longest key accepted.
const MAX_KEY: usize = 4096;

fn check_key(key: &[u8]) -> Result<()> {
    if key.is_empty() || key.len() > MAX_KEY {
        return Err(Error::Invalid(format!(
            "layer-index cache key of {} bytes (must be 1 to {MAX_KEY})",
            key.len()
        )));
    }
    Ok(())
}

/// The file name of `key`: a readable prefix, then a hash that makes it unique.
fn file_name(key: &[u8]) -> String {
    let mut name: String = key
        .iter()
        .take(96)
        .map(|&b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-' => b as char,
            _ => '_',
        })
        .collect();
    if name.starts_with('.') {
        name.replace_range(..1, "_");
    }
    let h = blake3::hash(key);
    name.push('-');
    name.push_str(&hex::encode(&h.as_bytes()[..16]));
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_stay_inside() {
        for k in [
            &b".."[..],
            b"../../etc/passwd",
            b"/abs",
            b".",
            b"a/b\0c",
            b"\xff\xfe",
        ] {
            let n = file_name(k);
            assert!(
                !n.contains('/') && !n.starts_with('.') && n.len() < 200,
                "{n}"
            );
        }
        assert_ne!(file_name(b"a/b"), file_name(b"a_b"));
        let long = vec![b'x'; 4000];
        assert!(file_name(&long).len() <= 96 + 33);
    }

    #[test]
    fn disk_round_trip_and_eviction() {
        let d = tempfile::tempdir().unwrap();
        let s = DiskLayerIndexStore::open(d.path().join("c"), 10_000).unwrap();
        assert_eq!(s.get("k").unwrap(), None);
        s.put("../k", b"one").unwrap();
        assert_eq!(s.get("../k").unwrap().as_deref(), Some(&b"one"[..]));
        assert!(s.path_of(b"../k").starts_with(d.path().join("c")));
        // Over the limit: the oldest go first.
        for i in 0..5 {
            s.put(&format!("big{i}"), &[i as u8; 3000]).unwrap();
            std::thread::sleep(Duration::from_millis(15));
        }
        let total: u64 = std::fs::read_dir(s.dir())
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum();
        assert!(total <= 10_000, "{total}");
        assert_eq!(s.get("big0").unwrap(), None);
        assert!(s.get("big4").unwrap().is_some());
        assert!(s.put("huge", &[0; 20_000]).is_err());
        assert!(s.get("").is_err());
    }
}
