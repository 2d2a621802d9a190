//! The read-only FUSE filesystem over an archive's tree and a [`Store`].
//!
//! Metadata comes from the in-memory tree and never touches the network or the
//! disk cache; the kernel is told to cache entries, attributes, symlinks and page
//! contents for a long time (the image is immutable). A file read whose bytes lie
//! in spans the store holds open is served at once on the FUSE thread; any other
//! is handed to a pool of worker threads, so a slow fetch never holds up `ls`
//! elsewhere, and a sequential reader triggers read-ahead of the next span. Panics
//! in handlers are caught and answered with `EIO`.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, InitFlags, KernelConfig, OpenAccMode, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory,
    ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyXattr, Request,
};

use crate::store::Store;
use crate::trace::Tier;
use crate::tree::{Kind, Tree};

/// How long the kernel may cache entries and attributes: the image never changes.
const TTL: Duration = Duration::from_secs(365 * 24 * 3600);
const BLOCK: u32 = 4096;
/// Files whose sequential position is tracked at once (without opens nothing
/// says when a reader is done with a file).
const SEQ_MAX: usize = 1 << 16;

type Job = Box<dyn FnOnce() + Send>;

pub use crate::trace::{ReadEvent, ReadObserver};

/// A read observer with the paths of the files it is told about.
struct Observer {
    f: ReadObserver,
    paths: std::collections::HashMap<u64, Box<[u8]>>,
}

/// The environment variable that turns kernel capabilities off, for tests and
/// for a kernel that misbehaves with one: a comma-separated list of
/// [`Capabilities`] names (`no_open,cache_dir`, say), or `all`.
pub const DISABLE_ENV: &str = "CLIP_FUSE_DISABLE";

/// The kernel capabilities a mount asks for, each on unless turned off through
/// [`DISABLE_ENV`]. A kernel without one keeps working without it (each is asked
/// for on its own).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// `no_open`: `open` answers `ENOSYS` under `FUSE_NO_OPEN_SUPPORT`, so the
    /// kernel stops sending `open`, `flush` and `release` (the tree never changes:
    /// there is nothing to do per open file).
    pub no_open: bool,
    /// `no_opendir`: the same for directories (`FUSE_NO_OPENDIR_SUPPORT`).
    pub no_opendir: bool,
    /// `readdirplus`: listings carry attributes (`FUSE_DO_READDIRPLUS`,
    /// `FUSE_READDIRPLUS_AUTO`), so `ls -l` costs no `lookup` per entry.
    pub readdirplus: bool,
    /// `cache_symlinks`: the kernel caches symlink targets (`FUSE_CACHE_SYMLINKS`).
    pub cache_symlinks: bool,
    /// `parallel_dirops`: lookups and listings of one directory run in parallel
    /// (`FUSE_PARALLEL_DIROPS`).
    pub parallel_dirops: bool,
    /// `async_read`: reads are sent in parallel, read-ahead included
    /// (`FUSE_ASYNC_READ`).
    pub async_read: bool,
    /// `keep_cache`: file pages stay cached across opens (`FOPEN_KEEP_CACHE`).
    pub keep_cache: bool,
    /// `cache_dir`: directory listings are cached by the kernel
    /// (`FOPEN_CACHE_DIR`).
    pub cache_dir: bool,
}

impl Default for Capabilities {
    fn default() -> Capabilities {
        Capabilities {
            no_open: true,
            no_opendir: true,
            readdirplus: true,
            cache_symlinks: true,
            parallel_dirops: true,
            async_read: true,
            keep_cache: true,
            cache_dir: true,
        }
    }
}

impl Capabilities {
    /// The names [`DISABLE_ENV`] takes.
    pub const NAMES: [&'static str; 8] = [
        "no_open",
        "no_opendir",
        "readdirplus",
        "cache_symlinks",
        "parallel_dirops",
        "async_read",
        "keep_cache",
        "cache_dir",
    ];

    fn flag(&mut self, name: &str) -> Option<&mut bool> {
        Some(match name {
            "no_open" => &mut self.no_open,
            "no_opendir" => &mut self.no_opendir,
            "readdirplus" => &mut self.readdirplus,
            "cache_symlinks" => &mut self.cache_symlinks,
            "parallel_dirops" => &mut self.parallel_dirops,
            "async_read" => &mut self.async_read,
            "keep_cache" => &mut self.keep_cache,
            "cache_dir" => &mut self.cache_dir,
            _ => return None,
        })
    }

