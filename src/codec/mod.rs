//! Decompression with checkpoints: random access into gzip, zstd and plain layers.
//!
//! Indexing a layer streams its blob once through a codec indexer, which emits the
//! uncompressed bytes (for the tar parser and the diff_id) and records:
//!
//! - **checkpoints**, places where decompression can start: the start of a gzip
//!   member or zstd frame ([`CheckpointKind::Start`]), or a DEFLATE block boundary in
//!   the middle of a gzip member ([`CheckpointKind::Block`]) together with the part of
//!   the preceding 32 KiB window that later data actually references (the rest is
//!   zeroed, and the window is stored zstd-compressed);
//! - **spans**, consecutive ranges of the uncompressed stream of at most `span_size`
//!   bytes, each with the checkpoint to decode it from and a BLAKE3 hash of its bytes,
//!   so lazily fetched data can be verified.
//!
//! A span boundary is placed at the last checkpoint candidate that keeps the span at
//! most `span_size` long. When a stream has no candidate for longer than that (a
//! single-frame zstd layer, a huge DEFLATE block) spans are still cut every
//! `span_size` bytes for hashing, but share the previous checkpoint: reading such a
//! span decodes from that checkpoint, which `inspect` reports honestly.
//!
//! Reading (`decode_span`) takes a checkpoint, the compressed bytes from its offset,
//! and produces the uncompressed bytes of the requested range.

pub mod gzip;
pub mod inflate;
pub mod zstd;

use std::io::Read;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::oci::Compression;

/// Default span size: 2 MiB of uncompressed data.
pub const DEFAULT_SPAN_SIZE: u64 = 2 << 20;
/// Smallest span size accepted (a window-use tracker needs 32 KiB of output).
pub const MIN_SPAN_SIZE: u64 = 64 << 10;
/// Largest span size accepted.
pub const MAX_SPAN_SIZE: u64 = 256 << 20;
/// zstd level used for stored windows.
const WINDOW_ZSTD_LEVEL: i32 = 3;

/// How decoding resumes at a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckpointKind {
    /// At the start of a gzip member, zstd frame, or (plain) anywhere: no state.
    Start,
    /// At a DEFLATE block boundary inside a gzip member: needs `bits` and the window.
    Block,
}

/// A place where decompression can start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// Byte offset in the compressed blob.
    pub in_offset: u64,
    /// For [`CheckpointKind::Block`]: low bits of the byte at `in_offset` that belong
    /// to the previous block (0..=7).
    pub bits: u8,
    /// Offset in the uncompressed stream.
    pub out_offset: u64,
    /// How to resume.
    pub kind: CheckpointKind,
    /// For `Block`: the zstd-compressed sparse window (32 KiB, or less near the start,
    /// right-aligned, unreferenced bytes zeroed).
    pub window: Option<Vec<u8>>,
}

/// A hashed range of the uncompressed stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// Offset of the span's first byte in the uncompressed stream.
    pub out_offset: u64,
    /// Index of the checkpoint to decode this span from.
    pub checkpoint: u32,
    /// BLAKE3 of the span's bytes.
    pub hash: [u8; 32],
}

/// A candidate checkpoint reported by a codec while indexing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Boundary {
    /// Byte offset in the compressed blob.
    pub in_offset: u64,
    /// Bits of that byte already consumed.
    pub bits: u8,
    /// Offset in the uncompressed stream.
    pub out_offset: u64,
    /// How decoding would resume there.
    pub kind: CheckpointKind,
}

/// The random-access index of one layer's blob.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CodecIndex {
    /// Checkpoints, in stream order; the first is always at offset 0.
    pub checkpoints: Vec<Checkpoint>,
    /// Spans, in stream order, covering the whole uncompressed stream.
    pub spans: Vec<Span>,
    /// Size of the uncompressed stream.
    pub uncompressed_size: u64,
}

impl CodecIndex {
    /// The span containing uncompressed offset `off`.
    pub fn span_at(&self, off: u64) -> Option<usize> {
        if off >= self.uncompressed_size {
            return None;
        }
        Some(self.spans.partition_point(|s| s.out_offset <= off) - 1)
    }

