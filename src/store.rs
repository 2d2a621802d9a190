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
//!   readers bump) are evicted.

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

/// Default cache size limit: 10 GiB.
pub const DEFAULT_MAX_BYTES: u64 = 10 << 30;

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
    /// Spans decoded (from the image's counters).
    pub spans_decoded: u64,
    /// Uncompressed bytes produced by decoders.
    pub bytes_decoded: u64,
    /// Compressed bytes read from layer sources.
    pub compressed_bytes_read: u64,
}

/// The outcome of a fetch: the span is in its cache file (`None`), or, when the
/// cache cannot be written, in memory.
type Fetched = Option<Arc<Vec<u8>>>;

#[derive(Default)]
struct Flight {
    done: Mutex<Option<std::result::Result<Fetched, String>>>,
    cv: Condvar,
}

/// An open, verified span file.
type SpanFile = Arc<File>;

/// The content store of one image (the disk cache itself is shared).
pub struct Store {
    image: Arc<Image>,
    dir: PathBuf,
    max_bytes: u64,
    inflight: Mutex<HashMap<[u8; 32], Arc<Flight>>>,
    open: Mutex<HashMap<[u8; 32], SpanFile>>,
    verified: Mutex<HashSet<[u8; 32]>>,
    added: AtomicU64,
    counters: Counters,
    /// Per layer, the span read last.
    last_span: Mutex<HashMap<usize, usize>>,
    /// A weak handle on itself, for background prefetches.
    me: Mutex<std::sync::Weak<Store>>,
}

