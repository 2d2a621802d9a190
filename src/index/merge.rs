//! Merging layers into one tree, as the OCI image spec and real unpackers apply them.
//!
//! Each layer is applied in two phases:
//! 1. its whiteouts: `.wh.<name>` removes `<name>` and `.wh..wh..opq` empties its
//!    directory, both acting on the lower layers only (OCI: "whiteout files MUST only
//!    apply to resources in lower/parent layers"), so a layer's own entries survive
//!    its opaque marker wherever the marker sits in tar order;
//! 2. its other entries in tar order: a directory over a directory updates the
//!    attributes and keeps the children; anything else replaces what was there
//!    (a file replacing a directory drops the whole subtree, and back).
//!
//! Paths are normalised without ever leaving the tree: leading `/` and `./` are
//! dropped, `..` stops at the root. Intermediate components that are symlinks are
//! followed inside the tree (like securejoin in umoci and containerd); the last
//! component never is. Missing parents are created (mode 0755, root-owned).
//! Hardlinks name the target's inode, so they survive a later removal of the
//! original path; the link entry's own header attributes are ignored, as `link(2)`
//! does.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, VecDeque};

use super::LayerIndex;
use crate::error::{Error, Result};
use crate::tar::{Entry, EntryKind};
use crate::tree::{Dirent, Inode, Kind, Tree, Xattr};

const ROOT: usize = 0;
const MAX_SYMLINKS: usize = 40;

