//! [`BlobHost`]: a stand-in for the blob storage (S3, a CDN) a registry redirects
//! blob GETs to. [`Proxy::redirecting`](super::Proxy::redirecting) answers the
//! registry's blob responses with `307` to a URL that [`BlobHost`] signed, good
//! for one request; the host serves the blob's bytes from the registry's storage
//! directory, honouring `Range`, and answers `403` (S3's "Request has expired") to
//! a URL used before, unknown, or born expired (every n-th one signed, to play a
//! signed URL that expired between the redirect and its use).
//!
//! It listens on 127.0.0.2, another host than the registry's 127.0.0.1, and records
//! every request's headers ([`BlobHost::requests`]): a client must never send it
//! the registry's `Authorization`.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::registry::blob_path_in;

/// One request a [`BlobHost`] received.
#[derive(Clone, Debug)]
pub struct BlobRequest {
    /// `GET /blobs/sha256:...?sig=N HTTP/1.1`.
    pub line: String,
    /// The headers, names lower-cased, in order.
    pub headers: Vec<(String, String)>,
    /// The status it answered.
    pub status: u16,
}

impl BlobRequest {
    /// The value of header `name` (lower-case), if sent.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// What a signed URL is good for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Url {
    Fresh,
    Used,
    Expired,
}

/// A [`BlobHost`]'s state, shared with the proxies that redirect to it.
pub struct Signer {
    addr: String,
    storage: PathBuf,
    expire_every: u64,
    expire_limit: u64,
    signed: AtomicU64,
    born_expired: AtomicU64,
    urls: Mutex<HashMap<u64, Url>>,
    requests: Mutex<Vec<BlobRequest>>,
}

impl Signer {
    /// A fresh URL for blob `digest`, good for one request (or expired already:
    /// every `expire_every`-th, at most `expire_limit` of them).
    pub fn sign(&self, digest: &str) -> String {
        let n = self.signed.fetch_add(1, Ordering::Relaxed) + 1;
        let expired = self.expire_every > 0 && n % self.expire_every == 0 && {
            let k = self.born_expired.fetch_add(1, Ordering::Relaxed);
            let within = self.expire_limit == 0 || k < self.expire_limit;
            if !within {
                self.born_expired.fetch_sub(1, Ordering::Relaxed);
            }
            within
        };
        let state = if expired { Url::Expired } else { Url::Fresh };
        self.urls.lock().unwrap().insert(n, state);
        format!("http://{}/blobs/{digest}?sig={n}", self.addr)
    }

    /// Marks URL `sig` used; what it was good for before.
    fn use_url(&self, sig: Option<u64>) -> Option<Url> {
        let mut urls = self.urls.lock().unwrap();
        let u = urls.get_mut(&sig?)?;
        let was = *u;
        if was == Url::Fresh {
            *u = Url::Used;
        }
        Some(was)
    }
}

/// A running blob host; stops accepting when dropped.
pub struct BlobHost {
    signer: Arc<Signer>,
    stop: Arc<AtomicBool>,
}

impl BlobHost {
    /// Starts a blob host on 127.0.0.2 (a free port) serving the blobs of the
    /// registry storage root `storage` ([`TestRegistry::storage_dir`]); every
    /// `expire_every`-th URL it signs is expired at once (0: none), at most
    /// `expire_limit` of them (0: no limit).
    ///
    /// [`TestRegistry::storage_dir`]: super::TestRegistry::storage_dir
    pub fn start(storage: &Path, expire_every: u64, expire_limit: u64) -> BlobHost {
        let listener = TcpListener::bind("127.0.0.2:0").expect("binding the blob host");
        let signer = Arc::new(Signer {
            addr: listener.local_addr().unwrap().to_string(),
            storage: storage.to_path_buf(),
            expire_every,
            expire_limit,
            signed: AtomicU64::new(0),
            born_expired: AtomicU64::new(0),
            urls: Mutex::new(HashMap::new()),
            requests: Mutex::new(Vec::new()),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (signer.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let s = s.clone();
                std::thread::spawn(move || {
                    let _ = serve(conn, &s);
                });
            }
        });
        BlobHost { signer, stop }
    }

