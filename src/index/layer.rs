//! Indexing one layer blob in a single streaming pass: the blob's sha256 (checked
//! against the manifest digest), decompression with checkpoints and span hashes
//! ([`crate::codec`]), the uncompressed stream's sha256 (checked against the config's
//! diff_id) and the tar entries with their payload offsets ([`crate::tar`]).
//! Memory stays bounded by the span size, whatever the layer size.

use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::codec::{self, CodecIndex};
use crate::digest::{Digest, Hasher};
use crate::error::{Error, Result};
use crate::oci::{Compression, Layer};
use crate::tar::{Entry, TarParser};

/// Size of the reads from a layer blob.
const READ_CHUNK: usize = 1 << 20;

/// Everything clip keeps about one layer.
#[derive(Debug, Clone)]
pub struct LayerIndex {
    /// Blob digest (verified).
    pub digest: Digest,
    /// Media type from the manifest.
    pub media_type: String,
    /// Compressed size.
    pub compressed_size: u64,
    /// Actual compression of the blob.
    pub compression: Compression,
    /// sha256 of the uncompressed stream (verified against the config).
    pub diff_id: Digest,
    /// Checkpoints and span hashes.
    pub codec: CodecIndex,
    /// The tar entries, in stream order.
    pub entries: Vec<Entry>,
}

/// Progress of one layer, for callbacks.
#[derive(Debug, Clone, Copy, Default)]
pub struct LayerProgress {
    /// Compressed bytes read so far.
    pub compressed_done: u64,
    /// Uncompressed bytes produced so far.
    pub uncompressed_done: u64,
}

/// Indexes one layer read from `reader`, cutting spans of `span_size` bytes.
/// `cancel` is polled between reads; `progress` is called after each read.
pub fn index_layer(
    reader: &mut dyn Read,
    layer: &Layer,
    span_size: u64,
    cancel: &AtomicBool,
    progress: &mut dyn FnMut(LayerProgress),
) -> Result<LayerIndex> {
    index_layer_inner(reader, layer, span_size, cancel, progress)
        .map_err(|e| e.with_layer(layer.desc.digest))
}

fn index_layer_inner(
    reader: &mut dyn Read,
    layer: &Layer,
    span_size: u64,
    cancel: &AtomicBool,
    progress: &mut dyn FnMut(LayerProgress),
) -> Result<LayerIndex> {
    let mut buf = vec![0u8; READ_CHUNK];
    let mut blob_hash = Hasher::new();
    let mut diff_hash = Hasher::new();
    let mut tar = TarParser::new();
    let mut entries = Vec::new();
    let mut indexer: Option<Box<dyn codec::StreamIndexer>> = None;
    let mut compression = layer.compression;
    let mut prog = LayerProgress::default();
    let uncompressed = std::cell::Cell::new(0u64);
    let mut sink = |data: &[u8]| -> Result<()> {
        diff_hash.update(data);
        uncompressed.set(uncompressed.get() + data.len() as u64);
        if !tar.at_end() {
            tar.push(data, &mut |e: Entry| -> Result<()> {
                entries.push(e);
                Ok(())
            })?;
        }
        Ok(())
    };
    loop {
        if cancel.load(Ordering::Relaxed) {
            return Err(Error::Canceled);
        }
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::format(format!("reading blob: {e}"))),
        };
        let data = &buf[..n];
        if indexer.is_none() {
            compression = effective_compression(layer, data)?;
            indexer = Some(codec::stream_indexer(compression, span_size));
        }
        blob_hash.update(data);
        prog.compressed_done += n as u64;
        indexer.as_mut().expect("set above").push(data, &mut sink)?;
        prog.uncompressed_done = uncompressed.get();
        progress(prog);
    }
    if prog.compressed_done != layer.desc.size {
        return Err(Error::format(format!(
            "blob is {} bytes but the manifest says {}",
            prog.compressed_done, layer.desc.size
        )));
    }
    let actual = blob_hash.finish();
    if actual != layer.desc.digest {
        return Err(Error::DigestMismatch {
            what: "layer blob".into(),
            expected: layer.desc.digest.to_string(),
            actual: actual.to_string(),
        });
    }
    let indexer = indexer.ok_or_else(|| Error::format("layer blob is empty"))?;
    let codec = indexer.finish(&mut sink)?;
    tar.finish().map_err(Error::from)?;
    let diff_id = diff_hash.finish();
    if diff_id != layer.diff_id {
        return Err(Error::DigestMismatch {
            what: "uncompressed layer (diff_id)".into(),
            expected: layer.diff_id.to_string(),
            actual: diff_id.to_string(),
        });
    }
    Ok(LayerIndex {
        digest: layer.desc.digest,
        media_type: layer.desc.media_type.clone(),
        compressed_size: layer.desc.size,
        compression,
        diff_id,
        codec,
        entries,
    })
}

/// The compression to decode with: the blob's magic bytes win over the media type
/// (registries and tools mislabel), but a compressed media type over bytes that are
/// neither gzip nor zstd is an error.
fn effective_compression(layer: &Layer, head: &[u8]) -> Result<Compression> {
    match (Compression::sniff(head), layer.compression) {
        (Some(actual), announced) => {
            if actual != announced {
                tracing::warn!(
                    layer = %layer.desc.digest,
                    "media type {} announces {announced} but the blob is {actual}; decoding as {actual}",
                    layer.desc.media_type
                );
            }
            Ok(actual)
        }
        (None, Compression::None) => Ok(Compression::None),
        (None, announced) => Err(Error::format(format!(
            "media type {} announces {announced}, but the blob does not start like {announced} data",
            layer.desc.media_type
        ))),
    }
}
