//! Indexing one layer blob in a single streaming pass: the blob's sha256 (checked
//! against the manifest digest), decompression with checkpoints and span hashes
//! ([`crate::codec`]), the uncompressed stream's sha256 (checked against the config's
//! diff_id) and the tar entries with their payload offsets ([`crate::tar`]).
//! Memory stays bounded by the span size, whatever the layer size, plus the
//! entries' headers, which [`LayerBudget`] bounds (count, metadata bytes, path
//! length and depth: [`crate::limits`]).

use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, channel, sync_channel};

use crate::archive::LayerRecord;
use crate::codec::{self, CodecIndex};
use crate::digest::{Digest, Hasher};
use crate::error::{Error, Result};
use crate::limits::LayerBudget;
use crate::oci::{Compression, Layer};
use crate::tar::{Entry, TarParser};

/// Size of the reads from a layer blob.
const READ_CHUNK: usize = 256 << 10;
/// Uncompressed bytes gathered before they go to the parsing thread: the decoders
/// emit pieces of a few KiB, and a message per piece costs more than hashing it.
const DATA_BATCH: usize = 256 << 10;
/// Messages in flight between the decompressing and parsing threads.
const PIPELINE_DEPTH: usize = 8;

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

/// What the decompressing thread hands the parsing thread.
enum Chunk {
    /// The first `n` bytes are the next bytes of the compressed blob (for its sha256).
    Blob(Vec<u8>, usize),
    /// The next uncompressed bytes (for the diff_id and the tar parser).
    Data(Vec<u8>),
}

/// What the parsing thread learns: the blob's sha256 always (it hashes the blob to
/// its end whatever else fails), the diff_id and entries unless the tar stream was
/// bad.
struct Parsed {
    blob: Digest,
    tar: Result<(Digest, Vec<Entry>)>,
}

/// What the decompressing thread learns: the blob's size, its compression, and the
/// checkpoints and spans unless decoding failed.
struct Produced {
    size: u64,
    compression: Compression,
    codec: Result<CodecIndex>,
}

fn index_layer_inner(
    reader: &mut dyn Read,
    layer: &Layer,
    span_size: u64,
    cancel: &(dyn Fn() -> bool + Sync),
    progress: &mut dyn FnMut(LayerProgress),
    budget: LayerBudget,
) -> Result<LayerIndex> {
    // Two stages on two threads: this one reads and decompresses (building
    // checkpoints and span hashes), the heavier job; the consumer hashes the blob
    // (its digest) and the uncompressed stream (diff_id) and parses tar headers.
    // Buffers are recycled between them.
    let (tx, rx) = sync_channel::<Chunk>(PIPELINE_DEPTH);
    let (free_tx, free_rx) = channel::<Vec<u8>>();
    let tar_stopped = AtomicBool::new(false);
    let (produced, parsed) = std::thread::scope(|s| {
        let stopped = &tar_stopped;
        let consumer = s.spawn(move || consume(rx, free_tx, budget, stopped));
        let mut pipe = Pipe {
            tx,
            free_rx,
            batch: Vec::new(),
            tar_stopped: &tar_stopped,
        };
        let produced = produce(reader, layer, span_size, cancel, progress, &mut pipe);
        // Closing the channel ends the consumer.
        drop(pipe);
        let parsed = consumer
            .join()
            .map_err(|_| Error::format("tar parser thread panicked"));
        (produced, parsed)
    });
    let (produced, parsed) = (produced?, parsed?);
    if produced.size != layer.desc.size {
        return Err(Error::format(format!(
            "blob is {} bytes but the manifest says {}",
            produced.size, layer.desc.size
        )));
    }
    // A corrupt blob is reported as a digest mismatch rather than as whatever the
    // decoder or tar parser tripped over first.
    if parsed.blob != layer.desc.digest {
        return Err(Error::DigestMismatch {
            what: "layer blob".into(),
            expected: layer.desc.digest.to_string(),
            actual: parsed.blob.to_string(),
        });
    }
    // When the parser failed it stopped the decoder, so its error says why;
    // otherwise a decoder error comes first (the parser then saw a truncated tar).
    let (codec, (diff_id, entries)) = if tar_stopped.into_inner() {
        let tar = parsed.tar?;
        (produced.codec?, tar)
    } else {
        let codec = produced.codec?;
        (codec, parsed.tar?)
    };
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
            compression: produced.compression,
            diff_id,
            codec,
        },
        entries,
    })
}