#[derive(Debug, Clone)]
struct Attrs {
    perm: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    mtime_nsec: u32,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

#[derive(Debug)]
enum NodeKind {
    Dir(BTreeMap<Vec<u8>, usize>),
    File { layer: u32, offset: u64, size: u64 },
    Symlink(Vec<u8>),
    Device { kind: Kind, rdev: u64 },
    Fifo,
}

#[derive(Debug)]
struct Node {
    attrs: Attrs,
    kind: NodeKind,
}

struct Builder {
    nodes: Vec<Node>,
}

/// Splits a tar path into components, dropping empty and `.` ones; `..` is kept for
/// the walker (which clamps it at the root).
fn components(path: &[u8]) -> Vec<&[u8]> {
    path.split(|&b| b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
        .collect()
}

/// Normalises a path lexically, clamping `..` at the root.
fn normalise(path: &[u8]) -> Vec<&[u8]> {
    let mut out: Vec<&[u8]> = Vec::new();
    for c in components(path) {
        if c == b".." {
            out.pop();
        } else {
            out.push(c);
        }
    }
    out
}

fn implicit_dir() -> Node {
    Node {
        attrs: Attrs {
            perm: 0o755,
            uid: 0,
            gid: 0,
            mtime: 0,
            mtime_nsec: 0,
            xattrs: Vec::new(),
        },
        kind: NodeKind::Dir(BTreeMap::new()),
    }
}

impl Builder {
    fn children(&self, dir: usize) -> Option<&BTreeMap<Vec<u8>, usize>> {
        match &self.nodes[dir].kind {
            NodeKind::Dir(c) => Some(c),
            _ => None,
        }
    }

    fn children_mut(&mut self, dir: usize) -> &mut BTreeMap<Vec<u8>, usize> {
        match &mut self.nodes[dir].kind {
            NodeKind::Dir(c) => c,
            _ => unreachable!("children_mut on a non-directory"),
        }
    }

    fn add(&mut self, node: Node) -> usize {
        self.nodes.push(node);
        self.nodes.len() - 1
    }

    /// Walks `comps` as directories from the root, following symlinks inside the
    /// tree. With `create`, missing directories are made; otherwise `None`.
    fn walk(&mut self, comps: &[&[u8]], create: bool) -> Result<Option<usize>> {
        let mut stack = vec![ROOT];
        // Borrowed: a walk through existing directories allocates nothing per
        // component (a path may have a thousand of them).
        let mut queue: VecDeque<Cow<'_, [u8]>> = comps.iter().map(|&c| Cow::Borrowed(c)).collect();
        let mut links = 0;
        while let Some(c) = queue.pop_front() {
            if *c == *b".." {
                if stack.len() > 1 {
                    stack.pop();
                }
                continue;
            }
            let cur = *stack.last().expect("root stays");
            let child = self.children(cur).and_then(|m| m.get(&*c)).copied();
            match child {
                None if create => {
                    let id = self.add(implicit_dir());
                    self.children_mut(cur).insert(c.into_owned(), id);
                    stack.push(id);
                }
                None => return Ok(None),
                Some(id) => match &self.nodes[id].kind {
                    NodeKind::Dir(_) => stack.push(id),
                    NodeKind::Symlink(target) => {
                        links += 1;
                        if links > MAX_SYMLINKS {
                            return Err(Error::format(format!(
                                "too many levels of symbolic links at {}",
                                String::from_utf8_lossy(&c)
                            )));
                        }
                        if target.starts_with(b"/") {
                            stack.truncate(1);
                        }
                        let t: Vec<Vec<u8>> =
                            components(target).iter().map(|c| c.to_vec()).collect();
                        for comp in t.into_iter().rev() {
                            queue.push_front(Cow::Owned(comp));
                        }
                    }
                    _ if create => {
                        return Err(Error::format(format!(
                            "{} is not a directory",
                            String::from_utf8_lossy(&c)
                        )));
                    }
                    _ => return Ok(None),
                },
            }
        }
        Ok(Some(*stack.last().expect("root stays")))
    }

    fn apply_whiteout(&mut self, e: &Entry) -> Result<bool> {
        let comps = normalise(&e.path);
        let Some((name, parent)) = comps.split_last() else {
            return Ok(false);
        };
        let Some(target) = name.strip_prefix(b".wh.") else {
            return Ok(false);
        };
        if target == b".wh..opq" {
            if let Some(dir) = self.walk(parent, false)? {
                self.children_mut(dir).clear();
            }
        } else if !target.starts_with(b".wh.") {
            if let Some(dir) = self.walk(parent, false)? {
                self.children_mut(dir).remove(target);
            }
        }
        Ok(true)
    }

    fn apply_entry(&mut self, e: &Entry, layer: u32) -> Result<()> {
        let comps = normalise(&e.path);
        let attrs = Attrs {
            perm: e.mode & 0o7777,
            uid: u32::try_from(e.uid)
                .map_err(|_| Error::format(format!("uid {} too large", e.uid)))?,
            gid: u32::try_from(e.gid)
                .map_err(|_| Error::format(format!("gid {} too large", e.gid)))?,
            mtime: e.mtime,
            mtime_nsec: e.mtime_nsec,
            xattrs: e.xattrs.clone(),
        };
        let Some((name, parent_comps)) = comps.split_last() else {
            // The root itself ("./"): only a directory can describe it.
            if e.kind == EntryKind::Directory {
                self.nodes[ROOT].attrs = attrs;
            }
            return Ok(());
        };
        let parent = self.walk(parent_comps, true)?.expect("created");
        let existing = self.children(parent).and_then(|m| m.get(*name)).copied();
        let kind = match e.kind {
            EntryKind::Directory => {
                if let Some(id) = existing
                    && matches!(self.nodes[id].kind, NodeKind::Dir(_))
                {
                    self.nodes[id].attrs = attrs;
                    return Ok(());
                }
                NodeKind::Dir(BTreeMap::new())
            }
            EntryKind::File => NodeKind::File {
                layer,
                offset: e.data_offset,
                size: e.size,
            },
            EntryKind::Symlink => NodeKind::Symlink(e.link_target.clone()),
            EntryKind::CharDevice | EntryKind::BlockDevice => NodeKind::Device {
                kind: if e.kind == EntryKind::CharDevice {
                    Kind::CharDevice
                } else {
                    Kind::BlockDevice
                },
                rdev: Inode::makedev(e.dev_major, e.dev_minor),
            },
            EntryKind::Fifo => NodeKind::Fifo,
            EntryKind::Hardlink => {
                let tcomps = normalise(&e.link_target);
                let target = match tcomps.split_last() {
                    None => None,
                    Some((tname, tparent)) => match self.walk(tparent, false)? {
                        Some(d) => self.children(d).and_then(|m| m.get(*tname)).copied(),
                        None => None,
                    },
                };
                let target = target.ok_or_else(|| {
                    Error::format(format!(
                        "hardlink {} -> {}: target does not exist",
                        String::from_utf8_lossy(&e.path),
                        String::from_utf8_lossy(&e.link_target)
                    ))
                })?;
                if matches!(self.nodes[target].kind, NodeKind::Dir(_)) {
                    return Err(Error::format(format!(
                        "hardlink {} -> {}: target is a directory",
                        String::from_utf8_lossy(&e.path),
                        String::from_utf8_lossy(&e.link_target)
                    )));
                }
                self.children_mut(parent).insert(name.to_vec(), target);
                return Ok(());
            }
        };
        let id = self.add(Node { attrs, kind });
        self.children_mut(parent).insert(name.to_vec(), id);
        Ok(())
    }

    fn flatten(self) -> Result<Tree> {
        let mut tree = Tree::default();
        let mut ino_of = vec![0u32; self.nodes.len()];
        let mut links = vec![0u32; self.nodes.len()];
        let mut names: HashMap<Vec<u8>, u32> = HashMap::new();
        let mut strings = Strings::default();
        let mut queue = VecDeque::new();
        let new_inode =
            |tree: &mut Tree, strings: &mut Strings, id: usize, parent: u32| -> Result<u32> {
                let n = &self.nodes[id];
                let (kind, size, a, b) = match &n.kind {
                    NodeKind::Dir(_) => (Kind::Dir, 0, 0, 0),
                    NodeKind::File {
                        layer,
                        offset,
                        size,
                    } => (Kind::File, *size, *offset, *layer),
                    NodeKind::Symlink(t) => {
                        (Kind::Symlink, t.len() as u64, strings.add(t)? as u64, 0)
                    }
                    NodeKind::Device { kind, rdev } => (*kind, 0, *rdev, 0),
                    NodeKind::Fifo => (Kind::Fifo, 0, 0, 0),
                };
                let xattr_start = tree.xattrs.len() as u32;
                for (k, v) in &n.attrs.xattrs {
                    tree.xattrs.push(Xattr {
                        name_off: strings.add(k)?,
                        name_len: k.len() as u32,
                        value_off: strings.add(v)?,
                        value_len: v.len() as u32,
                    });
                }
                tree.inodes.push(Inode {
                    mode: kind.mode_bits() | n.attrs.perm,
                    uid: n.attrs.uid,
                    gid: n.attrs.gid,
                    nlink: 1,
                    mtime: n.attrs.mtime,
                    mtime_nsec: n.attrs.mtime_nsec,
                    xattr_start,
                    xattr_count: n.attrs.xattrs.len() as u32,
                    parent,
                    size,
                    a,
                    b,
                });
                let ino = u32::try_from(tree.inodes.len())
                    .map_err(|_| Error::format("too many inodes"))?;
                Ok(ino)
            };
        ino_of[ROOT] = new_inode(&mut tree, &mut strings, ROOT, 1)?;
        queue.push_back(ROOT);
        while let Some(dir) = queue.pop_front() {
            let dino = ino_of[dir];
            let NodeKind::Dir(children) = &self.nodes[dir].kind else {
                unreachable!()
            };
            let start = tree.dirents.len() as u64;
            let mut subdirs = 0;
            for (name, &child) in children {
                if ino_of[child] == 0 {
                    ino_of[child] = new_inode(&mut tree, &mut strings, child, dino)?;
                    if matches!(self.nodes[child].kind, NodeKind::Dir(_)) {
                        queue.push_back(child);
                    }
                }
                if matches!(self.nodes[child].kind, NodeKind::Dir(_)) {
                    subdirs += 1;
                }
                links[child] += 1;
                let name_off = match names.get(name) {
                    Some(&o) => o,
                    None => {
                        let o = strings.add(name)?;
                        names.insert(name.clone(), o);
                        o
                    }
                };
                tree.dirents.push(Dirent {
                    name_off,
                    name_len: name.len() as u32,
                    ino: ino_of[child],
                });
            }
            let n = (tree.dirents.len() as u64 - start) as u32;
            tree.inodes.update(dino as usize - 1, |inode| {
                inode.a = start;
                inode.b = n;
                inode.nlink = 2 + subdirs;
            });
        }
        for (id, &ino) in ino_of.iter().enumerate() {
            if ino != 0 && !matches!(self.nodes[id].kind, NodeKind::Dir(_)) {
                tree.inodes
                    .update(ino as usize - 1, |i| i.nlink = links[id]);
            }
        }
        tree.strings = strings.bytes;
        Ok(tree)
    }
}

#[derive(Default)]
struct Strings {
    bytes: Vec<u8>,
}

impl Strings {
    fn add(&mut self, s: &[u8]) -> Result<u32> {
        let off = u32::try_from(self.bytes.len())
            .map_err(|_| Error::format("string table over 4 GiB"))?;
        self.bytes.extend_from_slice(s);
        Ok(off)
    }
}

/// Builds a tree from entries in the order a walk meets them (a directory before
/// its children, a hardlink's target before the link), with the same rules as a
/// layer's non-whiteout entries: used to archive a directory tree, where a name
/// like `.wh.x` is just a file.
pub struct TreeBuilder(Builder);

impl Default for TreeBuilder {
    fn default() -> TreeBuilder {
        TreeBuilder(Builder {
            nodes: vec![implicit_dir()],
        })
    }
}

impl TreeBuilder {
    /// Adds one entry; file entries name data layer `layer` at `data_offset`.
    /// An entry with an empty path (or `.`) sets the root's attributes. Paths and
    /// link targets over the limits ([`crate::limits::check_entry`]) are refused,
    /// so no tree is built that a reader would refuse.
    pub fn add(&mut self, e: &Entry, layer: u32) -> Result<()> {
        crate::limits::check_entry(e)?;
        self.0.apply_entry(e, layer)
    }

    /// The finished tree.
    pub fn finish(self) -> Result<Tree> {
        self.0.flatten()
    }
}

/// Merges the layers, bottom first, into one tree. File inodes name the layer by
/// its index in `layers`.
pub fn merge(layers: &[LayerIndex]) -> Result<Tree> {
    let mut b = Builder {
        nodes: vec![implicit_dir()],
    };
    for (li, layer) in layers.iter().enumerate() {
        let wrap = |e: Error| e.with_layer(layer.record.digest);
        let mut is_whiteout = vec![false; layer.entries.len()];
        for (i, e) in layer.entries.iter().enumerate() {
            is_whiteout[i] = b.apply_whiteout(e).map_err(wrap)?;
        }
        for (i, e) in layer.entries.iter().enumerate() {
            if !is_whiteout[i] {
                b.apply_entry(e, li as u32).map_err(|err| {
                    wrap(Error::format(format!(
                        "entry {}: {err}",
                        String::from_utf8_lossy(&e.path)
                    )))
                })?;
            }
        }
    }
    b.flatten()
}
