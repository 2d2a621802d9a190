//! An opened archive bound to the sources of its layers: read any file's bytes by
//! random access (decoding only the spans the range touches, verified against the
//! span hashes), or stream whole layers.
//!
//! The content store of a mount builds on this with an on-disk span cache; here a
//! one-span memory cache serves runs of small reads from the same span.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::archive::{self, Archive};
use crate::codec;
use crate::error::{Error, Result};
use crate::source::{FileSource, RangeSource};
use crate::tree::{Kind, Tree};

/// How many times span data that fails verification (its BLAKE3 hash, or the
/// decoder: corrupted in flight) is fetched again before the read fails (EIO
/// through a mount).
pub const SPAN_REFETCHES: u32 = 2;

/// Counters of the work done reading, for tests, `--stats` and benchmarks.
#[derive(Debug, Default)]
pub struct Stats {
    spans_decoded: AtomicU64,
    bytes_decoded: AtomicU64,
    compressed_bytes_read: AtomicU64,
    cache_hits: AtomicU64,
}

/// A snapshot of [`Stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct StatsSnapshot {
    /// Spans decoded (each verified against its hash).
    pub spans_decoded: u64,
    /// Uncompressed bytes produced by decoders (including bytes skipped after a checkpoint).
    pub bytes_decoded: u64,
    /// Compressed bytes read from layer sources.
    pub compressed_bytes_read: u64,
    /// Reads served from the in-memory span cache.
    pub cache_hits: u64,
}

struct CachedSpan {
    layer: usize,
    span: usize,
    data: Arc<Vec<u8>>,
}

/// Where an image's layer bytes are read from (see [`Image::open`]).
#[derive(Debug, Clone, Default)]
pub struct SourceOptions {
    /// A local OCI layout holding the layer blobs (wins over the storage reference).
    pub layout: Option<std::path::PathBuf>,
    /// How to reach the registry of the archive's storage reference.
    pub registry: crate::registry::RegistryOptions,
    /// For a `.rclip`: read the data from this object instead of the one the
    /// archive names (the worker's `StorageInfo` override).
    pub s3: Option<crate::s3::S3Location>,
    /// How to reach S3 (credentials, retries).
    pub s3_options: crate::s3::S3Options,
    /// For a `.rclip`: read the data from this local full archive instead of S3
    /// (the worker's `StorageModeOverride == local`).
    pub data_archive: Option<std::path::PathBuf>,
    /// Where archives of the Go clip are converted to be served (re-indexed v2
    /// archives, downloaded `.rclip` data; see [`crate::goclip`]); `None`: the
    /// default cache directory's `goclip/`.
    pub goclip_dir: Option<std::path::PathBuf>,
}

/// An archive with a source for each layer.
pub struct Image {
    archive: Archive,
    sources: Vec<Arc<dyn RangeSource>>,
    stats: Stats,
    cache: Mutex<Option<CachedSpan>>,
}

impl Image {
    /// Binds `archive` to one source per layer (checking their sizes).
    pub fn new(archive: Archive, sources: Vec<Arc<dyn RangeSource>>) -> Result<Image> {
        if sources.len() != archive.layers.len() {
            return Err(Error::Invalid(format!(
                "{} layer sources for {} layers",
                sources.len(),
                archive.layers.len()
            )));
        }
        for (l, s) in archive.layers.iter().zip(&sources) {
            if s.size() != l.compressed_size {
                return Err(Error::format(format!(
                    "{} is {} bytes, but layer {} is {} bytes",
                    s.describe(),
                    s.size(),
                    l.digest,
                    l.compressed_size
                )));
            }
        }
        Ok(Image {
            archive,
            sources,
            stats: Stats::default(),
            cache: Mutex::new(None),
        })
    }

    /// Opens the archive at `archive_path` with its layers read from where `opts`
    /// says: the layout given, else the registry the archive's storage reference
    /// names, else the layout it was indexed from if that is still there.
    ///
    /// A v1 archive reads its data from its own DATA section; a `.rclip` from the
    /// full archive in S3 it names (or `opts.s3`), or from `opts.data_archive`.
    ///
    /// An archive of the Go clip is served as [`crate::goclip`] describes.
    pub fn open(archive_path: &Path, opts: &SourceOptions) -> Result<Image> {
        if crate::goclip::is_goclip_file(archive_path) {
            return crate::goclip::open_image(archive_path, opts);
        }
        let archive = archive::read(archive_path)?;
        Image::bind(archive, archive_path, opts)
    }

