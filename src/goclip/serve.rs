//! Serving Go-clip archives through an [`Image`], as the worker's existing
//! archives must keep working.
//!
//! - **v1 `.clip`** (data inside): the archive file itself is the one data layer,
//!   read as a plain (uncompressed) stream: files point at their data blocks. One
//!   pass over the data at the first open computes the span hashes every read is
//!   verified against, and checks each file against the sha256 `ContentHash` the Go
//!   clip recorded (or the block's CRC-64 where it recorded none), so a corrupt
//!   archive fails at open, naming the file, instead of serving bad bytes. The span
//!   hashes are kept in the conversion directory (`<id>.verified`, named by the
//!   archive and the data file's device, inode, size and change time), so later
//!   opens of the unchanged file skip the pass.
//! - **v1 `.rclip`**: the full `.clip` it names in S3 (or the one the caller
//!   gives) is downloaded once into the conversion directory, as the Go clip did
//!   with a cache path, then served as above.
//! - **v2 index-only**: the Go clip's gzip checkpoints hold offsets only, no
//!   inflate window or bit position, so decoding cannot resume at them: the image
//!   (its `Reference` is the manifest digest) is indexed again, reading each layer
//!   from its start once, into an archive of ours kept in the conversion directory
//!   under the Go archive's sha256; later mounts of the same archive open that at
//!   once and read spans lazily like any index-only archive.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use sha2::Digest as _;

use super::{GoArchive, NodeType, OciInfo, S3Info, Storage};
use crate::archive::{self, Archive, DataSection, LayerRecord, Meta, StorageRef};
use crate::codec::DEFAULT_SPAN_SIZE;
use crate::digest::Digest;
use crate::error::{Error, IoContext, Result};
use crate::image::{Image, SourceOptions};
use crate::oci::{Compression, ImageConfig, Platform};
use crate::source::{FileSource, RangeSource};

/// Media type of the data layer a Go-clip v1 archive is served as.
pub const GOCLIP_DATA_MEDIA_TYPE: &str = "application/vnd.beam-cloud.clip.v1.data";

/// Conversions not used for this long are removed when another is made.
const STALE_AFTER: Duration = Duration::from_secs(24 * 3600);

/// Opens the Go-clip archive at `path` as an [`Image`] (see the module docs).
pub fn open_image(path: &Path, opts: &SourceOptions) -> Result<Image> {
    let go = super::read(path)?;
    let dir = opts
        .goclip_dir
        .clone()
        .unwrap_or_else(|| crate::mount::default_cache_dir().join("goclip"));
    let r = match &go.storage {
        Storage::Local => v1_image(&go, path, path, &dir),
        Storage::S3(s) => match &opts.data_archive {
            Some(full) => v1_image(&go, path, full, &dir),
            None => {
                let data = download(&go, s, opts, &dir)?;
                v1_image(&go, path, &data, &dir).inspect_err(|_| {
                    // A corrupt download is not kept.
                    let _ = std::fs::remove_file(&data);
                })
            }
        },
        Storage::Oci(o) => v2_image(&go, o, path, opts, &dir),
    };
    r.map_err(|e| e.with_path(path))
}

/// Where the data of the full v1 archive at `data` ends (its index starts).
fn data_end(go: &GoArchive, archive: &Path, data: &Path) -> Result<u64> {
    if data == archive {
        return Ok(go.index_pos);
    }
    if !super::is_goclip_file(data) {
        return Err(Error::format(format!(
            "{}: not a Go-clip archive, so not the full archive of this .rclip",
            data.display()
        )));
    }
    // Its header says where its index (and so the end of its data) is.
    let mut h = [0u8; super::HEADER_SIZE];
    std::fs::File::open(data)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut h))
        .ctx("reading the header of", data)?;
    let pos = i64::from_le_bytes(h[18..26].try_into().expect("8 bytes"));
    let size = std::fs::metadata(data)
        .ctx("reading metadata of", data)?
        .len();
    if pos < super::HEADER_SIZE as i64 || pos as u64 > size {
        return Err(Error::format(format!(
            "{}: its header puts the index at {pos}, outside the file ({size} bytes)",
            data.display()
        )));
    }
    Ok(pos as u64)
}

