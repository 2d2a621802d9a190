//! v1 archives: `.clip` files that carry their file data, for images with no
//! registry behind them (see `docs/FORMAT.md`, "v1 archives").
//!
//! The file contents of a tree are laid end to end as one *data stream*, cut into
//! chunks of `chunk_size` bytes, and each chunk is stored as an independent zstd
//! frame (a frame of raw blocks when it does not compress) in the archive's DATA
//! section. The archive then describes that stream as its one layer: a checkpoint
//! at every frame and a BLAKE3-hashed span per chunk, so the read path of
//! index-only archives (verified span decoding, the span cache, FUSE, extract)
//! serves v1 archives unchanged. Identical contents are stored once.
//!
//! Packing runs as a pipeline: one thread walks the tree and reads files into
//! chunks, `threads` workers compress chunks, and one thread writes frames in
//! order; the channels between them are bounded, so memory does not grow with the
//! tree (beyond its metadata).

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};

use sha2::{Digest as _, Sha256};

use crate::archive::{
    self, Archive, ArchiveWriter, DATA_MEDIA_TYPE, LayerRecord, Meta, STORAGE_LOCAL, STORAGE_S3,
    StorageRef,
};
use crate::codec::{Checkpoint, CheckpointKind, CodecIndex, Span};
use crate::digest::Digest;
use crate::error::{Error, IoContext, Result};
use crate::image::{Image, SourceOptions};
use crate::index::TreeBuilder;
use crate::oci::{Compression, Platform};
use crate::s3::{S3Location, S3Options};
use crate::tar::{Entry, EntryKind};
use crate::tree::{Kind, Tree};

/// Default chunk size: 2 MiB of file data per independently decodable frame (the
/// span size of index-only archives; see docs/FORMAT.md for the trade-off).
pub const DEFAULT_CHUNK_SIZE: u64 = 2 << 20;
/// Smallest chunk size accepted.
pub const MIN_CHUNK_SIZE: u64 = 64 << 10;
/// Largest chunk size accepted.
pub const MAX_CHUNK_SIZE: u64 = 64 << 20;
/// Default zstd level for chunks.
pub const DEFAULT_LEVEL: i32 = 3;

/// Options for packing a v1 archive.
#[derive(Debug, Clone)]
pub struct PackOptions {
    /// Uncompressed bytes per chunk (default [`DEFAULT_CHUNK_SIZE`]).
    pub chunk_size: u64,
    /// zstd level (default [`DEFAULT_LEVEL`]).
    pub level: i32,
    /// Compression threads (0: one more than the number of CPUs).
    pub threads: usize,
    /// Set to true to cancel.
    pub cancel: Arc<AtomicBool>,
}

impl Default for PackOptions {
    fn default() -> PackOptions {
        PackOptions {
            chunk_size: DEFAULT_CHUNK_SIZE,
            level: DEFAULT_LEVEL,
            threads: 0,
            cancel: Arc::new(AtomicBool::new(false)),
        }
    }
}

/// What was written.
#[derive(Debug, Clone, Default)]
pub struct PackSummary {
    /// Archive size in bytes.
    pub archive_size: u64,
    /// Inodes in the tree.
    pub inodes: usize,
    /// Regular files (inodes, so hardlinks count once).
    pub files: usize,
    /// Bytes of the data stream (file contents, each distinct content once).
    pub data_bytes: u64,
    /// Bytes of the DATA section (compressed).
    pub stored_bytes: u64,
    /// Chunks in the DATA section.
    pub chunks: usize,
    /// File bytes not stored again because an identical file was stored already.
    pub dedup_bytes: u64,
    /// Sockets (and other entries an archive cannot hold) that were skipped.
    pub skipped: usize,
}

fn check_options(opts: &PackOptions) -> Result<()> {
    if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&opts.chunk_size) {
        return Err(Error::Invalid(format!(
            "chunk size {} is outside {MIN_CHUNK_SIZE}..={MAX_CHUNK_SIZE}",
            opts.chunk_size
        )));
    }
    if !(1..=19).contains(&opts.level) {
        return Err(Error::Invalid(format!(
            "zstd level {} is outside 1..=19",
            opts.level
        )));
    }
    Ok(())
}

