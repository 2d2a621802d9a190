//! Layer-index cache artifacts (`clip::index::cache::decode`), which come from a
//! caller's callbacks or a shared directory. The input is the artifact's 128-byte
//! header and its uncompressed body: the harness compresses the body, fills in the
//! lengths and the checksum and takes the layer from the header, so mutations reach
//! the body decoder. An accepted artifact encodes to one that decodes the same.
#![no_main]

use clip::digest::Digest;
use clip::index::cache::{ARTIFACT_MAGIC, ARTIFACT_VERSION, decode, encode};
use clip::oci::{Compression, Desc, Layer};
use libfuzzer_sys::fuzz_target;

const HEADER_LEN: usize = 128;

fuzz_target!(|data: &[u8]| {
    if data.len() < HEADER_LEN {
        return;
    }
    let (h, body) = data.split_at(HEADER_LEN);
    let mut h = h.to_vec();
    let stored = zstd::bulk::compress(body, 1).unwrap();
    h[..8].copy_from_slice(&ARTIFACT_MAGIC);
    h[8..12].copy_from_slice(&ARTIFACT_VERSION.to_le_bytes());
    h[104..112].copy_from_slice(&(body.len() as u64).to_le_bytes());
    h[112..120].copy_from_slice(&(stored.len() as u64).to_le_bytes());
    let mut a = h.clone();
    a.extend_from_slice(&stored);
    let sum = *blake3::hash(&a).as_bytes();
    a.extend_from_slice(&sum);

    let u64_at = |o: usize| u64::from_le_bytes(h[o..o + 8].try_into().unwrap());
    let span_size = u64_at(16);
    let compression = match h[96] {
        1 => Compression::Gzip,
        2 => Compression::Zstd,
        _ => Compression::None,
    };
    let layer = Layer {
        desc: Desc {
            media_type: "application/vnd.oci.image.layer.v1.tar".into(),
            digest: Digest::from_bytes(h[32..64].try_into().unwrap()),
            size: u64_at(24),
            platform: None,
            annotations: Default::default(),
        },
        compression,
        diff_id: Digest::from_bytes(h[64..96].try_into().unwrap()),
    };
    let Ok(li) = decode(&a, "fuzz", &layer, span_size) else {
        return;
    };
    let again = encode(&li, span_size).expect("an accepted artifact encodes");
    let li2 = decode(&again, "fuzz", &layer, span_size).expect("and decodes again");
    assert_eq!(li2.record, li.record);
    assert_eq!(li2.entries, li.entries);
});
