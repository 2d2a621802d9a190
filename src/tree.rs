//! The merged file tree of an image, in the compact form an archive stores and a
//! mount serves: a flat inode table (inode number = index + 1, root = 1), the
//! entries of each directory stored contiguously and sorted by name, one string
//! table for names, symlink targets and xattrs, and an xattr table. The tables
//! stay in their serialized form ([`Records`]), so a tree read from an archive is
//! used in place: no second copy, no decoding pass before a mount is live.
//!
//! A decoded tree is validated whole, including [`limits::MAX_PATH_LEN`] and
//! [`limits::MAX_PATH_DEPTH`] for every path from the root and symlink target.
//!
//! Hardlinks are several directory entries naming one inode. Regular files point at
//! a byte range of one layer's uncompressed tar stream (or of the data section of a
//! v1 archive).

use crate::error::{Error, Result};
use crate::limits;

/// File type bits of `st_mode`.
pub const S_IFMT: u32 = 0o170000;
/// Directory.
pub const S_IFDIR: u32 = 0o040000;
/// Regular file.
pub const S_IFREG: u32 = 0o100000;
/// Symbolic link.
pub const S_IFLNK: u32 = 0o120000;
/// Character device.
pub const S_IFCHR: u32 = 0o020000;
/// Block device.
pub const S_IFBLK: u32 = 0o060000;
/// FIFO.
pub const S_IFIFO: u32 = 0o010000;

/// The inode number of the root directory.
pub const ROOT_INO: u64 = 1;

/// The type of an inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A directory.
    Dir,
    /// A regular file.
    File,
    /// A symbolic link.
    Symlink,
    /// A character device.
    CharDevice,
    /// A block device.
    BlockDevice,
    /// A FIFO.
    Fifo,
}

impl Kind {
    /// The `S_IF*` bits of this kind.
    pub fn mode_bits(self) -> u32 {
        match self {
            Kind::Dir => S_IFDIR,
            Kind::File => S_IFREG,
            Kind::Symlink => S_IFLNK,
            Kind::CharDevice => S_IFCHR,
            Kind::BlockDevice => S_IFBLK,
            Kind::Fifo => S_IFIFO,
        }
    }

    fn from_mode(mode: u32) -> Option<Kind> {
        Some(match mode & S_IFMT {
            S_IFDIR => Kind::Dir,
            S_IFREG => Kind::File,
            S_IFLNK => Kind::Symlink,
            S_IFCHR => Kind::CharDevice,
            S_IFBLK => Kind::BlockDevice,
            S_IFIFO => Kind::Fifo,
            _ => return None,
        })
    }
}

/// Size of one serialized [`Inode`].
pub const INODE_SIZE: usize = 64;
/// Size of one serialized [`Dirent`].
pub const DIRENT_SIZE: usize = 12;
/// Size of one serialized [`Xattr`].
pub const XATTR_SIZE: usize = 16;

/// One inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Inode {
    /// `st_mode`: type and permission bits (incl. setuid, setgid, sticky).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Link count (directories: 2 + subdirectories).
    pub nlink: u32,
    /// Modification time, seconds.
    pub mtime: i64,
    /// Modification time, nanoseconds.
    pub mtime_nsec: u32,
    /// First xattr in the xattr table.
    pub xattr_start: u32,
    /// Number of xattrs.
    pub xattr_count: u32,
    /// Parent directory's inode (directories; the root is its own parent).
    pub parent: u32,
    /// Size: file length, symlink target length, 0 otherwise.
    pub size: u64,
    /// Files: offset in the layer stream. Directories: first dirent. Symlinks: target
    /// offset in the string table. Devices: `rdev` (`makedev(major, minor)`).
    pub a: u64,
    /// Files: layer index. Directories: number of dirents. Otherwise 0.
    pub b: u32,
}

impl Inode {
    /// The type of this inode.
    pub fn kind(&self) -> Kind {
        Kind::from_mode(self.mode).unwrap_or(Kind::File)
    }

    /// Permission bits (`mode & 0o7777`).
    pub fn perm(&self) -> u32 {
        self.mode & 0o7777
    }