/// Archives the directory tree at `dir` (everything below it, as a build leaves
/// it: the worker passes a umoci bundle) into a v1 archive at `out`. Hardlinks,
/// xattrs, devices, fifos, modes, owners and mtimes are kept; symlinks are never
/// followed; sockets are skipped with a warning. A file that cannot be read or
/// that changes while it is read fails the call, naming it, and leaves no archive.
pub fn pack_dir(dir: &Path, out: &Path, opts: &PackOptions) -> Result<PackSummary> {
    check_options(opts)?;
    let top = std::fs::symlink_metadata(dir).ctx("reading", dir)?;
    if !top.is_dir() {
        return Err(Error::Invalid(format!(
            "{} is not a directory",
            dir.display()
        )));
    }
    let (tree, data, skipped) = with_data_writer(out, opts, |w| {
        let mut walker = Walker {
            root: dir,
            builder: TreeBuilder::default(),
            links: HashMap::new(),
            skipped: 0,
            cancel: &opts.cancel,
        };
        walker.walk(w)?;
        let skipped = walker.skipped;
        Ok((walker.builder.finish()?, skipped))
    })?;
    let meta = Meta {
        created_by: format!("clip {}", crate::VERSION),
        source: format!("dir:{}", dir.display()),
        storage: None,
        manifest_digest: None,
        platform: Platform::host(),
        config: Default::default(),
        span_size: opts.chunk_size,
    };
    let (archive_size, summary) = data.finish(meta, tree)?;
    Ok(PackSummary {
        archive_size,
        skipped,
        ..summary
    })
}

/// Flattens the image `reference` (a registry image or `oci:DIR[:TAG]`) into a v1
/// archive at `out`, with exactly the whiteout and merge rules of a mount: the
/// image is indexed (through `source`: platform, credentials), then every file of
/// the merged tree is read, verified, from its layer and stored in the data layer.
/// The image's config, platform and manifest digest are kept.
pub fn pack_image(
    reference: &str,
    out: &Path,
    opts: &PackOptions,
    source: &crate::create::CreateOptions,
) -> Result<PackSummary> {
    check_options(opts)?;
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let index = tempfile::Builder::new()
        .prefix(".clip-index-")
        .tempfile_in(dir)
        .ctx("creating a temporary file in", dir)?;
    crate::create::create_from_image(reference, index.path(), source)?;
    let sources = SourceOptions {
        registry: source.registry.clone(),
        ..Default::default()
    };
    let image = Image::open(index.path(), &sources)?;
    let (tree, data, ()) = with_data_writer(out, opts, |w| {
        let tree = flatten_image(&image, w, &opts.cancel)?;
        Ok((tree, ()))
    })?;
    let m = &image.archive().meta;
    let meta = Meta {
        created_by: format!("clip {}", crate::VERSION),
        source: m.source.clone(),
        storage: None,
        manifest_digest: m.manifest_digest,
        platform: m.platform.clone(),
        config: m.config.clone(),
        span_size: opts.chunk_size,
    };
    let (archive_size, summary) = data.finish(meta, tree)?;
    Ok(PackSummary {
        archive_size,
        ..summary
    })
}

/// Reads every file of `image` in layer order (one verified pass per layer) into
/// the data stream and returns the tree with file inodes pointing into it.
fn flatten_image(image: &Image, w: &mut DataWriter<'_>, cancel: &AtomicBool) -> Result<Tree> {
    let mut tree = image.tree().clone();
    // Decoded once: every file inode is rewritten.
    let mut inodes: Vec<crate::tree::Inode> = tree.inodes.iter().collect();
    // Per layer, the file inodes in stream order (hardlinks are one inode).
    let mut by_layer: Vec<Vec<usize>> = vec![Vec::new(); image.archive().layers.len()];
    for (i, ino) in inodes.iter().enumerate() {
        if ino.kind() == Kind::File && ino.size > 0 {
            by_layer[ino.b as usize].push(i);
        }
    }
    for (layer, files) in by_layer.iter_mut().enumerate() {
        files.sort_by_key(|&i| inodes[i].a);
        let Some(&last) = files.last() else { continue };
        let end = inodes[last].a + inodes[last].size;
        let mut next = 0;
        let mut file = FileSink::default();
        let inodes = &mut inodes;
        image.stream_layer(layer, end, &mut |pos, data| {
            if cancel.load(Ordering::Relaxed) {
                return Err(Error::Canceled);
            }
            let mut pos = pos;
            let mut data = data;
            while let Some(&i) = files.get(next) {
                let (start, size) = (inodes[i].a, inodes[i].size);
                let fend = start + size;
                if pos + data.len() as u64 <= start {
                    break;
                }
                if pos < start {
                    data = &data[(start - pos) as usize..];
                    pos = start;
                }
                let n = ((fend - pos) as usize).min(data.len());
                if pos == start {
                    file.begin(w, size);
                }
                file.put(w, &data[..n])?;
                data = &data[n..];
                pos += n as u64;
                if pos < fend {
                    break;
                }
                inodes[i].a = file.end(w)?;
                inodes[i].b = 0;
                next += 1;
            }
            Ok(())
        })?;
        if next != files.len() {
            return Err(Error::format(format!(
                "layer {layer} ended before all its files were read"
            )));
        }
    }
    for ino in inodes.iter_mut() {
        if ino.kind() == Kind::File && ino.size == 0 {
            ino.a = 0;
            ino.b = 0;
        }
    }
    tree.inodes = inodes.into();
    Ok(tree)
}