    /// Binds an archive already read from `archive_path` to the sources `opts`
    /// selects (see [`Image::open`]).
    pub fn bind(archive: Archive, archive_path: &Path, opts: &SourceOptions) -> Result<Image> {
        match archive.storage_kind() {
            archive::STORAGE_LOCAL => {
                let d = archive.data.expect("a local archive has a DATA section");
                return Image::with_data_file(archive, archive_path, d.offset);
            }
            archive::STORAGE_S3 => {
                let storage = archive.meta.storage.as_ref().expect("s3 storage");
                let offset = storage.data_offset.expect("checked by the reader");
                if let Some(full) = &opts.data_archive {
                    return Image::with_data_file(archive, full, offset);
                }
                let loc = opts
                    .s3
                    .clone()
                    .or_else(|| storage.s3.clone())
                    .expect("checked by the reader");
                let len = archive.layers[0].compressed_size;
                let src = crate::s3::S3Source::open(&loc, &opts.s3_options, offset, Some(len))?;
                return Image::new(archive, vec![Arc::new(src)]);
            }
            _ => {}
        }
        if let Some(layout) = &opts.layout {
            return Image::with_layout(archive, layout);
        }
        if let Some(s) = archive
            .meta
            .storage
            .as_ref()
            .filter(|s| !s.registry.is_empty())
        {
            let sources = crate::registry::source::layer_sources(&archive, s, &opts.registry)?;
            return Image::new(archive, sources);
        }
        if let Some(rest) = archive.meta.source.strip_prefix("oci:") {
            let dir = match crate::reference::Reference::parse(&archive.meta.source) {
                Ok(crate::reference::Reference::Layout { path, .. }) => path,
                _ => rest.into(),
            };
            if dir.join("oci-layout").is_file() {
                return Image::with_layout(archive, &dir);
            }
        }
        Err(Error::Invalid(format!(
            "the archive records no registry to fetch layers from and its source ({}) is not a layout here; give a layout",
            archive.meta.source
        )))
    }

    /// Opens the archive at `archive_path` with its layers read from the OCI layout
    /// at `layout` (blobs are looked up by digest).
    pub fn open_with_layout(archive_path: &Path, layout: &Path) -> Result<Image> {
        Image::with_layout(archive::read(archive_path)?, layout)
    }

    /// A v1 data layer read from `path` (this archive, or the full archive a
    /// `.rclip` was made from) at `offset`.
    fn with_data_file(archive: Archive, path: &Path, offset: u64) -> Result<Image> {
        let len = archive.layers[0].compressed_size;
        let file = std::fs::File::open(path).map_err(|e| Error::io("opening", path, e))?;
        let size = file
            .metadata()
            .map_err(|e| Error::io("reading metadata of", path, e))?
            .len();
        if offset.checked_add(len).is_none_or(|e| e > size) {
            return Err(Error::format(format!(
                "{} is {size} bytes: too short to hold this archive's data ({len} bytes at {offset})",
                path.display()
            )));
        }
        let src = FileSource::window(file, path, offset, len);
        Image::new(archive, vec![Arc::new(src)])
    }

    fn with_layout(archive: Archive, layout: &Path) -> Result<Image> {
        let mut sources: Vec<Arc<dyn RangeSource>> = Vec::new();
        for l in &archive.layers {
            let p = layout.join("blobs").join("sha256").join(l.digest.hex());
            let src = FileSource::open(&p).map_err(|e| e.with_layer(l.digest))?;
            sources.push(Arc::new(src));
        }
        Image::new(archive, sources)
    }

    /// The archive.
    pub fn archive(&self) -> &Archive {
        &self.archive
    }

    /// The merged tree.
    pub fn tree(&self) -> &Tree {
        &self.archive.tree
    }

    /// The counters so far.
    pub fn stats(&self) -> StatsSnapshot {
        StatsSnapshot {
            spans_decoded: self.stats.spans_decoded.load(Ordering::Relaxed),
            bytes_decoded: self.stats.bytes_decoded.load(Ordering::Relaxed),
            compressed_bytes_read: self.stats.compressed_bytes_read.load(Ordering::Relaxed),
            cache_hits: self.stats.cache_hits.load(Ordering::Relaxed),
        }
    }

    /// Reads up to `buf.len()` bytes of regular file `ino` at `offset`; returns the
    /// number read (0 at or past the end).
    pub fn read(&self, ino: u64, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let inode = self
            .tree()
            .inode(ino)
            .ok_or_else(|| Error::NotFound(format!("inode {ino}")))?;
        if inode.kind() != Kind::File {
            return Err(Error::Invalid(format!("inode {ino} is not a regular file")));
        }
        if offset >= inode.size {
            return Ok(0);
        }
        let n = (inode.size - offset).min(buf.len() as u64) as usize;
        self.read_layer(inode.b as usize, inode.a + offset, &mut buf[..n])?;
        Ok(n)
    }

