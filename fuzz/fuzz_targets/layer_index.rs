//! The layer indexer's codecs (`clip::codec::stream_indexer`) over gzip, zstd and
//! plain input, fed in uneven chunks: the index it builds must validate, and every
//! span decoded from its checkpoint (as a mount reads it) must give the bytes and
//! hash the indexing pass saw. Then the whole layer indexer (`index_layer`, with
//! the tar parser) over the same blob, with the right digests.
//!
//! Input: byte 0 picks the compression, byte 1 the span size and chunking, the
//! rest is the layer blob.
#![no_main]

use clip::codec::{decode_stream, stream_indexer};
use clip::digest::Digest;
use clip::oci::{Compression, Desc, Layer};
use libfuzzer_sys::fuzz_target;

/// Decompressed bytes a run may produce (zip bombs are cut off, not a failure).
const MAX_OUT: usize = 8 << 20;

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let compression = match data[0] % 3 {
        0 => Compression::Gzip,
        1 => Compression::Zstd,
        _ => Compression::None,
    };
    // 512 B .. 64 KiB (many spans of a small input), or 64 KiB .. 512 KiB as clip
    // cuts them.
    let span_size = if data[1] & 0x80 != 0 {
        64u64 << (10 + (data[1] & 3))
    } else {
        1u64 << (9 + (data[1] & 7))
    };
    let chunk = 1 + ((data[1] >> 3) & 15) as usize * 97;
    let blob = &data[2..];

    let mut ix = stream_indexer(compression, span_size);
    let mut out = Vec::new();
    let mut sink = |d: &[u8]| {
        out.extend_from_slice(d);
        if out.len() > MAX_OUT {
            Err(clip::Error::format("too much output"))
        } else {
            Ok(())
        }
    };
    for c in blob.chunks(chunk) {
        if ix.push(c, &mut sink).is_err() {
            return;
        }
    }
    let Ok(index) = ix.finish(&mut sink) else {
        return;
    };
    assert_eq!(index.uncompressed_size, out.len() as u64);
    index
        .validate(blob.len() as u64)
        .expect("a built index validates");

    // Every span from its checkpoint, as a mount decodes it.
    for (i, s) in index.spans.iter().enumerate() {
        let (start, end) = index.span_range(i);
        let cp = &index.checkpoints[s.checkpoint as usize];
        let (cin, cend) = index.compressed_range(i, i, blob.len() as u64);
        let mut input = &blob[cin as usize..cend as usize];
        let mut got = Vec::new();
        decode_stream(
            compression,
            cp,
            &mut input,
            start - cp.out_offset,
            end - start,
            &mut |d| {
                got.extend_from_slice(d);
                Ok(())
            },
        )
        .unwrap_or_else(|e| panic!("span {i} of an index just built: {e}"));
        assert!(
            got == out[start as usize..end as usize],
            "span {i} decodes to other bytes"
        );
        assert_eq!(blake3::hash(&got).as_bytes(), &s.hash, "span {i} hash");
    }

    // The whole indexer (two threads, tar parser), with the right digests.
    let layer = Layer {
        desc: Desc {
            media_type: match compression {
                Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
                Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
                Compression::None => "application/vnd.oci.image.layer.v1.tar",
            }
            .into(),
            digest: Digest::of(blob),
            size: blob.len() as u64,
            platform: None,
            annotations: Default::default(),
        },
        compression,
        diff_id: Digest::of(&out),
    };
    let mut r = blob;
    if let Ok(li) =
        clip::index::layer::index_layer(&mut r, &layer, span_size, &|| false, &mut |_| {})
    {
        assert_eq!(li.record.codec, index, "index_layer builds the same index");
    }
});
