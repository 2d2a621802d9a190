//! Indexing one layer blob in a single streaming pass: the blob's sha256 (checked
//! against the manifest digest), decompression with checkpoints and span hashes
//! ([`crate::codec`]), the uncompressed stream's sha256 (checked against the config's
//! diff_id) and the tar entries with their payload offsets ([`crate::tar`]).
//! Memory stays bounded by the span size, whatever the layer size, plus the
//! entries' headers, which [`LayerBudget`] bounds (count, metadata bytes, path
//! length and depth: [`crate::limits`]).

use std::io::Read;
use std::sync::mpsc::{Receiver, SyncSender, channel, sync_channel};

use crate::archive::LayerRecord;
use crate::codec::{self, CodecIndex};
use crate::digest::{Digest, Hasher};
use crate::error::{Error, Result};
use crate::limits::LayerBudget;
use crate::oci::{Compression, Layer};
use crate::tar::{Entry, TarParser};

/// Size of the reads from a layer blob.
const READ_CHUNK: usize = 1 << 20;
/// Uncompressed chunks in flight between the decompressing and parsing threads.
const PIPELINE_DEPTH: usize = 16;
/// The producer's error when the parsing thread has stopped (its error wins).
const TAR_STOPPED: &str = "tar parser stopped";

/// Everything indexing learns about one layer: what the archive keeps (digests,
/// sizes, checkpoints, spans) and the tar entries the merge consumes.
#[derive(Debug, Clone)]
pub struct LayerIndex {
    /// The layer as the archive stores it.
    pub record: LayerRecord,
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
/// `cancel` is polled between reads and between decompressed chunks (true stops
/// the indexing with [`Error::Canceled`]); `progress` is called after each read.
pub fn index_layer(
    reader: &mut dyn Read,
    layer: &Layer,
    span_size: u64,
    cancel: &(dyn Fn() -> bool + Sync),
    progress: &mut dyn FnMut(LayerProgress),
) -> Result<LayerIndex> {
    index_layer_inner(
        reader,
        layer,
        span_size,
        cancel,
        progress,
        LayerBudget::default(),
    )
    .map_err(|e| e.with_layer(layer.desc.digest))
}

fn index_layer_inner(
    reader: &mut dyn Read,
    layer: &Layer,
    span_size: u64,
    cancel: &(dyn Fn() -> bool + Sync),
    progress: &mut dyn FnMut(LayerProgress),
    mut budget: LayerBudget,
) -> Result<LayerIndex> {
    // Two stages on two threads: this one reads, hashes the blob and decompresses
    // (building checkpoints and span hashes); the consumer hashes the uncompressed
    // stream (diff_id) and parses tar headers. Buffers are recycled between them.
    let (tx, rx) = sync_channel::<Vec<u8>>(PIPELINE_DEPTH);
    let (free_tx, free_rx) = channel::<Vec<u8>>();
    std::thread::scope(|s| {
        let consumer = s.spawn(move || -> Result<(Digest, Vec<Entry>)> {
            let mut diff_hash = Hasher::new();
            let mut tar = TarParser::new();
            let mut entries = Vec::new();
            for buf in rx {
                diff_hash.update(&buf);
                if !tar.at_end() {
                    tar.push(&buf, &mut |e: Entry| -> Result<()> {
                        // Paths and counts are bounded as entries arrive, so a
                        // hostile stream stops here, not after filling memory.
                        budget.add(&e)?;
                        entries.push(e);
                        Ok(())
                    })?;
                }
                let _ = free_tx.send(buf);
            }
            tar.finish().map_err(Error::from)?;
            Ok((diff_hash.finish(), entries))
        });
        let produced = produce(reader, layer, span_size, cancel, progress, tx, free_rx);
        let consumed = consumer
            .join()
            .unwrap_or_else(|_| Err(Error::format("tar parser thread panicked")));
        let (compression, codec, uncompressed) = match produced {
            Ok(p) => p,
            // The parser's own error says why it stopped.
            Err(Error::Format(m)) if m == TAR_STOPPED => {
                return Err(consumed.err().unwrap_or(Error::Format(m)));
            }
            Err(e) => return Err(e),
        };
        let (diff_id, entries) = consumed?;
        debug_assert_eq!(uncompressed, codec.uncompressed_size);
        if diff_id != layer.diff_id {
            return Err(Error::DigestMismatch {
                what: "uncompressed layer (diff_id)".into(),
                expected: layer.diff_id.to_string(),
                actual: diff_id.to_string(),
            });
        }
        Ok(LayerIndex {
            record: LayerRecord {
                digest: layer.desc.digest,
                media_type: layer.desc.media_type.clone(),
                compressed_size: layer.desc.size,
                compression,
                diff_id,
                codec,
            },
            entries,
        })
    })
}

/// The reading and decompressing stage. Whatever fails, the blob is still read to
/// its end and hashed, so a corrupt blob is reported as a digest mismatch rather
/// than as whatever the decoder or tar parser tripped over first.
fn produce(
    reader: &mut dyn Read,
    layer: &Layer,
    span_size: u64,
    cancel: &(dyn Fn() -> bool + Sync),
    progress: &mut dyn FnMut(LayerProgress),
    tx: SyncSender<Vec<u8>>,
    free_rx: Receiver<Vec<u8>>,
) -> Result<(Compression, CodecIndex, u64)> {
    let mut buf = vec![0u8; READ_CHUNK];
    let mut blob_hash = Hasher::new();
    let mut indexer: Option<Box<dyn codec::StreamIndexer>> = None;
    let mut compression = layer.compression;
    let mut prog = LayerProgress::default();
    let uncompressed = std::cell::Cell::new(0u64);
    let mut failed: Option<Error> = None;
    let mut sink = |data: &[u8]| -> Result<()> {
        // Polled per output chunk too: one read of a highly compressed blob can
        // inflate to hundreds of MiB, and a cancel must not wait for that.
        if cancel() {
            return Err(Error::Canceled);
        }
        uncompressed.set(uncompressed.get() + data.len() as u64);
        let mut b = free_rx
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(data.len().max(64 << 10)));
        b.clear();
        b.extend_from_slice(data);
        // A closed channel means the consumer failed; its error is reported.
        tx.send(b).map_err(|_| Error::format(TAR_STOPPED))
    };
    loop {
        if cancel() {
            return Err(Error::Canceled);
        }
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::format(format!("reading blob: {e}"))),
        };
        let data = &buf[..n];
        blob_hash.update(data);
        prog.compressed_done += n as u64;
        if failed.is_none() {
            let r = (|| -> Result<()> {
                if indexer.is_none() {
                    compression = effective_compression(layer, data)?;
                    indexer = Some(codec::stream_indexer(compression, span_size));
                }
                indexer.as_mut().expect("set above").push(data, &mut sink)
            })();
            if let Err(e) = r {
                failed = Some(e);
            }
        }
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
    if let Some(e) = failed {
        return Err(e);
    }
    let indexer = indexer.ok_or_else(|| Error::format("layer blob is empty"))?;
    let codec = indexer.finish(&mut sink)?;
    drop(tx);
    Ok((compression, codec, uncompressed.get()))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::Desc;

    /// A gzip layer of `n` files, and its `Layer`.
    fn layer_of(n: usize) -> (Vec<u8>, Layer) {
        let mut t = tar::Builder::new(Vec::new());
        for i in 0..n {
            let mut h = tar::Header::new_gnu();
            h.set_size(1);
            h.set_mode(0o644);
            h.set_cksum();
            t.append_data(&mut h, format!("f{i}"), &b"x"[..]).unwrap();
        }
        let tar = t.into_inner().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &tar).unwrap();
        let blob = gz.finish().unwrap();
        let layer = Layer {
            desc: Desc {
                media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
                digest: Digest::of(&blob),
                size: blob.len() as u64,
                platform: None,
                annotations: Default::default(),
            },
            compression: Compression::Gzip,
            diff_id: Digest::of(&tar),
        };
        (blob, layer)
    }

    #[test]
    fn a_layer_past_its_entry_budget_fails_naming_the_limit() {
        let (blob, layer) = layer_of(5);
        let run = |budget| {
            index_layer_inner(
                &mut &blob[..],
                &layer,
                1 << 20,
                &|| false,
                &mut |_| {},
                budget,
            )
        };
        assert_eq!(run(LayerBudget::new(5, 1 << 20)).unwrap().entries.len(), 5);
        let e = run(LayerBudget::new(4, 1 << 20)).unwrap_err().to_string();
        assert_eq!(
            e,
            "tar stream: at least 5 entries, more than the limit of 4 (limits::MAX_LAYER_ENTRIES)"
        );
        let e = run(LayerBudget::new(100, 9)).unwrap_err().to_string();
        assert!(e.contains("(limits::MAX_ENTRY_BYTES)"), "{e}");
    }
}