/// One file's bytes on their way into the data stream: small files are gathered
/// whole so identical ones can be stored once; large ones stream through.
#[derive(Default)]
struct FileSink {
    small: Option<Vec<u8>>,
    offset: u64,
    hasher: Option<blake3::Hasher>,
    size: u64,
}

impl FileSink {
    fn begin(&mut self, w: &DataWriter<'_>, size: u64) {
        self.size = size;
        if size <= w.small_limit() {
            let mut b = self.small.take().unwrap_or_default();
            b.clear();
            self.small = Some(b);
            self.hasher = None;
        } else {
            self.offset = w.pos;
            self.hasher = Some(blake3::Hasher::new());
        }
    }

    fn put(&mut self, w: &mut DataWriter<'_>, data: &[u8]) -> Result<()> {
        match &mut self.hasher {
            Some(h) => {
                h.update(data);
                w.append(data)
            }
            None => {
                self.small.as_mut().expect("begun").extend_from_slice(data);
                Ok(())
            }
        }
    }

    fn end(&mut self, w: &mut DataWriter<'_>) -> Result<u64> {
        match self.hasher.take() {
            Some(h) => {
                w.remember(self.size, *h.finalize().as_bytes(), self.offset);
                Ok(self.offset)
            }
            None => w.add_whole(self.small.as_ref().expect("begun")),
        }
    }
}

/// Walks a directory tree depth first in name order, adding entries to the tree
/// and file contents to the data stream.
struct Walker<'a> {
    root: &'a Path,
    builder: TreeBuilder,
    /// (dev, ino) of files with several links → the first path seen.
    links: HashMap<(u64, u64), Vec<u8>>,
    skipped: usize,
    cancel: &'a AtomicBool,
}

