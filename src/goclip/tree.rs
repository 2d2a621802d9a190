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
    let mut non_dirs: std::collections::HashSet<&[u8]> = std::collections::HashSet::new();
    let mut skipped = 0usize;
    for n in &a.nodes {
        let under_non_dir = n
            .path
            .iter()
            .enumerate()
            .skip(1)
            .any(|(i, &c)| c == b'/' && non_dirs.contains(&n.path[..i]));
        if under_non_dir {
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
