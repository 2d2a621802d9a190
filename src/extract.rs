//! Materialising the merged tree of an image into a directory, as an unpacker
//! would: file contents, modes (incl. setuid/setgid/sticky), owners (when running as
//! root), xattrs, symlinks, hardlinks, devices, fifos and mtimes.
//!
//! Everything is created below the destination, which must be empty or absent; names
//! come from a validated tree (no `/`, `.` or `..`), and nothing is ever created
//! through a symlink. File contents are written by streaming each layer once, in
//! order, so extraction is linear in the layer sizes whatever the codec.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, CWD, FileType, Mode, Timespec, Timestamps, XattrFlags};

use crate::error::{Error, IoContext, Result};
use crate::image::Image;
use crate::tree::{Kind, ROOT_INO};

/// What to restore.
#[derive(Debug, Clone, Copy)]
pub struct ExtractOptions {
    /// Restore owners (needs root); devices are only created with this on.
    pub owners: bool,
    /// Restore extended attributes.
    pub xattrs: bool,
}

impl Default for ExtractOptions {
    fn default() -> ExtractOptions {
        ExtractOptions {
            owners: rustix::process::geteuid().is_root(),
            xattrs: true,
        }
    }
}

/// Counts of what was extracted.
#[derive(Debug, Clone, Copy, Default)]
pub struct ExtractStats {
    /// Inodes created.
    pub inodes: u64,
    /// Bytes of file content written.
    pub bytes: u64,
}

fn errno(op: &'static str, path: &Path, e: rustix::io::Errno) -> Error {
    Error::io(op, path, e.into())
}