impl Walker<'_> {
    fn walk(&mut self, w: &mut DataWriter<'_>) -> Result<()> {
        let root_meta = std::fs::symlink_metadata(self.root).ctx("reading", self.root)?;
        self.entry(w, Vec::new(), self.root.to_path_buf(), &root_meta)?;
        // (relative path, absolute path) of directories still to list, children
        // pushed in reverse name order so they pop in name order.
        let mut stack: Vec<(Vec<u8>, PathBuf)> = vec![(Vec::new(), self.root.to_path_buf())];
        while let Some((rel, abs)) = stack.pop() {
            let mut names: Vec<std::ffi::OsString> = std::fs::read_dir(&abs)
                .ctx("listing", &abs)?
                .map(|e| e.map(|e| e.file_name()))
                .collect::<std::io::Result<_>>()
                .ctx("listing", &abs)?;
            names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
            let mut subdirs = Vec::new();
            for name in names {
                if self.cancel.load(Ordering::Relaxed) {
                    return Err(Error::Canceled);
                }
                let child_abs = abs.join(&name);
                let mut child_rel = rel.clone();
                if !child_rel.is_empty() {
                    child_rel.push(b'/');
                }
                child_rel.extend_from_slice(name.as_bytes());
                let m = std::fs::symlink_metadata(&child_abs).ctx("reading", &child_abs)?;
                if self.entry(w, child_rel.clone(), child_abs.clone(), &m)? && m.is_dir() {
                    subdirs.push((child_rel, child_abs));
                }
            }
            stack.extend(subdirs.into_iter().rev());
        }
        Ok(())
    }

    /// Adds one entry; returns false if it was skipped.
    fn entry(
        &mut self,
        w: &mut DataWriter<'_>,
        rel: Vec<u8>,
        abs: PathBuf,
        m: &std::fs::Metadata,
    ) -> Result<bool> {
        use std::os::unix::fs::FileTypeExt;
        let ft = m.file_type();
        let mut e = Entry {
            path: rel,
            kind: EntryKind::File,
            mode: m.mode() & 0o7777,
            uid: m.uid() as u64,
            gid: m.gid() as u64,
            mtime: m.mtime(),
            mtime_nsec: m.mtime_nsec() as u32,
            size: 0,
            data_offset: 0,
            link_target: Vec::new(),
            dev_major: 0,
            dev_minor: 0,
            xattrs: read_xattrs(&abs)?,
            header_offset: 0,
        };
        if (m.dev(), m.ino()) == w.own_file {
            return Ok(false);
        }
        if ft.is_socket() {
            tracing::warn!("skipping socket {}", abs.display());
            self.skipped += 1;
            return Ok(false);
        }
        if !ft.is_dir() && m.nlink() > 1 {
            let key = (m.dev(), m.ino());
            if let Some(first) = self.links.get(&key) {
                e.kind = EntryKind::Hardlink;
                e.link_target = first.clone();
                self.builder.add(&e, 0).map_err(|err| err.with_path(&abs))?;
                return Ok(true);
            }
            self.links.insert(key, e.path.clone());
        }
        if ft.is_dir() {
            e.kind = EntryKind::Directory;
        } else if ft.is_symlink() {
            e.kind = EntryKind::Symlink;
            e.link_target = std::os::unix::ffi::OsStringExt::into_vec(
                std::fs::read_link(&abs)
                    .ctx("reading symlink", &abs)?
                    .into_os_string(),
            );
        } else if ft.is_char_device() || ft.is_block_device() {
            e.kind = if ft.is_char_device() {
                EntryKind::CharDevice
            } else {
                EntryKind::BlockDevice
            };
            let rdev = m.rdev();
            e.dev_major = rustix::fs::major(rdev);
            e.dev_minor = rustix::fs::minor(rdev);
        } else if ft.is_fifo() {
            e.kind = EntryKind::Fifo;
        } else if ft.is_file() {
            e.size = m.len();
            e.data_offset = read_file(w, &abs, m)?;
        } else {
            tracing::warn!("skipping {} (unknown file type)", abs.display());
            self.skipped += 1;
            return Ok(false);
        }
        self.builder.add(&e, 0).map_err(|err| err.with_path(&abs))?;
        Ok(true)
    }
}

/// The extended attributes of `path` (not following a symlink), sorted by name.
fn read_xattrs(path: &Path) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let errno = |op, e: rustix::io::Errno| Error::io(op, path, e.into());
    let mut names = vec![0u8; 1024];
    let n = loop {
        match rustix::fs::llistxattr(path, &mut names[..]) {
            Ok(n) => break n,
            Err(rustix::io::Errno::RANGE) => {
                let need = rustix::fs::llistxattr(path, &mut [0u8; 0][..])
                    .map_err(|e| errno("listing xattrs of", e))?;
                names.resize(need.max(names.len() * 2), 0);
            }
            Err(rustix::io::Errno::NOTSUP) => return Ok(Vec::new()),
            Err(e) => return Err(errno("listing xattrs of", e)),
        }
    };
    let mut out = Vec::new();
    for name in names[..n].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let cname = std::ffi::CString::new(name).expect("split at NUL");
        let mut value = vec![0u8; 256];
        let len = loop {
            match rustix::fs::lgetxattr(path, cname.as_c_str(), &mut value[..]) {
                Ok(l) => break Some(l),
                Err(rustix::io::Errno::RANGE) => {
                    let need = rustix::fs::lgetxattr(path, cname.as_c_str(), &mut [0u8; 0][..])
                        .map_err(|e| errno("reading xattrs of", e))?;
                    value.resize(need.max(value.len() * 2), 0);
                }
                // Removed between the listing and now.
                Err(rustix::io::Errno::NODATA) => break None,
                Err(e) => return Err(errno("reading xattrs of", e)),
            }
        };
        if let Some(l) = len {
            value.truncate(l);
            out.push((name.to_vec(), value));
        }
    }
    out.sort();
    Ok(out)
}

