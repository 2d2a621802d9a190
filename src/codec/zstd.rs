//! zstd layers: every frame start is a checkpoint candidate. Most zstd layers have
//! one frame (the `zstd` tool writes one), so they have one checkpoint at offset 0:
//! random reads then decode from the start, which `clipctl inspect` states plainly.
//! Multi-frame layers (zstd:chunked, seekable zstd) get real random access.

use ::zstd::stream::raw::{Decoder, InBuffer, Operation, OutBuffer};

use std::io::Read;

use super::{Boundary, CheckpointKind, CodecIndex, Limit, SpanBuilder, StreamIndexer, read_some};
use crate::error::{Error, Result};

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
