//! Writing archives: to a temporary file next to the target, fsynced, then renamed,
//! so a reader never sees a half-written archive and a failed run leaves nothing.

use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::Path;

use super::*;
use crate::codec::CheckpointKind;
use crate::error::{Error, IoContext, Result};

const ZSTD_LEVEL: i32 = 9;

struct Section {
    id: SectionId,
    flags: u32,
    stored: Vec<u8>,
    raw_len: u64,
}

fn section(id: SectionId, raw: Vec<u8>, compress: bool) -> Result<Section> {
    let raw_len = raw.len() as u64;
    if compress && raw.len() > 64 {
        let z = crate::codec::zstd::compress_frames(&raw, ZSTD_LEVEL)
            .map_err(|e| Error::format(format!("compressing: {e}")))?;
        return Ok(Section {
            id,
            flags: FLAG_REQUIRED | FLAG_ZSTD,
            stored: z,
            raw_len,
        });
    }
    Ok(Section {
        id,
        flags: FLAG_REQUIRED,
        stored: raw,
        raw_len,
    })
}

/// Encodes the archive's sections.
fn encode(a: &Archive) -> Result<Vec<Section>> {
    let mut layers = Vec::new();
    let mut cps = Vec::new();
    let mut spans = Vec::new();
    let mut windows = Vec::new();
    for l in &a.layers {
        let cp_start = (cps.len() / CHECKPOINT_SIZE) as u64;
        let sp_start = (spans.len() / SPAN_SIZE) as u64;
        for c in &l.codec.checkpoints {
            let (woff, wlen) = match &c.window {
                Some(w) => {
                    let off = windows.len() as u64;
                    windows.extend_from_slice(w);
                    (off, w.len() as u32)
                }
                None => (0, 0),
            };
            cps.extend_from_slice(&c.in_offset.to_le_bytes());
            cps.extend_from_slice(&c.out_offset.to_le_bytes());
            cps.push(c.bits);
            cps.push(match c.kind {
                CheckpointKind::Start => 0,
                CheckpointKind::Block => 1,
            });
            cps.extend_from_slice(&[0, 0]);
            cps.extend_from_slice(&wlen.to_le_bytes());
            cps.extend_from_slice(&woff.to_le_bytes());
        }
        for s in &l.codec.spans {
            spans.extend_from_slice(&s.out_offset.to_le_bytes());
            spans.extend_from_slice(&s.checkpoint.to_le_bytes());
            spans.extend_from_slice(&s.hash);
        }
        layers.push(LayerMeta {
            digest: l.digest,
            media_type: l.media_type.clone(),
            compressed_size: l.compressed_size,
            compression: l.compression,
            diff_id: l.diff_id,
            uncompressed_size: l.codec.uncompressed_size,
            checkpoints: [cp_start, l.codec.checkpoints.len() as u64],
            spans: [sp_start, l.codec.spans.len() as u64],
        });
    }
    let json = |v: &dyn erased::Json| v.to_vec();
    let mut sections = vec![
        section(SectionId::Meta, json(&a.meta)?, true)?,
        section(SectionId::Layers, json(&layers)?, true)?,
        section(SectionId::Checkpoints, cps, true)?,
        section(SectionId::Spans, spans, false)?,
        // Windows are compressed one by one already.
        section(SectionId::Windows, windows, false)?,
        section(SectionId::Inodes, a.tree.encode_inodes(), true)?,
        section(SectionId::Dirents, a.tree.encode_dirents(), true)?,
        section(SectionId::Xattrs, a.tree.encode_xattrs(), true)?,
        section(SectionId::Strings, a.tree.strings.clone(), true)?,
    ];
    if let Some(p) = &a.profile {
        // A hint, not the image: readers that do not know it skip it.
        let mut s = section(SectionId::Profile, p.clone(), true)?;
        s.flags &= !FLAG_REQUIRED;
        sections.push(s);
    }
    Ok(sections)
}

/// Rewrites the archive at `path` with `profile` as its embedded startup profile
/// (`None`: without one), atomically: the file is written anew next to itself and
/// renamed over it, a v1 archive's file data copied as it is. Returns the new
/// size.
pub fn set_profile(path: &Path, profile: Option<&[u8]>) -> Result<u64> {
    let mut archive = super::reader::read(path)?;
    archive.profile = profile.map(<[u8]>::to_vec);
    let mut w = ArchiveWriter::create(path)?;
    if let Some(d) = archive.data {
        use std::io::Read;
        if d.offset != w.data_offset() {
            return Err(Error::format(format!(
                "{}: DATA section at {} (this build writes it at {})",
                path.display(),
                d.offset,
                w.data_offset()
            )));
        }
        let f = std::fs::File::open(path).ctx("opening archive", path)?;
        let mut r = std::io::BufReader::with_capacity(1 << 20, f);
        std::io::Seek::seek(&mut r, SeekFrom::Start(d.offset)).ctx("reading archive", path)?;
        let mut r = r.take(d.len);
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = r.read(&mut buf).ctx("reading archive", path)?;
            if n == 0 {
                break;
            }
            w.write_data(&buf[..n])?;
        }
        if w.data_len() != d.len {
            return Err(Error::format(format!(
                "{}: DATA section ends early (the file changed while it was copied?)",
                path.display()
            )));
        }
    }
    w.finish(&archive)
}