/// Reads the regular file at `path` (whose `lstat` was `m`) into the data stream;
/// returns the offset of its contents. Fails if the file changes while read.
fn read_file(w: &mut DataWriter<'_>, path: &Path, m: &std::fs::Metadata) -> Result<u64> {
    let size = m.len();
    if size == 0 {
        return Ok(0);
    }
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        // NONBLOCK: a file swapped for a fifo after the lstat must not hang the
        // open (the fstat below then reports it changed).
        .custom_flags((rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK).bits() as i32)
        .open(path)
        .ctx("opening", path)?;
    let changed = || {
        Error::Invalid(format!(
            "{} changed while it was being archived",
            path.display()
        ))
    };
    let same = |a: &std::fs::Metadata| {
        a.dev() == m.dev()
            && a.ino() == m.ino()
            && a.len() == m.len()
            && a.mtime() == m.mtime()
            && a.mtime_nsec() == m.mtime_nsec()
            && a.ctime() == m.ctime()
            && a.ctime_nsec() == m.ctime_nsec()
    };
    if !same(&f.metadata().ctx("reading", path)?) {
        return Err(changed());
    }
    let offset = if size <= w.small_limit() {
        let mut buf = std::mem::take(&mut w.file_buf);
        buf.clear();
        buf.resize(size as usize, 0);
        let r = read_exact_then_eof(&mut f, &mut buf, path, &changed);
        let r = r.and_then(|()| w.add_whole(&buf));
        w.file_buf = buf;
        r?
    } else {
        // A large file is hashed first only when an earlier file has its size.
        let known = if w.sizes.contains_key(&size) {
            let h = hash_file(&mut f, size, path, &changed)?;
            if let Some(off) = w.lookup(size, &h) {
                w.dedup_bytes += size;
                return check_unchanged(&f, path, &same, changed, off);
            }
            std::io::Seek::rewind(&mut f).ctx("reading", path)?;
            Some(h)
        } else {
            None
        };
        let offset = w.pos;
        let mut hasher = blake3::Hasher::new();
        let mut left = size;
        let mut buf = std::mem::take(&mut w.file_buf);
        buf.resize(256 << 10, 0);
        let r = (|| {
            while left > 0 {
                let n = (left as usize).min(buf.len());
                read_full(&mut f, &mut buf[..n], path, &changed)?;
                hasher.update(&buf[..n]);
                w.append(&buf[..n])?;
                left -= n as u64;
            }
            expect_eof(&mut f, &mut buf, path, &changed)
        })();
        w.file_buf = buf;
        r?;
        let h = *hasher.finalize().as_bytes();
        if known.is_some_and(|k| k != h) {
            return Err(changed());
        }
        w.remember(size, h, offset);
        offset
    };
    check_unchanged(&f, path, &same, changed, offset)
}

fn check_unchanged(
    f: &File,
    path: &Path,
    same: &dyn Fn(&std::fs::Metadata) -> bool,
    changed: impl Fn() -> Error,
    offset: u64,
) -> Result<u64> {
    if !same(&f.metadata().ctx("reading", path)?) {
        return Err(changed());
    }
    Ok(offset)
}

fn read_full(f: &mut File, buf: &mut [u8], path: &Path, changed: &dyn Fn() -> Error) -> Result<()> {
    match f.read_exact(buf) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(changed()),
        Err(e) => Err(Error::io("reading", path, e)),
    }
}

fn expect_eof(
    f: &mut File,
    buf: &mut [u8],
    path: &Path,
    changed: &dyn Fn() -> Error,
) -> Result<()> {
    match f.read(&mut buf[..1]) {
        Ok(0) => Ok(()),
        Ok(_) => Err(changed()),
        Err(e) => Err(Error::io("reading", path, e)),
    }
}

fn read_exact_then_eof(
    f: &mut File,
    buf: &mut [u8],
    path: &Path,
    changed: &dyn Fn() -> Error,
) -> Result<()> {
    read_full(f, buf, path, changed)?;
    let mut one = [0u8; 1];
    expect_eof(f, &mut one, path, changed)
}

fn hash_file(
    f: &mut File,
    size: u64,
    path: &Path,
    changed: &dyn Fn() -> Error,
) -> Result<[u8; 32]> {
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 256 << 10];
    let mut left = size;
    while left > 0 {
        let n = (left as usize).min(buf.len());
        read_full(f, &mut buf[..n], path, changed)?;
        h.update(&buf[..n]);
        left -= n as u64;
    }
    expect_eof(f, &mut buf, path, changed)?;
    Ok(*h.finalize().as_bytes())
}

/// A compressed chunk on its way to the writer: (sequence, raw bytes, frame, hash).
type Frame = (u64, Vec<u8>, Vec<u8>, [u8; 32]);