    /// Uncompressed range `[start, end)` of span `i`.
    pub fn span_range(&self, i: usize) -> (u64, u64) {
        let start = self.spans[i].out_offset;
        let end = self
            .spans
            .get(i + 1)
            .map_or(self.uncompressed_size, |s| s.out_offset);
        (start, end)
    }

    /// Compressed byte range `[start, end)` needed to decode spans `first..=last`.
    pub fn compressed_range(&self, first: usize, last: usize, blob_size: u64) -> (u64, u64) {
        let cp = &self.checkpoints[self.spans[first].checkpoint as usize];
        let (_, out_end) = self.span_range(last);
        // The first checkpoint at or after the end bounds the bytes needed; its byte
        // may be shared with the end of the range (bit offsets), hence +1.
        let end = self
            .checkpoints
            .iter()
            .find(|c| c.out_offset >= out_end && c.in_offset > cp.in_offset)
            .map_or(blob_size, |c| (c.in_offset + 1).min(blob_size));
        (cp.in_offset, end)
    }

    /// Checks internal consistency (used by archive readers on untrusted input).
    pub fn validate(&self, blob_size: u64) -> Result<()> {
        let bad = |m: &str| Err(Error::format(format!("layer index: {m}")));
        if self.checkpoints.is_empty() != self.spans.is_empty() {
            return bad("checkpoints and spans disagree");
        }
        let mut prev: Option<&Checkpoint> = None;
        for c in &self.checkpoints {
            if c.bits > 7 || c.in_offset > blob_size || c.out_offset > self.uncompressed_size {
                return bad("checkpoint out of range");
            }
            if (c.kind == CheckpointKind::Block) != c.window.is_some() {
                return bad("checkpoint window missing or unexpected");
            }
            if let Some(p) = prev
                && (c.in_offset < p.in_offset || c.out_offset < p.out_offset)
            {
                return bad("checkpoints out of order");
            }
            prev = Some(c);
        }
        let mut prev_out = None;
        for s in &self.spans {
            let Some(cp) = self.checkpoints.get(s.checkpoint as usize) else {
                return bad("span names a missing checkpoint");
            };
            if cp.out_offset > s.out_offset || s.out_offset >= self.uncompressed_size.max(1) {
                return bad("span out of range");
            }
            if prev_out.is_some_and(|p| s.out_offset <= p) {
                return bad("spans out of order");
            }
            prev_out = Some(s.out_offset);
        }
        if self.spans.first().is_some_and(|s| s.out_offset != 0) {
            return bad("first span does not start at 0");
        }
        Ok(())
    }
}

/// Cuts the uncompressed stream into spans and keeps checkpoints, for any codec.
pub(crate) struct SpanBuilder {
    span_size: u64,
    /// Uncompressed bytes from `buf_base` on (history for windows + current span).
    buf: Vec<u8>,
    buf_base: u64,
    span_start: u64,
    cur_checkpoint: u32,
    candidate: Option<Boundary>,
    /// Every offset is a checkpoint (plain tar).
    anywhere: bool,
    /// Checkpoints created since the last call to `take_new_block_checkpoints`.
    new_block: Vec<(usize, Vec<u8>)>,
    index: CodecIndex,
}

impl SpanBuilder {
    pub(crate) fn new(span_size: u64, anywhere: bool) -> SpanBuilder {
        SpanBuilder {
            span_size,
            buf: Vec::with_capacity(span_size as usize + 64 * 1024),
            buf_base: 0,
            span_start: 0,
            cur_checkpoint: 0,
            candidate: None,
            anywhere,
            new_block: Vec::new(),
            index: CodecIndex {
                checkpoints: vec![Checkpoint {
                    in_offset: 0,
                    bits: 0,
                    out_offset: 0,
                    kind: CheckpointKind::Start,
                    window: None,
                }],
                spans: Vec::new(),
                uncompressed_size: 0,
            },
        }
    }

    fn end(&self) -> u64 {
        self.buf_base + self.buf.len() as u64
    }

    /// Adds uncompressed bytes.
    pub(crate) fn data(&mut self, d: &[u8]) {
        let mut d = d;
        // Feed in pieces so a huge chunk cannot skip over a cut.
        while !d.is_empty() {
            let room = (self.span_start + self.span_size).saturating_sub(self.end()) as usize;
            let take = d.len().min(room.max(1));
            self.buf.extend_from_slice(&d[..take]);
            d = &d[take..];
            self.maybe_close();
        }
    }