    /// `127.0.0.2:port`.
    pub fn host(&self) -> &str {
        &self.signer.addr
    }

    /// The state proxies share to sign URLs.
    pub fn signer(&self) -> Arc<Signer> {
        self.signer.clone()
    }

    /// URLs signed expired so far.
    pub fn born_expired(&self) -> u64 {
        self.signer.born_expired.load(Ordering::Relaxed)
    }

    /// URLs signed so far.
    pub fn signed(&self) -> u64 {
        self.signer.signed.load(Ordering::Relaxed)
    }

    /// The requests received so far, in order.
    pub fn requests(&self) -> Vec<BlobRequest> {
        self.signer.requests.lock().unwrap().clone()
    }

    /// How many requests were answered `status`.
    pub fn answered(&self, status: u16) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.status == status)
            .count()
    }
}

impl Drop for BlobHost {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(&self.signer.addr);
    }
}

/// `bytes=FIRST-LAST` or `bytes=FIRST-` of a blob of `size` bytes: the range to
/// send, `None` if unsatisfiable.
fn parse_range(value: &str, size: u64) -> Option<(u64, u64)> {
    let (first, last) = value.trim().strip_prefix("bytes=")?.split_once('-')?;
    let first: u64 = first.trim().parse().ok()?;
    let last = match last.trim() {
        "" => size.checked_sub(1)?,
        l => l.parse::<u64>().ok()?.min(size.checked_sub(1)?),
    };
    (first <= last).then_some((first, last))
}

fn serve(conn: TcpStream, s: &Signer) -> std::io::Result<()> {
    let mut client = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    client.read_line(&mut line)?;
    let line = line.trim_end().to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if client.read_line(&mut h)? == 0 || h.trim_end().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let target = line.split(' ').nth(1).unwrap_or("");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let digest = path.strip_prefix("/blobs/").unwrap_or("").to_string();
    let sig = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("sig="))
        .and_then(|v| v.parse().ok());
    let mut req = BlobRequest {
        line: line.clone(),
        headers,
        status: 0,
    };
    let mut out = conn;
    let refused = match s.use_url(sig) {
        Some(Url::Fresh) => match File::open(blob_path_in(&s.storage, &digest)) {
            Ok(f) => Ok(f),
            Err(_) => Err((404, "NoSuchKey")),
        },
        Some(_) => Err((403, "AccessDenied: Request has expired")),
        None => Err((403, "SignatureDoesNotMatch")),
    };
    let mut file = match refused {
        Ok(f) => f,
        Err((status, text)) => {
            req.status = status;
            s.requests.lock().unwrap().push(req);
            let msg = format!(
                "HTTP/1.1 {status} {}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
                if status == 403 {
                    "Forbidden"
                } else {
                    "Not Found"
                },
                text.len()
            );
            out.write_all(msg.as_bytes())?;
            return out.shutdown(Shutdown::Both);
        }
    };
    let size = file.metadata()?.len();
    let (head, first, len) = match req.header("range").map(|r| parse_range(r, size)) {
        None => (
            format!("HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n"),
            0,
            size,
        ),
        Some(Some((a, b))) => (
            format!(
                "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {a}-{b}/{size}\r\nContent-Length: {}\r\n",
                b - a + 1
            ),
            a,
            b - a + 1,
        ),
        Some(None) => (
            format!(
                "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{size}\r\nContent-Length: 0\r\n"
            ),
            0,
            0,
        ),
    };
    req.status = super::proxy::status_of(head.as_bytes());
    s.requests.lock().unwrap().push(req);
    out.write_all(head.as_bytes())?;
    out.write_all(b"Accept-Ranges: bytes\r\nConnection: close\r\n\r\n")?;
    file.seek(SeekFrom::Start(first))?;
    // The client may hang up early (it had what it needed).
    let _ = std::io::copy(&mut file.take(len), &mut out);
    let _ = out.shutdown(Shutdown::Both);
    Ok(())
}