    /// For devices: (major, minor), decoded as glibc's `gnu_dev_major/minor`.
    pub fn device(&self) -> (u32, u32) {
        let d = self.a;
        let major = ((d >> 32) & 0xffff_f000) | ((d >> 8) & 0x0000_0fff);
        let minor = ((d >> 12) & 0xffff_ff00) | (d & 0x0000_00ff);
        (major as u32, minor as u32)
    }

    /// glibc's `makedev`.
    pub fn makedev(major: u32, minor: u32) -> u64 {
        let (major, minor) = (major as u64, minor as u64);
        ((major & 0xffff_f000) << 32)
            | ((major & 0x0000_0fff) << 8)
            | ((minor & 0xffff_ff00) << 12)
            | (minor & 0x0000_00ff)
    }

    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.mode.to_le_bytes());
        out.extend_from_slice(&self.uid.to_le_bytes());
        out.extend_from_slice(&self.gid.to_le_bytes());
        out.extend_from_slice(&self.nlink.to_le_bytes());
        out.extend_from_slice(&self.mtime.to_le_bytes());
        out.extend_from_slice(&self.mtime_nsec.to_le_bytes());
        out.extend_from_slice(&self.xattr_start.to_le_bytes());
        out.extend_from_slice(&self.xattr_count.to_le_bytes());
        out.extend_from_slice(&self.parent.to_le_bytes());
        out.extend_from_slice(&self.size.to_le_bytes());
        out.extend_from_slice(&self.a.to_le_bytes());
        out.extend_from_slice(&self.b.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
    }

    fn decode(r: &[u8]) -> Inode {
        let u32_at = |o: usize| u32::from_le_bytes(r[o..o + 4].try_into().expect("4 bytes"));
        let u64_at = |o: usize| u64::from_le_bytes(r[o..o + 8].try_into().expect("8 bytes"));
        Inode {
            mode: u32_at(0),
            uid: u32_at(4),
            gid: u32_at(8),
            nlink: u32_at(12),
            mtime: u64_at(16) as i64,
            mtime_nsec: u32_at(24),
            xattr_start: u32_at(28),
            xattr_count: u32_at(32),
            parent: u32_at(36),
            size: u64_at(40),
            a: u64_at(48),
            b: u32_at(56),
        }
    }
}

/// A directory entry: a name (in the string table) and the inode it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dirent {
    /// Offset of the name in the string table.
    pub name_off: u32,
    /// Length of the name.
    pub name_len: u32,
    /// Inode number.
    pub ino: u32,
}

/// An extended attribute: name and value in the string table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Xattr {
    /// Offset of the name.
    pub name_off: u32,
    /// Length of the name.
    pub name_len: u32,
    /// Offset of the value.
    pub value_off: u32,
    /// Length of the value.
    pub value_len: u32,
}

/// A fixed-size record of one of the tree's tables, kept serialized: a tree read
/// from an archive is used in place, each record decoded when it is looked at.
pub trait Record: Copy {
    /// Bytes per record.
    const SIZE: usize;
    /// Decodes one record from its `SIZE` bytes.
    fn decode(r: &[u8]) -> Self;
    /// Appends the serialized record to `out`.
    fn encode(&self, out: &mut Vec<u8>);
}

impl Record for Inode {
    const SIZE: usize = INODE_SIZE;
    fn decode(r: &[u8]) -> Inode {
        Inode::decode(r)
    }
    fn encode(&self, out: &mut Vec<u8>) {
        Inode::encode(self, out)
    }
}

