//! [`tree_diff`]: entry-by-entry comparison of two directory trees (lstat, no
//! symlink following), for comparing clip's extraction with `umoci unpack`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// What [`tree_diff`] compares. [`Default`] compares everything except the root
/// directory's mtime and `security.selinux` xattrs.
#[derive(Clone, Debug)]
pub struct DiffOptions {
    /// Compare mtimes (whole seconds) of all entries. Default true.
    pub compare_mtime: bool,
    /// Compare the mtime of the root directory itself (umoci's bundle `rootfs/`
    /// gets the time of unpacking unless a layer has a `./` entry). Default false.
    pub compare_root_mtime: bool,
    /// Compare uid and gid. Default true.
    pub compare_owner: bool,
    /// Compare permission bits (`mode & 0o7777`). Default true.
    pub compare_mode: bool,
    /// Compare extended attributes (every name `llistxattr` returns). Default true.
    pub compare_xattrs: bool,
    /// Xattr names starting with one of these are ignored. Default
    /// `["security.selinux"]`.
    pub ignore_xattr_prefixes: Vec<Vec<u8>>,
    /// Compare hardlink groups and link counts of non-directories. Default true.
    pub compare_hardlinks: bool,
    /// Relative paths (as bytes, e.g. `b"etc/hostname"`) skipped with everything
    /// below them. Default empty.
    pub ignore_paths: Vec<Vec<u8>>,
    /// Names of the two sides in messages. Default `("a", "b")`.
    pub labels: (String, String),
}

impl Default for DiffOptions {
    fn default() -> DiffOptions {
        DiffOptions {
            compare_mtime: true,
            compare_root_mtime: false,
            compare_owner: true,
            compare_mode: true,
            compare_xattrs: true,
            ignore_xattr_prefixes: vec![b"security.selinux".to_vec()],
            compare_hardlinks: true,
            ignore_paths: Vec::new(),
            labels: ("a".to_string(), "b".to_string()),
        }
    }
}

impl DiffOptions {
    /// Default options with these side names in messages (e.g. `"clip"`, `"umoci"`).
    pub fn labelled(a: &str, b: &str) -> DiffOptions {
        DiffOptions {
            labels: (a.to_string(), b.to_string()),
            ..DiffOptions::default()
        }
    }
}

/// File type of a tree entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum FileKind {
    /// Regular file.
    File,
    /// Directory.
    Dir,
    /// Symbolic link.
    Symlink,
    /// Character device.
    CharDevice,
    /// Block device.
    BlockDevice,
    /// Named pipe.
    Fifo,
    /// Unix socket.
    Socket,
}

/// Everything [`tree_diff`] looks at for one entry.
#[derive(Clone, Debug)]
pub struct EntryInfo {
    /// File type.
    pub kind: FileKind,
    /// `mode & 0o7777`.
    pub perm: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size (regular files; 0 otherwise).
    pub size: u64,
    /// Hex sha256 of the content (regular files).
    pub sha256: Option<String>,
    /// Symlink target.
    pub target: Option<Vec<u8>>,
    /// (major, minor) for devices.
    pub rdev: Option<(u32, u32)>,
    /// Extended attributes, name -> value.
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    /// mtime, whole seconds.
    pub mtime: i64,
    /// Link count.
    pub nlink: u64,
    /// (st_dev, st_ino).
    pub inode: (u64, u64),
}

/// Scans a tree: relative path bytes (`b""` for the root, `b"a/b"` below it) ->
/// entry info. Does not follow symlinks (the root itself is also lstat'ed).
pub fn scan_tree(root: &Path) -> BTreeMap<Vec<u8>, EntryInfo> {
    let mut out = BTreeMap::new();
    scan_into(root, Vec::new(), &mut out);
    out
}

fn scan_into(path: &Path, rel: Vec<u8>, out: &mut BTreeMap<Vec<u8>, EntryInfo>) {
    let info = entry_info(path).unwrap_or_else(|e| panic!("scan {}: {e}", path.display()));
    let is_dir = info.kind == FileKind::Dir;
    out.insert(rel.clone(), info);
    if !is_dir {
        return;
    }
    let mut names: Vec<_> = fs::read_dir(path)
        .unwrap_or_else(|e| panic!("read_dir {}: {e}", path.display()))
        .map(|d| d.expect("dir entry").file_name())
        .collect();
    names.sort();
    for name in names {
        let mut r = rel.clone();
        if !r.is_empty() {
            r.push(b'/');
        }
        r.extend_from_slice(name.as_bytes());
        scan_into(&path.join(&name), r, out);
    }
}

