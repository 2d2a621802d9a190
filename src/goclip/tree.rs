//! The tree of a Go-clip index, in our form.

use super::{GoArchive, NodeType, Storage};
use crate::error::{Error, Result};
use crate::index::merge::TreeBuilder;
use crate::tar::{Entry, EntryKind};
use crate::tree::Tree;

/// Builds the tree of `a`: v1 files point at their data block in the (full)
/// archive, which is data layer 0; v2 files at their range of the layer their
/// `RemoteRef` names. The Go clip kept permission bits only (`mode & 0777`),
/// skipped devices and stored each hard link as a file of its own: so does this
/// tree.
///
/// The Go clip's v2 indexer could leave entries under a path an upper layer
/// replaced with a file (`/x/child` where `/x` is now a file); those are left
/// out, with a warning, as no path lookup could reach them.
pub(super) fn build(a: &GoArchive) -> Result<Tree> {
    let mut b = TreeBuilder::default();
    let mut non_dirs = NonDirs::default();
    let mut skipped = 0usize;
    for n in &a.nodes {
        if non_dirs.holds_an_ancestor_of(&n.path) {
            skipped += 1;
            tracing::warn!(
                path = %String::from_utf8_lossy(&n.path),
                "leaving out an entry of the Go-clip index under a non-directory"
            );
            continue;
        }
        if n.node_type != NodeType::Dir {
            non_dirs.insert(&n.path);
        }
        let (kind, layer, offset) = match n.node_type {
            NodeType::Dir => (EntryKind::Directory, 0, 0),
            NodeType::Symlink => (EntryKind::Symlink, 0, 0),
            NodeType::File => match (&a.storage, &n.remote) {
                (Storage::Oci(o), Some(r)) => {
                    let l = o
                        .layers
                        .iter()
                        .position(|d| *d == r.layer_digest)
                        .expect("checked when read");
                    (EntryKind::File, l as u32, r.offset)
                }
                _ => (EntryKind::File, 0, n.data_pos),
            },
        };
        let e = Entry {
            path: n.path[1..].to_vec(),
            kind,
            mode: n.mode & 0o7777,
            uid: n.uid as u64,
            gid: n.gid as u64,
            mtime: i64::try_from(n.mtime).map_err(|_| {
                Error::format(format!(
                    "index: {:?} has mtime {}",
                    String::from_utf8_lossy(&n.path),
                    n.mtime
                ))
            })?,
            mtime_nsec: n.mtime_nsec,
            size: if kind == EntryKind::File { n.size } else { 0 },
            data_offset: offset,
            link_target: n.target.clone(),
            dev_major: 0,
            dev_minor: 0,
            xattrs: Vec::new(),
            header_offset: 0,
        };
        b.add(&e, layer).map_err(|err| {
            Error::format(format!(
                "index: {:?}: {err}",
                String::from_utf8_lossy(&n.path)
            ))
        })?;
    }
    if skipped > 0 {
        tracing::warn!(skipped, "entries of the Go-clip index left out");
    }
    b.finish()
}

/// The paths of the non-directories met so far, for "is this node under one?".
/// Every ancestor of a path is looked up, and a path may have a thousand
/// ([`crate::limits::MAX_PATH_DEPTH`]): each prefix's hash is the state of one
/// hasher fed the path once, so a check costs the path's length, not its length
/// times its depth. The hasher is keyed per tree, so no index can choose
/// colliding paths; a hash hit is confirmed on the bytes.
#[derive(Default)]
struct NonDirs<'a> {
    keys: std::collections::hash_map::RandomState,
    hashes: std::collections::HashSet<u64, std::hash::BuildHasherDefault<Keyed>>,
    paths: std::collections::HashSet<&'a [u8]>,
}

/// The hasher of [`NonDirs::hashes`]: its keys are keyed hashes already.
#[derive(Default)]
struct Keyed(u64);

impl std::hash::Hasher for Keyed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

impl<'a> NonDirs<'a> {
    /// Feeds `path` to a hasher in pieces that end before each `/` (after the
    /// first byte), calling `at(end, hash of path[..end])` at each; returns the
    /// hash of the whole path, which is what those calls give for a prefix.
    fn hash(&self, path: &[u8], mut at: impl FnMut(usize, u64) -> bool) -> Option<u64> {
        use std::hash::{BuildHasher, Hasher};
        let mut h = self.keys.build_hasher();
        let mut start = 0;
        for (i, &c) in path.iter().enumerate().skip(1) {
            if c == b'/' {
                h.write(&path[start..i]);
                start = i;
                if at(i, h.finish()) {
                    return None;
                }
            }
        }
        h.write(&path[start..]);
        Some(h.finish())
    }

    fn insert(&mut self, path: &'a [u8]) {
        let h = self.hash(path, |_, _| false).expect("never stopped");
        self.hashes.insert(h);
        self.paths.insert(path);
    }

    fn holds_an_ancestor_of(&self, path: &[u8]) -> bool {
        self.hash(path, |end, h| {
            self.hashes.contains(&h) && self.paths.contains(&path[..end])
        })
        .is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::NonDirs;

    #[test]
    fn ancestors_are_found_by_their_prefix_hashes() {
        let mut n = NonDirs::default();
        n.insert(b"/a/file");
        n.insert(b"/x");
        assert!(n.holds_an_ancestor_of(b"/a/file/child"));
        assert!(n.holds_an_ancestor_of(b"/x/y/z"));
        assert!(!n.holds_an_ancestor_of(b"/a/file"));
        assert!(!n.holds_an_ancestor_of(b"/a/filex/y"));
        assert!(!n.holds_an_ancestor_of(b"/a/b"));
        assert!(!n.holds_an_ancestor_of(b"/"));
    }
}