mod erased {
    use crate::error::{Error, Result};

    pub trait Json {
        fn to_vec(&self) -> Result<Vec<u8>>;
    }
    impl<T: serde::Serialize> Json for T {
        fn to_vec(&self) -> Result<Vec<u8>> {
            serde_json::to_vec(self).map_err(|e| Error::format(format!("encoding JSON: {e}")))
        }
    }
}

/// Writes `archive` (index-only, or a `.rclip`) to `path` atomically (temporary
/// file, fsync, rename).
pub fn write(archive: &Archive, path: &Path) -> Result<u64> {
    ArchiveWriter::create(path)?.finish(archive)
}

/// Writes an archive in one pass: the DATA section (streamed, for a v1 archive)
/// right after the header, then the metadata sections, the table and the header,
/// into a temporary file next to the target that [`ArchiveWriter::finish`] renames
/// into place. Dropped without `finish`, it leaves nothing behind.
pub struct ArchiveWriter {
    tmp: tempfile::NamedTempFile,
    out: BufWriter<std::fs::File>,
    path: std::path::PathBuf,
    data_len: u64,
}

impl ArchiveWriter {
    /// Starts an archive that will be renamed to `path`.
    pub fn create(path: &Path) -> Result<ArchiveWriter> {
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let tmp = tempfile::Builder::new()
            .prefix(".clip-")
            .suffix(".tmp")
            .tempfile_in(dir)
            .ctx("creating a temporary file in", dir)?;
        let file = tmp.as_file().try_clone().ctx("opening", tmp.path())?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        out.write_all(&[0u8; HEADER_SIZE])
            .ctx("writing", tmp.path())?;
        Ok(ArchiveWriter {
            tmp,
            out,
            path: path.to_path_buf(),
            data_len: 0,
        })
    }

    /// Offset in the file where the DATA section starts.
    pub fn data_offset(&self) -> u64 {
        HEADER_SIZE as u64
    }

    /// Appends bytes to the DATA section.
    pub fn write_data(&mut self, bytes: &[u8]) -> Result<()> {
        self.out.write_all(bytes).ctx("writing", self.tmp.path())?;
        self.data_len += bytes.len() as u64;
        Ok(())
    }

    /// Bytes of DATA written so far.
    pub fn data_len(&self) -> u64 {
        self.data_len
    }

    /// The path the archive is being written to before the rename.
    pub fn temp_path(&self) -> &Path {
        self.tmp.path()
    }

    /// Writes the metadata of `archive` after the data, syncs and renames the file
    /// into place; returns its size.
    pub fn finish(mut self, archive: &Archive) -> Result<u64> {
        let sections = encode(archive)?;
        let tmp_path = self.tmp.path().to_path_buf();
        let mut offset = HEADER_SIZE as u64;
        let mut table = Vec::with_capacity((sections.len() + 1) * SECTION_ENTRY_SIZE);
        let mut entry = |id: u32, flags: u32, off: u64, stored: u64, raw: u64, sum: [u8; 16]| {
            table.extend_from_slice(&id.to_le_bytes());
            table.extend_from_slice(&flags.to_le_bytes());
            table.extend_from_slice(&off.to_le_bytes());
            table.extend_from_slice(&stored.to_le_bytes());
            table.extend_from_slice(&raw.to_le_bytes());
            table.extend_from_slice(&sum);
        };
        let count = sections.len() + usize::from(archive.data.is_some());
        if archive.data.is_some() {
            let d = self.data_len;
            entry(SectionId::Data as u32, FLAG_REQUIRED, offset, d, d, [0; 16]);
            offset += d;
        }
        for s in &sections {
            self.out.write_all(&s.stored).ctx("writing", &tmp_path)?;
            let len = s.stored.len() as u64;
            entry(
                s.id as u32,
                s.flags,
                offset,
                len,
                s.raw_len,
                checksum(&s.stored),
            );
            offset += len;
        }
        let table_offset = offset;
        self.out.write_all(&table).ctx("writing", &tmp_path)?;
        let total = table_offset + table.len() as u64;
        let mut header = Vec::with_capacity(HEADER_SIZE);
        header.extend_from_slice(&MAGIC);
        header.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        header.extend_from_slice(&0u32.to_le_bytes()); // flags
        header.extend_from_slice(&(count as u32).to_le_bytes());
        header.extend_from_slice(&0u32.to_le_bytes()); // reserved
        header.extend_from_slice(&table_offset.to_le_bytes());
        header.extend_from_slice(&checksum(&table));
        header.extend_from_slice(&total.to_le_bytes());
        header.resize(HEADER_SIZE, 0);
        self.out.flush().ctx("writing", &tmp_path)?;
        let mut f = self.tmp.as_file();
        f.seek(SeekFrom::Start(0)).ctx("writing", &tmp_path)?;
        f.write_all(&header).ctx("writing", &tmp_path)?;
        f.sync_all().ctx("syncing", &tmp_path)?;
        self.tmp
            .persist(&self.path)
            .map_err(|e| Error::io("renaming into", &self.path, e.error))?;
        Ok(total)
    }
}