    /// All on, less those `disable` names (comma-separated, or `all`). An unknown
    /// name is an error naming it.
    pub fn without(disable: &str) -> crate::Result<Capabilities> {
        let mut c = Capabilities::default();
        for name in disable.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if name == "all" {
                for n in Capabilities::NAMES {
                    *c.flag(n).expect("a known name") = false;
                }
                continue;
            }
            match c.flag(name) {
                Some(f) => *f = false,
                None => {
                    return Err(crate::Error::Invalid(format!(
                        "{DISABLE_ENV}: unknown capability {name:?} (known: all, {})",
                        Capabilities::NAMES.join(", ")
                    )));
                }
            }
        }
        Ok(c)
    }

    /// From [`DISABLE_ENV`] (all on when it is unset).
    pub fn from_env() -> crate::Result<Capabilities> {
        Capabilities::without(&std::env::var(DISABLE_ENV).unwrap_or_default())
    }
}

/// The filesystem.
pub struct ClipFs {
    store: Arc<Store>,
    jobs: Mutex<Sender<Job>>,
    next_fh: AtomicU64,
    /// Per open file: the offset a sequential reader would read next.
    seq: Arc<Mutex<HashMap<u64, u64>>>,
    /// Sum of regular file sizes, for statfs (the tree never changes).
    file_bytes: u64,
    /// Told of every read, if set.
    observer: Option<Arc<Observer>>,
    /// What to ask the kernel for.
    caps: Capabilities,
    /// `open`/`opendir` answer `ENOSYS` (asked for and granted at `init`).
    no_open: bool,
    no_opendir: bool,
}

impl ClipFs {
    /// A filesystem serving `store`'s image with `readers` read threads.
    pub fn new(store: Arc<Store>, readers: usize) -> ClipFs {
        let (tx, rx) = channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..readers.max(1) {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("clip-read-{i}"))
                .spawn(move || {
                    loop {
                        let job = match rx.lock().expect("job queue").recv() {
                            Ok(j) => j,
                            Err(_) => return,
                        };
                        let _ = catch_unwind(AssertUnwindSafe(job));
                    }
                })
                .expect("spawning a read thread");
        }
        let file_bytes = store
            .image()
            .tree()
            .inodes
            .iter()
            .filter(|i| i.kind() == Kind::File)
            .map(|i| i.size)
            .sum();
        ClipFs {
            file_bytes,
            store,
            jobs: Mutex::new(tx),
            next_fh: AtomicU64::new(1),
            seq: Arc::new(Mutex::new(HashMap::new())),
            observer: None,
            caps: Capabilities::default(),
            no_open: false,
            no_opendir: false,
        }
    }

    /// Asks the kernel for `caps` only (default: all of them).
    pub fn with_capabilities(mut self, caps: Capabilities) -> ClipFs {
        self.caps = caps;
        self
    }

    /// Tells `observer` of every read served from now on (the paths of all files
    /// are looked up here, once).
    pub fn with_read_observer(mut self, observer: ReadObserver) -> ClipFs {
        let paths = self.tree().file_paths();
        self.observer = Some(Arc::new(Observer { f: observer, paths }));
        self
    }

    fn tree(&self) -> &Tree {
        self.store.image().tree()
    }

    fn attr(&self, ino: u64) -> Option<FileAttr> {
        attr_of(self.tree(), ino)
    }
}

/// The attributes of `ino`.
pub fn attr_of(tree: &Tree, ino: u64) -> Option<FileAttr> {
    let i = tree.inode(ino)?;
    let kind = match i.kind() {
        Kind::Dir => FileType::Directory,
        Kind::File => FileType::RegularFile,
        Kind::Symlink => FileType::Symlink,
        Kind::CharDevice => FileType::CharDevice,
        Kind::BlockDevice => FileType::BlockDevice,
        Kind::Fifo => FileType::NamedPipe,
    };
    let mtime = if i.mtime >= 0 {
        UNIX_EPOCH + Duration::new(i.mtime as u64, i.mtime_nsec)
    } else {
        UNIX_EPOCH - Duration::from_secs(i.mtime.unsigned_abs())
            + Duration::from_nanos(i.mtime_nsec as u64)
    };
    let rdev = match i.kind() {
        Kind::CharDevice | Kind::BlockDevice => {
            let (ma, mi) = i.device();
            // The kernel's new_encode_dev.
            (mi & 0xff) | (ma << 8) | ((mi & !0xff) << 12)
        }
        _ => 0,
    };
    Some(FileAttr {
        ino: INodeNo(ino),
        size: i.size,
        blocks: i.size.div_ceil(512),
        atime: mtime,
        mtime,
        ctime: mtime,
        crtime: mtime,
        kind,
        perm: i.perm() as u16,
        nlink: i.nlink,
        uid: i.uid,
        gid: i.gid,
        rdev,
        blksize: BLOCK,
        flags: 0,
    })
}