impl Record for Dirent {
    const SIZE: usize = DIRENT_SIZE;
    fn decode(r: &[u8]) -> Dirent {
        Dirent {
            name_off: u32_le(r, 0),
            name_len: u32_le(r, 4),
            ino: u32_le(r, 8),
        }
    }
    fn encode(&self, out: &mut Vec<u8>) {
        for v in [self.name_off, self.name_len, self.ino] {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
}

impl Record for Xattr {
    const SIZE: usize = XATTR_SIZE;
    fn decode(r: &[u8]) -> Xattr {
        Xattr {
            name_off: u32_le(r, 0),
            name_len: u32_le(r, 4),
            value_off: u32_le(r, 8),
            value_len: u32_le(r, 12),
        }
    }
    fn encode(&self, out: &mut Vec<u8>) {
        for v in [self.name_off, self.name_len, self.value_off, self.value_len] {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
}

/// A table of records in their serialized form (the archive's own bytes), so
/// that reading a tree costs no second copy and no decoding pass.
#[derive(Clone, PartialEq, Eq)]
pub struct Records<T> {
    bytes: Vec<u8>,
    _t: std::marker::PhantomData<T>,
}

impl<T> Default for Records<T> {
    fn default() -> Records<T> {
        Records {
            bytes: Vec::new(),
            _t: std::marker::PhantomData,
        }
    }
}

impl<T: Record + std::fmt::Debug> std::fmt::Debug for Records<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl<T: Record> FromIterator<T> for Records<T> {
    fn from_iter<I: IntoIterator<Item = T>>(iter: I) -> Records<T> {
        let mut r = Records::default();
        for x in iter {
            r.push(x);
        }
        r
    }
}

impl<T: Record> From<Vec<T>> for Records<T> {
    fn from(v: Vec<T>) -> Records<T> {
        v.into_iter().collect()
    }
}

impl<T: Record> Records<T> {
    /// The table whose serialized form is `bytes` (a whole number of records).
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Records<T>> {
        if bytes.len() % T::SIZE != 0 {
            return Err(Error::format(
                "archive tree: table sizes are not whole records",
            ));
        }
        Ok(Records {
            bytes,
            _t: std::marker::PhantomData,
        })
    }

    /// The serialized form.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// All records, as a run.
    pub fn all(&self) -> Slice<'_, T> {
        Slice {
            bytes: &self.bytes,
            _t: std::marker::PhantomData,
        }
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.all().len()
    }

    /// No records.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Record `i`, if there is one.
    pub fn get(&self, i: usize) -> Option<T> {
        self.all().get(i)
    }

    /// Record `i`; panics when out of range (a validated tree never is).
    pub fn at(&self, i: usize) -> T {
        self.get(i).expect("record in range")
    }

    /// Appends a record.
    pub fn push(&mut self, r: T) {
        r.encode(&mut self.bytes);
    }

    /// Changes record `i` with `f`; panics when out of range.
    pub fn update(&mut self, i: usize, f: impl FnOnce(&mut T)) {
        let mut r = self.at(i);
        f(&mut r);
        // Encoded past the end, then moved into place: no allocation per record
        // (an index updates one per directory and per file).
        let n = self.bytes.len();
        r.encode(&mut self.bytes);
        self.bytes.copy_within(n.., i * T::SIZE);
        self.bytes.truncate(n);
    }

    /// The records `start..start + n`, if in range.
    pub fn slice(&self, start: usize, n: usize) -> Option<Slice<'_, T>> {
        let s = start.checked_mul(T::SIZE)?;
        let e = n.checked_mul(T::SIZE)?.checked_add(s)?;
        self.bytes.get(s..e).map(|bytes| Slice {
            bytes,
            _t: std::marker::PhantomData,
        })
    }

    /// All records, decoded in turn.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = T> + '_ {
        self.all().into_iter()
    }
}

/// A run of records of a [`Records`] table (a directory's entries, say).
#[derive(Clone, Copy)]
pub struct Slice<'a, T> {
    bytes: &'a [u8],
    _t: std::marker::PhantomData<T>,
}

