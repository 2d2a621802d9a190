//! The shared content tier: a cache many machines share (beta9's cluster cache, an
//! S3 bucket), between a machine's own span cache and the layer sources.
//!
//! **What it holds.** Whole *uncompressed* layers, each under the bare sha256 hex
//! of its uncompressed stream (the layer's diff id, which beta9 calls the
//! `DecompressedHash`), read by range. A span is then one ranged read of
//! `[span start, span end)`, verified against the span's BLAKE3 hash like any
//! other bytes: the next machine inflates nothing and fetches exactly the bytes its
//! reads need. The key is the one beta9's cache reconciler protects and
//! re-materialises itself (it fetches and decompresses the layer from the registry
//! into exactly that key), so entries survive it. docs/GO.md says why this beats
//! caching spans by their hash.
//!
//! **Never in the way.** [`Tier`] wraps a [`ContentTier`] so that every call is
//! bounded: it runs on its own thread and the caller waits at most
//! [`TierOptions::timeout`]; a call that times out, or a tier that says it is
//! unavailable, takes the tier out of use for [`TierOptions::cooldown`]; at most
//! [`TierOptions::max_in_flight`] calls are outstanding (stuck calls do not pile
//! up threads). Every failure falls back to the layer source; none fails a read.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::s3::{S3Location, S3Options, S3Prefix};

/// Why a tier call did not deliver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TierError {
    /// The tier does not hold the content.
    Miss,
    /// The tier cannot be reached now (the cache cluster is down, a host is
    /// gone): it is not asked again for a while.
    Unavailable(String),
    /// Any other failure.
    Failed(String),
}

impl std::fmt::Display for TierError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TierError::Miss => f.write_str("miss"),
            TierError::Unavailable(m) => write!(f, "unavailable: {m}"),
            TierError::Failed(m) => write!(f, "failed: {m}"),
        }
    }
}

/// A shared, content-addressed store of blobs read by range. Implementations are
/// called from several threads at once and may block (the [`Tier`] wrapper bounds
/// the wait).
pub trait ContentTier: Send + Sync {
    /// A name for logs (`s3://bucket/prefix`, `callbacks`).
    fn describe(&self) -> String;
    /// Whether the tier holds `key` with exactly `size` bytes; `Ok(None)` if it
    /// cannot tell (then reads are simply tried).
    fn exists(&self, key: &str, size: u64) -> std::result::Result<Option<bool>, TierError>;
    /// Fills `buf` with the bytes of `key` at `offset`.
    fn read_into(
        &self,
        key: &str,
        offset: u64,
        buf: &mut [u8],
    ) -> std::result::Result<(), TierError>;
    /// Stores the file at `path` under `key` (the file is the content `key` names).
    fn store_file(&self, key: &str, path: &Path) -> std::result::Result<(), TierError>;
}

/// Default of [`TierOptions::timeout`].
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
/// Default of [`TierOptions::cooldown`].
pub const DEFAULT_COOLDOWN: Duration = Duration::from_secs(10);
/// Default of [`TierOptions::warm_delay`].
pub const DEFAULT_WARM_DELAY: Duration = Duration::from_secs(5);
/// Default of [`TierOptions::max_in_flight`].
pub const DEFAULT_MAX_IN_FLIGHT: usize = 16;

/// How the tier is used.
#[derive(Debug, Clone)]
pub struct TierOptions {
    /// The longest a read waits for the tier before going to the layer source
    /// (default 2 s). Stores run in the background and are not bounded by it.
    pub timeout: Duration,
    /// After a timeout or an "unavailable", the tier is not asked for this long
    /// (default 10 s).
    pub cooldown: Duration,
    /// Calls outstanding at once; past it the tier is skipped (default 16).
    pub max_in_flight: usize,
    /// Store layers the tier lacks, in the background, once a read had to fetch
    /// from the layer source (default true): the next machine then reads them
    /// from the tier.
    pub warm: bool,
    /// How long after that first source read a mount starts storing the layer
    /// (default 5 s), so that the upload does not compete with the container
    /// start that caused it.
    pub warm_delay: Duration,
}

impl Default for TierOptions {
    fn default() -> TierOptions {
        TierOptions {
            timeout: DEFAULT_TIMEOUT,
            cooldown: DEFAULT_COOLDOWN,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            warm: true,
            warm_delay: DEFAULT_WARM_DELAY,
        }
    }
}

