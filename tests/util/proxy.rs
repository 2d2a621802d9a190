//! A tiny HTTP/1.1 forward proxy for tests, in front of a loopback registry: it
//! counts the bytes it returns to the client and can strip `Range` headers, turning
//! the registry into one that ignores Range (answers `200` with the whole blob).
//! As a forward proxy (`HTTP_PROXY`) it sends every request to that registry,
//! whatever host its absolute URI names, and records request lines
//! ([`Proxy::request_lines`]): a `CONNECT` is forwarded as is and fails.
//!
//! Each request is forwarded on a fresh upstream connection with
//! `Connection: close`, and the client connection is closed after the response, so
//! no HTTP framing needs parsing beyond the request head.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Faults a [`Proxy`] injects, to exercise retries.
#[derive(Clone, Copy, Debug, Default)]
pub struct Faults {
    /// Every n-th request (counting from 1) is answered `503` without reaching
    /// the registry (0: never).
    pub fail_every: u64,
    /// Every n-th request has its response cut after `cut_after` bytes (0: never).
    pub cut_every: u64,
    /// Where cut responses stop.
    pub cut_after: u64,
}

/// A running proxy; stops accepting when dropped.
pub struct Proxy {
    addr: String,
    bytes: Arc<AtomicU64>,
    requests: Arc<AtomicU64>,
    lines: Arc<Mutex<Vec<String>>>,
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
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the proxy");
        let addr = listener.local_addr().unwrap().to_string();
        let bytes = Arc::new(AtomicU64::new(0));
        let requests = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (b, r, s, up, l) = (
            bytes.clone(),
            requests.clone(),
            stop.clone(),
            upstream.to_string(),
            lines.clone(),
        );
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (b, r, up, l) = (b.clone(), r.clone(), up.clone(), l.clone());
                std::thread::spawn(move || {
                    let _ = serve(conn, &up, strip_range, faults, &b, &r, &l);
                });
            }
        });
        Proxy {
            addr,
            bytes,
            requests,
            lines,
            stop,
        }
    }

    /// `127.0.0.1:port` of the proxy.
    pub fn host(&self) -> &str {
        &self.addr
    }

    /// Bytes returned to clients (status line, headers and bodies).
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Requests forwarded.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// The request lines received so far (`GET /v2/... HTTP/1.1`; absolute URIs
    /// and `CONNECT host:port` when used as a forward proxy), oldest first.
    pub fn request_lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop.
        let _ = TcpStream::connect(&self.addr);
    }
}

fn serve(
    conn: TcpStream,
    upstream: &str,
    strip_range: bool,
    faults: Faults,
    bytes: &AtomicU64,
    requests: &AtomicU64,
    lines: &Mutex<Vec<String>>,
) -> std::io::Result<()> {
    let mut client = BufReader::new(conn.try_clone()?);
    // The request head.
    let mut head = Vec::new();
    let mut body_len = 0usize;
    loop {
        let mut line = String::new();
        if client.read_line(&mut line)? == 0 {
            return Ok(());
        }
        if line == "\r\n" || line == "\n" {
            break;
        }
        if head.is_empty() {
            lines.lock().unwrap().push(line.trim_end().to_string());
        }
        let lower = line.to_ascii_lowercase();
        if lower.starts_with("connection:") || (strip_range && lower.starts_with("range:")) {
            continue;
        }
        if let Some(v) = lower.strip_prefix("content-length:") {
            body_len = v.trim().parse().unwrap_or(0);
        }
        head.extend_from_slice(line.as_bytes());
    }
    head.extend_from_slice(b"Connection: close\r\n\r\n");
    let mut body = vec![0u8; body_len];
    client.read_exact(&mut body)?;
    let n = requests.fetch_add(1, Ordering::Relaxed) + 1;
    let mut out = conn;
    if faults.fail_every > 0 && n % faults.fail_every == 0 {
        let msg =
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
        out.write_all(msg)?;
        bytes.fetch_add(msg.len() as u64, Ordering::Relaxed);
        return out.shutdown(Shutdown::Both);
    }
    let limit = if faults.cut_every > 0 && n % faults.cut_every == 0 {
        faults.cut_after
    } else {
        u64::MAX
    };
    let mut up = TcpStream::connect(upstream)?;
    up.write_all(&head)?;
    up.write_all(&body)?;
    let mut buf = vec![0u8; 64 << 10];
    let mut sent = 0u64;
    while sent < limit {
        let n = up.read(&mut buf)?;
        if n == 0 {
            break;
        }
        let n = (n as u64).min(limit - sent) as usize;
        if out.write_all(&buf[..n]).is_err() {
            // The client hung up (it had what it needed from a 200 stream).
            break;
        }
        sent += n as u64;
        bytes.fetch_add(n as u64, Ordering::Relaxed);
    }
    let _ = out.shutdown(Shutdown::Both);
    Ok(())
}