impl<'a, T: Record + 'a> Slice<'a, T> {
    /// The empty run.
    pub fn empty() -> Slice<'a, T> {
        Slice {
            bytes: &[],
            _t: std::marker::PhantomData,
        }
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.bytes.len() / T::SIZE
    }

    /// No records.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Record `i`, if there is one.
    pub fn get(&self, i: usize) -> Option<T> {
        let s = i.checked_mul(T::SIZE)?;
        self.bytes.get(s..s + T::SIZE).map(T::decode)
    }

    /// The records, decoded in turn.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = T> + DoubleEndedIterator + 'a {
        self.bytes.chunks_exact(T::SIZE).map(T::decode)
    }

    /// Binary search, as [`slice::binary_search_by`].
    pub fn binary_search_by(
        &self,
        mut f: impl FnMut(&T) -> std::cmp::Ordering,
    ) -> std::result::Result<usize, usize> {
        let (mut lo, mut hi) = (0, self.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match f(&self.get(mid).expect("in range")) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Ok(mid),
            }
        }
        Err(lo)
    }
}

impl<'a, T: Record> IntoIterator for Slice<'a, T> {
    type Item = T;
    type IntoIter = std::iter::Map<std::slice::ChunksExact<'a, u8>, fn(&[u8]) -> T>;
    fn into_iter(self) -> Self::IntoIter {
        self.bytes
            .chunks_exact(T::SIZE)
            .map(T::decode as fn(&[u8]) -> T)
    }
}

/// The merged file tree (see the module docs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tree {
    /// Inodes; inode number `n` is record `n - 1`.
    pub inodes: Records<Inode>,
    /// Directory entries, each directory's contiguous and sorted by name.
    pub dirents: Records<Dirent>,
    /// Extended attributes, each inode's contiguous and sorted by name.
    pub xattrs: Records<Xattr>,
    /// Names, symlink targets, xattr names and values.
    pub strings: Vec<u8>,
}

fn u32_le(r: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(r[o..o + 4].try_into().expect("4 bytes"))
}

impl Tree {
    /// The inode `ino`, if it exists.
    pub fn inode(&self, ino: u64) -> Option<Inode> {
        usize::try_from(ino)
            .ok()?
            .checked_sub(1)
            .and_then(|i| self.inodes.get(i))
    }

    /// Bytes of the string table at `off..off+len` (empty if out of range, which a
    /// validated tree never is).
    pub fn string(&self, off: u64, len: u64) -> &[u8] {
        let (o, l) = (off as usize, len as usize);
        self.strings.get(o..o.saturating_add(l)).unwrap_or(&[])
    }

