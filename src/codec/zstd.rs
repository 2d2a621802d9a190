//! zstd layers: every frame start is a checkpoint candidate. Most zstd layers have
//! one frame (the `zstd` tool writes one), so they have one checkpoint at offset 0:
//! random reads then decode from the start, which `clipctl inspect` states plainly.
//! Multi-frame layers (zstd:chunked, seekable zstd) get real random access.

use ::zstd::stream::raw::{Decoder, InBuffer, Operation, OutBuffer};

use std::io::Read;

use super::{Boundary, CheckpointKind, CodecIndex, Limit, SpanBuilder, StreamIndexer, read_some};
use crate::error::{Error, Result};

/// Decompresses `stored` (zstd frames) expecting exactly `len` bytes, for metadata
/// whose length comes from an untrusted header: memory grows with the bytes the
/// frames really give (at most `len`), never with what the header claims.
pub(crate) fn decompress_exact(stored: &[u8], len: u64) -> std::io::Result<Vec<u8>> {
    let guess = (stored.len() as u64).saturating_mul(64).max(1 << 20);
    let mut out = Vec::with_capacity(len.min(guess) as usize);
    ::zstd::stream::read::Decoder::with_buffer(stored)?
        .take(len.saturating_add(1))
        .read_to_end(&mut out)?;
    if out.len() as u64 != len {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{} bytes uncompressed, {len} expected", out.len()),
        ));
    }
    Ok(out)
}

/// Metadata is compressed in frames of this many bytes, so that a reader decodes
/// a large section (the inodes of a 166k-entry tree: 10 MiB) on every core.
pub(crate) const METADATA_FRAME: usize = 1 << 20;

/// Compresses `raw` as concatenated zstd frames of [`METADATA_FRAME`] bytes each
/// (one frame when smaller), each declaring its content size, compressed in
/// parallel. The result is an ordinary multi-frame zstd stream.
pub(crate) fn compress_frames(raw: &[u8], level: i32) -> std::io::Result<Vec<u8>> {
    if raw.len() <= METADATA_FRAME {
        return ::zstd::bulk::compress(raw, level);
    }
    let chunks: Vec<&[u8]> = raw.chunks(METADATA_FRAME).collect();
    let threads = std::thread::available_parallelism()
        .map_or(2, |p| p.get())
        .min(chunks.len());
    let per = chunks.len().div_ceil(threads);
    let compress = |group: &[&[u8]]| -> std::io::Result<Vec<Vec<u8>>> {
        let mut c = ::zstd::bulk::Compressor::new(level)?;
        group.iter().map(|g| c.compress(g)).collect()
    };
    // A thread that cannot be started, or that panicked, leaves its share to this
    // one: the frames are the same whichever thread compresses them.
    let parts: Vec<std::io::Result<Vec<Vec<u8>>>> = std::thread::scope(|s| {
        let handles: Vec<_> = chunks
            .chunks(per)
            .map(|group| {
                (
                    group,
                    std::thread::Builder::new().spawn_scoped(s, move || compress(group)),
                )
            })
            .collect();
        handles
            .into_iter()
            .map(|(group, h)| match h.map(|h| h.join()) {
                Ok(Ok(r)) => r,
                _ => compress(group),
            })
            .collect()
    });
    let mut out = Vec::new();
    for p in parts {
        for f in p? {
            out.extend_from_slice(&f);
        }
    }
    Ok(out)
}

/// One zstd frame of a stream and the bytes it declares.
type Frame<'a> = (&'a [u8], usize);