/// The walker's end of the pipeline: gathers the data stream into chunks and hands
/// them to the compressors.
struct DataWriter<'a> {
    chunk_size: usize,
    chunk: Vec<u8>,
    seq: u64,
    /// Bytes of the data stream so far.
    pos: u64,
    to_workers: Option<SyncSender<(u64, Vec<u8>)>>,
    /// Spent chunk buffers coming back from the writer.
    spare: &'a Mutex<Vec<Vec<u8>>>,
    /// (size, BLAKE3 of contents) → offset of stored contents.
    seen: HashMap<(u64, [u8; 32]), u64>,
    /// Sizes of large files stored so far (a later file of one of these sizes is
    /// hashed before it is stored).
    sizes: HashMap<u64, ()>,
    dedup_bytes: u64,
    files: usize,
    file_buf: Vec<u8>,
    /// (dev, ino) of the archive being written, never archived itself.
    own_file: (u64, u64),
}

impl DataWriter<'_> {
    /// Files up to this size are read whole and stored once per distinct content.
    fn small_limit(&self) -> u64 {
        self.chunk_size as u64
    }

    fn lookup(&self, size: u64, hash: &[u8; 32]) -> Option<u64> {
        self.seen.get(&(size, *hash)).copied()
    }

    fn remember(&mut self, size: u64, hash: [u8; 32], offset: u64) {
        self.files += 1;
        self.seen.entry((size, hash)).or_insert(offset);
        if size > self.small_limit() {
            self.sizes.insert(size, ());
        }
    }

    /// Stores a whole file's contents unless identical ones are stored already;
    /// returns their offset.
    fn add_whole(&mut self, data: &[u8]) -> Result<u64> {
        let size = data.len() as u64;
        let hash = *blake3::hash(data).as_bytes();
        if let Some(off) = self.lookup(size, &hash) {
            self.files += 1;
            self.dedup_bytes += size;
            return Ok(off);
        }
        let off = self.pos;
        self.append(data)?;
        self.remember(size, hash, off);
        Ok(off)
    }

    /// Appends bytes to the data stream.
    fn append(&mut self, mut data: &[u8]) -> Result<()> {
        while !data.is_empty() {
            let n = (self.chunk_size - self.chunk.len()).min(data.len());
            self.chunk.extend_from_slice(&data[..n]);
            data = &data[n..];
            self.pos += n as u64;
            if self.chunk.len() == self.chunk_size {
                self.flush()?;
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if self.chunk.is_empty() {
            return Ok(());
        }
        let mut next = self
            .spare
            .lock()
            .expect("spare lock")
            .pop()
            .unwrap_or_default();
        next.clear();
        next.reserve(self.chunk_size);
        let full = std::mem::replace(&mut self.chunk, next);
        let tx = self.to_workers.as_ref().expect("open until finished");
        // A closed channel means the writer failed; its error is reported.
        tx.send((self.seq, full)).map_err(|_| Error::Canceled)?;
        self.seq += 1;
        Ok(())
    }
}

/// The data layer written, waiting for the metadata.
struct Written {
    writer: ArchiveWriter,
    codec: CodecIndex,
    digest: Digest,
    diff_id: Digest,
    summary: PackSummary,
}

impl Written {
    /// Writes the metadata after the data and renames the archive into place.
    fn finish(self, mut meta: Meta, tree: Tree) -> Result<(u64, PackSummary)> {
        let data_offset = self.writer.data_offset();
        meta.storage = Some(StorageRef::local(data_offset));
        debug_assert_eq!(
            meta.storage.as_ref().map(|s| s.kind.as_str()),
            Some(STORAGE_LOCAL)
        );
        let inodes = tree.inodes.len();
        let archive = Archive {
            meta,
            layers: vec![LayerRecord {
                digest: self.digest,
                media_type: DATA_MEDIA_TYPE.into(),
                compressed_size: self.writer.data_len(),
                compression: Compression::Zstd,
                diff_id: self.diff_id,
                codec: self.codec,
            }],
            tree,
            data: Some(archive::DataSection {
                offset: data_offset,
                len: self.writer.data_len(),
            }),
            profile: None,
        };
        let size = self.writer.finish(&archive)?;
        Ok((
            size,
            PackSummary {
                archive_size: size,
                inodes,
                ..self.summary
            },
        ))
    }
}

/// Runs `fill` with a [`DataWriter`] feeding the compression pipeline into a new
/// archive at `out`; returns what `fill` built and the written data layer.
fn with_data_writer<T, X>(
    out: &Path,
    opts: &PackOptions,
    fill: impl FnOnce(&mut DataWriter<'_>) -> Result<(T, X)>,
) -> Result<(T, Written, X)> {
    // One compressor more than there are cores: the walker and the writer are
    // mostly waiting for I/O or a queue, and an idle core then still compresses
    // (measured on 2 cores: 1.49 s with 3 compressors against 1.75 s with 2).
    let threads = match opts.threads {
        0 => std::thread::available_parallelism().map_or(2, |p| p.get()) + 1,
        t => t,
    };
    let chunk_size = opts.chunk_size as usize;
    let mut writer = ArchiveWriter::create(out)?;
    // The archive being written may lie inside the tree being archived.
    let own_file = std::fs::metadata(writer.temp_path())
        .map(|m| (m.dev(), m.ino()))
        .ctx("reading", writer.temp_path())?;
    let spare = Mutex::new(Vec::new());
    // Queues a few chunks deep on both sides, so that neither single-threaded end
    // (the walker, the writer) stalls the compressors when it is descheduled:
    // measured at 0.65 busy cores of 2 with queues of 2 and 4 chunks.
    let (to_workers, from_walker) = sync_channel::<(u64, Vec<u8>)>(threads * 2);
    // Only the workers hold the receiving end, so if they all stop (the writer
    // failed) the walker's next send fails instead of blocking.
    let from_walker = Arc::new(Mutex::new(from_walker));
    let (to_writer, from_workers) = sync_channel::<Frame>(threads * 2);
    let failed = AtomicBool::new(false);
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                let to_writer = to_writer.clone();
                let (rx, failed) = (from_walker.clone(), &failed);
                s.spawn(move || compress_worker(&rx, to_writer, opts.level, failed))
            })
            .collect();
        drop(to_writer);
        drop(from_walker);
        let w = &mut writer;
        let spare_ref = &spare;
        let writer_thread = s.spawn(move || write_frames(w, from_workers, spare_ref));
        let mut dw = DataWriter {
            chunk_size,
            chunk: Vec::with_capacity(chunk_size),
            seq: 0,
            pos: 0,
            to_workers: Some(to_workers),
            spare: &spare,
            seen: HashMap::new(),
            sizes: HashMap::new(),
            dedup_bytes: 0,
            files: 0,
            file_buf: Vec::new(),
            own_file,
        };
        let filled = fill(&mut dw).and_then(|r| dw.flush().map(|()| r));
        if filled.is_err() {
            failed.store(true, Ordering::Relaxed);
        }
        dw.to_workers = None;
        for h in workers {
            h.join().expect("compression worker panicked");
        }
        let written = writer_thread.join().expect("archive writer panicked");
        // A failed write (a full disk, say) is why the walker saw a closed
        // channel: report it first.
        let layer = written?;
        let r = filled?;
        if opts.cancel.load(Ordering::Relaxed) {
            return Err(Error::Canceled);
        }
        let summary = PackSummary {
            files: dw.files,
            data_bytes: dw.pos,
            stored_bytes: layer.stored,
            chunks: layer.codec.spans.len(),
            dedup_bytes: dw.dedup_bytes,
            ..Default::default()
        };
        Ok((r, layer, summary))
    })
    .map(|((t, x), layer, summary)| {
        (
            t,
            Written {
                writer,
                codec: layer.codec,
                digest: layer.digest,
                diff_id: layer.diff_id,
                summary,
            },
            x,
        )
    })
}

