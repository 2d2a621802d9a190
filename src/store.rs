//! The content store: serves byte ranges of layers through an on-disk cache of
//! decoded, verified spans shared by every mount and process on the machine.
//!
//! - **Content-addressed.** A span is cached as `spans/<h[0..2]>/<h>` where `h` is
//!   the BLAKE3 hash the archive records for it: identical spans of different images
//!   share one file, and a file's name is its own checksum.
//! - **Atomic.** A span is written to a temporary file in the cache and renamed into
//!   place, so a crash (even SIGKILL) never leaves a partial span under a real name;
//!   stale temporary files are removed at start-up.
//! - **Verified.** The first use of a cached file in a process hashes it; a corrupted
//!   file is deleted and the span fetched again. Freshly decoded spans are verified
//!   by the decoder.
//! - **One fetch per span.** Concurrent readers of a span wait for a single fetch.
//! - **Bounded.** Past `max_bytes`, least recently used spans (by file mtime, which
//!   readers bump) are evicted; and the cache never takes the file system below
//!   `min_free_bytes` of free space: it evicts to stay above it, and serves spans
//!   from memory instead of caching them while it cannot.
//! - **Tiered.** With a shared content tier ([`crate::tier`]), a span missing here
//!   is read from the tier (bounded wait, verified) before the layer source; a
//!   layer the tier lacks is stored there in the background once a read had to go
//!   to the source ([`crate::tier::TierOptions::warm`]).
//! - **Prepared.** [`Store::prepare`] fetches every span of every layer ahead of use.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::error::{Error, IoContext, Result};
use crate::image::Image;
use crate::profile::{Profile, Recorder};
use crate::tier::{Outcome, Tier, TierError};
use crate::trace::{self, ReadEvent, ReadInfo, ReadObserver};

/// Default cache size limit: 10 GiB.
pub const DEFAULT_MAX_BYTES: u64 = 10 << 30;
/// The default free-space floor is this fraction (percent) of the file system...
pub const DEFAULT_MIN_FREE_PERCENT: u64 = 10;
/// ...but at most this much: 16 GiB.
pub const DEFAULT_MIN_FREE_CAP: u64 = 16 << 30;
/// Whether `path` is a span file being written (`.tmp-*`, renamed into place
/// once complete).
fn is_temporary(path: &Path) -> bool {
    path.file_name()
        .is_some_and(|n| n.as_encoded_bytes().starts_with(b".tmp-"))
}

/// The cache's size is looked at after this many bytes are written to it (a
/// look lists every span file), or after an eighth of its limit if less.
const EVICT_CHECK_BYTES: u64 = 64 << 20;
/// After the tier said it lacks a layer, it is asked again after this long.
const ABSENT_RECHECK: Duration = Duration::from_secs(60);

/// How a store caches (see [`Store::with_options`]).
#[derive(Clone, Default)]
pub struct StoreOptions {
    /// Size limit of the span cache (0: [`DEFAULT_MAX_BYTES`]).
    pub max_bytes: u64,
    /// Free space the cache leaves on its file system (0: 10% of it, at most
    /// 16 GiB; `u64::MAX` would mean "never write").
    pub min_free_bytes: u64,
    /// The shared content tier, if any (used for index-only archives only).
    pub tier: Option<Arc<Tier>>,
    /// Told of span work (see [`crate::trace`]).
    pub observer: Option<ReadObserver>,
}

impl std::fmt::Debug for StoreOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreOptions")
            .field("max_bytes", &self.max_bytes)
            .field("min_free_bytes", &self.min_free_bytes)
            .field("tier", &self.tier)
            .field("observer", &self.observer.as_ref().map(|_| "<fn>"))
            .finish()
    }
}

/// What the store knows of a layer in the content tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TierState {
    /// Not asked yet.
    Unknown,
    /// The tier cannot tell (no exists-with-size): reads are tried.
    Unknowable,
    /// The tier holds it.
    Present,
    /// The tier lacks it (as of then).
    Absent(std::time::Instant),
    /// Being stored into the tier by this process.
    Warming,
}

/// What asking the tier for a span gave.
enum TierRead {
    /// Verified bytes.
    Hit(Vec<u8>),
    /// Asked, not delivered: the source serves (`fallback`).
    Fallback,
    /// Not asked (no tier, not an index-only archive, layer known absent).
    NotAsked,
}

/// Progress of [`Store::prepare`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct PrepareProgress {
    /// Layers done.
    pub completed: usize,
    /// Layers in the image.
    pub total: usize,
    /// Uncompressed bytes of the layers done.
    pub bytes: u64,
}

/// Counters of the store's work.
#[derive(Debug, Default)]
struct Counters {
    reads: AtomicU64,
    bytes_read: AtomicU64,
    disk_hits: AtomicU64,
    fetches: AtomicU64,
    fetch_waits: AtomicU64,
    corrupt: AtomicU64,
    evicted: AtomicU64,
    prefetches: AtomicU64,
    tier_hits: AtomicU64,
    tier_bytes: AtomicU64,
    tier_misses: AtomicU64,
    tier_errors: AtomicU64,
    tier_stores: AtomicU64,
    uncached: AtomicU64,
    replayed: AtomicU64,
    replay_left: AtomicU64,
}

/// A snapshot of the store's counters (plus the decoder's, from [`Image`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct StoreStats {
    /// Read requests served.
    pub reads: u64,
    /// Bytes served.
    pub bytes_read: u64,
    /// Spans found in the disk cache (first use in this process).
    pub disk_hits: u64,
    /// Spans fetched from a layer source and decoded.
    pub fetches: u64,
    /// Readers that waited for another reader's fetch of the same span.
    pub fetch_waits: u64,
    /// Cached spans that failed verification and were fetched again.
    pub corrupt: u64,
    /// Spans evicted to stay under the size limit.
    pub evicted: u64,
    /// Read-ahead fetches started.
    pub prefetches: u64,
    /// Spans read from the content tier (verified).
    pub tier_hits: u64,
    /// Bytes read from the content tier.
    pub tier_bytes: u64,
    /// Tier reads and look-ups that found nothing.
    pub tier_misses: u64,
    /// Tier calls that failed, timed out, were skipped, or gave bad bytes.
    pub tier_errors: u64,
    /// Layers this store put into the content tier.
    pub tier_stores: u64,
    /// Spans served from memory without caching them (the disk was too full).
    pub uncached: u64,
    /// Spans a startup profile's replay fetched ahead of the workload (those
    /// already cached or in flight when it got to them not counted).
    pub replayed: u64,
    /// Spans of the startup profile's replay not yet handled (0 when it is done,
    /// or none runs).
    pub replay_left: u64,
    /// Spans decoded (from the image's counters).
    pub spans_decoded: u64,
    /// Uncompressed bytes produced by decoders.
    pub bytes_decoded: u64,
    /// Compressed bytes read from layer sources.
    pub compressed_bytes_read: u64,
}

/// Where a fetched span's bytes are.
#[derive(Clone)]
enum Span {
    /// In its cache file, open: readable even if the file is evicted before the
    /// reader gets to it (a small cache under many concurrent fetches).
    File(SpanFile),
    /// In memory, the cache file not written (the disk too full, or a write
    /// failed).
    Memory(Arc<Vec<u8>>),
}

/// The outcome of a fetch: the span's bytes, and where they came from.
type Fetched = (Span, ReadInfo);

#[derive(Default)]
struct Flight {
    done: Mutex<Option<std::result::Result<Fetched, String>>>,
    cv: Condvar,
}

/// An open, verified span file.
type SpanFile = Arc<File>;

/// Where the reads of a layer have got to, to tell a reader streaming the tree in
/// layer order (tar order is directory order) from one reading here and there.
#[derive(Clone, Copy)]
struct Progress {
    /// The end of the farthest read of the stream.
    end: u64,
    /// The span it ended in.
    span: usize,
    /// Steps from one span to the next the stream made.
    run: u32,
}

/// How far before the end of the reads so far a read may start and still be
/// part of their stream: the kernel's concurrent read-ahead of a file reaches
/// the mount out of order.
const STREAM_BACK: u64 = 1 << 20;
/// How far after it: the tar headers between files, and file data a whole-tree
/// reader never asks for (hard links, files an upper layer replaced). A program
/// faulting pages of a mapped library jumps farther.
const STREAM_GAP: u64 = 512 << 10;