fn v1_image(go: &GoArchive, archive: &Path, data: &Path, dir: &Path) -> Result<Image> {
    let end = data_end(go, archive, data)?;
    let file = std::fs::File::open(data).ctx("opening", data)?;
    let tree = go.tree()?;
    let sidecar = verified_path(go, &file, data, dir)?;
    let codec = match sidecar.as_deref().and_then(|p| load_verified(p, end)) {
        Some(c) => c,
        None => {
            let c = verify_and_index(go, &file, data, end)?;
            if let Some(p) = &sidecar {
                store_verified(p, &c, dir);
            }
            c
        }
    };
    let id = Digest::from_bytes(go.id);
    let a = Archive {
        meta: Meta {
            created_by: "the Go clip".into(),
            source: archive.display().to_string(),
            storage: Some(StorageRef::local(0)),
            manifest_digest: None,
            platform: Platform::host(),
            config: ImageConfig::default(),
            span_size: DEFAULT_SPAN_SIZE,
        },
        layers: vec![LayerRecord {
            digest: id,
            media_type: GOCLIP_DATA_MEDIA_TYPE.into(),
            compressed_size: end,
            compression: Compression::None,
            diff_id: id,
            codec,
        }],
        tree,
        data: Some(DataSection {
            offset: 0,
            len: end,
        }),
        profile: None,
    };
    let src = FileSource::window(file, data, 0, end);
    Image::new(a, vec![Arc::new(src) as Arc<dyn RangeSource>])
}

/// Where the span index of a verified v1 data file is kept: named by the Go
/// archive and by the data file's device, inode, size and change time, so a file
/// replaced or changed in place is verified again. `None` if the file cannot be
/// identified.
fn verified_path(
    go: &GoArchive,
    file: &std::fs::File,
    data: &Path,
    dir: &Path,
) -> Result<Option<PathBuf>> {
    use std::os::unix::fs::MetadataExt;
    let m = file.metadata().ctx("reading metadata of", data)?;
    let mut h = sha2::Sha256::new();
    h.update(go.id);
    for v in [
        m.dev(),
        m.ino(),
        m.size(),
        m.ctime() as u64,
        m.ctime_nsec() as u64,
    ] {
        h.update(v.to_le_bytes());
    }
    Ok(Some(
        dir.join(format!("{}.verified", hex::encode(h.finalize()))),
    ))
}

/// The span index kept at `p` for a data region of `end` bytes, if it is there and
/// well formed (anything else: verify again).
fn load_verified(p: &Path, end: u64) -> Option<crate::codec::CodecIndex> {
    use crate::codec::{Checkpoint, CheckpointKind, CodecIndex, Span};
    let b = std::fs::read(p).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&b).ok()?;
    if v["version"] != 1 || v["size"].as_u64()? != end {
        return None;
    }
    let mut c = CodecIndex {
        uncompressed_size: end,
        ..Default::default()
    };
    for cp in v["checkpoints"].as_array()? {
        let o = cp.as_u64()?;
        c.checkpoints.push(Checkpoint {
            in_offset: o,
            bits: 0,
            out_offset: o,
            kind: CheckpointKind::Start,
            window: None,
        });
    }
    for sp in v["spans"].as_array()? {
        let sp = sp.as_array()?;
        let hash: [u8; 32] = hex::decode(sp.get(2)?.as_str()?).ok()?.try_into().ok()?;
        c.spans.push(Span {
            out_offset: sp.first()?.as_u64()?,
            checkpoint: u32::try_from(sp.get(1)?.as_u64()?).ok()?,
            hash,
        });
    }
    c.validate(end).ok()?;
    touch(p);
    Some(c)
}

/// Keeps the span index of a verified data file (best effort).
fn store_verified(p: &Path, c: &crate::codec::CodecIndex, dir: &Path) {
    let doc = serde_json::json!({
        "version": 1,
        "size": c.uncompressed_size,
        "checkpoints": c.checkpoints.iter().map(|cp| cp.in_offset).collect::<Vec<_>>(),
        "spans": c.spans.iter().map(|s| serde_json::json!([s.out_offset, s.checkpoint, hex::encode(s.hash)])).collect::<Vec<_>>(),
    });
    let r = std::fs::create_dir_all(dir).and_then(|_| {
        let mut t = tempfile::Builder::new()
            .prefix(".tmp-goclip-")
            .tempfile_in(dir)?;
        t.write_all(doc.to_string().as_bytes())?;
        t.persist(p).map_err(|e| e.error)?;
        Ok(())
    });
    if let Err(e) = r {
        tracing::warn!(path = %p.display(), error = %e, "could not keep the span index of a verified Go-clip archive");
    }
}

/// CRC-64/ISO as Go's `hash/crc64` computes it.
struct Crc64 {
    table: [u64; 256],
    crc: u64,
}

impl Crc64 {
    fn new() -> Crc64 {
        let mut table = [0u64; 256];
        for (i, t) in table.iter_mut().enumerate() {
            let mut c = i as u64;
            for _ in 0..8 {
                c = if c & 1 == 1 {
                    (c >> 1) ^ 0xD800_0000_0000_0000
                } else {
                    c >> 1
                };
            }
            *t = c;
        }
        Crc64 { table, crc: !0 }
    }
    fn update(&mut self, d: &[u8]) {
        for &b in d {
            self.crc = self.table[((self.crc as u8) ^ b) as usize] ^ (self.crc >> 8);
        }
    }
    fn sum(&self) -> u64 {
        !self.crc
    }
}