/// The outcome of a bounded call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome<T> {
    /// The tier answered.
    Done(T),
    /// The tier failed.
    Error(TierError),
    /// The tier did not answer within the timeout (it is cooling down now).
    TimedOut,
    /// The tier was not asked (cooling down, or too many calls outstanding).
    Skipped,
}

/// A [`ContentTier`] behind timeouts, a cool-down and a bound on calls in flight.
pub struct Tier {
    inner: Arc<dyn ContentTier>,
    opts: TierOptions,
    in_flight: Arc<AtomicUsize>,
    down_until: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for Tier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tier")
            .field("tier", &self.inner.describe())
            .field("opts", &self.opts)
            .finish()
    }
}

impl Tier {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn ContentTier>, opts: TierOptions) -> Tier {
        Tier {
            inner,
            opts,
            in_flight: Arc::new(AtomicUsize::new(0)),
            down_until: Mutex::new(None),
        }
    }

    /// The options.
    pub fn options(&self) -> &TierOptions {
        &self.opts
    }

    /// The wrapped tier's name.
    pub fn describe(&self) -> String {
        self.inner.describe()
    }

    /// Whether the tier is in use now (not cooling down).
    pub fn available(&self) -> bool {
        let mut down = self.down_until.lock().expect("tier lock");
        match *down {
            Some(t) if Instant::now() < t => false,
            Some(_) => {
                *down = None;
                true
            }
            None => true,
        }
    }

    fn cool_down(&self, why: &str) {
        let mut down = self.down_until.lock().expect("tier lock");
        if down.is_none() {
            tracing::warn!(
                tier = %self.inner.describe(),
                "content tier {why}; not using it for {:?}",
                self.opts.cooldown
            );
        }
        *down = Some(Instant::now() + self.opts.cooldown);
    }

    /// Runs `f` on the tier on its own thread and waits at most the timeout.
    fn bounded<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn ContentTier) -> std::result::Result<T, TierError> + Send + 'static,
    ) -> Outcome<T> {
        if !self.available() {
            return Outcome::Skipped;
        }
        if self.in_flight.fetch_add(1, Ordering::AcqRel) >= self.opts.max_in_flight {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            return Outcome::Skipped;
        }
        let (tx, rx) = mpsc::sync_channel(1);
        let inner = self.inner.clone();
        let in_flight = self.in_flight.clone();
        let spawned = std::thread::Builder::new()
            .name("clip-tier".into())
            .spawn(move || {
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&*inner)))
                    .unwrap_or_else(|_| Err(TierError::Failed("the tier call panicked".into())));
                in_flight.fetch_sub(1, Ordering::AcqRel);
                let _ = tx.send(r);
            });
        if spawned.is_err() {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            return Outcome::Skipped;
        }
        match rx.recv_timeout(self.opts.timeout) {
            Ok(Ok(v)) => Outcome::Done(v),
            Ok(Err(e)) => {
                if let TierError::Unavailable(m) = &e {
                    self.cool_down(&format!("is unavailable ({m})"));
                }
                Outcome::Error(e)
            }
            Err(_) => {
                self.cool_down(&format!("did not answer within {:?}", self.opts.timeout));
                Outcome::TimedOut
            }
        }
    }

    /// Whether the tier holds `key` with `size` bytes (`None`: it cannot tell).
    pub fn exists(&self, key: &str, size: u64) -> Outcome<Option<bool>> {
        let key = key.to_string();
        self.bounded(move |t| t.exists(&key, size))
    }

    /// Reads `len` bytes of `key` at `offset`.
    pub fn read(&self, key: &str, offset: u64, len: usize) -> Outcome<Vec<u8>> {
        let key = key.to_string();
        self.bounded(move |t| {
            let mut buf = vec![0u8; len];
            t.read_into(&key, offset, &mut buf).map(|()| buf)
        })
    }

    /// Stores the file at `path` under `key`, waiting for it (called from
    /// background threads only; not bounded by the timeout).
    pub fn store_file(&self, key: &str, path: &Path) -> std::result::Result<(), TierError> {
        if !self.available() {
            return Err(TierError::Unavailable("cooling down".into()));
        }
        let r = self.inner.store_file(key, path);
        if let Err(TierError::Unavailable(m)) = &r {
            self.cool_down(&format!("is unavailable ({m})"));
        }
        r
    }
}