    /// Reports a place where decoding could resume (at the current end).
    pub(crate) fn boundary(&mut self, b: Boundary) {
        debug_assert_eq!(b.out_offset, self.end());
        if b.out_offset > self.span_start {
            self.candidate = Some(b);
        } else if b.out_offset == 0 && b.kind == CheckpointKind::Start {
            // The stream start is checkpoint 0 already.
        }
        self.maybe_close();
    }

    fn maybe_close(&mut self) {
        while self.end() - self.span_start > self.span_size {
            if let Some(c) = self.candidate.take() {
                let cp = Checkpoint {
                    in_offset: c.in_offset,
                    bits: c.bits,
                    out_offset: c.out_offset,
                    kind: c.kind,
                    window: None,
                };
                self.close_at(c.out_offset, Some(cp));
            } else if self.anywhere {
                let at = self.span_start + self.span_size;
                let cp = Checkpoint {
                    in_offset: at,
                    bits: 0,
                    out_offset: at,
                    kind: CheckpointKind::Start,
                    window: None,
                };
                self.close_at(at, Some(cp));
            } else {
                self.close_at(self.span_start + self.span_size, None);
            }
        }
    }

    fn close_at(&mut self, pos: u64, new_cp: Option<Checkpoint>) {
        let lo = (self.span_start - self.buf_base) as usize;
        let hi = (pos - self.buf_base) as usize;
        let hash = *blake3::hash(&self.buf[lo..hi]).as_bytes();
        self.index.spans.push(Span {
            out_offset: self.span_start,
            checkpoint: self.cur_checkpoint,
            hash,
        });
        if let Some(cp) = new_cp {
            if cp.kind == CheckpointKind::Block {
                let wlo = hi.saturating_sub(inflate::WINDOW_SIZE);
                self.new_block
                    .push((self.index.checkpoints.len(), self.buf[wlo..hi].to_vec()));
            }
            self.index.checkpoints.push(cp);
            self.cur_checkpoint = (self.index.checkpoints.len() - 1) as u32;
        }
        self.span_start = pos;
        if self.candidate.is_some_and(|c| c.out_offset <= pos) {
            self.candidate = None;
        }
        // Keep 32 KiB of history before the new span for the next window.
        let keep_from = pos
            .saturating_sub(inflate::WINDOW_SIZE as u64)
            .max(self.buf_base);
        let drop = (keep_from - self.buf_base) as usize;
        if drop > 0 {
            self.buf.drain(..drop);
            self.buf_base = keep_from;
        }
    }

    /// Block checkpoints created since the last call, with their full windows.
    pub(crate) fn take_new_block_checkpoints(&mut self) -> Vec<(usize, Vec<u8>)> {
        std::mem::take(&mut self.new_block)
    }

    /// Stores the compressed sparse window of checkpoint `i`.
    pub(crate) fn set_window(&mut self, i: usize, sparse: &[u8]) -> Result<()> {
        let z = ::zstd::bulk::compress(sparse, WINDOW_ZSTD_LEVEL)
            .map_err(|e| Error::format(format!("compressing a window: {e}")))?;
        self.index.checkpoints[i].window = Some(z);
        Ok(())
    }

    /// Checkpoint `i` (checkpoints are only appended, so indexes are stable).
    pub(crate) fn checkpoint(&self, i: usize) -> &Checkpoint {
        &self.index.checkpoints[i]
    }

    /// The checkpoint at which the current span starts (its in_offset bounds the
    /// compressed history a codec must keep).
    pub(crate) fn current_checkpoint(&self) -> &Checkpoint {
        &self.index.checkpoints[self.cur_checkpoint as usize]
    }

    /// Closes the last span and returns the index.
    pub(crate) fn finish(mut self) -> CodecIndex {
        let end = self.end();
        if end > self.span_start {
            self.close_at(end, None);
        }
        self.index.uncompressed_size = end;
        if self.index.spans.is_empty() {
            self.index.checkpoints.clear();
        }
        self.index
    }
}