/// Extracts the image's tree into `dest`.
pub fn extract(image: &Image, dest: &Path, opts: ExtractOptions) -> Result<ExtractStats> {
    match fs::read_dir(dest) {
        Ok(mut d) => {
            if d.next().is_some() {
                return Err(Error::Invalid(format!("{} is not empty", dest.display())));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fs::create_dir_all(dest).ctx("creating", dest)?;
        }
        Err(e) => return Err(Error::io("reading", dest, e)),
    }
    let tree = image.tree();
    let mut stats = ExtractStats::default();
    // Pass 1: create the tree (directories writable for now), remember one path per inode.
    let mut first_path: HashMap<u64, PathBuf> = HashMap::new();
    let mut order: Vec<(u64, PathBuf)> = vec![(ROOT_INO, dest.to_path_buf())];
    let mut files: Vec<(usize, u64, u64, PathBuf)> = Vec::new();
    let mut stack = vec![(ROOT_INO, dest.to_path_buf())];
    first_path.insert(ROOT_INO, dest.to_path_buf());
    while let Some((dir, dpath)) = stack.pop() {
        for d in tree.children(dir) {
            let name = tree.name(&d);
            if name.is_empty()
                || name == b"."
                || name == b".."
                || name.contains(&b'/')
                || name.contains(&0)
            {
                return Err(Error::format(format!(
                    "archive names an invalid file name {:?}",
                    String::from_utf8_lossy(name)
                )));
            }
            let path = dpath.join(OsStr::from_bytes(name));
            let ino = d.ino as u64;
            let inode = tree.inode(ino).expect("validated tree");
            if let Some(existing) = first_path.get(&ino) {
                fs::hard_link(existing, &path).ctx("linking", &path)?;
                continue;
            }
            match inode.kind() {
                Kind::Dir => {
                    fs::DirBuilder::new()
                        .mode(0o700)
                        .create(&path)
                        .ctx("creating directory", &path)?;
                    stack.push((ino, path.clone()));
                }
                Kind::File => {
                    File::create(&path).ctx("creating", &path)?;
                    if inode.size > 0 {
                        files.push((inode.b as usize, inode.a, inode.size, path.clone()));
                    }
                }
                Kind::Symlink => {
                    std::os::unix::fs::symlink(OsStr::from_bytes(tree.symlink_target(ino)), &path)
                        .ctx("creating symlink", &path)?;
                }
                Kind::CharDevice | Kind::BlockDevice | Kind::Fifo => {
                    let ft = match inode.kind() {
                        Kind::CharDevice => FileType::CharacterDevice,
                        Kind::BlockDevice => FileType::BlockDevice,
                        _ => FileType::Fifo,
                    };
                    if ft != FileType::Fifo && !opts.owners {
                        tracing::warn!(path = %path.display(), "skipping device node (not root)");
                        continue;
                    }
                    rustix::fs::mknodat(CWD, &path, ft, Mode::from_raw_mode(0o600), inode.a)
                        .map_err(|e| errno("creating node", &path, e))?;
                }
            }
            stats.inodes += 1;
            first_path.insert(ino, path.clone());
            order.push((ino, path));
        }
    }
    // Pass 2: contents, one streaming pass per layer over the files it holds.
    // Files with the same bytes (a v1 archive stores identical contents once) are
    // written once and copied.
    files.sort();
    let mut by_layer: HashMap<usize, Vec<(u64, u64, PathBuf)>> = HashMap::new();
    let mut copies: Vec<(PathBuf, PathBuf)> = Vec::new();
    let mut prev: Option<(usize, u64, u64, PathBuf)> = None;
    for (layer, off, size, path) in files {
        if let Some((l, o, s, first)) = &prev
            && (*l, *o, *s) == (layer, off, size)
        {
            copies.push((first.clone(), path));
            continue;
        }
        by_layer
            .entry(layer)
            .or_default()
            .push((off, size, path.clone()));
        prev = Some((layer, off, size, path));
    }
    let mut layers: Vec<_> = by_layer.into_iter().collect();
    layers.sort_by_key(|(l, _)| *l);
    for (layer, list) in layers {
        stats.bytes += write_layer_files(image, layer, &list)?;
    }
    for (from, to) in copies {
        let mut src = File::open(&from).ctx("opening", &from)?;
        let mut dst = OpenOptions::new()
            .write(true)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&to)
            .ctx("opening", &to)?;
        stats.bytes += std::io::copy(&mut src, &mut dst).ctx("writing", &to)?;
    }
    // Pass 3: attributes, children before parents so directory mtimes stick.
    for (ino, path) in order.iter().rev() {
        let inode = tree.inode(*ino).expect("validated tree");
        let kind = inode.kind();
        if opts.owners {
            rustix::fs::chownat(
                CWD,
                path,
                Some(rustix::fs::Uid::from_raw(inode.uid)),
                Some(rustix::fs::Gid::from_raw(inode.gid)),
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(|e| errno("changing owner of", path, e))?;
        }
        if opts.xattrs {
            for (name, value) in tree.xattrs_of(*ino) {
                let r = rustix::fs::lsetxattr(
                    path,
                    OsStr::from_bytes(name),
                    value,
                    XattrFlags::empty(),
                );
                if let Err(e) = r {
                    if opts.owners {
                        return Err(errno("setting xattr on", path, e));
                    }
                    tracing::warn!(path = %path.display(), "cannot set xattr {}: {e}", String::from_utf8_lossy(name));
                }
            }
        }
        if kind != Kind::Symlink {
            rustix::fs::chmodat(
                CWD,
                path,
                Mode::from_raw_mode(inode.perm()),
                AtFlags::empty(),
            )
            .map_err(|e| errno("changing mode of", path, e))?;
        }
        let t = Timespec {
            tv_sec: inode.mtime,
            tv_nsec: inode.mtime_nsec as _,
        };
        rustix::fs::utimensat(
            CWD,
            path,
            &Timestamps {
                last_access: t,
                last_modification: t,
            },
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|e| errno("setting times of", path, e))?;
    }
    Ok(stats)
}

/// Streams `layer` once and writes the files of `list` (sorted by offset).
fn write_layer_files(image: &Image, layer: usize, list: &[(u64, u64, PathBuf)]) -> Result<u64> {
    let mut idx = 0usize;
    let mut cur: Option<(File, usize)> = None;
    let mut written = 0u64;
    let mut sink = |pos: u64, data: &[u8]| -> Result<()> {
        let end = pos + data.len() as u64;
        while idx < list.len() {
            let (off, size, path) = &list[idx];
            let fend = off + size;
            if *off >= end {
                break;
            }
            let lo = pos.max(*off);
            let hi = end.min(fend);
            if lo < hi {
                if cur.as_ref().is_none_or(|(_, i)| *i != idx) {
                    let f = OpenOptions::new()
                        .write(true)
                        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
                        .open(path)
                        .ctx("opening", path)?;
                    cur = Some((f, idx));
                }
                let (f, _) = cur.as_mut().expect("set above");
                f.write_all(&data[(lo - pos) as usize..(hi - pos) as usize])
                    .ctx("writing", path)?;
                written += hi - lo;
            }
            if fend <= end {
                idx += 1;
                cur = None;
            } else {
                break;
            }
        }
        Ok(())
    };
    let end = list.iter().map(|(o, s, _)| o + s).max().unwrap_or(0);
    image.stream_layer(layer, end, &mut sink)?;
    if idx < list.len() {
        return Err(Error::format(format!(
            "layer {layer} ended before all files were written"
        )));
    }
    Ok(written)
}