fn dev_major(dev: u64) -> u32 {
    (((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0xfff)) as u32
}

fn dev_minor(dev: u64) -> u32 {
    (((dev >> 12) & 0xffff_ff00) | (dev & 0xff)) as u32
}

/// lstat-based info of one path (see [`EntryInfo`]).
pub fn entry_info(path: &Path) -> io::Result<EntryInfo> {
    let md = fs::symlink_metadata(path)?;
    let ft = md.file_type();
    let kind = if ft.is_file() {
        FileKind::File
    } else if ft.is_dir() {
        FileKind::Dir
    } else if ft.is_symlink() {
        FileKind::Symlink
    } else if ft.is_char_device() {
        FileKind::CharDevice
    } else if ft.is_block_device() {
        FileKind::BlockDevice
    } else if ft.is_fifo() {
        FileKind::Fifo
    } else {
        FileKind::Socket
    };
    let sha256 = if kind == FileKind::File {
        Some(file_sha256(path)?)
    } else {
        None
    };
    let target = if kind == FileKind::Symlink {
        Some(fs::read_link(path)?.as_os_str().as_bytes().to_vec())
    } else {
        None
    };
    let rdev = matches!(kind, FileKind::CharDevice | FileKind::BlockDevice)
        .then(|| (dev_major(md.rdev()), dev_minor(md.rdev())));
    Ok(EntryInfo {
        kind,
        perm: md.mode() & 0o7777,
        uid: md.uid(),
        gid: md.gid(),
        size: if kind == FileKind::File { md.len() } else { 0 },
        sha256,
        target,
        rdev,
        xattrs: read_xattrs(path)?,
        mtime: md.mtime(),
        nlink: md.nlink(),
        inode: (md.dev(), md.ino()),
    })
}

/// Hex sha256 of a file's content.
pub fn file_sha256(path: &Path) -> io::Result<String> {
    let mut f = fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// Calls `f` with growing buffers until the result fits (ERANGE otherwise).
fn with_buffer(mut f: impl FnMut(&mut [u8]) -> rustix::io::Result<usize>) -> io::Result<Vec<u8>> {
    let mut size = 1024;
    loop {
        let mut buf = vec![0u8; size];
        match f(&mut buf) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            Err(rustix::io::Errno::RANGE) if size < (1 << 24) => size *= 4,
            Err(e) => return Err(e.into()),
        }
    }
}

/// All extended attributes of `path` itself (not following symlinks), in every
/// namespace the caller may read (`user.`, `trusted.` as root, `security.`, ...).
/// Unsupported filesystems yield an empty map.
pub fn read_xattrs(path: &Path) -> io::Result<BTreeMap<Vec<u8>, Vec<u8>>> {
    let mut out = BTreeMap::new();
    let list = match with_buffer(|b| rustix::fs::llistxattr(path, b)) {
        Ok(l) => l,
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::OPNOTSUPP.raw_os_error()) => {
            return Ok(out);
        }
        Err(e) => return Err(e),
    };
    for name in list.split(|&c| c == 0).filter(|n| !n.is_empty()) {
        let value = with_buffer(|b| rustix::fs::lgetxattr(path, name, b))?;
        out.insert(name.to_vec(), value);
    }
    Ok(out)
}

/// Renders path bytes readably: valid UTF-8 as is, other bytes as `\xNN`,
/// control characters escaped; the root (`b""`) as `.`.
pub fn show_path(p: &[u8]) -> String {
    if p.is_empty() {
        return ".".to_string();
    }
    show_bytes(p)
}

/// Renders bytes readably: valid UTF-8 as is (control characters and `\`
/// escaped), invalid bytes as `\xNN`.
pub fn show_bytes(b: &[u8]) -> String {
    let mut s = String::new();
    for chunk in b.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => s.push_str("\\\\"),
                '\n' => s.push_str("\\n"),
                '\t' => s.push_str("\\t"),
                c if c.is_ascii_control() => s.push_str(&format!("\\x{:02x}", c as u32)),
                c if c.is_control() => s.extend(c.escape_unicode()),
                c => s.push(c),
            }
        }
        for &x in chunk.invalid() {
            s.push_str(&format!("\\x{x:02x}"));
        }
    }
    s
}