/// The entries of directory `ino` from position `offset` on, `.` and `..` first:
/// (position, inode, name). `None` if `ino` does not exist.
fn dir_entries(
    tree: &Tree,
    ino: u64,
    offset: u64,
) -> Option<impl Iterator<Item = (u64, u64, &[u8])>> {
    let dir = tree.inode(ino)?;
    let ents = tree.children(ino);
    let total = ents.len() as u64 + 2;
    Some((offset..total).map(move |off| match off {
        0 => (off, ino, b".".as_slice()),
        1 => (off, dir.parent as u64, b"..".as_slice()),
        _ => {
            let d = ents.get((off - 2) as usize).expect("in range");
            (off, d.ino as u64, tree.name(&d))
        }
    }))
}

fn guard<R>(f: impl FnOnce() -> R) -> Option<R> {
    catch_unwind(AssertUnwindSafe(f)).ok()
}

impl Filesystem for ClipFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let c = self.caps;
        // One at a time: add_capabilities refuses a whole set if the kernel lacks
        // one of it.
        let mut granted = Vec::new();
        for (on, name, flags) in [
            (
                c.readdirplus,
                "readdirplus",
                InitFlags::FUSE_DO_READDIRPLUS | InitFlags::FUSE_READDIRPLUS_AUTO,
            ),
            (
                c.parallel_dirops,
                "parallel_dirops",
                InitFlags::FUSE_PARALLEL_DIROPS,
            ),
            (
                c.cache_symlinks,
                "cache_symlinks",
                InitFlags::FUSE_CACHE_SYMLINKS,
            ),
            (c.async_read, "async_read", InitFlags::FUSE_ASYNC_READ),
            (c.no_open, "no_open", InitFlags::FUSE_NO_OPEN_SUPPORT),
            (
                c.no_opendir,
                "no_opendir",
                InitFlags::FUSE_NO_OPENDIR_SUPPORT,
            ),
        ] {
            if on && config.add_capabilities(flags).is_ok() {
                granted.push(name);
                match name {
                    "no_open" => self.no_open = true,
                    "no_opendir" => self.no_opendir = true,
                    _ => {}
                }
            }
        }
        tracing::debug!(?granted, abi = ?config.kernel_abi(), "FUSE capabilities");
        let _ = config.set_max_readahead(1 << 20);
        // fuser sizes FUSE_MAX_PAGES from max(max_write, max_readahead): a large
        // max_write (we never write) lets the kernel send 1 MiB reads.
        let _ = config.set_max_write(1 << 20);
        let _ = config.set_max_background(64);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let r = guard(|| {
            let tree = self.tree();
            match tree
                .lookup(parent.0, name.as_bytes())
                .and_then(|ino| self.attr(ino))
            {
                Some(a) => Ok(a),
                None => Err(tree.inode(parent.0).is_some()),
            }
        });
        match r {
            Some(Ok(a)) => reply.entry(&TTL, &a, Generation(0)),
            // A negative entry (inode 0) the kernel caches: programs probe many
            // missing paths (PATH, sys.path) and each probe would be a round trip.
            Some(Err(true)) => {
                let mut a = self.attr(1).expect("root exists");
                a.ino = INodeNo(0);
                reply.entry(&TTL, &a, Generation(0));
            }
            Some(Err(false)) => reply.error(Errno::ENOENT),
            None => reply.error(Errno::EIO),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match guard(|| self.attr(ino.0)) {
            Some(Some(a)) => reply.attr(&TTL, &a),
            Some(None) => reply.error(Errno::ENOENT),
            None => reply.error(Errno::EIO),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match guard(|| self.tree().inode(ino.0).map(|i| i.kind() == Kind::Symlink)) {
            Some(Some(true)) => reply.data(self.tree().symlink_target(ino.0)),
            Some(Some(false)) => reply.error(Errno::EINVAL),
            Some(None) => reply.error(Errno::ENOENT),
            None => reply.error(Errno::EIO),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.acc_mode() != OpenAccMode::O_RDONLY {
            return reply.error(Errno::EROFS);
        }
        match self.tree().inode(ino.0).map(|i| i.kind()) {
            Some(Kind::Dir) => reply.error(Errno::EISDIR),
            // The kernel then opens every file without asking, with its page
            // cache kept (FOPEN_KEEP_CACHE is its default for no-open).
            Some(_) if self.no_open => reply.error(Errno::ENOSYS),
            Some(_) => {
                let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
                let flags = if self.caps.keep_cache {
                    FopenFlags::FOPEN_KEEP_CACHE
                } else {
                    FopenFlags::empty()
                };
                reply.opened(FileHandle(fh), flags);
            }
            None => reply.error(Errno::ENOENT),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn read(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyData,
    ) {
        let Some(inode) = self.tree().inode(ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        if inode.kind() != Kind::File {
            return reply.error(Errno::EINVAL);
        }
        if offset >= inode.size || size == 0 {
            return reply.data(&[]);
        }
        let n = (inode.size - offset).min(size as u64) as usize;
        let store = self.store.clone();
        let seq = self.seq.clone();
        let observer = self.observer.clone();
        let pid = req.pid();
        let layer = inode.b as usize;
        let start = inode.a + offset;
        let started = observer.as_ref().map(|_| std::time::Instant::now());
        let mut buf = vec![0u8; n];
        // Bytes in a span this store holds open are served here, at once; the rest
        // (a fetch may take seconds) on a read thread, so `ls` elsewhere never waits.
        let inline = self.store.read_layer_if_open(layer, start, &mut buf);
        let serve = move |inline: Option<crate::trace::ReadInfo>, mut buf: Vec<u8>| {
            let result = match inline {
                Some(info) => Ok(info),
                None => store.read_layer(layer, start, &mut buf),
            };
            match &result {
                Ok(_) => reply.data(&buf),
                Err(e) => {
                    // Errors are rare: finding the path by a walk costs nothing
                    // on the path of good reads.
                    let path = store.image().tree().file_paths().remove(&ino.0);
                    let path = path.as_deref().map(String::from_utf8_lossy);
                    tracing::error!(
                        "read of {} (inode {}) at {offset}: {e}",
                        path.as_deref().unwrap_or("?"),
                        ino.0
                    );
                    reply.error(Errno::EIO);
                }
            }
            if let (Some(o), Some(started)) = (observer, started) {
                let l = &store.image().archive().layers[layer];
                let info = result.as_ref().copied().unwrap_or_default();
                let hit = matches!(info.tier, Tier::Memory | Tier::Disk | Tier::None);
                let key = l.diff_id.hex();
                let mut attrs = vec![
                    ("storage_mode", store.image().archive().storage_kind()),
                    ("cache_result", if hit { "hit" } else { "miss" }),
                    ("cached_locally", if hit { "true" } else { "false" }),
                    ("cache_tier", info.tier.name()),
                    ("fallback", if info.fallback { "true" } else { "false" }),
                    ("content_hash", key.as_str()),
                ];
                if let Some(t) = store.tier() {
                    attrs.push((
                        "content_cache_available",
                        if t.available() { "true" } else { "false" },
                    ));
                }
                (o.f)(&ReadEvent {
                    operation: crate::trace::OP_READ,
                    decompressed_hash: &l.diff_id,
                    attrs: &attrs,
                    path: o.paths.get(&ino.0).map_or(&[][..], |p| &p[..]),
                    offset,
                    length: n as u64,
                    bytes_read: if result.is_ok() { n as u64 } else { 0 },
                    duration: started.elapsed(),
                    pid,
                    layer_digest: &store.image().archive().layers[layer].digest,
                    error: result.as_ref().err(),
                });
            }
            // Sequential reader: fetch the span after this one in the background.
            // Per open file; without opens (no-open: fh 0, no release) per
            // inode, forgotten when read to its end.
            let key = if fh.0 == 0 { ino.0 | 1 << 63 } else { fh.0 };
            let next = offset + n as u64;
            let sequential = {
                let mut s = seq.lock().expect("seq lock");
                let was = s.get(&key).copied() == Some(offset) || offset == 0;
                if fh.0 == 0 && next >= inode.size {
                    s.remove(&key);
                } else {
                    if s.len() >= SEQ_MAX {
                        s.clear();
                    }
                    s.insert(key, next);
                }
                was
            };
            if sequential && offset + (n as u64) < inode.size {
                let codec = &store.image().archive().layers[layer].codec;
                // A span the file goes on into; or past the file's end (other
                // files) only if reads of the layer stream in layer order (tar,
                // cp -r): a program that reads a file here and there never asked
                // for its neighbours.
                let file_end = inode.a + inode.size;
                if let Some(k) = codec.span_at(start + n as u64)
                    && let Some(next) = codec.spans.get(k + 1)
                    && (next.out_offset < file_end || store.streaming_layer(layer))
                {
                    store.prefetch(layer, k + 1);
                }
            }
        };
        if inline.is_some() {
            return serve(inline, buf);
        }
        let job: Job = Box::new(move || serve(None, buf));
        if let Err(e) = self.jobs.lock().expect("job queue").send(job) {
            // The pool is gone (shutting down): run the read here.
            (e.0)();
        }
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.seq.lock().expect("seq lock").remove(&fh.0);
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.tree().inode(ino.0).map(|i| i.kind()) {
            // Under no-opendir the kernel caches listings (FOPEN_CACHE_DIR is
            // its default then).
            Some(Kind::Dir) if self.no_opendir => reply.error(Errno::ENOSYS),
            Some(Kind::Dir) => reply.opened(
                FileHandle(0),
                if self.caps.cache_dir {
                    FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_CACHE_DIR
                } else {
                    FopenFlags::empty()
                },
            ),
            Some(_) => reply.error(Errno::ENOTDIR),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let Some(entries) = dir_entries(self.tree(), ino.0, offset) else {
            return reply.error(Errno::ENOENT);
        };
        for (off, child, name) in entries {
            let kind = self.attr(child).map_or(FileType::RegularFile, |a| a.kind);
            if reply.add(INodeNo(child), off + 1, kind, OsStr::from_bytes(name)) {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let Some(entries) = dir_entries(self.tree(), ino.0, offset) else {
            return reply.error(Errno::ENOENT);
        };
        for (off, child, name) in entries {
            let Some(a) = self.attr(child) else { continue };
            if reply.add(
                INodeNo(child),
                off + 1,
                OsStr::from_bytes(name),
                &TTL,
                &a,
                Generation(0),
            ) {
                break;
            }
        }
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let files = self.tree().inodes.len() as u64;
        reply.statfs(
            self.file_bytes.div_ceil(BLOCK as u64),
            0,
            0,
            files,
            0,
            BLOCK,
            255,
            BLOCK,
        );
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let tree = self.tree();
        if tree.inode(ino.0).is_none() {
            return reply.error(Errno::ENOENT);
        }
        let found = tree
            .xattrs_of(ino.0)
            .into_iter()
            .find(|(n, _)| *n == name.as_bytes())
            .map(|(_, v)| v);
        match found {
            None => reply.error(Errno::ENODATA),
            Some(v) if size == 0 => reply.size(v.len() as u32),
            Some(v) if (size as usize) < v.len() => reply.error(Errno::ERANGE),
            Some(v) => reply.data(v),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let tree = self.tree();
        if tree.inode(ino.0).is_none() {
            return reply.error(Errno::ENOENT);
        }
        let mut names = Vec::new();
        for (n, _) in tree.xattrs_of(ino.0) {
            names.extend_from_slice(n);
            names.push(0);
        }
        if size == 0 {
            reply.size(names.len() as u32)
        } else if (size as usize) < names.len() {
            reply.error(Errno::ERANGE)
        } else {
            reply.data(&names)
        }
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        if self.tree().inode(ino.0).is_none() {
            return reply.error(Errno::ENOENT);
        }
        if mask.contains(AccessFlags::W_OK) {
            return reply.error(Errno::EROFS);
        }
        // The kernel checks permissions itself (default_permissions).
        reply.ok();
    }
}

/// Seconds since the epoch of `t`, for tests and tools.
pub fn epoch_secs(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    }
}
