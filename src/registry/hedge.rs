//! Hedged range reads: a lazy read that stops making progress sends a second
//! request for the rest of its range, and takes the bytes of whichever answers
//! first.
//!
//! A lazy read is a container waiting on a page fault, so a stalled connection
//! must cost a fraction of a second, not the [`stall_timeout`] that abandons it.
//! Abandoning sooner would make a registry that is only slow fail; a hedge does
//! not: the first request keeps going, the second races it from the last byte
//! received, and the loser is dropped (its connection closed). The delay before a
//! hedge follows the registry: [`Hedge::Auto`] waits 4 times the usual time to
//! first byte seen on this client (a moving average), at least 100 ms and at most
//! half the stall timeout.
//!
//! No hedge is sent while the registry asked the client to wait (a `429` or
//! `5xx` being retried after its `Retry-After` or backoff): hedging then would
//! only be the request the registry is refusing.
//!
//! Each request runs on a thread of its own that reads its body into a channel;
//! chunks carry their blob offset, so the reader takes from any request the bytes
//! past what it already has. At most two requests of one read are alive at a time.
//!
//! [`stall_timeout`]: super::RegistryOptions::stall_timeout

use std::io::{self, Read};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::time::{Duration, Instant};

use crate::digest::Digest;
use crate::error::Error;

use super::client::{Client, TRANSFER};

/// When a ranged blob read (a lazy span) sends a hedged second request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Hedge {
    /// Never: a stalled read waits for the stall timeout.
    Off,
    /// After this long without a byte.
    After(Duration),
    /// After 4 times the usual time to first byte of this client, at least
    /// 100 ms, at most half the stall timeout (default).
    #[default]
    Auto,
}

impl std::str::FromStr for Hedge {
    type Err = Error;

    /// `auto`, `off`, or a delay in seconds (`0.25`; 0 is `off`).
    fn from_str(s: &str) -> Result<Hedge, Error> {
        match s {
            "auto" => Ok(Hedge::Auto),
            "off" => Ok(Hedge::Off),
            _ => match s.parse::<f64>() {
                Ok(0.0) => Ok(Hedge::Off),
                Ok(v) if v.is_finite() && v > 0.0 && v < 1e6 => {
                    Ok(Hedge::After(Duration::from_secs_f64(v)))
                }
                _ => Err(Error::Invalid(format!(
                    "hedge delay {s:?}: expected `auto`, `off` or a number of seconds"
                ))),
            },
        }
    }
}

/// The shortest automatic hedge delay.
const AUTO_MIN: Duration = Duration::from_millis(100);
/// The automatic hedge delay before any request has been timed (4 × 100 ms).
const AUTO_INITIAL_TTFB: Duration = Duration::from_millis(100);
/// Bytes per body read of a request thread.
const CHUNK: usize = 64 << 10;
/// Chunks queued between the request threads and the reader.
const QUEUE: usize = 16;

/// Hedging counters of this process, for tests and benchmarks.
#[derive(Debug, Default)]
pub struct HedgeStats {
    /// Hedged requests sent.
    pub sent: AtomicU64,
    /// Reads whose bytes came, in the end, from a hedged request.
    pub won: AtomicU64,
}

/// Counters of all hedged reads of this process.
pub static HEDGES: HedgeStats = HedgeStats {
    sent: AtomicU64::new(0),
    won: AtomicU64::new(0),
};

/// The time to first byte of a client's range requests, a moving average.
#[derive(Debug)]
pub(super) struct Latency {
    /// Microseconds; 0 until the first sample.
    micros: AtomicU64,
}

impl Latency {
    pub(super) fn new() -> Latency {
        Latency {
            micros: AtomicU64::new(0),
        }
    }

    fn record(&self, d: Duration) {
        let sample = d.as_micros().min(u64::MAX as u128) as u64;
        // A lost update between racing readers only drops one sample.
        let old = self.micros.load(Ordering::Relaxed);
        let new = if old == 0 {
            sample
        } else {
            old - old / 8 + sample / 8
        };
        self.micros.store(new.max(1), Ordering::Relaxed);
    }

    fn get(&self) -> Duration {
        match self.micros.load(Ordering::Relaxed) {
            0 => AUTO_INITIAL_TTFB,
            m => Duration::from_micros(m),
        }
    }
}

/// The delay before a hedge under `hedge`, or `None` for no hedging.
fn hedge_delay(hedge: Hedge, latency: &Latency, stall_timeout: Duration) -> Option<Duration> {
    match hedge {
        Hedge::Off => None,
        Hedge::After(d) if d.is_zero() => None,
        Hedge::After(d) => Some(d),
        Hedge::Auto => {
            let max = (stall_timeout / 2).max(AUTO_MIN);
            Some((latency.get() * 4).clamp(AUTO_MIN, max))
        }
    }
}

/// What a request thread reports.
enum Msg {
    /// Body bytes at blob offset `at`.
    Data { id: usize, at: u64, bytes: Vec<u8> },
    /// The request ended before its range did: `fatal` when no response came
    /// (the client's own retries are spent), else the body broke.
    Failed { id: usize, err: Error, fatal: bool },
}

