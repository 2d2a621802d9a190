//! A tiny HTTP/1.1 forward proxy for tests, in front of a loopback registry: it
//! counts the bytes it returns to the client and can strip `Range` headers, turning
//! the registry into one that ignores Range (answers `200` with the whole blob).
//! As a forward proxy (`HTTP_PROXY`) it sends every request to that registry,
//! whatever host its absolute URI names, and records request lines
//! ([`Proxy::request_lines`]): a `CONNECT` is forwarded as is and fails.
//!
//! [`Faults`] makes it a bad network too: 503s, 429s with `Retry-After`, responses
//! cut short, connections reset (RST) mid-body, a body byte flipped in flight, a
//! body that stalls, a token the registry refuses (`401`), a `Range` the registry
//! answers with `200` or with other bytes than asked; on every n-th request
//! (optionally only the requests whose request line contains a string), at most a
//! given number of times. Or, with [`RandomDrops`], connections dropped at random
//! (seeded): reset or closed at a random point of the body.
//!
//! [`Proxy::redirecting`] makes it a registry that keeps blobs elsewhere: a blob
//! GET the registry would answer is answered `307` to a [`BlobHost`] URL.
//!
//! Each request is forwarded on a fresh upstream connection with
//! `Connection: close`, and the client connection is closed after the response, so
//! no HTTP framing needs parsing beyond the request head.