/// What the writer thread made of the frames.
struct DataLayer {
    codec: CodecIndex,
    digest: Digest,
    diff_id: Digest,
    stored: u64,
}

/// A compression worker: chunks in, frames out, until the walker is done or the
/// writer has gone.
fn compress_worker(
    rx: &Mutex<Receiver<(u64, Vec<u8>)>>,
    tx: SyncSender<Frame>,
    level: i32,
    failed: &AtomicBool,
) {
    let mut cx = zstd::bulk::Compressor::new(level).expect("zstd compressor allocation");
    loop {
        let job = rx.lock().expect("job lock").recv();
        let Ok((seq, raw)) = job else { return };
        if failed.load(Ordering::Relaxed) {
            return;
        }
        let hash = *blake3::hash(&raw).as_bytes();
        let frame = compress_chunk(&mut cx, &raw);
        if tx.send((seq, raw, frame, hash)).is_err() {
            return;
        }
    }
}

/// A chunk as a zstd frame, or as a frame of raw blocks when it does not
/// compress. (zstd itself stores incompressible 128 KiB blocks raw inside a frame;
/// a quick sample to skip the attempt was measured to misjudge mixed chunks and
/// cost 2.5% of archive size on a debootstrap tree, for no gain in time.)
fn compress_chunk(cx: &mut zstd::bulk::Compressor<'_>, raw: &[u8]) -> Vec<u8> {
    match cx.compress(raw) {
        Ok(z) if z.len() < raw.len() => z,
        _ => crate::codec::zstd::raw_frame(raw),
    }
}