/// Streams one layer blob through its codec, reporting uncompressed data to `sink`
/// and building the [`CodecIndex`].
pub trait StreamIndexer: Send {
    /// Feeds the next compressed bytes.
    fn push(&mut self, input: &[u8], sink: &mut dyn FnMut(&[u8]) -> Result<()>) -> Result<()>;
    /// Ends the stream; errors if it was truncated.
    fn finish(self: Box<Self>, sink: &mut dyn FnMut(&[u8]) -> Result<()>) -> Result<CodecIndex>;
}

/// A [`StreamIndexer`] for `compression` with spans of `span_size` bytes.
pub fn stream_indexer(compression: Compression, span_size: u64) -> Box<dyn StreamIndexer> {
    match compression {
        Compression::Gzip => Box::new(gzip::GzipIndexer::new(span_size)),
        Compression::Zstd => Box::new(zstd::ZstdIndexer::new(span_size)),
        Compression::None => Box::new(PlainIndexer(SpanBuilder::new(span_size, true))),
    }
}

struct PlainIndexer(SpanBuilder);

impl StreamIndexer for PlainIndexer {
    fn push(&mut self, input: &[u8], sink: &mut dyn FnMut(&[u8]) -> Result<()>) -> Result<()> {
        self.0.data(input);
        sink(input)
    }
    fn finish(self: Box<Self>, _sink: &mut dyn FnMut(&[u8]) -> Result<()>) -> Result<CodecIndex> {
        Ok(self.0.finish())
    }
}

/// Decodes `len` uncompressed bytes starting `skip` bytes after checkpoint `cp`,
/// reading compressed bytes from `input` (positioned at `cp.in_offset`) as needed and
/// handing the output to `sink` in order. Returns the number of bytes decoded in all
/// (skipped ones included), for accounting.
pub fn decode_stream(
    compression: Compression,
    cp: &Checkpoint,
    input: &mut dyn Read,
    skip: u64,
    len: u64,
    sink: &mut dyn FnMut(&[u8]) -> Result<()>,
) -> Result<u64> {
    if len == 0 {
        return Ok(0);
    }
    let mut out = Limit {
        skip,
        left: len,
        produced: 0,
        sink,
    };
    match compression {
        Compression::None => {
            let mut buf = vec![0u8; 256 << 10];
            while out.left > 0 {
                let n = read_some(input, &mut buf)?;
                if n == 0 {
                    return Err(Error::format("plain layer: compressed range ends early"));
                }
                out.put(&buf[..n])?;
            }
        }
        Compression::Gzip => gzip::decode_stream(cp, input, &mut out)?,
        Compression::Zstd => zstd::decode_stream(input, &mut out)?,
    }
    Ok(out.produced)
}

/// Reads into `buf`, retrying on interruption; 0 means end of input.
pub(crate) fn read_some(input: &mut dyn Read, buf: &mut [u8]) -> Result<usize> {
    loop {
        match input.read(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::format(format!("reading compressed data: {e}"))),
        }
    }
}

/// Skips the first `skip` bytes of a decoded stream and passes the next `left`
/// bytes to a sink.
pub(crate) struct Limit<'a> {
    skip: u64,
    left: u64,
    produced: u64,
    sink: &'a mut dyn FnMut(&[u8]) -> Result<()>,
}

impl Limit<'_> {
    /// Takes decoded bytes; returns true once everything wanted has been passed on.
    pub(crate) fn put(&mut self, data: &[u8]) -> Result<bool> {
        self.produced += data.len() as u64;
        let mut d = data;
        if self.skip > 0 {
            let s = self.skip.min(d.len() as u64) as usize;
            d = &d[s..];
            self.skip -= s as u64;
        }
        let n = (d.len() as u64).min(self.left) as usize;
        if n > 0 {
            (self.sink)(&d[..n])?;
            self.left -= n as u64;
        }
        Ok(self.left == 0)
    }

    /// Whether everything wanted has been passed on.
    pub(crate) fn done(&self) -> bool {
        self.left == 0
    }
}

/// Decompresses a stored window.
pub fn window_bytes(cp: &Checkpoint) -> Result<Vec<u8>> {
    match &cp.window {
        None => Ok(Vec::new()),
        Some(z) => {
            let w = ::zstd::bulk::decompress(z, inflate::WINDOW_SIZE)
                .map_err(|e| Error::format(format!("corrupt checkpoint window: {e}")))?;
            Ok(w)
        }
    }
}