/// The parsing stage: hashes the blob to its end, and the uncompressed stream and
/// its tar entries until the parser fails (then `tar_stopped` tells the decoder to
/// stop producing).
fn consume(
    rx: Receiver<Chunk>,
    free_tx: std::sync::mpsc::Sender<Vec<u8>>,
    mut budget: LayerBudget,
    tar_stopped: &AtomicBool,
) -> Parsed {
    let mut blob_hash = Hasher::new();
    let mut diff_hash = Hasher::new();
    let mut tar = TarParser::new();
    let mut entries = Vec::new();
    let mut failed: Option<Error> = None;
    for chunk in rx {
        let buf = match chunk {
            Chunk::Blob(buf, n) => {
                blob_hash.update(&buf[..n]);
                buf
            }
            Chunk::Data(buf) if failed.is_none() => {
                diff_hash.update(&buf);
                if !tar.at_end() {
                    let r = tar.push(&buf, &mut |e: Entry| -> Result<()> {
                        // Paths and counts are bounded as entries arrive, so a
                        // hostile stream stops here, not after filling memory.
                        budget.add(&e)?;
                        entries.push(e);
                        Ok(())
                    });
                    if let Err(e) = r {
                        failed = Some(e);
                        tar_stopped.store(true, Ordering::Relaxed);
                    }
                }
                buf
            }
            Chunk::Data(buf) => buf,
        };
        let _ = free_tx.send(buf);
    }
    let tar = match failed {
        Some(e) => Err(e),
        None => tar
            .finish()
            .map_err(Error::from)
            .map(|()| (diff_hash.finish(), entries)),
    };
    Parsed {
        blob: blob_hash.finish(),
        tar,
    }
}

/// The decompressing stage's end of the channel: uncompressed bytes gathered into
/// batches, buffers taken back from the consumer.
struct Pipe<'a> {
    tx: SyncSender<Chunk>,
    free_rx: Receiver<Vec<u8>>,
    batch: Vec<u8>,
    tar_stopped: &'a AtomicBool,
}

impl Pipe<'_> {
    /// A recycled buffer, or a new one.
    fn buffer(&self) -> Vec<u8> {
        self.free_rx
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(READ_CHUNK.max(DATA_BATCH)))
    }

    /// Queues uncompressed bytes, sending a batch when it is full.
    fn data(&mut self, data: &[u8]) -> Result<()> {
        if self.batch.capacity() == 0 {
            self.batch = self.buffer();
            self.batch.clear();
        }
        self.batch.extend_from_slice(data);
        if self.batch.len() >= DATA_BATCH {
            self.flush()?;
        }
        Ok(())
    }

    /// Sends what is batched.
    fn flush(&mut self) -> Result<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let b = std::mem::take(&mut self.batch);
        self.send(Chunk::Data(b))
    }

    fn send(&self, c: Chunk) -> Result<()> {
        if self.tar_stopped.load(Ordering::Relaxed) {
            return Err(Error::format("tar parser stopped"));
        }
        self.tx
            .send(c)
            .map_err(|_| Error::format("tar parser thread ended early"))
    }
}