/// [`decompress_exact`], on every core when `stored` is several frames that each
/// declare their content size and those sizes add up to `len` (what
/// [`compress_frames`] writes): each frame is decoded straight into its part of
/// the output. Anything else (one frame, sizes not declared or not adding up)
/// takes the sequential path, which reports what is wrong. The caller bounds
/// `len` (section limit, compression ratio) before this allocates it.
pub(crate) fn decompress_exact_parallel(stored: &[u8], len: u64) -> std::io::Result<Vec<u8>> {
    let mut frames: Vec<Frame<'_>> = Vec::new();
    let (mut pos, mut total) = (0usize, 0u64);
    while pos < stored.len() {
        let rest = &stored[pos..];
        let (Ok(n), Ok(Some(size))) = (
            ::zstd::zstd_safe::find_frame_compressed_size(rest),
            ::zstd::zstd_safe::get_frame_content_size(rest),
        ) else {
            return decompress_exact(stored, len);
        };
        total = total.saturating_add(size);
        if n == 0 || total > len {
            return decompress_exact(stored, len);
        }
        frames.push((&rest[..n], size as usize));
        pos += n;
    }
    if frames.len() < 2 || total != len {
        return decompress_exact(stored, len);
    }
    let mut out = vec![0u8; len as usize];
    let threads = std::thread::available_parallelism()
        .map_or(2, |p| p.get())
        .min(frames.len());
    // Consecutive frames per thread, about the same output each.
    let share = (len as usize).div_ceil(threads);
    let mut groups: Vec<(Vec<Frame<'_>>, &mut [u8])> = Vec::new();
    let mut rest: &mut [u8] = &mut out;
    let mut i = 0;
    while i < frames.len() {
        let (mut group, mut bytes) = (Vec::new(), 0);
        while i < frames.len() && (bytes < share || group.is_empty()) {
            bytes += frames[i].1;
            group.push(frames[i]);
            i += 1;
        }
        let (dst, tail) = std::mem::take(&mut rest).split_at_mut(bytes);
        rest = tail;
        groups.push((group, dst));
    }
    // A thread that cannot be started or panicked, or a frame that does not
    // decode: the sequential path decodes again and says what is wrong, if
    // anything is (a resource failure then costs a second decode, not an error).
    let decoded = std::thread::scope(|s| {
        let handles: Vec<_> = groups
            .into_iter()
            .map(|(group, dst)| {
                std::thread::Builder::new().spawn_scoped(s, move || -> std::io::Result<()> {
                    let mut d = ::zstd::bulk::Decompressor::new()?;
                    let mut at = 0;
                    for (frame, size) in group {
                        let n = d.decompress_to_buffer(frame, &mut dst[at..at + size])?;
                        if n != size {
                            return Err(std::io::Error::new(
                                std::io::ErrorKind::InvalidData,
                                format!("a frame gave {n} bytes, its header says {size}"),
                            ));
                        }
                        at += size;
                    }
                    Ok(())
                })
            })
            .collect();
        handles
            .into_iter()
            .all(|h| h.is_ok_and(|h| matches!(h.join(), Ok(Ok(())))))
    });
    if !decoded {
        return decompress_exact(stored, len);
    }
    Ok(out)
}

const OUT_CHUNK: usize = 256 << 10;

fn zerr(e: std::io::Error) -> Error {
    Error::format(format!("zstd: {e}"))
}

/// Indexes a zstd blob.
pub struct ZstdIndexer {
    spans: SpanBuilder,
    decoder: Decoder<'static>,
    out: Vec<u8>,
    in_total: u64,
    total_out: u64,
    at_frame_start: bool,
    frames: u64,
}

impl ZstdIndexer {
    /// A new indexer cutting spans of `span_size` uncompressed bytes.
    pub fn new(span_size: u64) -> ZstdIndexer {
        ZstdIndexer {
            spans: SpanBuilder::new(span_size, false),
            decoder: Decoder::new().expect("zstd decoder allocation"),
            out: vec![0; OUT_CHUNK],
            in_total: 0,
            total_out: 0,
            at_frame_start: true,
            frames: 0,
        }
    }
}

impl StreamIndexer for ZstdIndexer {
    fn push(&mut self, input: &[u8], sink: &mut dyn FnMut(&[u8]) -> Result<()>) -> Result<()> {
        let mut inb = InBuffer::around(input);
        loop {
            if self.at_frame_start && inb.pos() < input.len() {
                if self.frames > 0 {
                    self.spans.boundary(Boundary {
                        in_offset: self.in_total + inb.pos() as u64,
                        bits: 0,
                        out_offset: self.total_out,
                        kind: CheckpointKind::Start,
                    });
                }
                self.frames += 1;
                self.at_frame_start = false;
            }
            let mut outb = OutBuffer::around(&mut self.out[..]);
            let hint = self.decoder.run(&mut inb, &mut outb).map_err(zerr)?;
            let n = outb.pos();
            if n > 0 {
                self.spans.data(&self.out[..n]);
                self.total_out += n as u64;
                sink(&self.out[..n])?;
            }
            if hint == 0 {
                self.at_frame_start = true;
            }
            if inb.pos() == input.len() && n < OUT_CHUNK {
                break;
            }
        }
        self.in_total += input.len() as u64;
        Ok(())
    }

    fn finish(self: Box<Self>, _sink: &mut dyn FnMut(&[u8]) -> Result<()>) -> Result<CodecIndex> {
        if self.frames == 0 {
            return Err(Error::format("empty blob: not a zstd stream"));
        }
        if !self.at_frame_start {
            return Err(Error::format("zstd stream is truncated"));
        }
        Ok(self.spans.finish())
    }
}

/// Decodes from a frame start, reading compressed bytes from `input`, until `out`
/// has everything it wants.
pub(crate) fn decode_stream(input: &mut dyn Read, out: &mut Limit<'_>) -> Result<()> {
    let mut dec = ::zstd::stream::read::Decoder::new(input).map_err(zerr)?;
    let mut buf = vec![0u8; OUT_CHUNK];
    while !out.done() {
        let n = read_some(&mut dec, &mut buf)?;
        if n == 0 {
            return Err(Error::format("zstd: compressed range ends early"));
        }
        out.put(&buf[..n])?;
    }
    Ok(())
}

/// Largest block a zstd frame may carry.
const MAX_BLOCK: usize = 128 << 10;

/// `data` as one zstd frame of raw (stored) blocks: what a v1 archive writes for
/// incompressible chunks. Any zstd decoder reads it at memory speed; it costs 9
/// bytes of frame header and 3 bytes per 128 KiB block. `data` must be at most
/// 4 GiB.
pub fn raw_frame(data: &[u8]) -> Vec<u8> {
    let len = u32::try_from(data.len()).expect("a chunk is at most 4 GiB");
    let blocks = data.len().div_ceil(MAX_BLOCK).max(1);
    let mut out = Vec::with_capacity(data.len() + 9 + 3 * blocks);
    out.extend_from_slice(&0xFD2F_B528u32.to_le_bytes());
    // Frame header descriptor: 4-byte content size, single segment, no checksum,
    // no dictionary.
    out.push(0b1010_0000);
    out.extend_from_slice(&len.to_le_bytes());
    let mut pieces = data.chunks(MAX_BLOCK).peekable();
    if pieces.peek().is_none() {
        out.extend_from_slice(&[1, 0, 0]); // one empty last raw block
    }
    while let Some(p) = pieces.next() {
        let last = u32::from(pieces.peek().is_none());
        let header = last | ((p.len() as u32) << 3); // block type 0: raw
        out.extend_from_slice(&header.to_le_bytes()[..3]);
        out.extend_from_slice(p);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_frames_decode_with_the_standard_decoder() {
        for n in [
            0usize,
            1,
            MAX_BLOCK - 1,
            MAX_BLOCK,
            MAX_BLOCK + 1,
            3 * MAX_BLOCK + 7,
        ] {
            let data: Vec<u8> = (0..n).map(|i| (i * 7 % 251) as u8).collect();
            let f = raw_frame(&data);
            assert_eq!(f.len(), n + 9 + 3 * n.div_ceil(MAX_BLOCK).max(1));
            assert_eq!(::zstd::bulk::decompress(&f, n.max(1)).unwrap(), data, "{n}");
            // Frames concatenate like any zstd frames.
            let mut two = f.clone();
            two.extend_from_slice(&f);
            let mut out = Vec::new();
            std::io::copy(
                &mut ::zstd::stream::read::Decoder::new(&two[..]).unwrap(),
                &mut out,
            )
            .unwrap();
            assert_eq!(out.len(), 2 * n);
        }
    }

    #[test]
    fn metadata_frames_decode_in_parallel_and_by_any_zstd_decoder() {
        let raw: Vec<u8> = (0..3 * METADATA_FRAME + 12345)
            .map(|i| (i / 7 % 253) as u8)
            .collect();
        let z = compress_frames(&raw, 9).unwrap();
        let mut frames = 0;
        let mut pos = 0;
        while pos < z.len() {
            pos += ::zstd::zstd_safe::find_frame_compressed_size(&z[pos..]).unwrap();
            frames += 1;
        }
        assert_eq!(frames, 4);
        assert_eq!(
            decompress_exact_parallel(&z, raw.len() as u64).unwrap(),
            raw
        );
        // The sequential decoder reads the same stream (older readers do).
        assert_eq!(decompress_exact(&z, raw.len() as u64).unwrap(), raw);
        // A length that disagrees with the frames is an error either way.
        for len in [raw.len() as u64 - 1, raw.len() as u64 + 1] {
            assert!(decompress_exact_parallel(&z, len).is_err(), "{len}");
        }
        // A corrupt frame is an error, not a panic.
        let mut bad = z.clone();
        let at = z.len() / 2;
        bad[at] ^= 0x55;
        assert!(decompress_exact_parallel(&bad, raw.len() as u64).is_err());
        // Small input: one frame.
        let small = compress_frames(&raw[..1000], 9).unwrap();
        assert_eq!(
            decompress_exact_parallel(&small, 1000).unwrap(),
            &raw[..1000]
        );
    }
}