fn show_xattrs(x: &BTreeMap<Vec<u8>, Vec<u8>>) -> String {
    let items: Vec<String> = x
        .iter()
        .map(|(k, v)| format!("{}={}", show_bytes(k), show_bytes(v)))
        .collect();
    format!("{{{}}}", items.join(", "))
}

fn show_group(g: &BTreeSet<Vec<u8>>) -> String {
    let items: Vec<String> = g.iter().map(|p| show_path(p)).collect();
    format!("[{}]", items.join(", "))
}

/// For each non-directory with nlink > 1: the set of relative paths sharing its
/// inode in this tree.
fn hardlink_groups(tree: &BTreeMap<Vec<u8>, EntryInfo>) -> BTreeMap<Vec<u8>, BTreeSet<Vec<u8>>> {
    let mut by_inode: BTreeMap<(u64, u64), BTreeSet<Vec<u8>>> = BTreeMap::new();
    for (p, e) in tree {
        if e.kind != FileKind::Dir && e.nlink > 1 {
            by_inode.entry(e.inode).or_default().insert(p.clone());
        }
    }
    let mut out = BTreeMap::new();
    for group in by_inode.values() {
        for p in group {
            out.insert(p.clone(), group.clone());
        }
    }
    out
}

fn is_ignored(p: &[u8], ignore: &[Vec<u8>]) -> bool {
    ignore
        .iter()
        .any(|i| p == i.as_slice() || (p.starts_with(i) && p.get(i.len()) == Some(&b'/')))
}

/// Compares two trees entry by entry (see [`DiffOptions`]) and returns one line per
/// difference, naming the relative path (`.` for the root); empty when the trees
/// match. Checked per entry: presence, file type, permission bits (incl.
/// setuid/setgid/sticky), uid, gid, size and content sha256 (regular files),
/// symlink target, device major/minor, xattrs, mtime (whole seconds), and for
/// non-directories with nlink > 1 the set of paths sharing the inode and the link
/// count. An entry missing on one side is reported once, with the number of
/// entries below it. Output is sorted by path.
pub fn tree_diff(a: &Path, b: &Path) -> Vec<String> {
    tree_diff_with(a, b, &DiffOptions::default())
}

/// [`tree_diff`] with explicit options.
pub fn tree_diff_with(a: &Path, b: &Path, opts: &DiffOptions) -> Vec<String> {
    let ta = scan_tree(a);
    let tb = scan_tree(b);
    diff_scanned(&ta, &tb, opts)
}

