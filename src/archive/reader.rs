//! Reading archives strictly (see the module docs of [`super`]).

use std::collections::HashMap;
use std::path::Path;

use super::*;
use crate::codec::{Checkpoint, CheckpointKind, Span};
use crate::error::{Error, IoContext, Result};
use crate::limits;
use crate::oci::Compression;
use crate::tree::{DIRENT_SIZE, INODE_SIZE};

/// Largest metadata section (uncompressed) a reader accepts. The tree's sections
/// are bounded further by [`limits::MAX_IMAGE_ENTRIES`], compressed ones by
/// [`limits::MAX_RATIO`], both before they are read.
const MAX_SECTION: u64 = 4 << 30;
/// Largest number of sections a reader accepts.
const MAX_SECTIONS: u32 = 64;

fn le_u32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"))
}
fn le_u64(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"))
}

/// Random access to the bytes of an archive: a file (only the header, the table
/// and the metadata sections are read; a DATA section never is) or a slice.
trait Bytes {
    fn len(&self) -> u64;
    fn at(&self, off: u64, len: u64) -> Result<std::borrow::Cow<'_, [u8]>>;
}

impl Bytes for [u8] {
    fn len(&self) -> u64 {
        <[u8]>::len(self) as u64
    }
    fn at(&self, off: u64, len: u64) -> Result<std::borrow::Cow<'_, [u8]>> {
        Ok(std::borrow::Cow::Borrowed(
            &self[off as usize..(off + len) as usize],
        ))
    }
}

struct FileBytes<'a> {
    file: std::fs::File,
    len: u64,
    path: &'a Path,
}

impl Bytes for FileBytes<'_> {
    fn len(&self) -> u64 {
        self.len
    }
    fn at(&self, off: u64, len: u64) -> Result<std::borrow::Cow<'_, [u8]>> {
        use std::os::unix::fs::FileExt;
        let mut buf = vec![0u8; len as usize];
        self.file
            .read_exact_at(&mut buf, off)
            .ctx("reading archive", self.path)?;
        Ok(std::borrow::Cow::Owned(buf))
    }
}

/// Reads and fully validates the archive at `path`. Of a v1 archive only the
/// metadata is read; its file data stays on disk (see [`Archive::data`]).
pub fn read(path: &Path) -> Result<Archive> {
    let file = std::fs::File::open(path).ctx("opening archive", path)?;
    let len = file.metadata().ctx("reading archive", path)?.len();
    parse_from(&FileBytes { file, len, path }).map_err(|e| e.with_path(path))
}

/// Parses an archive from its bytes.
pub fn parse(bytes: &[u8]) -> Result<Archive> {
    parse_from(bytes)
}