enum Check {
    Sha(sha2::Sha256),
    Crc(Box<Crc64>),
}

/// One pass over `[0, end)` of `file`: the span index of the data layer, and
/// every file's bytes checked against its `ContentHash` (or block CRC-64).
fn verify_and_index(
    go: &GoArchive,
    file: &std::fs::File,
    path: &Path,
    end: u64,
) -> Result<crate::codec::CodecIndex> {
    use std::os::unix::fs::FileExt;
    let mut files: Vec<&super::Node> = go
        .nodes
        .iter()
        .filter(|n| n.node_type == NodeType::File)
        .collect();
    files.sort_by_key(|n| n.data_pos);
    for w in files.windows(2) {
        if w[0].data_pos + w[0].data_len + super::CHECKSUM_SIZE > w[1].data_pos - 1 {
            return Err(Error::format(format!(
                "index: the data blocks of {:?} and {:?} overlap",
                String::from_utf8_lossy(&w[0].path),
                String::from_utf8_lossy(&w[1].path)
            )));
        }
    }
    if let Some(last) = files.last() {
        if last.data_pos + last.data_len + super::CHECKSUM_SIZE > end {
            return Err(Error::format(format!(
                "{}: the data of {:?} runs past the data region ({end} bytes): truncated?",
                path.display(),
                String::from_utf8_lossy(&last.path)
            )));
        }
    }
    let mut indexer = crate::codec::stream_indexer(Compression::None, DEFAULT_SPAN_SIZE);
    let mut buf = vec![0u8; 4 << 20];
    let mut pos = 0u64;
    let mut next = 0usize; // first file not finished
    let mut cur: Option<Check> = None;
    let finish = |n: &super::Node, c: Check| -> Result<()> {
        let name = String::from_utf8_lossy(&n.path).into_owned();
        match c {
            Check::Sha(h) => {
                let got = hex::encode(h.finalize());
                if got != n.content_hash.to_ascii_lowercase() {
                    return Err(Error::DigestMismatch {
                        what: format!("{name} (its ContentHash)"),
                        expected: n.content_hash.clone(),
                        actual: got,
                    });
                }
            }
            Check::Crc(c) => {
                let mut b = [0u8; 8];
                file.read_exact_at(&mut b, n.data_pos + n.data_len)
                    .ctx("reading", path)?;
                let want = u64::from_be_bytes(b);
                if c.sum() != want {
                    return Err(Error::DigestMismatch {
                        what: format!("{name} (its block CRC-64)"),
                        expected: format!("{want:016x}"),
                        actual: format!("{:016x}", c.sum()),
                    });
                }
            }
        }
        let mut t = [0u8; 1];
        file.read_exact_at(&mut t, n.data_pos - 1)
            .ctx("reading", path)?;
        if t[0] != 0 {
            return Err(Error::format(format!(
                "{name}: data block of type {} (the Go clip writes 0)",
                t[0]
            )));
        }
        Ok(())
    };
    let start_check = |n: &super::Node| {
        if n.content_hash.is_empty() {
            Check::Crc(Box::new(Crc64::new()))
        } else {
            Check::Sha(sha2::Sha256::new())
        }
    };
    while pos < end {
        let n = ((end - pos) as usize).min(buf.len());
        let chunk = &mut buf[..n];
        file.read_exact_at(chunk, pos).ctx("reading", path)?;
        let (c0, c1) = (pos, pos + n as u64);
        while let Some(&f) = files.get(next) {
            let (s, e) = (f.data_pos, f.data_pos + f.data_len);
            if s > c1 || (s == c1 && e > s) {
                break;
            }
            let check = cur.get_or_insert_with(|| start_check(f));
            let (lo, hi) = (s.max(c0), e.min(c1));
            if hi > lo {
                let piece = &chunk[(lo - c0) as usize..(hi - c0) as usize];
                match check {
                    Check::Sha(h) => h.update(piece),
                    Check::Crc(c) => c.update(piece),
                }
            }
            if e > c1 {
                break;
            }
            finish(f, cur.take().expect("set"))?;
            next += 1;
        }
        indexer.push(chunk, &mut |_| Ok(()))?;
        pos = c1;
    }
    if next < files.len() {
        return Err(Error::format(format!(
            "{}: the data ends before {:?}",
            path.display(),
            String::from_utf8_lossy(&files[next].path)
        )));
    }
    indexer.finish(&mut |_| Ok(()))
}

/// Removes conversions in `dir` not used for [`STALE_AFTER`] (never `keep`).
fn sweep(dir: &Path, keep: &Path) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let now = SystemTime::now();
    for e in rd.flatten() {
        let p = e.path();
        if p == keep {
            continue;
        }
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| now.duration_since(t).unwrap_or_default() > STALE_AFTER);
        if old {
            tracing::debug!(path = %p.display(), "removing an unused Go-clip conversion");
            let _ = std::fs::remove_file(&p);
        }
    }
}