/// A content tier in an S3-compatible bucket: object `PREFIX/<key>` holds `key`.
pub struct S3Tier {
    prefix: S3Prefix,
}

impl S3Tier {
    /// The tier at `s3://bucket/prefix` (`loc.key` is the prefix).
    pub fn open(loc: &S3Location, opts: &S3Options) -> Result<S3Tier> {
        Ok(S3Tier {
            prefix: S3Prefix::open(loc, opts)?,
        })
    }
}

fn tier_error(e: Error) -> TierError {
    match e {
        Error::NotFound(_) => TierError::Miss,
        Error::Network(m) => TierError::Unavailable(m),
        e => TierError::Failed(e.to_string()),
    }
}

impl ContentTier for S3Tier {
    fn describe(&self) -> String {
        self.prefix.url().to_string()
    }

    fn exists(&self, key: &str, size: u64) -> std::result::Result<Option<bool>, TierError> {
        match self.prefix.size(key).map_err(tier_error)? {
            Some(s) => Ok(Some(s == size)),
            None => Ok(Some(false)),
        }
    }

    fn read_into(
        &self,
        key: &str,
        offset: u64,
        buf: &mut [u8],
    ) -> std::result::Result<(), TierError> {
        self.prefix.read_at(key, offset, buf).map_err(tier_error)
    }

    fn store_file(&self, key: &str, path: &Path) -> std::result::Result<(), TierError> {
        self.prefix.put_file(key, path).map_err(tier_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Slow(Duration, AtomicUsize);
    impl ContentTier for Slow {
        fn describe(&self) -> String {
            "slow".into()
        }
        fn exists(&self, _: &str, _: u64) -> std::result::Result<Option<bool>, TierError> {
            std::thread::sleep(self.0);
            Ok(Some(true))
        }
        fn read_into(&self, _: &str, _: u64, buf: &mut [u8]) -> std::result::Result<(), TierError> {
            self.1.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(self.0);
            buf.fill(7);
            Ok(())
        }
        fn store_file(&self, _: &str, _: &Path) -> std::result::Result<(), TierError> {
            Err(TierError::Unavailable("down".into()))
        }
    }

    #[test]
    fn a_slow_tier_times_out_and_cools_down() {
        let slow = Arc::new(Slow(Duration::from_secs(3), AtomicUsize::new(0)));
        let t = Tier::new(
            slow.clone(),
            TierOptions {
                timeout: Duration::from_millis(100),
                ..TierOptions::default()
            },
        );
        let started = Instant::now();
        assert_eq!(t.read("k", 0, 4), Outcome::TimedOut);
        assert!(started.elapsed() < Duration::from_secs(1));
        // Cooling down: not asked again.
        assert_eq!(t.read("k", 0, 4), Outcome::Skipped);
        assert_eq!(slow.1.load(Ordering::SeqCst), 1);
        assert!(!t.available());
    }

    #[test]
    fn a_fast_tier_answers_and_unavailable_cools_down() {
        let t = Tier::new(
            Arc::new(Slow(Duration::ZERO, AtomicUsize::new(0))),
            TierOptions::default(),
        );
        assert_eq!(t.read("k", 0, 3), Outcome::Done(vec![7, 7, 7]));
        assert_eq!(t.exists("k", 3), Outcome::Done(Some(true)));
        assert!(matches!(
            t.store_file("k", Path::new("/nonexistent")),
            Err(TierError::Unavailable(_))
        ));
        assert_eq!(t.read("k", 0, 3), Outcome::Skipped);
    }

    #[test]
    fn calls_in_flight_are_bounded() {
        let t = Tier::new(
            Arc::new(Slow(Duration::from_millis(500), AtomicUsize::new(0))),
            TierOptions {
                timeout: Duration::from_secs(5),
                max_in_flight: 1,
                ..TierOptions::default()
            },
        );
        let t = Arc::new(t);
        let t2 = t.clone();
        let h = std::thread::spawn(move || t2.read("k", 0, 1));
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(t.read("k", 0, 1), Outcome::Skipped);
        assert_eq!(h.join().unwrap(), Outcome::Done(vec![7]));
    }
}