use std::io::{BufRead, BufReader, Cursor, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::blob_host::{BlobHost, Signer};

/// Faults a [`Proxy`] injects, to exercise retries.
#[derive(Clone, Copy, Debug, Default)]
pub struct Faults {
    /// Every n-th request (counting from 1) is answered `503` without reaching
    /// the registry (0: never).
    pub fail_every: u64,
    /// Every n-th request has its response cut after `cut_after` bytes (0: never).
    pub cut_every: u64,
    /// Where cut responses stop (bytes of the response, head included).
    pub cut_after: u64,
    /// Every n-th request's connection is reset (TCP RST) after `reset_after`
    /// body bytes (0: never).
    pub reset_every: u64,
    /// Body bytes sent before a reset.
    pub reset_after: u64,
    /// Every n-th response has its body byte at `corrupt_at` flipped (0: never;
    /// a shorter body is sent as is).
    pub corrupt_every: u64,
    /// The body offset of the flipped byte.
    pub corrupt_at: u64,
    /// Every n-th response sends nothing for `stall_for` after `stall_after` body
    /// bytes, then goes on (0: never).
    pub stall_every: u64,
    /// Body bytes sent before a stall.
    pub stall_after: u64,
    /// How long a stall lasts.
    pub stall_for: Duration,
    /// Every n-th request is answered `429 Too Many Requests` with
    /// `Retry-After: retry_after` (seconds) without reaching the registry (0: never).
    pub throttle_every: u64,
    /// The `Retry-After` of a 429.
    pub retry_after: u64,
    /// Every n-th request that carries an `Authorization` header is forwarded
    /// without it, so the registry answers its own `401` with its challenge to a
    /// token that is still valid (a revoked token; 0: never).
    pub revoke_every: u64,
    /// Every n-th request with a `Range` header is forwarded without it: the
    /// registry answers `200` with the whole blob (0: never).
    pub strip_range_every: u64,
    /// Every n-th request with a `Range: bytes=FIRST-LAST` header asks the
    /// registry for `FIRST + bad_range.0` to `LAST + bad_range.1` instead
    /// (`bytes=FIRST-`: only the first moves), so the `206`, `Content-Range` and
    /// body, is for other bytes than the client asked for (0: never).
    pub bad_range_every: u64,
    /// How far a bad range's first and last bytes move.
    pub bad_range: (i64, i64),
    /// Only requests whose request line contains this are counted for the
    /// `*_every` faults and get them (`None`: all requests).
    pub only: Option<&'static str>,
    /// At most this many faults are injected in all (0: no limit; the limit
    /// does not apply to [`drops`](Self::drops)).
    pub limit: u64,
    /// Connections dropped at random (among the requests [`only`](Self::only)
    /// lets through).
    pub drops: Option<RandomDrops>,
}

/// Connections dropped at random: each request is dropped with probability
/// `per_mille`/1000, half of the drops a TCP reset (RST), half a plain close
/// (FIN: the client sees a body shorter than its `Content-Length`), after a
/// random number of body bytes below `within`. The draws come from `seed` and the
/// request's number, so a run is reproducible up to the order requests arrive
/// in. A drop counts as injected when it happens (a body shorter than the
/// offset drawn is sent whole and counts nothing).
#[derive(Clone, Copy, Debug, Default)]
pub struct RandomDrops {
    /// Seed of the draws.
    pub seed: u64,
    /// Chance of a drop per request, in thousandths.
    pub per_mille: u64,
    /// Drops happen before this many body bytes.
    pub within: u64,
}

/// splitmix64: the `n`-th draw of a stream seeded with `seed`.
fn splitmix(seed: u64, n: u64) -> u64 {
    let mut z = seed.wrapping_add(n.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl RandomDrops {
    /// What request `n` gets: `None`, or a drop after so many body bytes, by
    /// reset (`true`) or close (`false`).
    fn draw(&self, n: u64) -> Option<(u64, bool)> {
        let r = splitmix(self.seed, n);
        if self.per_mille == 0 || r % 1000 >= self.per_mille {
            return None;
        }
        let r2 = splitmix(self.seed ^ 0x5bd1_e995, n);
        Some((r2 % self.within.max(1), (r2 >> 63) == 1))
    }
}

impl Faults {
    /// The request matches [`only`](Self::only).
    fn matches(&self, request_line: &str) -> bool {
        self.only.is_none_or(|o| request_line.contains(o))
    }
}

/// Which faults one request gets.
#[derive(Default)]
struct Plan {
    fail: bool,
    throttle: bool,
    revoke: bool,
    strip_range: bool,
    bad_range: Option<(i64, i64)>,
    cut: Option<u64>,
    reset: Option<u64>,
    /// A random drop after so many body bytes: by reset (`true`) or close.
    drop: Option<(u64, bool)>,
    corrupt: Option<u64>,
    stall: Option<(u64, Duration)>,
}

/// Counters shared by a proxy's connections.
#[derive(Default)]
struct Shared {
    bytes: AtomicU64,
    requests: AtomicU64,
    /// Requests that matched [`Faults::only`].
    matching: AtomicU64,
    /// Faults injected.
    injected: AtomicU64,
    /// Random drops done, by reset and by close.
    dropped_reset: AtomicU64,
    dropped_close: AtomicU64,
    lines: Mutex<Vec<String>>,
    /// Request lines and the status answered (the registry's, or the proxy's own).
    statuses: Mutex<Vec<(String, u16)>>,
}

impl Shared {
    /// The faults request number `n` (counting matching requests) gets, within
    /// the limit; `auth` and `range`: whether it has those headers.
    fn plan(&self, f: &Faults, n: u64, auth: bool, range: bool) -> Plan {
        let hit = |every: u64| {
            if every == 0 || n % every != 0 {
                return false;
            }
            let k = self.injected.fetch_add(1, Ordering::Relaxed);
            if f.limit > 0 && k >= f.limit {
                self.injected.fetch_sub(1, Ordering::Relaxed);
                return false;
            }
            true
        };
        let mut p = Plan {
            fail: hit(f.fail_every),
            ..Plan::default()
        };
        if p.fail {
            return p;
        }
        p.throttle = hit(f.throttle_every);
        if p.throttle {
            return p;
        }
        p.revoke = auth && hit(f.revoke_every);
        p.strip_range = range && hit(f.strip_range_every);
        p.bad_range = (range && !p.strip_range && hit(f.bad_range_every)).then_some(f.bad_range);
        p.cut = hit(f.cut_every).then_some(f.cut_after);
        p.reset = hit(f.reset_every).then_some(f.reset_after);
        p.corrupt = hit(f.corrupt_every).then_some(f.corrupt_at);
        p.stall = hit(f.stall_every).then_some((f.stall_after, f.stall_for));
        p.drop = f.drops.and_then(|d| d.draw(n));
        p
    }
}

/// What a proxy's connections do.
struct Config {
    upstream: String,
    strip_range: bool,
    faults: Faults,
    /// Where blob GETs are redirected to ([`Proxy::redirecting`]).
    blobs: Option<Arc<Signer>>,
}

/// A running proxy; stops accepting when dropped.
pub struct Proxy {
    addr: String,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    /// Starts a proxy on 127.0.0.1 (a free port) forwarding to `upstream`
    /// (`host:port`); with `strip_range`, `Range` request headers are dropped.
    pub fn start(upstream: &str, strip_range: bool) -> Proxy {
        Proxy::with_faults(upstream, strip_range, Faults::default())
    }

    /// Like [`start`](Self::start), injecting `faults`.
    pub fn with_faults(upstream: &str, strip_range: bool, faults: Faults) -> Proxy {
        Proxy::run(Config {
            upstream: upstream.to_string(),
            strip_range,
            faults,
            blobs: None,
        })
    }

    /// Like [`with_faults`](Self::with_faults), for a registry that keeps its
    /// blobs on `blobs`: a blob GET is forwarded (so the registry checks the
    /// credentials), and when the registry answers `200` or `206` the client gets
    /// `307 Temporary Redirect` to a fresh one-use URL of `blobs` instead (with no
    /// body). Other answers are passed on.
    pub fn redirecting(upstream: &str, blobs: &BlobHost, faults: Faults) -> Proxy {
        Proxy::run(Config {
            upstream: upstream.to_string(),
            strip_range: false,
            faults,
            blobs: Some(blobs.signer()),
        })
    }

    fn run(config: Config) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the proxy");
        let addr = listener.local_addr().unwrap().to_string();
        let shared = Arc::new(Shared::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (sh, s, config) = (shared.clone(), stop.clone(), Arc::new(config));
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (sh, config) = (sh.clone(), config.clone());
                std::thread::spawn(move || {
                    let _ = serve(conn, &config, &sh);
                });
            }
        });
        Proxy { addr, shared, stop }
    }

    /// `127.0.0.1:port` of the proxy.
    pub fn host(&self) -> &str {
        &self.addr
    }

    /// Bytes returned to clients (status line, headers and bodies).
    pub fn bytes(&self) -> u64 {
        self.shared.bytes.load(Ordering::Relaxed)
    }

    /// Requests forwarded.
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::Relaxed)
    }

    /// Faults injected so far.
    pub fn injected(&self) -> u64 {
        self.shared.injected.load(Ordering::Relaxed)
    }

    /// Random drops done so far ([`RandomDrops`]): by reset, by close.
    pub fn dropped(&self) -> (u64, u64) {
        (
            self.shared.dropped_reset.load(Ordering::Relaxed),
            self.shared.dropped_close.load(Ordering::Relaxed),
        )
    }

    /// The request lines received so far (`GET /v2/... HTTP/1.1`; absolute URIs
    /// and `CONNECT host:port` when used as a forward proxy), oldest first.
    pub fn request_lines(&self) -> Vec<String> {
        self.shared.lines.lock().unwrap().clone()
    }

    /// The request lines answered so far with the status each got (the
    /// registry's, or the proxy's own: a fault's, a redirect's), in the order of
    /// the answers.
    pub fn statuses(&self) -> Vec<(String, u16)> {
        self.shared.statuses.lock().unwrap().clone()
    }

    /// How many requests whose request line contains `what` were answered
    /// `status`.
    pub fn answered(&self, what: &str, status: u16) -> usize {
        self.statuses()
            .iter()
            .filter(|(l, s)| *s == status && l.contains(what))
            .count()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop.
        let _ = TcpStream::connect(&self.addr);
    }
}

