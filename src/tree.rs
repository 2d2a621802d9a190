//! The merged file tree of an image, in the compact form an archive stores and a
//! mount serves: a flat inode table (inode number = index + 1, root = 1), the
//! entries of each directory stored contiguously and sorted by name, one string
//! table for names, symlink targets and xattrs, and an xattr table.
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

/// The merged file tree (see the module docs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tree {
    /// Inodes; inode number `n` is `inodes[n - 1]`.
    pub inodes: Vec<Inode>,
    /// Directory entries, each directory's contiguous and sorted by name.
    pub dirents: Vec<Dirent>,
    /// Extended attributes, each inode's contiguous and sorted by name.
    pub xattrs: Vec<Xattr>,
    /// Names, symlink targets, xattr names and values.
    pub strings: Vec<u8>,
}

fn u32_le(r: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(r[o..o + 4].try_into().expect("4 bytes"))
}

impl Tree {
    /// The inode `ino`, if it exists.
    pub fn inode(&self, ino: u64) -> Option<&Inode> {
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
    pub fn children(&self, ino: u64) -> &[Dirent] {
        match self.inode(ino) {
            Some(i) if i.kind() == Kind::Dir => {
                let s = i.a as usize;
                self.dirents.get(s..s + i.b as usize).unwrap_or(&[])
            }
            _ => &[],
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
            .map(|i| ents[i].ino as u64)
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
        let s = i.xattr_start as usize;
        self.xattrs
            .get(s..s + i.xattr_count as usize)
            .unwrap_or(&[])
            .iter()
            .map(|x| {
                (
                    self.string(x.name_off as u64, x.name_len as u64),
                    self.string(x.value_off as u64, x.value_len as u64),
                )
            })
            .collect()
    }

    /// The path (`/a/b`) of every regular file, by inode number; a file with several
    /// hard links gets the first of its paths in depth-first name order. Walks the
    /// whole tree, so callers build this once (a mount's read observer does).
    pub fn file_paths(&self) -> std::collections::HashMap<u64, Box<[u8]>> {
        let mut out = std::collections::HashMap::new();
        let mut seen = vec![false; self.inodes.len() + 1];
        seen[ROOT_INO as usize] = true;
        // (directory's entries, next entry, length of the directory's path in `path`)
        let mut stack: Vec<(&[Dirent], usize, usize)> = vec![(self.children(ROOT_INO), 0, 0)];
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
            path.extend_from_slice(self.name(d));
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
        let mut out = Vec::with_capacity(self.inodes.len() * INODE_SIZE);
        for i in &self.inodes {
            i.encode(&mut out);
        }
        out
    }

    /// Serializes the dirent table.
    pub fn encode_dirents(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.dirents.len() * DIRENT_SIZE);
        for d in &self.dirents {
            out.extend_from_slice(&d.name_off.to_le_bytes());
            out.extend_from_slice(&d.name_len.to_le_bytes());
            out.extend_from_slice(&d.ino.to_le_bytes());
        }
        out
    }

    /// Serializes the xattr table.
    pub fn encode_xattrs(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.xattrs.len() * XATTR_SIZE);
        for x in &self.xattrs {
            for v in [x.name_off, x.name_len, x.value_off, x.value_len] {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        out
    }

    /// Rebuilds a tree from its serialized tables and validates it completely, so
    /// that no later access can go out of range. `layers` is the number of data
    /// sources file inodes may name.
    pub fn decode(
        inodes: &[u8],
        dirents: &[u8],
        xattrs: &[u8],
        strings: Vec<u8>,
        layers: u32,
    ) -> Result<Tree> {
        let bad = |m: String| Err(Error::format(format!("archive tree: {m}")));
        if inodes.len() % INODE_SIZE != 0
            || dirents.len() % DIRENT_SIZE != 0
            || xattrs.len() % XATTR_SIZE != 0
        {
            return bad("table sizes are not whole records".into());
        }
        let tree = Tree {
            inodes: inodes.chunks_exact(INODE_SIZE).map(Inode::decode).collect(),
            dirents: dirents
                .chunks_exact(DIRENT_SIZE)
                .map(|r| Dirent {
                    name_off: u32_le(r, 0),
                    name_len: u32_le(r, 4),
                    ino: u32_le(r, 8),
                })
                .collect(),
            xattrs: xattrs
                .chunks_exact(XATTR_SIZE)
                .map(|r| Xattr {
                    name_off: u32_le(r, 0),
                    name_len: u32_le(r, 4),
                    value_off: u32_le(r, 8),
                    value_len: u32_le(r, 12),
                })
                .collect(),
            strings,
        };
        let n = tree.inodes.len() as u64;
        let slen = tree.strings.len() as u64;
        let in_strings = |off: u64, len: u64| off.checked_add(len).is_some_and(|e| e <= slen);
        if n == 0 || tree.inodes[0].kind() != Kind::Dir {
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
        for d in &tree.dirents {
            if d.ino == 0
                || d.ino as u64 > n
                || d.ino == 1
                || !in_strings(d.name_off as u64, d.name_len as u64)
            {
                return bad("directory entry out of range".into());
            }
        }
        for x in &tree.xattrs {
            if !in_strings(x.name_off as u64, x.name_len as u64)
                || !in_strings(x.value_off as u64, x.value_len as u64)
            {
                return bad("xattr out of range".into());
            }
        }
        // Names within each directory must be sorted and unique (lookups bisect).
        for i in tree.inodes.iter().filter(|i| i.kind() == Kind::Dir) {
            let ents = &tree.dirents[i.a as usize..(i.a + i.b as u64) as usize];
            if ents
                .windows(2)
                .any(|w| tree.name(&w[0]) >= tree.name(&w[1]))
            {
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
                let name = self.name(d);
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
            inodes,
            dirents,
            ..Default::default()
        };
        Tree::decode(
            &t.encode_inodes(),
            &t.encode_dirents(),
            &[],
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
            ],
            dirents: vec![Dirent {
                name_off: 0,
                name_len: 1,
                ino: 2,
            }],
            ..Default::default()
        };
        let e = Tree::decode(
            &t.encode_inodes(),
            &t.encode_dirents(),
            &[],
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
    fn decode_rejects_out_of_range_directories_without_panicking() {
        let ok = Tree {
            inodes: vec![dir(0, 0)],
            ..Default::default()
        };
        assert!(Tree::decode(&ok.encode_inodes(), &[], &[], Vec::new(), 0).is_ok());
        for (a, b) in [(u64::MAX, 1), (u64::MAX - 1, u32::MAX), (0, 1)] {
            let bad = Tree {
                inodes: vec![dir(a, b)],
                ..Default::default()
            };
            let e = Tree::decode(&bad.encode_inodes(), &[], &[], Vec::new(), 0).unwrap_err();
            assert!(e.to_string().contains("out of range"), "{e}");
        }
    }
}