/// The reading and decompressing stage. Whatever fails in decoding, the blob is
/// still read to its end and handed on to be hashed.
fn produce(
    reader: &mut dyn Read,
    layer: &Layer,
    span_size: u64,
    cancel: &(dyn Fn() -> bool + Sync),
    progress: &mut dyn FnMut(LayerProgress),
    pipe: &mut Pipe<'_>,
) -> Result<Produced> {
    let mut indexer: Option<Box<dyn codec::StreamIndexer>> = None;
    let mut compression = layer.compression;
    let mut prog = LayerProgress::default();
    let uncompressed = std::cell::Cell::new(0u64);
    let mut failed: Option<Error> = None;
    loop {
        if cancel() {
            return Err(Error::Canceled);
        }
        let mut buf = pipe.buffer();
        buf.resize(READ_CHUNK, 0);
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::format(format!("reading blob: {e}"))),
        };
        prog.compressed_done += n as u64;
        if failed.is_none() {
            let data = &buf[..n];
            let mut sink = |out: &[u8]| -> Result<()> {
                // Polled per output chunk too: one read of a highly compressed blob
                // can inflate to hundreds of MiB, and a cancel must not wait for that.
                if cancel() {
                    return Err(Error::Canceled);
                }
                uncompressed.set(uncompressed.get() + out.len() as u64);
                pipe.data(out)
            };
            let r = (|| -> Result<()> {
                if indexer.is_none() {
                    compression = effective_compression(layer, data)?;
                    indexer = Some(codec::stream_indexer(compression, span_size));
                }
                indexer.as_mut().expect("set above").push(data, &mut sink)
            })();
            match r {
                Err(Error::Canceled) => return Err(Error::Canceled),
                Err(e) => failed = Some(e),
                Ok(()) => {}
            }
        }
        // The blob goes on to be hashed even when decoding failed.
        if pipe.tx.send(Chunk::Blob(buf, n)).is_err() {
            return Err(Error::format("tar parser thread ended early"));
        }
        prog.uncompressed_done = uncompressed.get();
        progress(prog);
    }
    let codec = match (failed, indexer) {
        (Some(e), _) => Err(e),
        (None, None) => Err(Error::format("layer blob is empty")),
        (None, Some(indexer)) => {
            let mut sink = |out: &[u8]| -> Result<()> {
                uncompressed.set(uncompressed.get() + out.len() as u64);
                pipe.data(out)
            };
            indexer.finish(&mut sink).and_then(|c| {
                pipe.flush()?;
                debug_assert_eq!(uncompressed.get(), c.uncompressed_size);
                Ok(c)
            })
        }
    };
    Ok(Produced {
        size: prog.compressed_done,
        compression,
        codec,
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

    #[test]
    fn the_first_fault_is_the_one_reported() {
        let (blob, layer) = layer_of(2000);
        let run = |blob: &[u8], layer: &Layer| {
            index_layer_inner(
                &mut &blob[..],
                layer,
                1 << 20,
                &|| false,
                &mut |_| {},
                LayerBudget::default(),
            )
            .unwrap_err()
            .to_string()
        };
        // A flipped byte: the blob's digest, not what the decoder tripped over.
        let mut bad = blob.clone();
        let mid = bad.len() / 2;
        bad[mid] ^= 0x55;
        let e = run(&bad, &layer);
        assert!(e.contains("layer blob") && e.contains("digest"), "{e}");
        // Cut short but announced as such (digest and size of the cut blob): the
        // decoder's error, not the tar parser's view of a stream that stops.
        let cut = &blob[..blob.len() / 2];
        let mut short = layer.clone();
        short.desc.digest = Digest::of(cut);
        short.desc.size = cut.len() as u64;
        let e = run(cut, &short);
        assert!(e.contains("gzip"), "{e}");
        // Longer than the manifest says.
        let mut small = layer.clone();
        small.desc.size -= 1;
        let e = run(&blob, &small);
        assert!(e.contains("manifest says"), "{e}");
        // A good blob of another diff_id.
        let mut other = layer.clone();
        other.diff_id = Digest::of(b"x");
        let e = run(&blob, &other);
        assert!(e.contains("diff_id"), "{e}");
    }
}