/// The most spans fetched ahead of a stream (at 2 MiB spans, 8 MiB): more cores
/// than that serve other readers; a machine runs many containers.
const MAX_READ_AHEAD: usize = 4;

/// Spans fetched ahead of a stream: one per core, from 2 to [`MAX_READ_AHEAD`].
fn read_ahead() -> usize {
    static N: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *N.get_or_init(|| {
        std::thread::available_parallelism()
            .map_or(2, |p| p.get())
            .clamp(2, MAX_READ_AHEAD)
    })
}

/// Checkpoint groups (layer, first span) with a decoding pass running, and the
/// condvar readers waiting for one of those passes use.
type Streaming = (Mutex<HashSet<(usize, usize)>>, Condvar);

/// The content store of one image (the disk cache itself is shared).
pub struct Store {
    image: Arc<Image>,
    /// The cache directory (`dir` is its `spans/`).
    root: PathBuf,
    dir: PathBuf,
    max_bytes: u64,
    min_free_bytes: u64,
    /// Whether the file system is below the free-space floor, and when that was
    /// last looked at.
    low_space: Mutex<SpaceCheck>,
    tier: Option<Arc<Tier>>,
    tier_state: Mutex<Vec<TierState>>,
    /// Layers whose store into the tier failed.
    warm_failed: Mutex<HashSet<usize>>,
    observer: Option<ReadObserver>,
    /// Background work running: stores into the tier, checkpoint groups
    /// decoded ahead.
    warming: Arc<(Mutex<usize>, Condvar)>,
    /// Checkpoint groups (layer, first span) with a decoding pass running
    /// ([`Store::stream_group`]), and the condvar their waiting readers use.
    streaming: Arc<Streaming>,
    inflight: Mutex<HashMap<[u8; 32], Arc<Flight>>>,
    open: Mutex<HashMap<[u8; 32], SpanFile>>,
    verified: Mutex<HashSet<[u8; 32]>>,
    added: AtomicU64,
    counters: Counters,
    /// Per layer, how far the reads have got in layer order ([`Progress`]).
    last_span: Mutex<HashMap<usize, Progress>>,
    /// A weak handle on itself, for background prefetches.
    me: Mutex<std::sync::Weak<Store>>,
    /// The spans reads touched, once a startup profile is being recorded (set
    /// at most once: the look on every read is a load, no lock).
    recorder: std::sync::OnceLock<Mutex<Recorder>>,
}

impl Store {
    /// A store for `image` caching under `dir` (created), at most `max_bytes`.
    pub fn new(image: Arc<Image>, dir: &Path, max_bytes: u64) -> Result<Arc<Store>> {
        Store::with_options(
            image,
            dir,
            StoreOptions {
                max_bytes,
                ..StoreOptions::default()
            },
        )
    }

    /// A store for `image` caching under `dir` (created), as `opts` say.
    pub fn with_options(image: Arc<Image>, dir: &Path, opts: StoreOptions) -> Result<Arc<Store>> {
        let spans = dir.join("spans");
        fs::create_dir_all(&spans).ctx("creating cache directory", &spans)?;
        let layers = image.archive().layers.len();
        // The tier holds uncompressed layers of registry images, keyed by diff id.
        let tier = opts
            .tier
            .filter(|_| image.archive().storage_kind() == crate::archive::STORAGE_OCI);
        let min_free_bytes = match opts.min_free_bytes {
            0 => default_min_free(dir),
            n => n,
        };
        let store = Store {
            image,
            root: dir.to_path_buf(),
            dir: spans,
            max_bytes: if opts.max_bytes == 0 {
                DEFAULT_MAX_BYTES
            } else {
                opts.max_bytes
            },
            min_free_bytes,
            low_space: Mutex::new(SpaceCheck::default()),
            tier,
            tier_state: Mutex::new(vec![TierState::Unknown; layers]),
            warm_failed: Mutex::new(HashSet::new()),
            observer: opts.observer,
            warming: Arc::new((Mutex::new(0), Condvar::new())),
            streaming: Arc::new((Mutex::new(HashSet::new()), Condvar::new())),
            inflight: Mutex::new(HashMap::new()),
            open: Mutex::new(HashMap::new()),
            verified: Mutex::new(HashSet::new()),
            added: AtomicU64::new(0),
            counters: Counters::default(),
            last_span: Mutex::new(HashMap::new()),
            me: Mutex::new(std::sync::Weak::new()),
            recorder: std::sync::OnceLock::new(),
        };
        let store = Arc::new(store);
        *store.me.lock().expect("self lock") = Arc::downgrade(&store);
        // Sweeping the cache stats every span file (tens of ms on a cold disk):
        // keep it off the path to a live mount.
        let weak = Arc::downgrade(&store);
        std::thread::spawn(move || {
            if let Some(s) = weak.upgrade() {
                s.clean_temporaries();
            }
        });
        Ok(store)
    }

    /// The image this store serves.
    pub fn image(&self) -> &Arc<Image> {
        &self.image
    }

    /// The content tier in use, if any.
    pub fn tier(&self) -> Option<&Arc<Tier>> {
        self.tier.as_ref()
    }

    /// The counters so far.
    pub fn stats(&self) -> StoreStats {
        let c = &self.counters;
        let i = self.image.stats();
        StoreStats {
            reads: c.reads.load(Ordering::Relaxed),
            bytes_read: c.bytes_read.load(Ordering::Relaxed),
            disk_hits: c.disk_hits.load(Ordering::Relaxed),
            fetches: c.fetches.load(Ordering::Relaxed),
            fetch_waits: c.fetch_waits.load(Ordering::Relaxed),
            corrupt: c.corrupt.load(Ordering::Relaxed),
            evicted: c.evicted.load(Ordering::Relaxed),
            prefetches: c.prefetches.load(Ordering::Relaxed),
            tier_hits: c.tier_hits.load(Ordering::Relaxed),
            tier_bytes: c.tier_bytes.load(Ordering::Relaxed),
            tier_misses: c.tier_misses.load(Ordering::Relaxed),
            tier_errors: c.tier_errors.load(Ordering::Relaxed),
            tier_stores: c.tier_stores.load(Ordering::Relaxed),
            uncached: c.uncached.load(Ordering::Relaxed),
            replayed: c.replayed.load(Ordering::Relaxed),
            replay_left: c.replay_left.load(Ordering::Relaxed),
            spans_decoded: i.spans_decoded,
            bytes_decoded: i.bytes_decoded,
            compressed_bytes_read: i.compressed_bytes_read,
        }
    }

    fn span_path(&self, hash: &[u8; 32]) -> PathBuf {
        let h = hex::encode(hash);
        self.dir.join(&h[..2]).join(h)
    }