impl Store {
    /// A store for `image` caching under `dir` (created), at most `max_bytes`.
    pub fn new(image: Arc<Image>, dir: &Path, max_bytes: u64) -> Result<Arc<Store>> {
        let spans = dir.join("spans");
        fs::create_dir_all(&spans).ctx("creating cache directory", &spans)?;
        let store = Store {
            image,
            dir: spans,
            max_bytes,
            inflight: Mutex::new(HashMap::new()),
            open: Mutex::new(HashMap::new()),
            verified: Mutex::new(HashSet::new()),
            added: AtomicU64::new(0),
            counters: Counters::default(),
            last_span: Mutex::new(HashMap::new()),
            me: Mutex::new(std::sync::Weak::new()),
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
    /// writes in progress in other processes are left alone).
    fn clean_temporaries(&self) {
        for (path, meta) in self.files() {
            let old = meta
                .modified()
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > Duration::from_secs(60));
            let tmp = path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(".tmp-"));
            if tmp && old {
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

    /// Reads uncompressed bytes of layer `layer` at `off` into `buf`.
    pub fn read_layer(&self, layer: usize, off: u64, buf: &mut [u8]) -> Result<()> {
        self.counters.reads.fetch_add(1, Ordering::Relaxed);
        self.counters
            .bytes_read
            .fetch_add(buf.len() as u64, Ordering::Relaxed);
        if buf.is_empty() {
            return Ok(());
        }
        let codec = &self.image.archive().layers[layer].codec;
        let end = off + buf.len() as u64;
        let (Some(first), Some(last)) = (codec.span_at(off), codec.span_at(end - 1)) else {
            return Err(Error::format(format!(
                "read {off}..{end} lies outside layer {layer}"
            )));
        };
        for k in first..=last {
            let (s, e) = codec.span_range(k);
            let lo = off.max(s);
            let hi = end.min(e);
            let dst = &mut buf[(lo - off) as usize..(hi - off) as usize];
            self.read_span(layer, k, lo - s, dst)?;
        }
        Ok(())
    }

    /// Reads `dst.len()` bytes at `within` of span `k`.
    fn read_span(&self, layer: usize, k: usize, within: u64, dst: &mut [u8]) -> Result<()> {
        let hash = self.image.archive().layers[layer].codec.spans[k].hash;
        // A reader moving on to the next span of a layer is streaming in layer order
        // (tar order is directory order): decode the span after it on another core.
        // A lone cold read still inflates exactly one span.
        let moved_on = {
            let mut last = self.last_span.lock().expect("last span lock");
            let prev = last.insert(layer, k);
            k > 0 && prev == Some(k - 1)
        };
        if moved_on {
            self.prefetch_next(layer, k);
        }
        for _ in 0..3 {
            if let Some(f) = self.cached_file(&hash)? {
                if f.read_exact_at(dst, within).is_ok() {
                    return Ok(());
                }
                // Evicted or replaced under us: forget it and fetch.
                self.forget(&hash);
            }
            if let Some(data) = self.fetch(layer, k, hash)? {
                let w = within as usize;
                dst.copy_from_slice(&data[w..w + dst.len()]);
                return Ok(());
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

    /// The open, verified cache file of a span, if the cache has a good one.
    fn cached_file(&self, hash: &[u8; 32]) -> Result<Option<SpanFile>> {
        if let Some(f) = self.open.lock().expect("open lock").get(hash) {
            return Ok(Some(f.clone()));
        }
        let path = self.span_path(hash);
        let Ok(file) = File::open(&path) else {
            return Ok(None);
        };
        let verified = self.verified.lock().expect("verified lock").contains(hash);
        if !verified {
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
        }
        let file = Arc::new(file);
        let mut open = self.open.lock().expect("open lock");
        if open.len() >= 512 {
            open.clear();
        }
        open.insert(*hash, file.clone());
        Ok(Some(file))
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
        let r = match self.cached_file(&hash) {
            Ok(Some(_)) => Ok(None),
            _ => {
                self.counters.fetches.fetch_add(1, Ordering::Relaxed);
                self.fetch_to_file(layer, k, &hash)
            }
        };
        *flight.done.lock().expect("flight lock") =
            Some(r.as_ref().map(Clone::clone).map_err(|e| e.to_string()));
        flight.cv.notify_all();
        self.inflight.lock().expect("inflight lock").remove(&hash);
        r
    }

    /// Decodes span `k` straight into a temporary file in the cache (no span-sized
    /// buffer) and renames it into place. If the cache cannot be written, the span
    /// is decoded into memory instead, so reads never fail for a full disk.
    fn fetch_to_file(&self, layer: usize, k: usize, hash: &[u8; 32]) -> Result<Fetched> {
        let path = self.span_path(hash);
        let dir = path.parent().expect("has a parent");
        let mut write_failed: Option<Error> = None;
        let tmp = fs::create_dir_all(dir)
            .and_then(|_| tempfile::Builder::new().prefix(".tmp-").tempfile_in(dir))
            .map_err(|e| Error::io("creating a span file in", dir, e));
        if let Ok(tmp) = tmp {
            let mut w = std::io::BufWriter::with_capacity(64 << 10, tmp.as_file());
            let decoded = self.image.decode_spans(layer, k, k, &mut |_, d| {
                w.write_all(d).map_err(|e| {
                    let err = Error::io("writing", tmp.path(), e);
                    write_failed = Some(Error::io(
                        "writing",
                        tmp.path(),
                        std::io::Error::other(err.to_string()),
                    ));
                    err
                })
            });
            match (decoded, write_failed.take()) {
                (Ok(()), None) => {
                    w.flush().ctx("writing", tmp.path())?;
                    drop(w);
                    let len = tmp.as_file().metadata().map(|m| m.len()).unwrap_or(0);
                    match tmp.persist(&path) {
                        Ok(_) => {
                            self.verified.lock().expect("verified lock").insert(*hash);
                            self.account(len);
                            return Ok(None);
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
        Ok(Some(Arc::new(self.image.decode_span(layer, k)?)))
    }

    /// Counts bytes added to the cache and evicts past the limit (checked every
    /// 64 MiB written by this process).
    fn account(&self, len: u64) {
        let added = self.added.fetch_add(len, Ordering::Relaxed) + len;
        if added >= 64 << 20 {
            self.added.store(0, Ordering::Relaxed);
            self.evict();
        }
    }

    /// Removes least recently used spans until the cache is under 90% of its limit.
    pub fn evict(&self) {
        let mut files: Vec<(SystemTime, u64, PathBuf)> = self
            .files()
            .into_iter()
            .map(|(p, m)| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len(), p))
            .collect();
        let mut total: u64 = files.iter().map(|f| f.1).sum();
        if total <= self.max_bytes {
            return;
        }
        files.sort();
        let target = self.max_bytes / 10 * 9;
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

    fn prefetch_next(&self, layer: usize, k: usize) {
        if let Some(me) = self.me.lock().expect("self lock").upgrade() {
            me.prefetch(layer, k + 1);
        }
    }

    /// Starts fetching span `k` of `layer` in the background if it is not cached.
    pub fn prefetch(self: &Arc<Self>, layer: usize, k: usize) {
        let codec = &self.image.archive().layers[layer].codec;
        let Some(span) = codec.spans.get(k) else {
            return;
        };
        let hash = span.hash;
        if self.open.lock().expect("open lock").contains_key(&hash)
            || self
                .inflight
                .lock()
                .expect("inflight lock")
                .contains_key(&hash)
            || self.span_path(&hash).exists()
        {
            return;
        }
        self.counters.prefetches.fetch_add(1, Ordering::Relaxed);
        let me = self.clone();
        std::thread::spawn(move || {
            let _ = me.fetch(layer, k, hash);
        });
    }
}
