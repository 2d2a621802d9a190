//! Reading archives strictly (see the module docs of [`super`]).

use std::collections::HashMap;
use std::path::Path;

use super::*;
use crate::codec::{Checkpoint, CheckpointKind, Span};
use crate::error::{Error, IoContext, Result};

/// Largest metadata section (uncompressed) a reader accepts.
const MAX_SECTION: u64 = 4 << 30;
/// Largest number of sections a reader accepts.
const MAX_SECTIONS: u32 = 64;

fn le_u32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"))
}
fn le_u64(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"))
}

/// Reads and fully validates the archive at `path`.
pub fn read(path: &Path) -> Result<Archive> {
    let bytes = std::fs::read(path).ctx("reading archive", path)?;
    parse(&bytes).map_err(|e| e.with_path(path))
}

/// Parses an archive from its bytes.
pub fn parse(bytes: &[u8]) -> Result<Archive> {
    let bad = |m: String| Error::format(format!("not a valid clip archive: {m}"));
    if bytes.len() < HEADER_SIZE {
        return Err(bad(format!(
            "{} bytes is shorter than the header",
            bytes.len()
        )));
    }
    if bytes[..8] != MAGIC {
        return Err(bad("wrong magic bytes".into()));
    }
    let version = le_u32(bytes, 8);
    if version != FORMAT_VERSION {
        return Err(Error::Version {
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    let flags = le_u32(bytes, 12);
    if flags != 0 {
        return Err(bad(format!("unknown header flags {flags:#x}")));
    }
    let count = le_u32(bytes, 16);
    let table_offset = le_u64(bytes, 24);
    let table_sum: [u8; 16] = bytes[32..48].try_into().expect("16 bytes");
    let total = le_u64(bytes, 48);
    if total != bytes.len() as u64 {
        return Err(bad(format!(
            "file is {} bytes but its header says {total} (truncated or extended)",
            bytes.len()
        )));
    }
    if count > MAX_SECTIONS {
        return Err(bad(format!("{count} sections")));
    }
    let table_len = count as u64 * SECTION_ENTRY_SIZE as u64;
    let table = table_offset
        .checked_add(table_len)
        .filter(|&e| e <= bytes.len() as u64 && table_offset >= HEADER_SIZE as u64)
        .map(|e| &bytes[table_offset as usize..e as usize])
        .ok_or_else(|| bad("section table outside the file".into()))?;
    if checksum(table) != table_sum {
        return Err(bad("section table checksum mismatch".into()));
    }
    let mut sections: HashMap<u32, Vec<u8>> = HashMap::new();
    for e in table.chunks_exact(SECTION_ENTRY_SIZE) {
        let id = le_u32(e, 0);
        let sflags = le_u32(e, 4);
        let off = le_u64(e, 8);
        let stored_len = le_u64(e, 16);
        let raw_len = le_u64(e, 24);
        let sum: [u8; 16] = e[32..48].try_into().expect("16 bytes");
        let known = SectionId::from_u32(id);
        if known.is_none() {
            if sflags & FLAG_REQUIRED != 0 {
                return Err(bad(format!(
                    "unknown required section {id} (written by a newer clip?)"
                )));
            }
            continue;
        }
        if sflags & !(FLAG_REQUIRED | FLAG_ZSTD) != 0 {
            return Err(bad(format!("section {id}: unknown flags {sflags:#x}")));
        }
        if sections.contains_key(&id) {
            return Err(bad(format!("section {id} appears twice")));
        }
        let stored = off
            .checked_add(stored_len)
            .filter(|&end| off >= HEADER_SIZE as u64 && end <= table_offset)
            .map(|end| &bytes[off as usize..end as usize])
            .ok_or_else(|| bad(format!("section {id} lies outside the file")))?;
        if checksum(stored) != sum {
            return Err(bad(format!(
                "section {id} checksum mismatch (corrupt file)"
            )));
        }
        if raw_len > MAX_SECTION {
            return Err(bad(format!("section {id} is too large ({raw_len} bytes)")));
        }
        let raw = if sflags & FLAG_ZSTD != 0 {
            let raw = zstd::bulk::decompress(stored, raw_len as usize)
                .map_err(|e| bad(format!("section {id}: {e}")))?;
            if raw.len() as u64 != raw_len {
                return Err(bad(format!("section {id}: wrong uncompressed length")));
            }
            raw
        } else {
            if stored_len != raw_len {
                return Err(bad(format!("section {id}: lengths disagree")));
            }
            stored.to_vec()
        };
        sections.insert(id, raw);
    }
    let mut take = |id: SectionId| {
        sections
            .remove(&(id as u32))
            .ok_or_else(|| bad(format!("missing section {id:?}")))
    };
    let meta: Meta = serde_json::from_slice(&take(SectionId::Meta)?)
        .map_err(|e| bad(format!("META section: {e}")))?;
    let layer_metas: Vec<LayerMeta> = serde_json::from_slice(&take(SectionId::Layers)?)
        .map_err(|e| bad(format!("LAYERS section: {e}")))?;
    let cps = take(SectionId::Checkpoints)?;
    let spans = take(SectionId::Spans)?;
    let windows = take(SectionId::Windows)?;
    if cps.len() % CHECKPOINT_SIZE != 0 || spans.len() % SPAN_SIZE != 0 {
        return Err(bad("checkpoint or span table is not whole records".into()));
    }
    let mut layers = Vec::with_capacity(layer_metas.len());
    for lm in layer_metas {
        let range =
            |[start, n]: [u64; 2], rec: usize, total: usize| -> Result<std::ops::Range<usize>> {
                let end = start.checked_add(n).filter(|&e| e <= (total / rec) as u64);
                end.map(|e| start as usize * rec..e as usize * rec)
                    .ok_or_else(|| bad(format!("layer {}: records out of range", lm.digest)))
            };
        let mut codec = CodecIndex {
            uncompressed_size: lm.uncompressed_size,
            ..Default::default()
        };
        for r in
            cps[range(lm.checkpoints, CHECKPOINT_SIZE, cps.len())?].chunks_exact(CHECKPOINT_SIZE)
        {
            let kind = match r[17] {
                0 => CheckpointKind::Start,
                1 => CheckpointKind::Block,
                k => {
                    return Err(bad(format!(
                        "layer {}: unknown checkpoint kind {k}",
                        lm.digest
                    )));
                }
            };
            let wlen = le_u32(r, 20) as u64;
            let woff = le_u64(r, 24);
            let window = if wlen == 0 {
                None
            } else {
                let w = woff
                    .checked_add(wlen)
                    .filter(|&e| e <= windows.len() as u64)
                    .map(|e| windows[woff as usize..e as usize].to_vec())
                    .ok_or_else(|| bad(format!("layer {}: window out of range", lm.digest)))?;
                Some(w)
            };
            codec.checkpoints.push(Checkpoint {
                in_offset: le_u64(r, 0),
                out_offset: le_u64(r, 8),
                bits: r[16],
                kind,
                window,
            });
        }
        for r in spans[range(lm.spans, SPAN_SIZE, spans.len())?].chunks_exact(SPAN_SIZE) {
            codec.spans.push(Span {
                out_offset: le_u64(r, 0),
                checkpoint: le_u32(r, 8),
                hash: r[12..44].try_into().expect("32 bytes"),
            });
        }
        codec
            .validate(lm.compressed_size)
            .map_err(|e| e.with_layer(lm.digest))?;
        layers.push(LayerRecord {
            digest: lm.digest,
            media_type: lm.media_type,
            compressed_size: lm.compressed_size,
            compression: lm.compression,
            diff_id: lm.diff_id,
            codec,
        });
    }
    let inodes = take(SectionId::Inodes)?;
    let dirents = take(SectionId::Dirents)?;
    let xattrs = take(SectionId::Xattrs)?;
    let strings = take(SectionId::Strings)?;
    let tree = Tree::decode(&inodes, &dirents, &xattrs, strings, layers.len() as u32)?;
    // Every file must lie inside its layer.
    for (i, ino) in tree.inodes.iter().enumerate() {
        if ino.kind() == crate::tree::Kind::File {
            let l = &layers[ino.b as usize];
            if ino
                .a
                .checked_add(ino.size)
                .is_none_or(|e| e > l.codec.uncompressed_size)
            {
                return Err(bad(format!("file inode {} lies outside its layer", i + 1)));
            }
        }
    }
    Ok(Archive { meta, layers, tree })
}