    /// Removes temporary files left by crashed writers (older than a minute, so
    /// writes in progress in other processes are left alone; staged layers, and
    /// the links a caller's store made to them, after a day).
    fn clean_temporaries(&self) {
        if let Ok(top) = fs::read_dir(&self.root) {
            for e in top.flatten() {
                let staged = e.file_name().to_string_lossy().starts_with(".tmp-layer-");
                let old = e
                    .metadata()
                    .ok()
                    .and_then(|m| m.modified().ok())
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age > Duration::from_secs(24 * 3600));
                if staged && old {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        for (path, meta) in self.files() {
            let old = meta
                .modified()
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > Duration::from_secs(60));
            if is_temporary(&path) && old {
                let _ = fs::remove_file(&path);
            }
        }
    }

    /// Every file in the cache (`spans/<xx>/<name>`) with its metadata.
    fn files(&self) -> Vec<(PathBuf, fs::Metadata)> {
        let mut out = Vec::new();
        let Ok(top) = fs::read_dir(&self.dir) else {
            return out;
        };
        for sub in top.flatten() {
            let Ok(entries) = fs::read_dir(sub.path()) else {
                continue;
            };
            for e in entries.flatten() {
                if let Ok(m) = e.metadata() {
                    out.push((e.path(), m));
                }
            }
        }
        out
    }

    /// Reads uncompressed bytes of layer `layer` at `off` into `buf`; says where
    /// they came from.
    pub fn read_layer(&self, layer: usize, off: u64, buf: &mut [u8]) -> Result<ReadInfo> {
        self.counters.reads.fetch_add(1, Ordering::Relaxed);
        self.counters
            .bytes_read
            .fetch_add(buf.len() as u64, Ordering::Relaxed);
        let mut info = ReadInfo::default();
        if buf.is_empty() {
            return Ok(info);
        }
        let codec = &self.image.archive().layers[layer].codec;
        let end = off + buf.len() as u64;
        let (Some(first), Some(last)) = (codec.span_at(off), codec.span_at(end - 1)) else {
            return Err(Error::format(format!(
                "read {off}..{end} lies outside layer {layer}"
            )));
        };
        self.note_read(layer, off, end, first, last);
        for k in first..=last {
            let (s, e) = codec.span_range(k);
            let lo = off.max(s);
            let hi = end.min(e);
            let dst = &mut buf[(lo - off) as usize..(hi - off) as usize];
            info = info.merge(self.read_span(layer, k, lo - s, dst)?);
        }
        Ok(info)
    }

    /// [`Store::read_layer`] if every span the range touches is open already (a
    /// verified cache file this store holds): the read then costs a `pread` of the
    /// page cache and nothing can make it wait on a fetch, so a FUSE thread can
    /// serve it at once instead of handing it to a read thread (two context
    /// switches per read, most of a cold whole-tree read's cost after decoding).
    /// `None` when a span is not open or its file cannot be read: take the usual
    /// path.
    pub fn read_layer_if_open(&self, layer: usize, off: u64, buf: &mut [u8]) -> Option<ReadInfo> {
        let codec = &self.image.archive().layers.get(layer)?.codec;
        let end = off.checked_add(buf.len() as u64)?;
        if buf.is_empty() {
            return None;
        }
        let (first, last) = (codec.span_at(off)?, codec.span_at(end - 1)?);
        let files: Vec<SpanFile> = {
            let open = self.open.lock().expect("open lock");
            (first..=last)
                .map(|k| open.get(&codec.spans[k].hash).cloned())
                .collect::<Option<_>>()?
        };
        for (k, f) in (first..=last).zip(&files) {
            let (s, e) = codec.span_range(k);
            let (lo, hi) = (off.max(s), end.min(e));
            f.read_exact_at(&mut buf[(lo - off) as usize..(hi - off) as usize], lo - s)
                .ok()?;
        }
        self.note_read(layer, off, end, first, last);
        self.counters.reads.fetch_add(1, Ordering::Relaxed);
        self.counters
            .bytes_read
            .fetch_add(buf.len() as u64, Ordering::Relaxed);
        Some(ReadInfo {
            tier: trace::Tier::Memory,
            fallback: false,
        })
    }

    /// Notes a read of `off..end` of `layer` (spans `first..=last`). A stream of
    /// reads that moves on in layer order (`tar`, `cp -r`, a scan) and has
    /// stepped into the next span twice in a row gets the spans after the one it
    /// reached decoded on the other cores ([`Store::prefetch_next`]). Once is not
    /// enough: a program loading files from one directory (python importing its standard library) steps
    /// into the next span now and then without reading on. Reads that jump (the
    /// page faults of a mapped library, spread over several spans) are no
    /// stream. A lone cold read still inflates exactly one span.
    fn note_read(&self, layer: usize, off: u64, end: u64, first: usize, last: usize) {
        if let Some(r) = self.recorder.get() {
            let mut r = r.lock().expect("recorder lock");
            for k in first..=last {
                r.note(layer, k);
            }
        }
        let stepped = {
            let mut all = self.last_span.lock().expect("last span lock");
            let prev = all.get(&layer).copied();
            let now = match prev {
                Some(p)
                    if off.saturating_add(STREAM_BACK) >= p.end
                        && off <= p.end.saturating_add(STREAM_GAP) =>
                {
                    let span = p.span.max(last);
                    Progress {
                        end: p.end.max(end),
                        span,
                        run: p.run.saturating_add((span - p.span) as u32),
                    }
                }
                _ => Progress {
                    end,
                    span: last,
                    run: 0,
                },
            };
            all.insert(layer, now);
            (now.run >= 2 && prev.is_some_and(|p| now.span > p.span)).then_some(now.span)
        };
        if let Some(k) = stepped {
            self.prefetch_next(layer, k);
        }
    }

    /// Whether the reads of `layer` have lately moved on from one span to the
    /// next in layer order (the sign of a reader streaming the tree).
    pub fn streaming_layer(&self, layer: usize) -> bool {
        let last = self.last_span.lock().expect("last span lock");
        last.get(&layer).is_some_and(|p| p.run >= 1)
    }

    /// Reads `dst.len()` bytes at `within` of span `k`.
    fn read_span(&self, layer: usize, k: usize, within: u64, dst: &mut [u8]) -> Result<ReadInfo> {
        let hash = self.image.archive().layers[layer].codec.spans[k].hash;
        for _ in 0..3 {
            if let Some((f, tier)) = self.cached_file(layer, k, &hash)? {
                if f.read_exact_at(dst, within).is_ok() {
                    return Ok(ReadInfo {
                        tier,
                        fallback: false,
                    });
                }
                // Evicted or replaced under us: forget it and fetch.
                self.forget(&hash);
            }
            match self.fetch(layer, k, hash)? {
                (Span::File(f), info) => {
                    if f.read_exact_at(dst, within).is_ok() {
                        return Ok(info);
                    }
                    self.forget(&hash);
                }
                (Span::Memory(data), info) => {
                    let w = within as usize;
                    dst.copy_from_slice(&data[w..w + dst.len()]);
                    return Ok(info);
                }
            }
        }
        Err(Error::format(format!(
            "span {k} of layer {layer} keeps disappearing from the cache"
        )))
    }

    fn forget(&self, hash: &[u8; 32]) {
        self.open.lock().expect("open lock").remove(hash);
        self.verified.lock().expect("verified lock").remove(hash);
    }

    /// The open, verified cache file of span `k` of `layer`, if the cache has a
    /// good one, and whether it was open already ([`trace::Tier::Memory`]) or just
    /// verified from disk ([`trace::Tier::Disk`]).
    fn cached_file(
        &self,
        layer: usize,
        k: usize,
        hash: &[u8; 32],
    ) -> Result<Option<(SpanFile, trace::Tier)>> {
        if let Some(f) = self.open.lock().expect("open lock").get(hash) {
            return Ok(Some((f.clone(), trace::Tier::Memory)));
        }
        let path = self.span_path(hash);
        let Ok(file) = File::open(&path) else {
            return Ok(None);
        };
        let verified = self.verified.lock().expect("verified lock").contains(hash);
        if !verified {
            let started = std::time::Instant::now();
            let data = fs::read(&path).unwrap_or_default();
            if blake3::hash(&data).as_bytes() != hash {
                tracing::warn!(path = %path.display(), "cached span failed verification; fetching it again");
                self.counters.corrupt.fetch_add(1, Ordering::Relaxed);
                let _ = fs::remove_file(&path);
                return Ok(None);
            }
            self.counters.disk_hits.fetch_add(1, Ordering::Relaxed);
            self.verified.lock().expect("verified lock").insert(*hash);
            // Bump the LRU clock shared with other processes.
            let _ = file.set_modified(SystemTime::now());
            self.span_event(
                trace::OP_DISK_CACHE_READ,
                layer,
                k,
                data.len() as u64,
                started,
                None,
                &[("cache_result", "hit"), ("cache_tier", "disk")],
            );
        }
        let file = Arc::new(file);
        self.keep_open(hash, &file);
        Ok(Some((file, trace::Tier::Memory)))
            .map(|o| o.map(|(f, t)| (f, if verified { t } else { trace::Tier::Disk })))
    }

    /// Keeps the verified cache file of span `hash` open for the reads after.
    fn keep_open(&self, hash: &[u8; 32], file: &SpanFile) {
        let mut open = self.open.lock().expect("open lock");
        if open.len() >= 512 {
            open.clear();
        }
        open.insert(*hash, file.clone());
    }

    /// Fetches, decodes, verifies and caches span `k`; concurrent callers for the
    /// same span share one fetch.
    fn fetch(&self, layer: usize, k: usize, hash: [u8; 32]) -> Result<Fetched> {
        let (flight, leader) = {
            let mut map = self.inflight.lock().expect("inflight lock");
            match map.get(&hash) {
                Some(f) => (f.clone(), false),
                None => {
                    let f = Arc::new(Flight::default());
                    map.insert(hash, f.clone());
                    (f, true)
                }
            }
        };
        if !leader {
            self.counters.fetch_waits.fetch_add(1, Ordering::Relaxed);
            let mut done = flight.done.lock().expect("flight lock");
            while done.is_none() {
                done = flight.cv.wait(done).expect("flight lock");
            }
            return done.as_ref().expect("set").clone().map_err(Error::Format);
        }
        // Another fetch of this span (a reader's, or a read-ahead started before
        // the span was cached) may have finished between the caller's look at the
        // cache and this flight: look again before fetching.
        let r = match self.cached_file(layer, k, &hash) {
            Ok(Some((f, tier))) => Ok((
                Span::File(f),
                ReadInfo {
                    tier,
                    fallback: false,
                },
            )),
            _ => self.fetch_to_file(layer, k, &hash, &flight),
        };
        // Written and verified: the next reads of it are served from the open file.
        if let Ok((Span::File(f), _)) = &r {
            self.keep_open(&hash, f);
        }
        self.land(
            &hash,
            &flight,
            r.as_ref().map(Clone::clone).map_err(|e| e.to_string()),
        );
        r
    }

    /// Ends the fetch `flight` of span `hash`: its waiters get `r`.
    fn land(&self, hash: &[u8; 32], flight: &Flight, r: std::result::Result<Fetched, String>) {
        *flight.done.lock().expect("flight lock") = Some(r);
        flight.cv.notify_all();
        self.inflight.lock().expect("inflight lock").remove(hash);
    }

    /// Span `k` from the content tier, else decoded from the layer source (then
    /// the layer is offered to the tier in the background).
    fn fetch_to_file(
        &self,
        layer: usize,
        k: usize,
        hash: &[u8; 32],
        flight: &Flight,
    ) -> Result<Fetched> {
        let mut info = ReadInfo {
            tier: trace::Tier::Source,
            fallback: false,
        };
        match self.read_tier(layer, k, hash) {
            TierRead::Hit(data) => {
                let info = ReadInfo {
                    tier: trace::Tier::ContentCache,
                    fallback: false,
                };
                return Ok((self.persist(hash, data), info));
            }
            TierRead::Fallback => info.fallback = true,
            TierRead::NotAsked => {}
        }
        let (first, last) = self.checkpoint_group(layer, k);
        if first < last && !self.low_on_space(0) {
            let r = self.stream_group(layer, k, (first, last), flight);
            self.maybe_warm(layer, self.warm_delay());
            return Ok((r?, info));
        }
        self.counters.fetches.fetch_add(1, Ordering::Relaxed);
        let started = std::time::Instant::now();
        let r = self.decode_to_file(layer, k, hash);
        let (s, e) = self.image.archive().layers[layer].codec.span_range(k);
        let fallback = if info.fallback { "true" } else { "false" };
        self.span_event(
            trace::OP_CHECKPOINT_READ,
            layer,
            k,
            if r.is_ok() { e - s } else { 0 },
            started,
            r.as_ref().err(),
            &[
                ("cache_result", "miss"),
                ("cache_tier", "source"),
                ("fallback", fallback),
            ],
        );
        let data = r?;
        self.maybe_warm(layer, self.warm_delay());
        Ok((data, info))
    }

    /// How long after a source read a layer is offered to the tier.
    fn warm_delay(&self) -> Duration {
        self.tier
            .as_ref()
            .map_or(Duration::ZERO, |t| t.options().warm_delay)
    }

    /// The spans sharing span `k`'s checkpoint, `first..=last`: decoding span
    /// `k` inflates every span of the group before it (for a single-frame zstd
    /// layer, the whole layer before it).
    fn checkpoint_group(&self, layer: usize, k: usize) -> (usize, usize) {
        let spans = &self.image.archive().layers[layer].codec.spans;
        let cp = spans[k].checkpoint;
        let first = spans[..k]
            .iter()
            .rposition(|s| s.checkpoint != cp)
            .map_or(0, |i| i + 1);
        let last = spans[k + 1..]
            .iter()
            .position(|s| s.checkpoint != cp)
            .map_or(spans.len() - 1, |i| k + i);
        (first, last)
    }

    /// Span `k` of a checkpoint group `first..=last` of more than one span, for
    /// the leader of its `flight`. The group is decoded in one pass from its
    /// checkpoint on a background thread, and every span on the way is verified
    /// and cached: the spans before `k` (which decoding `k` inflates anyway), and
    /// after `k` is handed back, the rest of the group, ahead of use. While a pass
    /// runs, a reader of another span of the group waits for the pass to reach
    /// it instead of starting another from the checkpoint: a single-frame zstd
    /// layer is decoded once, not once per span read (quadratic in its size).
    fn stream_group(
        &self,
        layer: usize,
        k: usize,
        (first, last): (usize, usize),
        flight: &Flight,
    ) -> Result<Span> {
        let group = (layer, first);
        {
            let mut running = self.streaming.0.lock().expect("streaming lock");
            loop {
                if let Some(r) = &*flight.done.lock().expect("flight lock") {
                    return r.clone().map(|(s, _)| s).map_err(Error::Format);
                }
                if running.insert(group) {
                    break;
                }
                // Another pass is on its way: it lands this flight when it gets
                // to span k, or this reader takes over if it ends first.
                running = self.streaming.1.wait(running).expect("streaming lock");
            }
        }
        // A pass that ended just before this one was started may have cached the
        // span after this reader's look at the cache.
        let hash = self.image.archive().layers[layer].codec.spans[k].hash;
        if let Ok(Some((file, _))) = self.cached_file(layer, k, &hash) {
            end_stream(&self.streaming, group);
            return Ok(Span::File(file));
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let job = GroupJob {
            store: self.me.lock().expect("self lock").clone(),
            image: self.image.clone(),
            streaming: self.streaming.clone(),
            background: self.warming.clone(),
            layer,
            k,
            first,
            last,
            tx,
        };
        *self.warming.0.lock().expect("warming lock") += 1;
        // If no thread can be started, the group is decoded here (the caller
        // waits for all of it, but nothing is decoded twice).
        let slot = Arc::new(Mutex::new(Some(job)));
        let theirs = slot.clone();
        let spawned = std::thread::Builder::new()
            .name("clip-stream".into())
            .spawn(move || {
                if let Some(job) = theirs.lock().expect("job lock").take() {
                    job.run();
                }
            });
        if spawned.is_err()
            && let Some(job) = slot.lock().expect("job lock").take()
        {
            job.run();
        }
        rx.recv().unwrap_or_else(|_| {
            Err(Error::format(format!(
                "decoding span {k} of layer {layer} stopped"
            )))
        })
    }

    /// Decodes span `k` straight into a temporary file in the cache (no span-sized
    /// buffer) and renames it into place. If the cache cannot (or must not, the
    /// disk being too full) be written, the span is decoded into memory instead, so
    /// reads never fail for a full disk.
    fn decode_to_file(&self, layer: usize, k: usize, hash: &[u8; 32]) -> Result<Span> {
        let (s, e) = self.image.archive().layers[layer].codec.span_range(k);
        if self.low_on_space(e - s) {
            self.counters.uncached.fetch_add(1, Ordering::Relaxed);
            return Ok(Span::Memory(Arc::new(self.image.decode_span(layer, k)?)));
        }
        let path = self.span_path(hash);
        let dir = path.parent().expect("has a parent");
        let mut write_failed: Option<Error> = None;
        let tmp = fs::create_dir_all(dir)
            .and_then(|_| tempfile::Builder::new().prefix(".tmp-").tempfile_in(dir))
            .map_err(|e| Error::io("creating a span file in", dir, e));
        if let Ok(tmp) = tmp {
            let mut w = std::io::BufWriter::with_capacity(64 << 10, tmp.as_file());
            // Bad span data is fetched again (Image::refetching), each pass
            // writing the file from its start.
            let decoded = self.image.refetching(|| {
                if write_failed.is_some() {
                    return Ok(()); // reported below
                }
                w.flush()
                    .and_then(|_| w.get_ref().set_len(0))
                    .and_then(|_| {
                        let mut f: &File = w.get_ref();
                        std::io::Seek::rewind(&mut f)
                    })
                    .map_err(|e| Error::io("writing", tmp.path(), e))?;
                self.image.decode_spans(layer, k, k, &mut |_, d| {
                    w.write_all(d).map_err(|e| {
                        let err = Error::io("writing", tmp.path(), e);
                        write_failed = Some(Error::io(
                            "writing",
                            tmp.path(),
                            std::io::Error::other(err.to_string()),
                        ));
                        err
                    })
                })
            });
            match (decoded, write_failed.take()) {
                (Ok(()), None) => {
                    w.flush().ctx("writing", tmp.path())?;
                    drop(w);
                    let len = tmp.as_file().metadata().map(|m| m.len()).unwrap_or(0);
                    match tmp.persist(&path) {
                        Ok(file) => {
                            self.verified.lock().expect("verified lock").insert(*hash);
                            self.account(len);
                            return Ok(Span::File(Arc::new(file)));
                        }
                        Err(e) => {
                            tracing::warn!("cannot cache span at {}: {}", path.display(), e.error)
                        }
                    }
                }
                (Err(e), None) => return Err(e),
                (_, Some(e)) => tracing::warn!("cannot cache span: {e}"),
            }
        } else if let Err(e) = tmp {
            tracing::warn!("cannot cache span: {e}");
        }
        Ok(Span::Memory(Arc::new(self.image.decode_span(layer, k)?)))
    }

    /// Writes verified span bytes into the cache (temporary file and rename);
    /// the cache file once written, else the bytes (to serve from memory).
    fn persist(&self, hash: &[u8; 32], data: Vec<u8>) -> Span {
        if self.low_on_space(data.len() as u64) {
            self.counters.uncached.fetch_add(1, Ordering::Relaxed);
            return Span::Memory(Arc::new(data));
        }
        let path = self.span_path(hash);
        let dir = path.parent().expect("has a parent");
        let written = fs::create_dir_all(dir)
            .and_then(|_| tempfile::Builder::new().prefix(".tmp-").tempfile_in(dir))
            .and_then(|mut tmp| {
                tmp.write_all(&data)?;
                tmp.persist(&path).map_err(|e| e.error)
            });
        match written {
            Ok(file) => {
                self.verified.lock().expect("verified lock").insert(*hash);
                self.account(data.len() as u64);
                Span::File(Arc::new(file))
            }
            Err(e) => {
                tracing::warn!("cannot cache span at {}: {e}", path.display());
                Span::Memory(Arc::new(data))
            }
        }
    }

    /// The tier key of `layer`: the bare hex of its diff id.
    fn tier_key(&self, layer: usize) -> String {
        self.image.archive().layers[layer].diff_id.hex()
    }

    fn set_tier_state(&self, layer: usize, s: TierState) {
        self.tier_state.lock().expect("tier state lock")[layer] = s;
    }

    /// Asks the content tier for span `k` of `layer` (see [`TierRead`]).
    fn read_tier(&self, layer: usize, k: usize, hash: &[u8; 32]) -> TierRead {
        let Some(tier) = &self.tier else {
            return TierRead::NotAsked;
        };
        let l = &self.image.archive().layers[layer];
        let size = l.codec.uncompressed_size;
        let key = self.tier_key(layer);
        let state = self.tier_state.lock().expect("tier state lock")[layer];
        let started = std::time::Instant::now();
        let event = |result: &str, bytes: u64, err: Option<&Error>| {
            self.span_event(
                trace::OP_CONTENT_CACHE_READ,
                layer,
                k,
                bytes,
                started,
                err,
                &[
                    ("content_cache_result", result),
                    (
                        "content_cache_available",
                        if tier.available() { "true" } else { "false" },
                    ),
                    ("content_hash", &key),
                    ("cache_tier", "content_cache"),
                ],
            );
        };
        match state {
            TierState::Absent(at) if at.elapsed() < ABSENT_RECHECK => return TierRead::NotAsked,
            TierState::Absent(_) | TierState::Unknown => match tier.exists(&key, size) {
                Outcome::Done(Some(true)) => self.set_tier_state(layer, TierState::Present),
                Outcome::Done(Some(false)) => {
                    self.counters.tier_misses.fetch_add(1, Ordering::Relaxed);
                    self.set_tier_state(layer, TierState::Absent(std::time::Instant::now()));
                    event("miss", 0, None);
                    return TierRead::NotAsked;
                }
                Outcome::Done(None) => self.set_tier_state(layer, TierState::Unknowable),
                Outcome::Error(TierError::Miss) => {
                    self.counters.tier_misses.fetch_add(1, Ordering::Relaxed);
                    self.set_tier_state(layer, TierState::Absent(std::time::Instant::now()));
                    event("miss", 0, None);
                    return TierRead::NotAsked;
                }
                other => {
                    self.counters.tier_errors.fetch_add(1, Ordering::Relaxed);
                    event(outcome_name(&other), 0, None);
                    return TierRead::Fallback;
                }
            },
            // Being stored by this process: not there yet.
            TierState::Warming => return TierRead::NotAsked,
            TierState::Present | TierState::Unknowable => {}
        }
        let (s, e) = l.codec.span_range(k);
        match tier.read(&key, s, (e - s) as usize) {
            Outcome::Done(data) if blake3::hash(&data).as_bytes() == hash => {
                self.counters.tier_hits.fetch_add(1, Ordering::Relaxed);
                self.counters
                    .tier_bytes
                    .fetch_add(data.len() as u64, Ordering::Relaxed);
                event("hit", data.len() as u64, None);
                TierRead::Hit(data)
            }
            Outcome::Done(_) => {
                let err = Error::DigestMismatch {
                    what: format!(
                        "span {k} of layer {} read from content tier {}",
                        l.digest,
                        tier.describe()
                    ),
                    expected: hex::encode(hash),
                    actual: "other bytes".into(),
                };
                tracing::warn!("{err}; reading the layer source instead");
                self.counters.tier_errors.fetch_add(1, Ordering::Relaxed);
                event("error", 0, Some(&err));
                TierRead::Fallback
            }
            Outcome::Error(TierError::Miss) => {
                self.counters.tier_misses.fetch_add(1, Ordering::Relaxed);
                self.set_tier_state(layer, TierState::Absent(std::time::Instant::now()));
                event("miss", 0, None);
                TierRead::Fallback
            }
            other => {
                self.counters.tier_errors.fetch_add(1, Ordering::Relaxed);
                event(outcome_name(&other), 0, None);
                TierRead::Fallback
            }
        }
    }

    /// After a span of `layer` came from the source: if the tier lacks the layer,
    /// store it there in the background after `delay` (once per layer; one layer
    /// at a time per process).
    fn maybe_warm(&self, layer: usize, delay: Duration) {
        let Some(tier) = &self.tier else { return };
        if !tier.options().warm {
            return;
        }
        {
            let mut st = self.tier_state.lock().expect("tier state lock");
            // A layer whose store failed is not tried again by this store: each try
            // fetches the whole layer.
            if self
                .warm_failed
                .lock()
                .expect("warm failed lock")
                .contains(&layer)
            {
                return;
            }
            match st[layer] {
                TierState::Absent(_) | TierState::Unknowable => st[layer] = TierState::Warming,
                _ => return,
            }
        }
        let Some(me) = self.me.lock().expect("self lock").upgrade() else {
            return;
        };
        *self.warming.0.lock().expect("warming lock") += 1;
        std::thread::spawn(move || {
            std::thread::sleep(delay);
            static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
            let r = {
                let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
                me.warm_layer(layer)
            };
            match r {
                Ok(stored) => {
                    me.set_tier_state(layer, TierState::Present);
                    if stored {
                        me.counters.tier_stores.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Err(e) => {
                    tracing::warn!(
                        "cannot store layer {} in the content tier (not tried again by this mount): {e}",
                        me.image.archive().layers[layer].digest
                    );
                    me.warm_failed
                        .lock()
                        .expect("warm failed lock")
                        .insert(layer);
                    me.set_tier_state(layer, TierState::Absent(std::time::Instant::now()));
                }
            }
            let (n, cv) = &*me.warming;
            *n.lock().expect("warming lock") -= 1;
            cv.notify_all();
        });
    }

    /// Waits until background work (stores into the tier, checkpoint groups
    /// decoded ahead) has finished, at most `timeout`; whether it did.
    pub fn wait_background(&self, timeout: Duration) -> bool {
        let (n, cv) = &*self.warming;
        let deadline = std::time::Instant::now() + timeout;
        let mut g = n.lock().expect("warming lock");
        while *g > 0 {
            let now = std::time::Instant::now();
            if now >= deadline {
                return false;
            }
            g = cv.wait_timeout(g, deadline - now).expect("warming lock").0;
        }
        true
    }

    /// Writes uncompressed `layer` to a temporary file (spans in the cache are
    /// copied, runs of the others decoded from the source in one pass each),
    /// checks its sha256 against the diff id and stores it in the tier. `false`
    /// if the tier had it meanwhile.
    fn warm_layer(&self, layer: usize) -> Result<bool> {
        let tier = self.tier.as_ref().expect("a tier");
        let l = &self.image.archive().layers[layer];
        let key = self.tier_key(layer);
        let size = l.codec.uncompressed_size;
        if let Outcome::Done(Some(true)) = tier.exists(&key, size) {
            return Ok(false);
        }
        let free = free_bytes(&self.root).unwrap_or(u64::MAX);
        if free < size.saturating_add(self.min_free_bytes) {
            return Err(Error::Invalid(format!(
                "{} has {free} bytes free: too little to stage the {size}-byte layer",
                self.root.display()
            )));
        }
        let started = std::time::Instant::now();
        let mut tmp = tempfile::Builder::new()
            .prefix(".tmp-layer-")
            .tempfile_in(&self.root)
            .map_err(|e| Error::io("creating a file in", &self.root, e))?;
        let mut hasher = crate::digest::Hasher::new();
        {
            let mut w = std::io::BufWriter::with_capacity(1 << 20, tmp.as_file_mut());
            let mut put = |d: &[u8]| -> Result<()> {
                hasher.update(d);
                w.write_all(d)
                    .map_err(|e| Error::io("writing", &self.root, e))
            };
            self.for_each_span_bytes(layer, &mut put)?;
            w.flush().map_err(|e| Error::io("writing", &self.root, e))?;
        }
        let got = hasher.finish();
        if got != l.diff_id {
            return Err(Error::DigestMismatch {
                what: format!("uncompressed layer {} (diff id)", l.digest),
                expected: l.diff_id.to_string(),
                actual: got.to_string(),
            });
        }
        let stored = tier
            .store_file(&key, tmp.path())
            .map_err(|e| Error::Network(format!("content tier {}: {e}", tier.describe())));
        self.layer_event(layer, size, started, stored.as_ref().err());
        stored?;
        Ok(true)
    }

    /// Hands out the whole uncompressed layer in order: cached spans from the
    /// cache, runs of uncached ones decoded from the source (verified).
    fn for_each_span_bytes(
        &self,
        layer: usize,
        put: &mut dyn FnMut(&[u8]) -> Result<()>,
    ) -> Result<()> {
        let codec = &self.image.archive().layers[layer].codec;
        let n = codec.spans.len();
        let mut k = 0;
        while k < n {
            let hash = codec.spans[k].hash;
            if let Ok(data) = fs::read(self.span_path(&hash))
                && blake3::hash(&data).as_bytes() == &hash
            {
                put(&data)?;
                k += 1;
                continue;
            }
            let mut j = k;
            while j + 1 < n && !self.span_path(&codec.spans[j + 1].hash).exists() {
                j += 1;
            }
            self.image.decode_spans(layer, k, j, &mut |_, d| put(d))?;
            k = j + 1;
        }
        Ok(())
    }

    /// Tells the observer of span work.
    #[allow(clippy::too_many_arguments)]
    fn span_event(
        &self,
        op: &str,
        layer: usize,
        k: usize,
        bytes: u64,
        started: std::time::Instant,
        error: Option<&Error>,
        attrs: &[(&str, &str)],
    ) {
        let Some(o) = &self.observer else { return };
        let l = &self.image.archive().layers[layer];
        let (s, e) = l.codec.span_range(k);
        o(&ReadEvent {
            operation: op,
            path: b"",
            offset: s,
            length: e - s,
            bytes_read: bytes,
            duration: started.elapsed(),
            pid: 0,
            layer_digest: &l.digest,
            decompressed_hash: &l.diff_id,
            error,
            attrs,
        });
    }

    fn layer_event(
        &self,
        layer: usize,
        size: u64,
        started: std::time::Instant,
        error: Option<&Error>,
    ) {
        let Some(o) = &self.observer else { return };
        let l = &self.image.archive().layers[layer];
        o(&ReadEvent {
            operation: trace::OP_LAYER_DECOMPRESS,
            path: b"",
            offset: 0,
            length: size,
            bytes_read: if error.is_none() { size } else { 0 },
            duration: started.elapsed(),
            pid: 0,
            layer_digest: &l.digest,
            decompressed_hash: &l.diff_id,
            error,
            attrs: &[
                ("content_cache_warm", "true"),
                ("content_hash", &l.diff_id.hex()),
            ],
        });
    }

    /// Whether writing `len` more bytes would take the cache's file system below
    /// its free-space floor. The file system is looked at once a second, or
    /// sooner when the writes since would use up the headroom seen then.
    fn low_on_space(&self, len: u64) -> bool {
        let mut g = self.low_space.lock().expect("low space lock");
        if let Some(at) = g.at
            && at.elapsed() < Duration::from_secs(1)
            && (g.low || g.headroom >= len)
        {
            if !g.low {
                g.headroom -= len;
            }
            return g.low;
        }
        let free = free_bytes(&self.root);
        let headroom = free.map_or(u64::MAX, |f| f.saturating_sub(self.min_free_bytes));
        let low = headroom < len;
        if low && !g.low {
            tracing::warn!(
                "{} has less than {} bytes free: evicting cached spans and serving new ones from memory",
                self.root.display(),
                self.min_free_bytes
            );
        }
        *g = SpaceCheck {
            low,
            at: Some(std::time::Instant::now()),
            headroom: if low { 0 } else { headroom - len },
        };
        drop(g);
        if low {
            self.evict();
        }
        low
    }

    /// Counts bytes added to the cache and evicts past the limit (checked every
    /// [`EVICT_CHECK_BYTES`] written by this process, or every eighth of the
    /// limit if that is less: a small cache stays near its limit).
    fn account(&self, len: u64) {
        let added = self.added.fetch_add(len, Ordering::Relaxed) + len;
        if added >= EVICT_CHECK_BYTES.min(self.max_bytes / 8) {
            self.added.store(0, Ordering::Relaxed);
            self.evict();
        }
    }

    /// Removes least recently used spans until the cache is under 90% of its limit
    /// and its file system has its free-space floor again. Temporary files (spans
    /// being written, by this process or another) are neither counted nor removed:
    /// removing one made its writer's rename fail and the span be fetched again.
    pub fn evict(&self) {
        let mut files: Vec<(SystemTime, u64, PathBuf)> = self
            .files()
            .into_iter()
            .filter(|(p, _)| !is_temporary(p))
            .map(|(p, m)| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len(), p))
            .collect();
        let mut total: u64 = files.iter().map(|f| f.1).sum();
        let short = free_bytes(&self.root).map_or(0, |f| self.min_free_bytes.saturating_sub(f));
        if total <= self.max_bytes && short == 0 {
            return;
        }
        files.sort();
        let mut target = self.max_bytes / 10 * 9;
        if short > 0 {
            // Free what is missing and a tenth of the floor more, so that the next
            // writes do not land right back under it.
            target = target.min(total.saturating_sub(short + self.min_free_bytes / 10));
        }
        for (_, len, path) in files {
            if total <= target {
                break;
            }
            if fs::remove_file(&path).is_ok() {
                total -= len;
                self.counters.evicted.fetch_add(1, Ordering::Relaxed);
                if let Some(h) = path
                    .file_name()
                    .and_then(|n| hex::decode(n.to_string_lossy().as_bytes()).ok())
                    .and_then(|v| <[u8; 32]>::try_from(v).ok())
                {
                    self.forget(&h);
                }
            }
        }
    }

    /// Fetches and verifies every span of every layer into the cache (from the
    /// content tier first), with `concurrency` threads, and stores layers the
    /// tier lacks into it (waiting for that). `progress` is called serially:
    /// `{completed: 0}` first, then once per finished layer, `completed` 1..n,
    /// `bytes` the uncompressed size of the layers done; no calls for an image
    /// without layers. `progress` returning false, or `cancel`, stops the work:
    /// [`Error::Canceled`].
    pub fn prepare(
        self: &Arc<Self>,
        concurrency: usize,
        progress: &mut (dyn FnMut(PrepareProgress) -> bool + Send),
        cancel: &std::sync::atomic::AtomicBool,
    ) -> Result<()> {
        let layers = &self.image.archive().layers;
        let total = layers.len();
        if total == 0 {
            return Ok(());
        }
        // Jobs: runs of spans; a run is cut (after 8 spans) only where a new
        // checkpoint starts, so spans that share one (a single-frame zstd layer)
        // are decoded in one pass.
        let mut jobs: Vec<(usize, usize, usize)> = Vec::new();
        let mut left = vec![0usize; total];
        for (li, l) in layers.iter().enumerate() {
            let spans = &l.codec.spans;
            let mut k = 0;
            while k < spans.len() {
                let mut j = k;
                while j + 1 < spans.len()
                    && (j + 1 - k < 8 || spans[j + 1].checkpoint == spans[j].checkpoint)
                {
                    j += 1;
                }
                jobs.push((li, k, j));
                left[li] += 1;
                k = j + 1;
            }
        }
        let state = Mutex::new(PrepState {
            next: 0,
            left,
            done: PrepareProgress {
                completed: 0,
                total,
                bytes: 0,
            },
            error: None,
            stop: false,
        });
        let progress = Mutex::new(progress);
        if !(progress.lock().expect("progress lock"))(PrepareProgress {
            completed: 0,
            total,
            bytes: 0,
        }) {
            return Err(Error::Canceled);
        }
        // Layers with no spans are done at once.
        for (li, l) in layers.iter().enumerate() {
            if l.codec.spans.is_empty() {
                self.layer_done(li, &state, &progress);
            }
        }
        std::thread::scope(|s| {
            for _ in 0..concurrency.max(1) {
                s.spawn(|| {
                    loop {
                        let job = {
                            let mut st = state.lock().expect("prepare lock");
                            if st.stop || cancel.load(Ordering::Relaxed) {
                                st.stop = true;
                                return;
                            }
                            match jobs.get(st.next) {
                                Some(j) => {
                                    st.next += 1;
                                    *j
                                }
                                None => return,
                            }
                        };
                        let (li, first, last) = job;
                        if let Err(e) = self.prepare_run(li, first, last) {
                            let mut st = state.lock().expect("prepare lock");
                            st.error.get_or_insert(e);
                            st.stop = true;
                            return;
                        }
                        let finished = {
                            let mut st = state.lock().expect("prepare lock");
                            st.left[li] -= 1;
                            st.left[li] == 0
                        };
                        if finished {
                            self.layer_done(li, &state, &progress);
                        }
                    }
                });
            }
        });
        let st = state.into_inner().expect("prepare lock");
        if let Some(e) = st.error {
            return Err(e);
        }
        if st.stop || cancel.load(Ordering::Relaxed) {
            return Err(Error::Canceled);
        }
        // Offer what the tier lacks (from the cache now: no source bytes), and wait.
        for li in 0..total {
            self.maybe_warm(li, Duration::ZERO);
        }
        self.wait_background(Duration::from_secs(24 * 3600));
        Ok(())
    }

    /// Counts layer `li` done and reports it.
    fn layer_done(
        &self,
        li: usize,
        state: &Mutex<PrepState>,
        progress: &Mutex<&mut (dyn FnMut(PrepareProgress) -> bool + Send)>,
    ) {
        // Report under the progress lock, so calls arrive in order.
        let mut p = progress.lock().expect("progress lock");
        let snap = {
            let mut st = state.lock().expect("prepare lock");
            st.done.completed += 1;
            st.done.bytes += self.image.archive().layers[li].codec.uncompressed_size;
            st.done
        };
        if !(*p)(snap) {
            state.lock().expect("prepare lock").stop = true;
        }
    }

    /// Makes spans `first..=last` of `layer` cached: from the tier where it has
    /// them, else runs of missing spans decoded in one pass each.
    fn prepare_run(&self, layer: usize, first: usize, last: usize) -> Result<()> {
        let codec = &self.image.archive().layers[layer].codec;
        let mut k = first;
        while k <= last {
            let hash = codec.spans[k].hash;
            if self.cached_file(layer, k, &hash)?.is_some() {
                k += 1;
                continue;
            }
            if let TierRead::Hit(data) = self.read_tier(layer, k, &hash) {
                self.persist(&hash, data);
                k += 1;
                continue;
            }
            let mut j = k;
            while j < last && !self.span_path(&codec.spans[j + 1].hash).exists() {
                j += 1;
            }
            self.counters
                .fetches
                .fetch_add((j - k + 1) as u64, Ordering::Relaxed);
            let started = std::time::Instant::now();
            let r = self
                .image
                .decode_whole_spans(layer, k, j, &mut |span, data| {
                    self.persist(&codec.spans[span].hash, data);
                    Ok(())
                });
            self.span_event(
                trace::OP_CHECKPOINT_READ,
                layer,
                k,
                0,
                started,
                r.as_ref().err(),
                &[("cache_result", "miss"), ("cache_tier", "source")],
            );
            r?;
            k = j + 1;
        }
        Ok(())
    }

    /// Fetches the spans after span `k` ahead of a stream that reached it, one
    /// per core up to [`MAX_READ_AHEAD`]: one span ahead keeps a single core
    /// decoding, one after the other, while the reader waits for each.
    fn prefetch_next(&self, layer: usize, k: usize) {
        if let Some(me) = self.me.lock().expect("self lock").upgrade() {
            for ahead in 1..=read_ahead() {
                me.prefetch(layer, k + ahead);
            }
        }
    }

    /// Whether span `hash` is open, in the cache or being fetched: nothing to
    /// fetch ahead.
    fn held_or_coming(&self, hash: &[u8; 32]) -> bool {
        self.open.lock().expect("open lock").contains_key(hash)
            || self
                .inflight
                .lock()
                .expect("inflight lock")
                .contains_key(hash)
            || self.span_path(hash).exists()
    }

    /// Starts fetching span `k` of `layer` in the background if it is not cached.
    pub fn prefetch(self: &Arc<Self>, layer: usize, k: usize) {
        let codec = &self.image.archive().layers[layer].codec;
        let Some(span) = codec.spans.get(k) else {
            return;
        };
        let hash = span.hash;
        if self.held_or_coming(&hash) {
            return;
        }
        self.counters.prefetches.fetch_add(1, Ordering::Relaxed);
        let me = self.clone();
        std::thread::spawn(move || {
            let _ = me.fetch(layer, k, hash);
        });
    }

    /// Starts recording the spans reads touch, each the first time, with the
    /// time since now (see [`Store::recorded_profile`]). Reads the kernel serves
    /// from its page cache are not seen, so a profile is best recorded on a
    /// fresh mount. Calling it again keeps the recording going.
    pub fn start_recording(&self) {
        self.recorder.get_or_init(|| Mutex::new(Recorder::new()));
    }

    /// The profile recorded since [`Store::start_recording`], if recording.
    pub fn recorded_profile(&self) -> Option<Profile> {
        let r = self.recorder.get()?;
        Some(
            r.lock()
                .expect("recorder lock")
                .profile(self.image.archive()),
        )
    }

    /// Fetches `spans` (`(layer, span)`, most wanted first) into the cache in the
    /// background, `threads` at a time, ahead of the reads that will want them:
    /// a cold start then waits for one round of parallel fetches instead of one
    /// round trip per span in turn. Spans already cached or being fetched are
    /// passed over; a read of a span the replay is fetching waits for that
    /// fetch rather than starting its own. The replay stops when the store is
    /// dropped, and counts as background work ([`Store::wait_background`]).
    pub fn replay(self: &Arc<Self>, spans: Vec<(usize, usize)>, threads: usize) {
        let layers = &self.image.archive().layers;
        let spans: Vec<(usize, usize)> = spans
            .into_iter()
            .filter(|&(l, k)| layers.get(l).is_some_and(|l| k < l.codec.spans.len()))
            .collect();
        if spans.is_empty() {
            return;
        }
        self.counters
            .replay_left
            .fetch_add(spans.len() as u64, Ordering::Relaxed);
        let queue = Arc::new((spans, std::sync::atomic::AtomicUsize::new(0)));
        let threads = threads.clamp(1, 64).min(queue.0.len());
        let mut started = 0;
        for _ in 0..threads {
            let weak = Arc::downgrade(self);
            let queue = queue.clone();
            *self.warming.0.lock().expect("warming lock") += 1;
            let warming = self.warming.clone();
            let spawned = std::thread::Builder::new()
                .name("clip-replay".into())
                .spawn(move || {
                    replay_worker(&weak, &queue);
                    let (n, cv) = &*warming;
                    *n.lock().expect("warming lock") -= 1;
                    cv.notify_all();
                });
            if spawned.is_ok() {
                started += 1;
            } else {
                // No thread: the others (or the reads themselves) do the work.
                let (n, cv) = &*self.warming;
                *n.lock().expect("warming lock") -= 1;
                cv.notify_all();
            }
        }
        if started == 0 {
            // Nothing will take the spans: the replay is over, not pending.
            self.counters
                .replay_left
                .fetch_sub(queue.0.len() as u64, Ordering::Relaxed);
        }
    }

    /// One span of a replay: fetched unless cached or in flight already;
    /// whether this fetched it.
    fn replay_one(&self, layer: usize, k: usize) -> bool {
        let hash = self.image.archive().layers[layer].codec.spans[k].hash;
        if self.held_or_coming(&hash) {
            return false;
        }
        match self.fetch(layer, k, hash) {
            Ok(_) => true,
            Err(e) => {
                // A read of the span tries again, and reports the error.
                tracing::debug!("replay: span {k} of layer {layer}: {e}");
                false
            }
        }
    }
}

/// A checkpoint group decoded in one pass ([`Store::stream_group`]).
struct GroupJob {
    /// The store, not kept alive by the job: when it is dropped (the mount
    /// ended) the pass stops at the next span.
    store: std::sync::Weak<Store>,
    image: Arc<Image>,
    /// The store's groups with a pass running, and their waiters' condvar.
    streaming: Arc<Streaming>,
    /// The store's count of background work, decremented when the job ends.
    background: Arc<(Mutex<usize>, Condvar)>,
    layer: usize,
    /// The span the starting reader waits for, sent on `tx`.
    k: usize,
    first: usize,
    last: usize,
    tx: std::sync::mpsc::Sender<Result<Span>>,
}

impl GroupJob {
    fn run(self) {
        let image = self.image.clone();
        let codec = &image.archive().layers[self.layer].codec;
        let started = std::time::Instant::now();
        let mut tx = Some(self.tx.clone());
        let mut cached = 0u64;
        let r = image.refetching(|| {
            image.decode_whole_spans(self.layer, self.first, self.last, &mut |span, data| {
                let store = self.store.upgrade().ok_or(Error::Canceled)?;
                let hash = codec.spans[span].hash;
                let len = data.len() as u64;
                let waiting = store
                    .inflight
                    .lock()
                    .expect("inflight lock")
                    .get(&hash)
                    .cloned();
                if span == self.k {
                    store.counters.fetches.fetch_add(1, Ordering::Relaxed);
                    cached += len;
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(Ok(store.persist(&hash, data)));
                    }
                } else {
                    let span_data = if store.span_path(&hash).exists() {
                        None
                    } else {
                        if tx.is_none() && waiting.is_none() && store.low_on_space(len) {
                            // Decoding ahead only to drop the bytes: stop.
                            return Err(Error::Canceled);
                        }
                        store.counters.fetches.fetch_add(1, Ordering::Relaxed);
                        cached += len;
                        Some(store.persist(&hash, data))
                    };
                    // Look for a reader of the span again now that it is in place:
                    // one whose fetch starts after this look finds it in the cache,
                    // one whose fetch started before is landed here.
                    let waiting = waiting.or_else(|| {
                        store
                            .inflight
                            .lock()
                            .expect("inflight lock")
                            .get(&hash)
                            .cloned()
                    });
                    if let Some(f) = waiting {
                        let span_data = match span_data {
                            Some(d) => Some(d),
                            None => match store.cached_file(self.layer, span, &hash) {
                                Ok(Some((file, _))) => Some(Span::File(file)),
                                _ => None,
                            },
                        };
                        if let Some(span_data) = span_data {
                            // As a fetch's leader does: open before its waiters wake.
                            if let Span::File(file) = &span_data {
                                store.keep_open(&hash, file);
                            }
                            let info = ReadInfo {
                                tier: trace::Tier::Source,
                                fallback: false,
                            };
                            store.land(&hash, &f, Ok((span_data, info)));
                            // Its reader waits on the streaming condvar.
                            let _running = self.streaming.0.lock().expect("streaming lock");
                            self.streaming.1.notify_all();
                        }
                    }
                }
                Ok(())
            })
        });
        let r = match r {
            Err(Error::Canceled) if tx.is_none() => Ok(()),
            r => r,
        };
        if let Some(store) = self.store.upgrade() {
            store.span_event(
                trace::OP_CHECKPOINT_READ,
                self.layer,
                self.first,
                if r.is_ok() { cached } else { 0 },
                started,
                r.as_ref().err(),
                &[
                    ("cache_result", "miss"),
                    ("cache_tier", "source"),
                    ("group", "true"),
                ],
            );
        }
        if let Some(tx) = tx.take() {
            let _ = tx.send(Err(r.err().unwrap_or_else(|| {
                Error::format(format!(
                    "span {} of layer {} was not decoded",
                    self.k, self.layer
                ))
            })));
        }
        // Readers still waiting for a span of the group take over.
        end_stream(&self.streaming, (self.layer, self.first));
        let (n, cv) = &*self.background;
        *n.lock().expect("background lock") -= 1;
        cv.notify_all();
    }
}

/// A replay thread: takes the next span of `queue` until none is left or the
/// store is gone.
fn replay_worker(
    store: &std::sync::Weak<Store>,
    queue: &(Vec<(usize, usize)>, std::sync::atomic::AtomicUsize),
) {
    let (spans, next) = queue;
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        let Some(&(layer, k)) = spans.get(i) else {
            return;
        };
        let Some(store) = store.upgrade() else {
            return;
        };
        if store.replay_one(layer, k) {
            store.counters.replayed.fetch_add(1, Ordering::Relaxed);
        }
        store.counters.replay_left.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Ends the pass over checkpoint group `group`: readers waiting for one of its
/// spans look again, and one of them starts a pass if it still lacks its span.
fn end_stream(streaming: &Streaming, group: (usize, usize)) {
    streaming.0.lock().expect("streaming lock").remove(&group);
    streaming.1.notify_all();
}

/// The last look at the cache's free space.
#[derive(Debug, Default)]
struct SpaceCheck {
    /// Below the floor then.
    low: bool,
    /// When.
    at: Option<std::time::Instant>,
    /// Bytes that could still be written before the floor, as of then minus the
    /// writes since.
    headroom: u64,
}

/// The shared state of a [`Store::prepare`].
struct PrepState {
    next: usize,
    left: Vec<usize>,
    done: PrepareProgress,
    error: Option<Error>,
    stop: bool,
}

/// Bytes free for unprivileged users on the file system holding `path`.
fn free_bytes(path: &Path) -> Option<u64> {
    let st = rustix::fs::statvfs(path).ok()?;
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}

/// The default free-space floor for a cache in `dir`: 10% of its file system, at
/// most 16 GiB.
fn default_min_free(dir: &Path) -> u64 {
    match rustix::fs::statvfs(dir) {
        Ok(st) => (st.f_blocks.saturating_mul(st.f_frsize) / 100 * DEFAULT_MIN_FREE_PERCENT)
            .min(DEFAULT_MIN_FREE_CAP),
        Err(_) => 0,
    }
}

/// The `content_cache_result` of an outcome that delivered nothing.
fn outcome_name<T>(o: &Outcome<T>) -> &'static str {
    match o {
        Outcome::Done(_) => "hit",
        Outcome::Error(TierError::Miss) => "miss",
        Outcome::Error(TierError::Unavailable(_)) => "unavailable",
        Outcome::Error(TierError::Failed(_)) => "error",
        Outcome::TimedOut => "timeout",
        Outcome::Skipped => "skipped",
    }
}