    /// The entries of directory `ino` (empty for non-directories).
    pub fn children(&self, ino: u64) -> Slice<'_, Dirent> {
        match self.inode(ino) {
            Some(i) if i.kind() == Kind::Dir => self
                .dirents
                .slice(i.a as usize, i.b as usize)
                .unwrap_or_else(Slice::empty),
            _ => Slice::empty(),
        }
    }

    /// The name of a directory entry.
    pub fn name(&self, d: &Dirent) -> &[u8] {
        self.string(d.name_off as u64, d.name_len as u64)
    }

    /// Looks `name` up in directory `dir`.
    pub fn lookup(&self, dir: u64, name: &[u8]) -> Option<u64> {
        let ents = self.children(dir);
        ents.binary_search_by(|d| self.name(d).cmp(name))
            .ok()
            .and_then(|i| ents.get(i))
            .map(|d| d.ino as u64)
    }

    /// Resolves a `/`-separated path from the root without following symlinks.
    pub fn resolve(&self, path: &[u8]) -> Option<u64> {
        let mut ino = ROOT_INO;
        for comp in path
            .split(|&b| b == b'/')
            .filter(|c| !c.is_empty() && *c != b".")
        {
            ino = self.lookup(ino, comp)?;
        }
        Some(ino)
    }

    /// A symlink's target.
    pub fn symlink_target(&self, ino: u64) -> &[u8] {
        match self.inode(ino) {
            Some(i) if i.kind() == Kind::Symlink => self.string(i.a, i.size),
            _ => &[],
        }
    }

    /// The xattrs of `ino` as (name, value) pairs.
    pub fn xattrs_of(&self, ino: u64) -> Vec<(&[u8], &[u8])> {
        let Some(i) = self.inode(ino) else {
            return Vec::new();
        };
        self.xattrs
            .slice(i.xattr_start as usize, i.xattr_count as usize)
            .map(|s| {
                s.iter()
                    .map(|x| {
                        (
                            self.string(x.name_off as u64, x.name_len as u64),
                            self.string(x.value_off as u64, x.value_len as u64),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The path (`/a/b`) of every regular file, by inode number; a file with several
    /// hard links gets the first of its paths in depth-first name order. Walks the
    /// whole tree, so callers build this once (a mount's read observer does).
    pub fn file_paths(&self) -> std::collections::HashMap<u64, Box<[u8]>> {
        let mut out = std::collections::HashMap::new();
        let mut seen = vec![false; self.inodes.len() + 1];
        seen[ROOT_INO as usize] = true;
        // (directory's entries, next entry, length of the directory's path in `path`)
        let mut stack: Vec<(Slice<'_, Dirent>, usize, usize)> =
            vec![(self.children(ROOT_INO), 0, 0)];
        let mut path: Vec<u8> = Vec::new();
        while let Some(top) = stack.last_mut() {
            let (ents, next, len) = (top.0, top.1, top.2);
            let Some(d) = ents.get(next) else {
                stack.pop();
                continue;
            };
            top.1 += 1;
            path.truncate(len);
            path.push(b'/');
            path.extend_from_slice(self.name(&d));
            let ino = d.ino as u64;
            match self.inode(ino).map(|i| i.kind()) {
                Some(Kind::Dir) if !std::mem::replace(&mut seen[ino as usize], true) => {
                    stack.push((self.children(ino), 0, path.len()));
                }
                Some(Kind::File) => {
                    out.entry(ino)
                        .or_insert_with(|| path.clone().into_boxed_slice());
                }
                _ => {}
            }
        }
        out
    }

    /// Serializes the inode table.
    pub fn encode_inodes(&self) -> Vec<u8> {
        self.inodes.as_bytes().to_vec()
    }

    /// Serializes the dirent table.
    pub fn encode_dirents(&self) -> Vec<u8> {
        self.dirents.as_bytes().to_vec()
    }

    /// Serializes the xattr table.
    pub fn encode_xattrs(&self) -> Vec<u8> {
        self.xattrs.as_bytes().to_vec()
    }

    /// The tree whose serialized tables these are, used in place (no copy), after
    /// validating it completely, so that no later access can go out of range.
    /// `layers` is the number of data sources file inodes may name.
    pub fn decode(
        inodes: Vec<u8>,
        dirents: Vec<u8>,
        xattrs: Vec<u8>,
        strings: Vec<u8>,
        layers: u32,
    ) -> Result<Tree> {
        let bad = |m: String| Err(Error::format(format!("archive tree: {m}")));
        let tree = Tree {
            inodes: Records::from_bytes(inodes)?,
            dirents: Records::from_bytes(dirents)?,
            xattrs: Records::from_bytes(xattrs)?,
            strings,
        };
        let n = tree.inodes.len() as u64;
        let slen = tree.strings.len() as u64;
        let in_strings = |off: u64, len: u64| off.checked_add(len).is_some_and(|e| e <= slen);
        if tree.inodes.get(0).is_none_or(|r| r.kind() != Kind::Dir) {
            return bad("no root directory".into());
        }
        for (idx, i) in tree.inodes.iter().enumerate() {
            let ino = idx as u64 + 1;
            if Kind::from_mode(i.mode).is_none() {
                return bad(format!("inode {ino} has unknown type {:o}", i.mode));
            }
            if (i.xattr_start as u64 + i.xattr_count as u64) > tree.xattrs.len() as u64 {
                return bad(format!("inode {ino}: xattrs out of range"));
            }
            let bad_range = match i.kind() {
                Kind::Dir => {
                    i.a.checked_add(i.b as u64)
                        .is_none_or(|e| e > tree.dirents.len() as u64)
                        || i.parent == 0
                        || i.parent as u64 > n
                }
                Kind::File => i.b >= layers,
                Kind::Symlink => !in_strings(i.a, i.size),
                _ => false,
            };
            if bad_range {
                return bad(format!(
                    "inode {ino} ({:?}): data, entries or layer out of range",
                    i.kind()
                ));
            }
        }
        for d in tree.dirents.iter() {
            if d.ino == 0
                || d.ino as u64 > n
                || d.ino == 1
                || !in_strings(d.name_off as u64, d.name_len as u64)
            {
                return bad("directory entry out of range".into());
            }
        }
        for x in tree.xattrs.iter() {
            if !in_strings(x.name_off as u64, x.name_len as u64)
                || !in_strings(x.value_off as u64, x.value_len as u64)
            {
                return bad("xattr out of range".into());
            }
        }
        // Names within each directory must be sorted and unique (lookups bisect).
        for i in tree.inodes.iter().filter(|i| i.kind() == Kind::Dir) {
            let ents = tree
                .dirents
                .slice(i.a as usize, i.b as usize)
                .expect("checked above");
            let mut names = ents.iter().map(|d| tree.name(&d));
            let mut prev = names.next();
            let sorted = names.all(|n| {
                let ok = prev.is_some_and(|p| p < n);
                prev = Some(n);
                ok
            });
            if !sorted {
                return bad("directory entries not sorted".into());
            }
        }
        tree.check_paths()?;
        Ok(tree)
    }

    /// Refuses a tree with a path from the root (`/a/b`) longer than
    /// [`limits::MAX_PATH_LEN`] bytes or deeper than [`limits::MAX_PATH_DEPTH`]
    /// components, or a symlink target that is, so that whatever walks the tree
    /// (extract, a mount's path list) builds bounded paths. Directories are walked
    /// breadth first, each once (a directory named twice is walked where it is
    /// met first).
    fn check_paths(&self) -> Result<()> {
        for (idx, i) in self.inodes.iter().enumerate() {
            if i.kind() == Kind::Symlink {
                limits::check_path(
                    format_args!("archive tree: symlink inode {}", idx + 1),
                    "target",
                    self.symlink_target(idx as u64 + 1),
                )?;
            }
        }
        let mut seen = vec![false; self.inodes.len() + 1];
        seen[ROOT_INO as usize] = true;
        // (directory, length of its path, its depth)
        let mut queue = std::collections::VecDeque::from([(ROOT_INO, 0usize, 0usize)]);
        while let Some((dir, len, depth)) = queue.pop_front() {
            for d in self.children(dir) {
                let name = self.name(&d);
                let (len, depth) = (len + 1 + name.len(), depth + 1);
                let what = || {
                    let shown = limits::show_path(&[b"/".as_slice(), name].concat());
                    format!("archive tree: the path to inode {} (ending {shown})", d.ino)
                };
                if len > limits::MAX_PATH_LEN {
                    return Err(limits::exceeded(
                        what(),
                        len,
                        "bytes",
                        limits::MAX_PATH_LEN,
                        "limits::MAX_PATH_LEN",
                    ));
                }
                if depth > limits::MAX_PATH_DEPTH {
                    return Err(limits::exceeded(
                        what(),
                        depth,
                        "components",
                        limits::MAX_PATH_DEPTH,
                        "limits::MAX_PATH_DEPTH",
                    ));
                }
                let ino = d.ino as u64;
                if self.inode(ino).is_some_and(|i| i.kind() == Kind::Dir)
                    && !std::mem::replace(&mut seen[ino as usize], true)
                {
                    queue.push_back((ino, len, depth));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(a: u64, b: u32) -> Inode {
        Inode {
            mode: S_IFDIR | 0o755,
            nlink: 2,
            parent: 1,
            a,
            b,
            ..Default::default()
        }
    }

    /// A chain of `n` directories below the root, each named `name`.
    fn chain(n: usize, name: &[u8]) -> Result<Tree> {
        let inodes: Vec<Inode> = (0..=n)
            .map(|k| Inode {
                parent: k.max(1) as u32,
                ..dir(k as u64, u32::from(k < n))
            })
            .collect();
        let dirents: Vec<Dirent> = (0..n)
            .map(|k| Dirent {
                name_off: 0,
                name_len: name.len() as u32,
                ino: k as u32 + 2,
            })
            .collect();
        let t = Tree {
            inodes: inodes.into(),
            dirents: dirents.into(),
            ..Default::default()
        };
        Tree::decode(
            t.encode_inodes(),
            t.encode_dirents(),
            Vec::new(),
            name.to_vec(),
            0,
        )
    }

    #[test]
    fn decode_bounds_path_length_and_depth() {
        chain(limits::MAX_PATH_DEPTH, b"a").unwrap();
        let e = chain(limits::MAX_PATH_DEPTH + 1, b"a")
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "archive tree: the path to inode 1026 (ending \"/a\"): 1025 components, more than the limit of 1024 (limits::MAX_PATH_DEPTH)"
        );
        // 16 names of 255 bytes: 4096 bytes with their slashes; 17: too long.
        chain(16, &[b'n'; 255]).unwrap();
        let e = chain(17, &[b'n'; 255]).unwrap_err().to_string();
        assert!(
            e.contains(": 4352 bytes, more than the limit of 4096 (limits::MAX_PATH_LEN)"),
            "{e}"
        );
        // A symlink target too.
        let t = Tree {
            inodes: vec![
                dir(0, 1),
                Inode {
                    mode: S_IFLNK | 0o777,
                    size: 5000,
                    ..Default::default()
                },
            ]
            .into(),
            dirents: vec![Dirent {
                name_off: 0,
                name_len: 1,
                ino: 2,
            }]
            .into(),
            ..Default::default()
        };
        let e = Tree::decode(
            t.encode_inodes(),
            t.encode_dirents(),
            Vec::new(),
            vec![b'x'; 5000],
            0,
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            e,
            "archive tree: symlink inode 2: target: 5000 bytes, more than the limit of 4096 (limits::MAX_PATH_LEN)"
        );
    }

    #[test]
    fn records_are_used_in_place_and_round_trip() {
        let a = Dirent {
            name_off: 1,
            name_len: 2,
            ino: 3,
        };
        let b = Dirent {
            name_off: 4,
            name_len: 5,
            ino: 6,
        };
        let mut r: Records<Dirent> = vec![a, b].into();
        assert_eq!(
            (r.len(), r.get(0), r.get(1), r.get(2)),
            (2, Some(a), Some(b), None)
        );
        r.update(1, |d| d.ino = 9);
        assert_eq!(r.at(1).ino, 9);
        let bytes = r.as_bytes().to_vec();
        assert_eq!(bytes.len(), 2 * DIRENT_SIZE);
        let back = Records::<Dirent>::from_bytes(bytes).unwrap();
        assert_eq!(back, r);
        assert_eq!(
            back.slice(1, 1).unwrap().iter().collect::<Vec<_>>(),
            [r.at(1)]
        );
        assert!(back.slice(1, 2).is_none());
        assert!(back.slice(usize::MAX, 2).is_none());
        assert!(Records::<Dirent>::from_bytes(vec![0; DIRENT_SIZE + 1]).is_err());
        let s = back.slice(0, 2).unwrap();
        assert_eq!(s.binary_search_by(|d| d.name_off.cmp(&4)), Ok(1));
        assert_eq!(s.binary_search_by(|d| d.name_off.cmp(&2)), Err(1));
        assert_eq!(s.binary_search_by(|d| d.name_off.cmp(&0)), Err(0));
    }

    #[test]
    fn decode_rejects_out_of_range_directories_without_panicking() {
        let ok = Tree {
            inodes: vec![dir(0, 0)].into(),
            ..Default::default()
        };
        assert!(Tree::decode(ok.encode_inodes(), Vec::new(), Vec::new(), Vec::new(), 0).is_ok());
        for (a, b) in [(u64::MAX, 1), (u64::MAX - 1, u32::MAX), (0, 1)] {
            let bad = Tree {
                inodes: vec![dir(a, b)].into(),
                ..Default::default()
            };
            let e = Tree::decode(bad.encode_inodes(), Vec::new(), Vec::new(), Vec::new(), 0)
                .unwrap_err();
            assert!(e.to_string().contains("out of range"), "{e}");
        }
    }
}