    /// Fills `buf` with uncompressed bytes of layer `layer` at `off`.
    pub fn read_layer(&self, layer: usize, off: u64, buf: &mut [u8]) -> Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let l = self
            .archive
            .layers
            .get(layer)
            .ok_or_else(|| Error::NotFound(format!("layer {layer}")))?;
        let c = &l.codec;
        let end = off + buf.len() as u64;
        let (Some(first), Some(last)) = (c.span_at(off), c.span_at(end - 1)) else {
            return Err(Error::format(format!(
                "layer {}: range {off}..{end} lies outside its {} bytes",
                l.digest, c.uncompressed_size
            )));
        };
        let mut i = first;
        while i <= last {
            let cp = c.spans[i].checkpoint;
            let mut j = i;
            while j < last && c.spans[j + 1].checkpoint == cp {
                j += 1;
            }
            let mut copy = |pos: u64, data: &[u8]| {
                let lo = pos.max(off);
                let hi = (pos + data.len() as u64).min(end);
                if lo < hi {
                    buf[(lo - off) as usize..(hi - off) as usize]
                        .copy_from_slice(&data[(lo - pos) as usize..(hi - pos) as usize]);
                }
            };
            if i == j {
                let data = self.span_bytes(layer, i)?;
                copy(c.span_range(i).0, &data);
            } else {
                // Copies land by offset: a second pass overwrites the first.
                self.refetching(|| {
                    self.decode_spans(layer, i, j, &mut |pos, d| {
                        copy(pos, d);
                        Ok(())
                    })
                })?;
            }
            i = j + 1;
        }
        Ok(())
    }

    /// Streams the uncompressed layer in order from its start through offset `end`
    /// (exclusive; whole spans), verified span by span: `sink(offset, bytes)`.
    pub fn stream_layer(
        &self,
        layer: usize,
        end: u64,
        sink: &mut dyn FnMut(u64, &[u8]) -> Result<()>,
    ) -> Result<()> {
        let codec = &self.archive.layers[layer].codec;
        let end = end.min(codec.uncompressed_size);
        match end.checked_sub(1).and_then(|e| codec.span_at(e)) {
            Some(last) => self.decode_spans(layer, 0, last, sink),
            None => Ok(()),
        }
    }

    fn span_bytes(&self, layer: usize, span: usize) -> Result<Arc<Vec<u8>>> {
        if let Some(c) = &*self.cache.lock().expect("cache lock")
            && c.layer == layer
            && c.span == span
        {
            self.stats.cache_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(c.data.clone());
        }
        let data = Arc::new(self.decode_span(layer, span)?);
        *self.cache.lock().expect("cache lock") = Some(CachedSpan {
            layer,
            span,
            data: data.clone(),
        });
        Ok(data)
    }

    /// Decodes span `span` of `layer` into memory, verified against its hash.
    pub fn decode_span(&self, layer: usize, span: usize) -> Result<Vec<u8>> {
        let (s, e) = self.archive.layers[layer].codec.span_range(span);
        let mut data = Vec::with_capacity((e - s) as usize);
        self.refetching(|| {
            data.clear();
            self.decode_spans(layer, span, span, &mut |_, d| {
                data.extend_from_slice(d);
                Ok(())
            })
        })?;
        Ok(data)
    }

    /// Runs `f`, a decode of spans from the layer source, again when it fails for
    /// bad data (a span-hash mismatch or a decode error: bytes corrupted in
    /// flight), at most [`SPAN_REFETCHES`] more times; `f` must start over.
    pub(crate) fn refetching<T>(&self, mut f: impl FnMut() -> Result<T>) -> Result<T> {
        let mut refetched = 0;
        loop {
            match f() {
                Err(e)
                    if e.code() == crate::error::ErrorCode::Format
                        && refetched < SPAN_REFETCHES =>
                {
                    refetched += 1;
                    tracing::warn!(error = %e, "span data failed verification; fetching it again");
                }
                Err(e) if refetched > 0 => {
                    return Err(Error::format(format!(
                        "{e} (fetched {} times)",
                        refetched + 1
                    )));
                }
                r => return r,
            }
        }
    }

    /// [`Image::decode_spans`] handing out whole spans: `each(k, bytes)` once span
    /// `k` is decoded and verified, in order.
    pub(crate) fn decode_whole_spans(
        &self,
        layer: usize,
        first: usize,
        last: usize,
        each: &mut dyn FnMut(usize, Vec<u8>) -> Result<()>,
    ) -> Result<()> {
        let codec = &self.archive.layers[layer].codec;
        let mut cur: Vec<u8> = Vec::new();
        let mut span = first;
        self.decode_spans(layer, first, last, &mut |_, d| {
            let mut d = d;
            while !d.is_empty() {
                let (s, e) = codec.span_range(span);
                let n = ((e - s) as usize - cur.len()).min(d.len());
                cur.extend_from_slice(&d[..n]);
                d = &d[n..];
                if cur.len() as u64 == e - s {
                    // decode_spans hands out a span's last piece once verified.
                    each(span, std::mem::take(&mut cur))?;
                    span += 1;
                }
            }
            Ok(())
        })
    }

    /// Decodes spans `first..=last` in one pass from the first one's checkpoint,
    /// verifying each span's hash, and hands out `(offset, bytes)` in order. The
    /// piece that completes a span is handed out only after the span's hash
    /// matched, so a sink may keep (cache) each span as its last piece arrives.
    pub(crate) fn decode_spans(
        &self,
        layer: usize,
        first: usize,
        last: usize,
        sink: &mut dyn FnMut(u64, &[u8]) -> Result<()>,
    ) -> Result<()> {
        let l = &self.archive.layers[layer];
        let c = &l.codec;
        let source = &*self.sources[layer];
        let cp = &c.checkpoints[c.spans[first].checkpoint as usize];
        let (start, _) = c.span_range(first);
        let (_, end) = c.span_range(last);
        let (cin, cend) = c.compressed_range(first, last, source.size());
        let mut reader = Counting {
            inner: source.reader(cin, cend)?,
            bytes_read: 0,
            failed: false,
        };
        let mut k = first;
        let mut k_end = c.span_range(k).1;
        let mut hasher = blake3::Hasher::new();
        let mut pos = start;
        let mut verify = |data: &[u8]| -> Result<()> {
            let mut d = data;
            while !d.is_empty() {
                let n = ((k_end - pos) as usize).min(d.len());
                let (piece, at) = (&d[..n], pos);
                hasher.update(piece);
                d = &d[n..];
                pos += n as u64;
                if pos != k_end {
                    sink(at, piece)?;
                    continue;
                }
                // A span's last bytes reach the sink only once the span is
                // verified: a sink may keep each span as it completes.
                let got = hasher.finalize();
                if got.as_bytes() != &c.spans[k].hash {
                    return Err(Error::DigestMismatch {
                        what: format!(
                            "span {k} of layer {} (data fetched from {})",
                            l.digest,
                            source.describe()
                        ),
                        expected: hex::encode(c.spans[k].hash),
                        actual: got.to_hex().to_string(),
                    });
                }
                hasher.reset();
                k += 1;
                if k <= last {
                    k_end = c.span_range(k).1;
                }
                sink(at, piece)?;
            }
            Ok(())
        };
        let produced = codec::decode_stream(
            l.compression,
            cp,
            &mut reader,
            start - cp.out_offset,
            end - start,
            &mut verify,
        )
        .map_err(|e| match e {
            Error::DigestMismatch { .. } => e.with_layer(l.digest),
            // The sink stopped the pass.
            Error::Canceled => e,
            // The source failed after its own retries: a network error, not bad
            // data (which is fetched again).
            e if reader.failed => Error::Network(format!(
                "span {first} (data fetched from {}): {e}",
                source.describe()
            ))
            .with_layer(l.digest),
            e => Error::format(format!(
                "span {first} (data fetched from {}): {e}",
                source.describe()
            ))
            .with_layer(l.digest),
        });
        // Counted whether the pass completed or not: the work was done.
        self.stats
            .spans_decoded
            .fetch_add((k - first) as u64, Ordering::Relaxed);
        let decoded = match &produced {
            Ok(n) => *n,
            Err(_) => pos - cp.out_offset,
        };
        self.stats
            .bytes_decoded
            .fetch_add(decoded, Ordering::Relaxed);
        self.stats
            .compressed_bytes_read
            .fetch_add(reader.bytes_read, Ordering::Relaxed);
        produced.map(|_| ())
    }
}

/// Counts the bytes read through it.
struct Counting<R> {
    inner: R,
    bytes_read: u64,
    /// A read of the source failed (the registry, not the data).
    failed: bool,
}

impl<R: std::io::Read> std::io::Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self
            .inner
            .read(buf)
            .inspect_err(|e| self.failed |= e.kind() != std::io::ErrorKind::Interrupted)?;
        self.bytes_read += n as u64;
        Ok(n)
    }
}