/// [`tree_diff_with`] on two already scanned trees (see [`scan_tree`]).
pub fn diff_scanned(
    ta: &BTreeMap<Vec<u8>, EntryInfo>,
    tb: &BTreeMap<Vec<u8>, EntryInfo>,
    opts: &DiffOptions,
) -> Vec<String> {
    let (la, lb) = (&opts.labels.0, &opts.labels.1);
    let ga = hardlink_groups(ta);
    let gb = hardlink_groups(tb);
    let keys: BTreeSet<&Vec<u8>> = ta.keys().chain(tb.keys()).collect();
    let mut out = Vec::new();
    for key in keys {
        if is_ignored(key, &opts.ignore_paths) {
            continue;
        }
        let p = show_path(key);
        let (ea, eb) = match (ta.get(key), tb.get(key)) {
            (Some(ea), Some(eb)) => (ea, eb),
            (one_a, _) => {
                let (side, tree, other) = if one_a.is_some() {
                    (la, ta, tb)
                } else {
                    (lb, tb, ta)
                };
                // Report only the topmost missing entry.
                if let Some(pos) = key.iter().rposition(|&c| c == b'/') {
                    if !other.contains_key(&key[..pos]) {
                        continue;
                    }
                } else if !key.is_empty() && !other.contains_key(&Vec::new()) {
                    continue;
                }
                let mut prefix = key.clone();
                prefix.push(b'/');
                let below = tree
                    .range(prefix.clone()..)
                    .take_while(|(k, _)| k.starts_with(&prefix))
                    .count();
                if below > 0 {
                    out.push(format!("{p}: only in {side} (with {below} entries below)"));
                } else {
                    out.push(format!("{p}: only in {side}"));
                }
                continue;
            }
        };
        let mut field = |name: &str, va: String, vb: String| {
            if va != vb {
                out.push(format!("{p}: {name} differs: {la}={va} {lb}={vb}"));
            }
        };
        if ea.kind != eb.kind {
            field("type", format!("{:?}", ea.kind), format!("{:?}", eb.kind));
            continue;
        }
        if opts.compare_mode {
            field(
                "mode",
                format!("{:04o}", ea.perm),
                format!("{:04o}", eb.perm),
            );
        }
        if opts.compare_owner {
            field("uid", ea.uid.to_string(), eb.uid.to_string());
            field("gid", ea.gid.to_string(), eb.gid.to_string());
        }
        if ea.kind == FileKind::File {
            field("size", ea.size.to_string(), eb.size.to_string());
            field(
                "sha256",
                ea.sha256.clone().unwrap_or_default(),
                eb.sha256.clone().unwrap_or_default(),
            );
        }
        if ea.kind == FileKind::Symlink {
            let t = |e: &EntryInfo| show_bytes(e.target.as_deref().unwrap_or_default());
            field("symlink target", t(ea), t(eb));
        }
        if let (Some(ra), Some(rb)) = (ea.rdev, eb.rdev) {
            field(
                "rdev",
                format!("{}:{}", ra.0, ra.1),
                format!("{}:{}", rb.0, rb.1),
            );
        }
        if opts.compare_xattrs {
            let filt = |x: &BTreeMap<Vec<u8>, Vec<u8>>| -> BTreeMap<Vec<u8>, Vec<u8>> {
                x.iter()
                    .filter(|(k, _)| {
                        !opts
                            .ignore_xattr_prefixes
                            .iter()
                            .any(|pre| k.starts_with(pre))
                    })
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            };
            field(
                "xattrs",
                show_xattrs(&filt(&ea.xattrs)),
                show_xattrs(&filt(&eb.xattrs)),
            );
        }
        if opts.compare_mtime && (!key.is_empty() || opts.compare_root_mtime) {
            field("mtime", ea.mtime.to_string(), eb.mtime.to_string());
        }
        if opts.compare_hardlinks && ea.kind != FileKind::Dir && (ea.nlink > 1 || eb.nlink > 1) {
            let single: BTreeSet<Vec<u8>> = [key.clone()].into();
            let g = |groups: &BTreeMap<Vec<u8>, BTreeSet<Vec<u8>>>| {
                show_group(groups.get(key).unwrap_or(&single))
            };
            field("hardlink group", g(&ga), g(&gb));
            field("nlink", ea.nlink.to_string(), eb.nlink.to_string());
        }
    }
    out
}

/// Panics with the full [`tree_diff_with`] report unless the trees match.
pub fn assert_same_tree(a: &Path, b: &Path, opts: &DiffOptions) {
    let diff = tree_diff_with(a, b, opts);
    assert!(
        diff.is_empty(),
        "trees differ ({} = {}, {} = {}), {} difference(s):\n  {}",
        opts.labels.0,
        a.display(),
        opts.labels.1,
        b.display(),
        diff.len(),
        diff.join("\n  ")
    );
}

/// A listing of a tree, one line per entry (`path type mode uid:gid size/target/rdev
/// mtime [nlink] [xattr names]`), for debugging failed comparisons.
pub fn dump_tree(root: &Path) -> String {
    let mut s = String::new();
    for (p, e) in scan_tree(root) {
        let what = match e.kind {
            FileKind::File => format!(
                "size={} sha256={:.12}",
                e.size,
                e.sha256.unwrap_or_default()
            ),
            FileKind::Symlink => format!("-> {}", show_bytes(&e.target.unwrap_or_default())),
            FileKind::CharDevice | FileKind::BlockDevice => {
                let (ma, mi) = e.rdev.unwrap_or_default();
                format!("rdev={ma}:{mi}")
            }
            _ => String::new(),
        };
        let names: Vec<String> = e.xattrs.keys().map(|k| show_bytes(k)).collect();
        s.push_str(&format!(
            "{} {:?} {:04o} {}:{} {} mtime={} nlink={} xattrs=[{}]\n",
            show_path(&p),
            e.kind,
            e.perm,
            e.uid,
            e.gid,
            what,
            e.mtime,
            e.nlink,
            names.join(",")
        ));
    }
    s
}

/// Copies a tree exactly (types, modes, owners, xattrs, mtimes, devices, hardlink
/// groups) with `cp -a`, e.g. to make a modified copy for negative tests. Panics on
/// failure.
pub fn copy_tree(src: &Path, dst: &Path) -> PathBuf {
    super::run_checked(
        std::process::Command::new("cp")
            .arg("-a")
            .arg("--")
            .arg(src)
            .arg(dst),
    );
    dst.to_path_buf()
}