fn parse_from(src: &(impl Bytes + ?Sized)) -> Result<Archive> {
    let bad = |m: String| Error::format(format!("not a valid clip archive: {m}"));
    let file_len = src.len();
    if file_len < HEADER_SIZE as u64 {
        return Err(bad(format!("{file_len} bytes is shorter than the header")));
    }
    let header = src.at(0, HEADER_SIZE as u64)?;
    let bytes = &header[..];
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
    if le_u32(bytes, 20) != 0 || le_u64(bytes, 56) != 0 {
        return Err(bad("reserved header fields are not zero".into()));
    }
    let count = le_u32(bytes, 16);
    let table_offset = le_u64(bytes, 24);
    let table_sum: [u8; 16] = bytes[32..48].try_into().expect("16 bytes");
    let total = le_u64(bytes, 48);
    if total != file_len {
        return Err(bad(format!(
            "file is {file_len} bytes but its header says {total} (truncated or extended)"
        )));
    }
    if count > MAX_SECTIONS {
        return Err(bad(format!("{count} sections")));
    }
    let table_len = count as u64 * SECTION_ENTRY_SIZE as u64;
    if table_offset
        .checked_add(table_len)
        .is_none_or(|e| e > file_len || table_offset < HEADER_SIZE as u64)
    {
        return Err(bad("section table outside the file".into()));
    }
    let table = src.at(table_offset, table_len)?;
    if checksum(&table) != table_sum {
        return Err(bad("section table checksum mismatch".into()));
    }
    let mut sections: HashMap<u32, Vec<u8>> = HashMap::new();
    let mut data = None;
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
        if sections.contains_key(&id) || (known == Some(SectionId::Data) && data.is_some()) {
            return Err(bad(format!("section {id} appears twice")));
        }
        if off
            .checked_add(stored_len)
            .is_none_or(|end| off < HEADER_SIZE as u64 || end > table_offset)
        {
            return Err(bad(format!("section {id} lies outside the file")));
        }
        if known == Some(SectionId::Data) {
            // File data is verified chunk by chunk against the span hashes when
            // read; opening an archive never reads it.
            if sflags != FLAG_REQUIRED || raw_len != stored_len || sum != [0; 16] {
                return Err(bad(
                    "DATA section: must be required, uncompressed, with a zero checksum".into(),
                ));
            }
            data = Some(DataSection {
                offset: off,
                len: stored_len,
            });
            continue;
        }
        let name = match known {
            Some(k) => format!("section {id} ({})", format!("{k:?}").to_uppercase()),
            None => format!("section {id}"),
        };
        if raw_len > MAX_SECTION {
            return Err(limits::exceeded(
                &name,
                raw_len,
                "bytes",
                MAX_SECTION,
                "archive::reader::MAX_SECTION",
            ));
        }
        // Bounded before anything is read or inflated: the tree's records by the
        // entry limit, a compressed section by its ratio.
        match known {
            Some(SectionId::Inodes) => limits::check_count(
                &name,
                raw_len / INODE_SIZE as u64,
                "inodes",
                limits::MAX_IMAGE_ENTRIES + 1,
                "limits::MAX_IMAGE_ENTRIES",
            )?,
            Some(SectionId::Dirents) => limits::check_count(
                &name,
                raw_len / DIRENT_SIZE as u64,
                "directory entries",
                limits::MAX_IMAGE_ENTRIES,
                "limits::MAX_IMAGE_ENTRIES",
            )?,
            _ => {}
        }
        if sflags & FLAG_ZSTD != 0 {
            limits::check_ratio(&name, stored_len, raw_len)?;
        }
        let stored = src.at(off, stored_len)?;
        if checksum(&stored) != sum {
            return Err(bad(format!(
                "section {id} checksum mismatch (corrupt file)"
            )));
        }
        let raw = if sflags & FLAG_ZSTD != 0 {
            crate::codec::zstd::decompress_exact_parallel(&stored, raw_len)
                .map_err(|e| bad(format!("section {id}: {e}")))?
        } else {
            if stored_len != raw_len {
                return Err(bad(format!("section {id}: lengths disagree")));
            }
            stored.into_owned()
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
    limits::check_count(
        "LAYERS section",
        layer_metas.len() as u64,
        "layers",
        limits::MAX_LAYERS as u64,
        "limits::MAX_LAYERS",
    )?;
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
    let tree = Tree::decode(inodes, dirents, xattrs, strings, layers.len() as u32)?;
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
    check_storage(&meta, &layers, data).map_err(bad)?;
    let profile = sections.remove(&(SectionId::Profile as u32));
    Ok(Archive {
        meta,
        layers,
        tree,
        data,
        profile,
    })
}

/// The storage kind, the layers and the DATA section must agree: a `local`
/// archive carries its data layer in its DATA section, an `s3` one names the
/// object holding it, an index-only one has no DATA section.
fn check_storage(
    meta: &Meta,
    layers: &[LayerRecord],
    data: Option<DataSection>,
) -> std::result::Result<(), String> {
    let kind = meta
        .storage
        .as_ref()
        .map_or(STORAGE_OCI, |s| s.kind.as_str());
    let data_offset = meta.storage.as_ref().and_then(|s| s.data_offset);
    let one_data_layer = || -> std::result::Result<&LayerRecord, String> {
        match layers {
            [l] if l.media_type == DATA_MEDIA_TYPE && l.compression == Compression::Zstd => Ok(l),
            _ => Err(format!(
                "a {kind} archive must have exactly one data layer ({DATA_MEDIA_TYPE})"
            )),
        }
    };
    match kind {
        STORAGE_OCI => {
            if data.is_some() {
                return Err("an index-only archive has a DATA section".into());
            }
            if let Some(l) = layers.iter().find(|l| l.media_type == DATA_MEDIA_TYPE) {
                return Err(format!(
                    "an index-only archive names data layer {}",
                    l.digest
                ));
            }
        }
        STORAGE_LOCAL => {
            let l = one_data_layer()?;
            let Some(d) = data else {
                return Err("a local v1 archive has no DATA section".into());
            };
            if data_offset != Some(d.offset) || d.len != l.compressed_size {
                return Err(format!(
                    "DATA section at {} ({} bytes) disagrees with the data layer (offset {data_offset:?}, {} bytes)",
                    d.offset, d.len, l.compressed_size
                ));
            }
        }
        STORAGE_S3 => {
            one_data_layer()?;
            let s = meta.storage.as_ref().expect("kind came from it");
            if data.is_some() {
                return Err("a .rclip (s3 storage) carries a DATA section".into());
            }
            match &s.s3 {
                Some(loc) if !loc.bucket.is_empty() && !loc.key.is_empty() => {}
                _ => return Err("s3 storage names no bucket and key".into()),
            }
            if data_offset.is_none() {
                return Err("s3 storage has no data_offset".into());
            }
        }
        other => return Err(format!("unknown storage type {other:?}")),
    }
    Ok(())
}