/// One request of a hedged read.
struct Request {
    id: usize,
    started: Instant,
    /// Set to make the thread stop at its next chunk.
    cancel: Arc<AtomicBool>,
    /// Whether a byte of it arrived yet.
    answered: bool,
    alive: bool,
}

/// A reader over `[pos, end)` of a blob whose requests are hedged (see the
/// module documentation). Errors and retries follow [`super::client::BlobReader`]:
/// a request that gets no usable response after the client's retries is the
/// error (at once, whatever its racing twin is doing); a body that breaks is
/// resumed from where it broke, failing after `attempts` breaks in a row without
/// progress or `8 × attempts` breaks in all.
pub struct HedgedReader {
    client: Arc<Client>,
    digest: Digest,
    pos: u64,
    end: u64,
    delay: Option<Duration>,
    tx: SyncSender<Msg>,
    rx: Receiver<Msg>,
    requests: Vec<Request>,
    /// A chunk being handed out, and how much of it is used.
    pending: Option<(Vec<u8>, usize)>,
    /// Breaks in a row without a byte of progress.
    failures: u32,
    /// Breaks in all.
    breaks: u32,
    /// Hedges sent since the last progress.
    hedges: u32,
    /// When the last byte (or the first request) arrived.
    last_progress: Instant,
    /// Which request the last new bytes came from.
    serving: Option<usize>,
}

impl HedgedReader {
    /// Reads `[start, end)` of `digest` through `client`. The first request is
    /// sent on the first read.
    pub(super) fn new(client: Arc<Client>, digest: Digest, start: u64, end: u64) -> HedgedReader {
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let delay = hedge_delay(
            client.options().hedge,
            client.latency(),
            client.options().stall_timeout,
        );
        HedgedReader {
            client,
            digest,
            pos: start,
            end,
            delay,
            tx,
            rx,
            requests: Vec::new(),
            pending: None,
            failures: 0,
            breaks: 0,
            hedges: 0,
            last_progress: Instant::now(),
            serving: None,
        }
    }

    fn alive(&self) -> usize {
        self.requests.iter().filter(|r| r.alive).count()
    }

    /// Starts a request for `[pos, end)` on its own thread.
    fn launch(&mut self) -> io::Result<()> {
        let id = self.requests.len();
        let cancel = Arc::new(AtomicBool::new(false));
        let (client, digest, start, end, tx, stop) = (
            Arc::clone(&self.client),
            self.digest,
            self.pos,
            self.end,
            self.tx.clone(),
            Arc::clone(&cancel),
        );
        std::thread::Builder::new()
            .name("clip-range".into())
            .spawn(move || {
                // A panicking request thread would leave the reader waiting on a
                // channel it holds a sender of: report it as the read's error.
                let run = || fetch(id, &client, &digest, start, end, &tx, &stop);
                if std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)).is_err() {
                    let err = Error::Network(format!(
                        "{}: blob {digest}: the request thread panicked",
                        client.name()
                    ));
                    let _ = tx.send(Msg::Failed {
                        id,
                        err,
                        fatal: true,
                    });
                }
            })
            .map_err(|e| io::Error::other(format!("cannot start a request thread: {e}")))?;
        self.requests.push(Request {
            id,
            started: Instant::now(),
            cancel,
            answered: false,
            alive: true,
        });
        Ok(())
    }

    /// Takes the next new bytes into `pending`, sending requests and hedges as
    /// needed. Returns false at the end of the range.
    fn fill(&mut self) -> io::Result<bool> {
        loop {
            if self.pos >= self.end {
                return Ok(false);
            }
            if self.alive() == 0 {
                self.launch()?;
                self.last_progress = Instant::now();
            }
            let msg = match self.delay {
                Some(d) if self.alive() < 2 && self.hedges < self.client.options().attempts => {
                    // No hedge while the registry asked us to wait (429/503 with
                    // Retry-After, or backoff after 5xx): a hedge would be the
                    // request it is refusing.
                    let throttled = self.client.throttled_for();
                    if !throttled.is_zero() {
                        // The delay counts from the end of the wait.
                        self.last_progress = self.last_progress.max(Instant::now() + throttled);
                    }
                    let wait = (self.last_progress + d).saturating_duration_since(Instant::now());
                    match self.rx.recv_timeout(wait) {
                        Ok(m) => m,
                        Err(RecvTimeoutError::Timeout)
                            if !self.client.throttled_for().is_zero() =>
                        {
                            continue;
                        }
                        Err(RecvTimeoutError::Timeout) => {
                            tracing::debug!(digest = %self.digest, pos = self.pos, delay = ?d, "range read made no progress; sending a hedged request");
                            HEDGES.sent.fetch_add(1, Ordering::Relaxed);
                            self.hedges += 1;
                            self.launch()?;
                            continue;
                        }
                        Err(RecvTimeoutError::Disconnected) => unreachable!("we hold a sender"),
                    }
                }
                _ => self.rx.recv().expect("we hold a sender"),
            };
            match msg {
                Msg::Data { id, at, bytes } => {
                    let req = &mut self.requests[id];
                    if !req.alive {
                        continue;
                    }
                    if !req.answered {
                        req.answered = true;
                        self.client.latency().record(req.started.elapsed());
                    }
                    let end = at + bytes.len() as u64;
                    if end <= self.pos || at > self.pos {
                        // Bytes we have (a loser catching up), or a gap, which
                        // a contiguous request never leaves.
                        continue;
                    }
                    // New bytes: this request wins over the others.
                    for r in self.requests.iter_mut().filter(|r| r.id != id && r.alive) {
                        r.alive = false;
                        r.cancel.store(true, Ordering::Relaxed);
                    }
                    if self.serving != Some(id) && id > 0 {
                        HEDGES.won.fetch_add(1, Ordering::Relaxed);
                    }
                    self.serving = Some(id);
                    let skip = (self.pos - at) as usize;
                    self.pos = end;
                    self.failures = 0;
                    self.hedges = 0;
                    self.last_progress = Instant::now();
                    self.pending = Some((bytes, skip));
                    return Ok(true);
                }
                Msg::Failed { id, err, fatal } => {
                    let req = &mut self.requests[id];
                    if !req.alive {
                        continue;
                    }
                    req.alive = false;
                    if fatal {
                        // The client's own retries are spent (unreachable, 4xx,
                        // throttled past the budget): a request racing this one
                        // meets the same registry.
                        return Err(io::Error::other(err));
                    }
                    if self.alive() > 0 {
                        tracing::debug!(digest = %self.digest, error = %err, "one request of a hedged read broke; the other goes on");
                        continue;
                    }
                    self.failures += 1;
                    self.breaks += 1;
                    let attempts = self.client.options().attempts.max(1);
                    if self.failures >= attempts || self.breaks >= attempts.saturating_mul(8) {
                        return Err(io::Error::other(format!(
                            "{}: blob {}: {err}",
                            self.client.name(),
                            self.digest
                        )));
                    }
                    tracing::debug!(digest = %self.digest, pos = self.pos, error = %err, "range read broke; resuming");
                    std::thread::sleep(Duration::from_millis(100 << self.failures.min(4)));
                }
            }
        }
    }
}