/// The writer thread: frames in order into the DATA section, with the
/// checkpoint, span and digests of each.
fn write_frames(
    w: &mut ArchiveWriter,
    rx: Receiver<Frame>,
    spare: &Mutex<Vec<Vec<u8>>>,
) -> Result<DataLayer> {
    let mut pending: std::collections::BTreeMap<u64, Frame> = Default::default();
    let mut next = 0u64;
    let mut codec = CodecIndex::default();
    let mut stored = Sha256::new();
    let (mut in_off, mut out_off) = (0u64, 0u64);
    for f in rx {
        pending.insert(f.0, f);
        while let Some((_, raw, frame, hash)) = pending.remove(&next) {
            codec.checkpoints.push(Checkpoint {
                in_offset: in_off,
                bits: 0,
                out_offset: out_off,
                kind: CheckpointKind::Start,
                window: None,
            });
            codec.spans.push(Span {
                out_offset: out_off,
                checkpoint: (codec.checkpoints.len() - 1) as u32,
                hash,
            });
            w.write_data(&frame)?;
            stored.update(&frame);
            in_off += frame.len() as u64;
            out_off += raw.len() as u64;
            next += 1;
            let mut spare = spare.lock().expect("spare lock");
            if spare.len() < 4 {
                spare.push(raw);
            }
        }
    }
    codec.uncompressed_size = out_off;
    let digest = Digest::from_bytes(stored.finalize().into());
    Ok(DataLayer {
        codec,
        digest,
        // The data stream is no tar and nothing names it by a diff_id; its bytes
        // are verified chunk by chunk (BLAKE3). A second sha256 over the
        // uncompressed stream was 16% of the CPU of archiving.
        diff_id: digest,
        stored: in_off,
    })
}

/// Uploads the full v1 archive at `archive` to `loc` and then writes the
/// metadata-only `.rclip` naming it to `rclip_out` (atomically), so a `.rclip`
/// never names an object that is not there. `progress` gets the upload percent,
/// from 0 to 100; returning false stops the upload ([`Error::Canceled`]), as
/// `cancel` does (a false on 100, once the object is stored, comes too late).
pub fn upload(
    archive: &Path,
    rclip_out: &Path,
    loc: &S3Location,
    s3: &S3Options,
    progress: &mut dyn FnMut(u8) -> bool,
    cancel: &AtomicBool,
) -> Result<()> {
    let a = archive::read(archive)?;
    if a.storage_kind() != STORAGE_LOCAL {
        return Err(Error::Invalid(format!(
            "{} is not a v1 archive carrying its data (storage {})",
            archive.display(),
            a.storage_kind()
        )));
    }
    let mut last = None;
    crate::s3::upload_file(
        archive,
        loc,
        s3,
        &mut |done, total| {
            let p = (done.saturating_mul(100) / total.max(1)).min(100) as u8;
            if last == Some(p) {
                return true;
            }
            last = Some(p);
            progress(p)
        },
        cancel,
    )?;
    remote_of(&a, loc, rclip_out)
}

/// Writes a `.rclip` for the archive at `archive` (a full v1 archive, or another
/// `.rclip`) naming the full archive at `loc` (the Go `CreateRemoteArchive`).
pub fn write_remote(archive: &Path, loc: &S3Location, out: &Path) -> Result<()> {
    let a = archive::read(archive)?;
    if a.is_index_only() {
        return Err(Error::Invalid(format!(
            "{} is an index-only archive; only v1 archives have a remote form",
            archive.display()
        )));
    }
    remote_of(&a, loc, out)
}

fn remote_of(a: &Archive, loc: &S3Location, out: &Path) -> Result<()> {
    if loc.bucket.is_empty() || loc.key.is_empty() {
        return Err(Error::Invalid(
            "an S3 location needs a bucket and a key".into(),
        ));
    }
    let data_offset = a
        .meta
        .storage
        .as_ref()
        .and_then(|s| s.data_offset)
        .ok_or_else(|| Error::format("the archive records no data offset"))?;
    let mut r = a.clone();
    r.data = None;
    r.meta.storage = Some(StorageRef {
        kind: STORAGE_S3.into(),
        s3: Some(loc.clone()),
        data_offset: Some(data_offset),
        ..Default::default()
    });
    archive::write(&r, out)?;
    Ok(())
}