/// Marks a conversion as used now (so [`sweep`] keeps it).
fn touch(p: &Path) {
    if let Ok(f) = std::fs::File::options().append(true).open(p) {
        let _ = f.set_modified(SystemTime::now());
    }
}

/// Downloads the full archive a `.rclip` names into `dir` (once).
fn download(go: &GoArchive, s: &S3Info, opts: &SourceOptions, dir: &Path) -> Result<PathBuf> {
    let loc = match &opts.s3 {
        Some(l) => l.clone(),
        None => crate::s3::S3Location {
            bucket: s.bucket.clone(),
            key: s.key.clone(),
            region: s.region.clone(),
            endpoint: s.endpoint.clone(),
            path_style: s.force_path_style,
        },
    };
    let mut h = sha2::Sha256::new();
    h.update(go.id);
    for part in [&loc.bucket, &loc.key, &loc.endpoint] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    std::fs::create_dir_all(dir).ctx("creating", dir)?;
    let out = dir.join(format!("{}.data", hex::encode(h.finalize())));
    if out.is_file() {
        touch(&out);
        return Ok(out);
    }
    sweep(dir, &out);
    let src = crate::s3::S3Source::open(&loc, &opts.s3_options, 0, None)?;
    let size = src.size();
    if let Ok(st) = rustix::fs::statvfs(dir) {
        let free = st.f_bavail.saturating_mul(st.f_frsize);
        let total = st.f_blocks.saturating_mul(st.f_frsize);
        let floor = (total / 10).min(16 << 30);
        if free < size.saturating_add(floor) {
            return Err(Error::Invalid(format!(
                "{}: not enough free space for the {size}-byte archive {loc} ({free} bytes free, {floor} kept free)",
                dir.display()
            )));
        }
    }
    tracing::info!(%loc, size, "downloading the full archive of a Go-clip .rclip");
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-goclip-")
        .tempfile_in(dir)
        .ctx("creating a temporary file in", dir)?;
    let mut r = src.reader(0, size)?;
    std::io::copy(&mut r, tmp.as_file_mut())
        .map_err(|e| Error::Network(format!("downloading {loc}: {e}")))?;
    tmp.as_file_mut().flush().ctx("writing", tmp.path())?;
    tmp.persist(&out)
        .map_err(|e| Error::io("renaming into", &out, e.error))?;
    Ok(out)
}

fn v2_image(
    go: &GoArchive,
    o: &OciInfo,
    path: &Path,
    opts: &SourceOptions,
    dir: &Path,
) -> Result<Image> {
    std::fs::create_dir_all(dir).ctx("creating", dir)?;
    let out = dir.join(format!("{}.clip", hex::encode(go.id)));
    let check = |a: &Archive| -> Result<()> {
        let got: Vec<String> = a.layers.iter().map(|l| l.digest.to_string()).collect();
        if got != o.layers {
            return Err(Error::format(format!(
                "the image indexed again has layers {got:?}, the Go-clip archive {:?}",
                o.layers
            )));
        }
        Ok(())
    };
    if out.is_file() {
        match archive::read(&out).and_then(|a| check(&a).map(|_| a)) {
            Ok(a) => {
                touch(&out);
                return Image::bind(a, &out, opts);
            }
            Err(e) => {
                tracing::warn!(path = %out.display(), error = %e, "re-indexing a Go-clip archive whose conversion is unusable");
            }
        }
    }
    sweep(dir, &out);
    let registry_ref = (!o.registry_url.is_empty() && !o.repository.is_empty()).then(|| {
        let sep = if o.reference.starts_with("sha256:") {
            "@"
        } else {
            ":"
        };
        format!("{}/{}{sep}{}", o.registry_url, o.repository, o.reference)
    });
    let copts = crate::create::CreateOptions {
        registry: opts.registry.clone(),
        storage_ref: registry_ref.clone(),
        ..Default::default()
    };
    tracing::info!(
        archive = %path.display(),
        image = registry_ref.as_deref().unwrap_or("(layout)"),
        "indexing the image of a Go-clip archive again (its checkpoints cannot resume decoding)"
    );
    match (&opts.layout, &registry_ref) {
        (Some(layout), _) => crate::create::index_layout(layout, None, &out, &copts)?,
        (None, Some(r)) => crate::create::create_from_image(r, &out, &copts)?,
        (None, None) => {
            return Err(Error::Invalid(
                "the Go-clip archive records no registry image; give a layout".into(),
            ));
        }
    };
    let a = archive::read(&out)?;
    check(&a)?;
    Image::bind(a, &out, opts)
}