impl Read for HedgedReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if let Some((chunk, used)) = &mut self.pending {
                if *used < chunk.len() {
                    let n = buf.len().min(chunk.len() - *used);
                    buf[..n].copy_from_slice(&chunk[*used..*used + n]);
                    *used += n;
                    return Ok(n);
                }
                self.pending = None;
            }
            if !self.fill()? {
                return Ok(0);
            }
        }
    }
}

impl Drop for HedgedReader {
    fn drop(&mut self) {
        for r in &self.requests {
            r.cancel.store(true, Ordering::Relaxed);
        }
        // Dropping `rx` then fails any send a request thread is blocked on.
    }
}

/// The body of one request thread: GETs `[start, end)` and sends its bytes.
fn fetch(
    id: usize,
    client: &Client,
    digest: &Digest,
    start: u64,
    end: u64,
    tx: &SyncSender<Msg>,
    cancel: &AtomicBool,
) {
    let mut resp = match client.get_blob_range(digest, start, end - start) {
        Ok(r) => r,
        Err(err) => {
            let _ = tx.send(Msg::Failed {
                id,
                err,
                fatal: true,
            });
            return;
        }
    };
    let mut at = start;
    let broke = |why: String| {
        let err = Error::Network(format!("{}: blob {digest}: {why}", client.name()));
        let _ = tx.send(Msg::Failed {
            id,
            err,
            fatal: false,
        });
    };
    while at < end && !cancel.load(Ordering::Relaxed) {
        let mut bytes = vec![0u8; CHUNK.min((end - at) as usize)];
        match resp.read(&mut bytes) {
            Ok(0) => return broke(format!("connection closed at byte {at} of {end}")),
            Ok(n) => {
                TRANSFER.bytes.fetch_add(n as u64, Ordering::Relaxed);
                bytes.truncate(n);
                if tx.send(Msg::Data { id, at, bytes }).is_err() {
                    return;
                }
                at += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return broke(format!("reading at {at}: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_delay_follows_latency_within_bounds() {
        let l = Latency::new();
        let st = Duration::from_secs(5);
        assert_eq!(
            hedge_delay(Hedge::Auto, &l, st),
            Some(Duration::from_millis(400))
        );
        l.record(Duration::from_millis(1));
        assert_eq!(hedge_delay(Hedge::Auto, &l, st), Some(AUTO_MIN));
        for _ in 0..100 {
            l.record(Duration::from_secs(3));
        }
        assert_eq!(
            hedge_delay(Hedge::Auto, &l, st),
            Some(Duration::from_millis(2500))
        );
        assert_eq!(hedge_delay(Hedge::Off, &l, st), None);
        assert_eq!(hedge_delay(Hedge::After(Duration::ZERO), &l, st), None);
        assert_eq!(
            hedge_delay(Hedge::After(Duration::from_millis(7)), &l, st),
            Some(Duration::from_millis(7))
        );
    }
}