/// Closes `conn` with a TCP RST (SO_LINGER 0) rather than a FIN.
fn reset(conn: TcpStream) {
    use std::os::fd::AsRawFd;
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket and a linger struct of the size passed.
    unsafe {
        libc::setsockopt(
            conn.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&l as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    drop(conn);
}

/// `range` (a `Range` value, `bytes=FIRST-LAST` or `bytes=FIRST-`) with its first
/// and last bytes moved by `by` (not below 0).
fn move_range(range: &str, by: (i64, i64)) -> String {
    let mv = |v: &str, d: i64| {
        let v: i64 = v.trim().parse().unwrap_or(0);
        (v + d).max(0).to_string()
    };
    let Some((first, last)) = range
        .trim()
        .strip_prefix("bytes=")
        .and_then(|r| r.split_once('-'))
    else {
        return range.to_string();
    };
    let last = if last.trim().is_empty() {
        String::new()
    } else {
        mv(last, by.1)
    };
    format!("bytes={}-{last}", mv(first, by.0))
}

/// The status code of a response that starts with `head` (`HTTP/1.1 200 OK...`),
/// 0 if it is no status line.
pub fn status_of(head: &[u8]) -> u16 {
    head.get(9..12)
        .and_then(|s| std::str::from_utf8(s).ok())
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn serve(conn: TcpStream, config: &Config, sh: &Shared) -> std::io::Result<()> {
    let mut client = BufReader::new(conn.try_clone()?);
    // The request head, line by line (each with its line end).
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        if client.read_line(&mut line)? == 0 {
            return Ok(());
        }
        if line == "\r\n" || line == "\n" {
            break;
        }
        lines.push(line);
    }
    let Some(request_line) = lines.first().map(|l| l.trim_end().to_string()) else {
        return Ok(());
    };
    sh.lines.lock().unwrap().push(request_line.clone());
    let header = |name: &str| {
        lines[1..].iter().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    };
    let body_len: usize = header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; body_len];
    client.read_exact(&mut body)?;
    sh.requests.fetch_add(1, Ordering::Relaxed);
    let faults = config.faults;
    let plan = if faults.matches(&request_line) {
        let n = sh.matching.fetch_add(1, Ordering::Relaxed) + 1;
        let auth = header("authorization").is_some();
        sh.plan(&faults, n, auth, header("range").is_some())
    } else {
        Plan::default()
    };
    let mut head = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let lower = line.to_ascii_lowercase();
        if i > 0 && lower.starts_with("range:") {
            if config.strip_range || plan.strip_range {
                continue;
            }
            if let Some(by) = plan.bad_range {
                let moved = move_range(&line["range:".len()..], by);
                head.extend_from_slice(format!("Range: {moved}\r\n").as_bytes());
                continue;
            }
        }
        if i > 0
            && (lower.starts_with("connection:")
                || (plan.revoke && lower.starts_with("authorization:")))
        {
            continue;
        }
        head.extend_from_slice(line.as_bytes());
    }
    head.extend_from_slice(b"Connection: close\r\n\r\n");
    let answered = |status: u16| {
        sh.statuses
            .lock()
            .unwrap()
            .push((request_line.clone(), status));
    };
    let mut out = conn;
    if plan.fail || plan.throttle {
        let msg = if plan.fail {
            "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                .to_string()
        } else {
            format!(
                "HTTP/1.1 429 Too Many Requests\r\nRetry-After: {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                faults.retry_after
            )
        };
        answered(if plan.fail { 503 } else { 429 });
        out.write_all(msg.as_bytes())?;
        sh.bytes.fetch_add(msg.len() as u64, Ordering::Relaxed);
        return out.shutdown(Shutdown::Both);
    }
    let mut up = TcpStream::connect(&config.upstream)?;
    up.write_all(&head)?;
    up.write_all(&body)?;
    // The response's first bytes, up to its status line's end at least.
    let mut first = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    while !first.windows(2).any(|w| w == b"\r\n") {
        let n = up.read(&mut buf)?;
        if n == 0 {
            break;
        }
        first.extend_from_slice(&buf[..n]);
    }
    let status = status_of(&first);
    if let Some(blobs) = &config.blobs
        && request_line.starts_with("GET ")
        && (status == 200 || status == 206)
        && let Some(digest) = request_line
            .split("/blobs/")
            .nth(1)
            .and_then(|r| r.split([' ', '?']).next())
    {
        drop(up);
        answered(307);
        let msg = format!(
            "HTTP/1.1 307 Temporary Redirect\r\nLocation: {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            blobs.sign(digest)
        );
        out.write_all(msg.as_bytes())?;
        sh.bytes.fetch_add(msg.len() as u64, Ordering::Relaxed);
        return out.shutdown(Shutdown::Both);
    }
    answered(status);
    let mut up = Cursor::new(first).chain(up);
    let limit = plan.cut.unwrap_or(u64::MAX);
    let mut sent = 0u64;
    // Where the body starts in the response (once the head's end was seen), and
    // the last bytes of the head so far (its end may straddle reads).
    let mut body_start: Option<u64> = None;
    let mut tail: Vec<u8> = Vec::new();
    let mut stalled = false;
    while sent < limit {
        let n = up.read(&mut buf)?;
        if n == 0 {
            break;
        }
        let mut chunk = &mut buf[..(n as u64).min(limit - sent) as usize];
        if body_start.is_none() {
            let from = tail.len();
            tail.extend_from_slice(chunk);
            if let Some(i) = tail.windows(4).position(|w| w == b"\r\n\r\n") {
                body_start = Some(sent + (i + 4 - from) as u64);
            } else {
                let keep = tail.len().saturating_sub(3);
                tail.drain(..keep);
            }
        }
        // Body faults, at body offsets within this chunk.
        if let Some(b0) = body_start {
            let (lo, hi) = (sent, sent + chunk.len() as u64);
            let body = |off: u64| b0 + off;
            if let Some(at) = plan.corrupt
                && (lo..hi).contains(&body(at))
            {
                chunk[(body(at) - lo) as usize] ^= 0x55;
            }
            if let Some(after) = plan.reset
                && body(after) < hi
            {
                let k = body(after).saturating_sub(lo) as usize;
                let _ = out.write_all(&chunk[..k]);
                sh.bytes.fetch_add(k as u64, Ordering::Relaxed);
                // Let the bytes leave before the RST discards the send queue.
                std::thread::sleep(Duration::from_millis(50));
                reset(out);
                return Ok(());
            }
            if let Some((after, rst)) = plan.drop
                && body(after) < hi
            {
                let k = body(after).saturating_sub(lo) as usize;
                let _ = out.write_all(&chunk[..k]);
                sh.bytes.fetch_add(k as u64, Ordering::Relaxed);
                sh.injected.fetch_add(1, Ordering::Relaxed);
                if rst {
                    sh.dropped_reset.fetch_add(1, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(50));
                    reset(out);
                } else {
                    sh.dropped_close.fetch_add(1, Ordering::Relaxed);
                    let _ = out.shutdown(Shutdown::Both);
                }
                return Ok(());
            }
            if let Some((after, d)) = plan.stall
                && !stalled
                && body(after) < hi
            {
                let k = body(after).saturating_sub(lo) as usize;
                if out.write_all(&chunk[..k]).is_err() {
                    break;
                }
                sh.bytes.fetch_add(k as u64, Ordering::Relaxed);
                sent += k as u64;
                chunk = &mut chunk[k..];
                stalled = true;
                std::thread::sleep(d);
            }
        }
        if out.write_all(chunk).is_err() {
            // The client hung up (it had what it needed from a 200 stream, or
            // gave up on a stall).
            break;
        }
        sent += chunk.len() as u64;
        sh.bytes.fetch_add(chunk.len() as u64, Ordering::Relaxed);
    }
    let _ = out.shutdown(Shutdown::Both);
    Ok(())
}
