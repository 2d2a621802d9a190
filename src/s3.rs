//! S3: uploading an archive to a bucket and reading byte ranges of it back.
//!
//! A v1 `.rclip` names the full `.clip` object at `s3://bucket/key`
//! ([`S3Location`]); [`upload_file`] puts it there and [`S3Source`] serves a window
//! of it as a [`RangeSource`], one ranged `GET` per [`RangeSource::reader`] call
//! (streamed, never buffered whole).
//!
//! The client is the `object_store` crate's `AmazonS3` (SigV4, retries with
//! exponential backoff). Its API is async; this module runs it on one lazily built,
//! process-wide tokio runtime with 2 worker threads and blocks the calling thread on
//! it, so the rest of the crate stays synchronous. The runtime is only created on
//! first use: a process that forks (a daemonising mount) does so before touching S3.
//!
//! Credentials and defaults ([`S3Options`]):
//! - `credentials: None` reads `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and
//!   `AWS_SESSION_TOKEN`; without a key pair the request is not attempted
//!   ([`Error::Auth`]). No instance-metadata lookup is ever made.
//! - An empty [`S3Location::region`] is `AWS_REGION`, else `AWS_DEFAULT_REGION`,
//!   else `us-east-1`; an empty [`S3Location::endpoint`] is `AWS_ENDPOINT_URL_S3`,
//!   else `AWS_ENDPOINT_URL`, else AWS itself (`https://s3.<region>.amazonaws.com`).
//! - Plain `http://` is allowed only when the endpoint says `http://`.
//!
//! Errors name the endpoint, bucket and key, never a secret key, a session token or
//! a signature: refused credentials are [`Error::Auth`], a missing bucket or key
//! [`Error::NotFound`], a server that cannot be reached or keeps failing (after the
//! retries) [`Error::Network`].

use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::{
    BackoffConfig, ClientOptions, GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutPayload,
    RetryConfig,
};
use serde::{Deserialize, Serialize};
use tokio::runtime::Runtime;
use tokio::task::JoinSet;

use crate::error::{Error, IoContext, Result};
use crate::source::RangeSource;

/// Files up to this size are uploaded with one `PUT`; larger ones as a multipart
/// upload.
pub const SINGLE_PUT_MAX: u64 = 16 << 20;
/// The smallest multipart part (S3's minimum is 5 MiB); files with more than
/// [`MAX_PARTS`] parts of this size get larger parts.
pub const PART_SIZE: u64 = 8 << 20;
/// S3's limit on the number of parts of one multipart upload.
pub const MAX_PARTS: u64 = 10_000;
/// Parts of one multipart upload in flight at once.
pub const PARTS_IN_FLIGHT: usize = 4;
/// Default of [`S3Options::retries`].
pub const DEFAULT_RETRIES: usize = 5;
/// Default of [`S3Options::timeout`].
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// An object in a bucket, and where that bucket is served.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct S3Location {
    /// The bucket name.
    pub bucket: String,
    /// The object key (may contain `/`).
    pub key: String,
    /// The bucket's region; empty: from the environment (see the module docs).
    #[serde(default)]
    pub region: String,
    /// The S3 endpoint URL (`https://host[:port]`, `http://` for a local server);
    /// empty: from the environment, else AWS.
    #[serde(default)]
    pub endpoint: String,
    /// Path-style requests (`endpoint/bucket/key`) instead of virtual-hosted style
    /// (`bucket.endpoint/key`); most self-hosted S3 servers need path style.
    #[serde(default)]
    pub path_style: bool,
}

impl S3Location {
    /// Parses `s3://bucket/key/with/slashes` (region and endpoint empty, virtual-hosted
    /// style). The key must be non-empty, without empty, `.` or `..` segments.
    pub fn parse_url(url: &str) -> Result<S3Location> {
        let bad = |why: &str| Error::Invalid(format!("invalid S3 URL {url:?}: {why}"));
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| bad("expected s3://bucket/key"))?;
        let (bucket, key) = rest
            .split_once('/')
            .ok_or_else(|| bad("expected s3://bucket/key (no key)"))?;
        let loc = S3Location {
            bucket: bucket.to_string(),
            key: key.to_string(),
            ..S3Location::default()
        };
        if let Err(why) = loc.check() {
            return Err(bad(&why));
        }
        Ok(loc)
    }

    /// `s3://bucket/key`.
    pub fn url(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.key)
    }

    /// Checks bucket and key; the reason when they cannot be addressed.
    fn check(&self) -> std::result::Result<(), String> {
        if self.bucket.is_empty() {
            return Err("the bucket name is empty".into());
        }
        if self
            .bucket
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || "/?#\\".contains(c))
        {
            return Err(format!("bucket name {:?} is not valid", self.bucket));
        }
        if self.key.is_empty() {
            return Err("the object key is empty".into());
        }
        ObjectPath::parse(&self.key).map_err(|_| {
            format!(
                "object key {:?} is not supported (no empty, `.` or `..` path segments)",
                self.key
            )
        })?;
        Ok(())
    }
}

impl fmt::Display for S3Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.key)
    }
}

/// An S3 access key pair, with an optional session token. `Debug` shows the access
/// key id only.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct S3Credentials {
    /// The access key id (`AKIA...`).
    pub access_key: String,
    /// The secret access key.
    pub secret_key: String,
    /// A session token (temporary credentials).
    pub session_token: Option<String>,
}

impl fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Credentials")
            .field("access_key", &self.access_key)
            .field("secret_key", &"<redacted>")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// How to talk to S3.
#[derive(Clone, Debug)]
pub struct S3Options {
    /// The key pair; `None`: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
    /// `AWS_SESSION_TOKEN` from the environment.
    pub credentials: Option<S3Credentials>,
    /// Retries of a failed request (connection errors, timeouts, `5xx`), with
    /// exponential backoff from 100 ms (default [`DEFAULT_RETRIES`]: 5).
    pub retries: usize,
    /// Connect timeout, and the longest wait for the next bytes of a response
    /// (default [`DEFAULT_TIMEOUT`]: 30 s); a request making progress is not cut.
    pub timeout: Duration,
}

impl Default for S3Options {
    fn default() -> S3Options {
        S3Options {
            credentials: None,
            retries: DEFAULT_RETRIES,
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

/// The process-wide runtime the async client runs on.
fn runtime() -> Result<&'static Runtime> {
    static RT: OnceLock<std::result::Result<Runtime, String>> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("clip-s3")
            .enable_all()
            .build()
            .map_err(|e| e.to_string())
    })
    .as_ref()
    .map_err(|e| Error::Network(format!("cannot start the S3 client runtime: {e}")))
}

/// Reads a non-empty environment variable.
fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// One configured client for one object, and what its errors need to say.
struct Client {
    store: AmazonS3,
    path: ObjectPath,
    bucket: String,
    url: String,
    /// The endpoint as shown in messages.
    endpoint: String,
    /// Strings never to show (secret key, session token).
    secrets: Vec<String>,
    /// [`S3Options::retries`] (for messages).
    retries: usize,
}

impl Client {
    fn new(loc: &S3Location, opts: &S3Options) -> Result<Client> {
        loc.check()
            .map_err(|why| Error::Invalid(format!("invalid S3 location {loc}: {why}")))?;
        let path = ObjectPath::parse(&loc.key)
            .map_err(|e| Error::Invalid(format!("invalid S3 key {:?}: {e}", loc.key)))?;
        let creds = match &opts.credentials {
            Some(c) => c.clone(),
            None => match (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")) {
                (Some(access_key), Some(secret_key)) => S3Credentials {
                    access_key,
                    secret_key,
                    session_token: env("AWS_SESSION_TOKEN"),
                },
                _ => {
                    return Err(Error::Auth(format!(
                        "no S3 credentials for bucket {}: set AWS_ACCESS_KEY_ID and \
                         AWS_SECRET_ACCESS_KEY (or pass credentials)",
                        loc.bucket
                    )));
                }
            },
        };
        if creds.access_key.is_empty() || creds.secret_key.is_empty() {
            return Err(Error::Auth(format!(
                "S3 credentials for bucket {} have an empty access key or secret key",
                loc.bucket
            )));
        }
        let region = Some(loc.region.clone())
            .filter(|r| !r.is_empty())
            .or_else(|| env("AWS_REGION"))
            .or_else(|| env("AWS_DEFAULT_REGION"))
            .unwrap_or_else(|| "us-east-1".to_string());
        let endpoint = Some(loc.endpoint.clone())
            .filter(|e| !e.is_empty())
            .or_else(|| env("AWS_ENDPOINT_URL_S3"))
            .or_else(|| env("AWS_ENDPOINT_URL"));

        // object_store's HTTP client takes the process's rustls provider: ring.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut client_options = ClientOptions::new()
            .with_connect_timeout(opts.timeout)
            .with_read_timeout(opts.timeout)
            .with_timeout_disabled();
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(&loc.bucket)
            .with_region(&region)
            .with_access_key_id(&creds.access_key)
            .with_secret_access_key(&creds.secret_key)
            .with_retry(RetryConfig {
                backoff: BackoffConfig::default(),
                max_retries: opts.retries,
                retry_timeout: Duration::from_secs(3 * 60),
            });
        if let Some(token) = &creds.session_token {
            builder = builder.with_token(token);
        }
        let shown = match &endpoint {
            Some(ep) => {
                let ep = ep.trim_end_matches('/');
                let (scheme, host) = ep.split_once("://").ok_or_else(|| {
                    Error::Invalid(format!(
                        "invalid S3 endpoint {ep:?}: expected http://host[:port] or https://host[:port]"
                    ))
                })?;
                if scheme != "http" && scheme != "https" || host.is_empty() {
                    return Err(Error::Invalid(format!(
                        "invalid S3 endpoint {ep:?}: expected http://host[:port] or https://host[:port]"
                    )));
                }
                client_options = client_options.with_allow_http(scheme == "http");
                builder = if loc.path_style {
                    builder
                        .with_endpoint(ep)
                        .with_virtual_hosted_style_request(false)
                } else {
                    // object_store wants the bucket already in a virtual-hosted endpoint.
                    builder
                        .with_endpoint(format!("{scheme}://{}.{host}", loc.bucket))
                        .with_virtual_hosted_style_request(true)
                };
                ep.to_string()
            }
            None => {
                builder = builder.with_virtual_hosted_style_request(!loc.path_style);
                format!("https://s3.{region}.amazonaws.com")
            }
        };
        let store = builder
            .with_client_options(client_options)
            .build()
            .map_err(|e| Error::Invalid(format!("S3 client for {loc} at {shown}: {e}")))?;
        let mut secrets = vec![creds.secret_key.clone()];
        secrets.extend(creds.session_token.clone());
        Ok(Client {
            store,
            path,
            bucket: loc.bucket.clone(),
            url: loc.url(),
            endpoint: shown,
            secrets,
            retries: opts.retries,
        })
    }

    /// Removes secrets and signed query parameters from a message.
    fn scrub(&self, msg: &str) -> String {
        let mut out = msg.to_string();
        for s in &self.secrets {
            if !s.is_empty() {
                out = out.replace(s.as_str(), "<redacted>");
            }
        }
        for param in [
            "X-Amz-Signature=",
            "X-Amz-Credential=",
            "X-Amz-Security-Token=",
        ] {
            let mut from = 0;
            while let Some(i) = out[from..].find(param) {
                let start = from + i + param.len();
                let end = out[start..]
                    .find(|c: char| c == '&' || c.is_whitespace())
                    .map_or(out.len(), |j| start + j);
                out.replace_range(start..end, "<redacted>");
                from = start;
            }
        }
        out
    }

    /// Maps an `object_store` error to the crate's error (see the module docs).
    fn error(&self, e: object_store::Error) -> Error {
        let text = e.to_string();
        let code = xml_field(&text, "Code");
        let message = xml_field(&text, "Message");
        let detail = match (&code, &message) {
            (Some(c), Some(m)) => format!("{c}: {m}"),
            (Some(c), None) => c.clone(),
            _ => match &e {
                object_store::Error::PermissionDenied { .. } => "403 Forbidden".to_string(),
                object_store::Error::Unauthenticated { .. } => "401 Unauthorized".to_string(),
                _ => text.clone(),
            },
        };
        let detail = self.scrub(&detail);
        let (endpoint, bucket, url) = (&self.endpoint, &self.bucket, &self.url);
        const AUTH_CODES: &[&str] = &[
            "SignatureDoesNotMatch",
            "InvalidAccessKeyId",
            "AccessDenied",
            "ExpiredToken",
            "InvalidToken",
            "TokenRefreshRequired",
            "AuthorizationHeaderMalformed",
            "InvalidSecurity",
            "AllAccessDisabled",
            // versitygw answers an unknown access key with 404 and this code.
            "XAdminUserNotFound",
        ];
        match code.as_deref() {
            Some("NoSuchBucket") => {
                return Error::NotFound(format!("bucket {bucket} does not exist at {endpoint}"));
            }
            Some("NoSuchKey") => {
                return Error::NotFound(format!("{url} does not exist (at {endpoint})"));
            }
            Some(c)
                if AUTH_CODES.contains(&c)
                    || ["AccessKey", "Signature", "Credential"]
                        .iter()
                        .any(|w| c.contains(w)) =>
            {
                return Error::Auth(format!(
                    "s3 endpoint {endpoint} refused the credentials for bucket {bucket} ({detail})"
                ));
            }
            _ => {}
        }
        match &e {
            object_store::Error::NotFound { .. } => {
                Error::NotFound(format!("{url} does not exist (at {endpoint})"))
            }
            object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. } => Error::Auth(format!(
                "s3 endpoint {endpoint} refused the credentials for bucket {bucket} ({detail})"
            )),
            object_store::Error::InvalidPath { .. }
            | object_store::Error::NotSupported { .. }
            | object_store::Error::UnknownConfigurationKey { .. } => {
                Error::Invalid(format!("{url} at {endpoint}: {}", self.scrub(&text)))
            }
            _ => {
                if let Some(cause) = transport_cause(&e) {
                    Error::Network(format!(
                        "cannot reach s3 endpoint {endpoint} for {url} (after {} retries): {}",
                        self.retries,
                        self.scrub(&cause)
                    ))
                } else {
                    Error::Network(format!("s3 endpoint {endpoint} failed for {url}: {detail}"))
                }
            }
        }
    }

    /// Why a `HEAD` said 404 (a `HEAD` answer has no body to tell a missing bucket
    /// from a missing key): asks again with a `GET`, whose error body does.
    async fn not_found(&self, head_err: object_store::Error) -> Error {
        match self.store.get(&self.path).await {
            Err(e) => self.error(e),
            Ok(_) => self.error(head_err),
        }
    }

    /// Starts one ranged `GET` of `[start, end)` (absolute object offsets, non-empty).
    async fn get_range(&self, start: u64, end: u64) -> Result<RangeBody> {
        self.get_range_of(&self.path, start, end).await
    }

    /// [`Client::get_range`] of the object at `path`.
    async fn get_range_of(&self, path: &ObjectPath, start: u64, end: u64) -> Result<RangeBody> {
        let opts = GetOptions {
            range: Some(GetRange::Bounded(start..end)),
            ..GetOptions::default()
        };
        let got = self
            .store
            .get_opts(path, opts)
            .await
            .map_err(|e| self.error(e))?;
        if got.range != (start..end) {
            return Err(Error::Format(format!(
                "{}: asked {} for bytes {start}..{end}, got {:?}",
                self.url, self.endpoint, got.range
            )));
        }
        Ok(RangeBody {
            stream: got.into_stream(),
            remaining: end - start,
            start,
        })
    }
}

/// For an error that never got an HTTP response (connect, timeout, reset): the
/// innermost cause ("Connection refused (os error 111)").
fn transport_cause(e: &object_store::Error) -> Option<String> {
    let mut cur: &(dyn std::error::Error + 'static) = e;
    let mut http = None;
    loop {
        if let Some(h) = cur.downcast_ref::<object_store::client::HttpError>() {
            http = Some(h);
        }
        match cur.source() {
            Some(next) => cur = next,
            None => break,
        }
    }
    http?;
    Some(cur.to_string())
}

/// The text of the first `<name>..</name>` element in `s`, if any.
fn xml_field(s: &str, name: &str) -> Option<String> {
    let open = format!("<{name}>");
    let close = format!("</{name}>");
    let start = s.find(&open)? + open.len();
    let len = s[start..].find(&close)?;
    Some(s[start..start + len].trim().to_string()).filter(|v| !v.is_empty())
}

/// The body of one ranged `GET`, pulled chunk by chunk.
struct RangeBody {
    stream: BoxStream<'static, object_store::Result<Bytes>>,
    /// Bytes still to come from the stream.
    remaining: u64,
    /// Object offset of the range (for messages).
    start: u64,
}

impl RangeBody {
    /// The next chunk; `None` once the whole range has arrived.
    fn next_chunk(&mut self, client: &Client) -> Result<Option<Bytes>> {
        if self.remaining == 0 {
            return Ok(None);
        }
        match runtime()?.block_on(self.stream.next()) {
            Some(Ok(b)) if b.len() as u64 > self.remaining => Err(Error::Format(format!(
                "{}: the response for the range at {} is longer than asked",
                client.url, self.start
            ))),
            Some(Ok(b)) => {
                self.remaining -= b.len() as u64;
                Ok(Some(b))
            }
            Some(Err(e)) => Err(client.error(e)),
            None => Err(Error::Network(format!(
                "{}: the response for the range at {} from {} ended {} bytes early",
                client.url, self.start, client.endpoint, self.remaining
            ))),
        }
    }
}

/// A [`RangeSource`] over the window `[base, base + len)` of one S3 object.
pub struct S3Source {
    client: Client,
    base: u64,
    size: u64,
}

impl fmt::Debug for S3Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Source")
            .field("url", &self.client.url)
            .field("endpoint", &self.client.endpoint)
            .field("base", &self.base)
            .field("size", &self.size)
            .finish()
    }
}

impl S3Source {
    /// A source over `[base, base + len)` of the object at `loc`. With `len: None`,
    /// one `HEAD` learns the object's size and the window is `[base, size)`;
    /// otherwise nothing is requested until the first read.
    pub fn open(
        loc: &S3Location,
        opts: &S3Options,
        base: u64,
        len: Option<u64>,
    ) -> Result<S3Source> {
        let client = Client::new(loc, opts)?;
        let size = match len {
            Some(len) => {
                base.checked_add(len).ok_or_else(|| {
                    Error::Invalid(format!("{loc}: window {base}+{len} overflows"))
                })?;
                len
            }
            None => {
                let rt = runtime()?;
                let meta = rt.block_on(async {
                    match client.store.head(&client.path).await {
                        Ok(meta) => Ok(meta),
                        Err(e @ object_store::Error::NotFound { .. }) => {
                            Err(client.not_found(e).await)
                        }
                        Err(e) => Err(client.error(e)),
                    }
                })?;
                meta.size.checked_sub(base).ok_or_else(|| {
                    Error::Format(format!(
                        "{loc} is {} bytes, shorter than its data offset {base}",
                        meta.size
                    ))
                })?
            }
        };
        tracing::debug!(url = %client.url, endpoint = %client.endpoint, base, size, "s3 source");
        Ok(S3Source { client, base, size })
    }

    /// Checks that `[offset, offset + len)` lies in the window.
    fn check_range(&self, offset: u64, len: u64) -> Result<()> {
        if offset.checked_add(len).is_none_or(|e| e > self.size) {
            return Err(Error::format(format!(
                "{}: read of {len} bytes at {offset} is past its end ({} bytes)",
                self.describe(),
                self.size
            )));
        }
        Ok(())
    }
}

impl RangeSource for S3Source {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.check_range(offset, buf.len() as u64)?;
        if buf.is_empty() {
            return Ok(());
        }
        let start = self.base + offset;
        let mut body =
            runtime()?.block_on(self.client.get_range(start, start + buf.len() as u64))?;
        let mut at = 0;
        while let Some(chunk) = body.next_chunk(&self.client)? {
            buf[at..at + chunk.len()].copy_from_slice(&chunk);
            at += chunk.len();
        }
        Ok(())
    }

    fn describe(&self) -> String {
        self.client.url.clone()
    }

    /// One ranged `GET` of `[start, end)` (clamped to the window; nothing is
    /// requested for an empty range), its body streamed as it is read.
    fn reader<'a>(&'a self, start: u64, end: u64) -> Result<Box<dyn Read + Send + 'a>> {
        let end = end.min(self.size);
        if start >= end {
            return Ok(Box::new(io::empty()));
        }
        let body =
            runtime()?.block_on(self.client.get_range(self.base + start, self.base + end))?;
        Ok(Box::new(S3Reader {
            client: &self.client,
            body,
            chunk: Bytes::new(),
        }))
    }
}

/// [`S3Source::reader`]'s reader: the body of one `GET`.
struct S3Reader<'a> {
    client: &'a Client,
    body: RangeBody,
    /// What is left of the last chunk.
    chunk: Bytes,
}

impl Read for S3Reader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        while self.chunk.is_empty() {
            match self
                .body
                .next_chunk(self.client)
                .map_err(io::Error::other)?
            {
                Some(c) => self.chunk = c,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk[..n]);
        self.chunk = self.chunk.slice(n..);
        Ok(n)
    }
}

/// Objects under one prefix of a bucket, addressed by name (`prefix/name`): the
/// store behind a shared content tier (`--remote-cache s3://bucket/prefix`). One
/// client (one connection pool) serves every object.
pub struct S3Prefix {
    client: Client,
    prefix: String,
}

impl fmt::Debug for S3Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Prefix")
            .field("url", &self.client.url)
            .field("endpoint", &self.client.endpoint)
            .finish()
    }
}

impl S3Prefix {
    /// The objects under `loc.key` (the prefix; `/` separated, no empty segments)
    /// of `loc.bucket`. Nothing is requested yet.
    pub fn open(loc: &S3Location, opts: &S3Options) -> Result<S3Prefix> {
        let client = Client::new(loc, opts)?;
        Ok(S3Prefix {
            prefix: loc.key.trim_end_matches('/').to_string(),
            client,
        })
    }

    /// `s3://bucket/prefix`.
    pub fn url(&self) -> &str {
        &self.client.url
    }

    fn path(&self, name: &str) -> Result<ObjectPath> {
        ObjectPath::parse(format!("{}/{name}", self.prefix)).map_err(|e| {
            Error::Invalid(format!(
                "invalid object name {name:?} under {}: {e}",
                self.client.url
            ))
        })
    }

    /// The size of object `name`, or `None` if there is none.
    pub fn size(&self, name: &str) -> Result<Option<u64>> {
        let path = self.path(name)?;
        match runtime()?.block_on(self.client.store.head(&path)) {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.client.error(e)),
        }
    }

    /// Fills `buf` with the bytes of object `name` at `offset` (one ranged `GET`);
    /// a missing object is [`Error::NotFound`].
    pub fn read_at(&self, name: &str, offset: u64, buf: &mut [u8]) -> Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let path = self.path(name)?;
        let end = offset + buf.len() as u64;
        let rt = runtime()?;
        let mut body = match rt.block_on(self.client.get_range_of(&path, offset, end)) {
            Err(Error::NotFound(_)) => {
                return Err(Error::NotFound(format!(
                    "{}/{name} does not exist",
                    self.client.url
                )));
            }
            r => r?,
        };
        let mut at = 0;
        while let Some(chunk) = body.next_chunk(&self.client)? {
            buf[at..at + chunk.len()].copy_from_slice(&chunk);
            at += chunk.len();
        }
        Ok(())
    }

    /// Uploads the file at `path` as object `name` (see [`upload_file`]).
    pub fn put_file(&self, name: &str, path: &Path) -> Result<()> {
        let dest = self.path(name)?;
        upload_to(
            &self.client,
            &dest,
            path,
            &mut |_, _| true,
            &AtomicBool::new(false),
        )
    }
}

/// Uploads the file at `path` to `loc`: one `PUT` up to [`SINGLE_PUT_MAX`] bytes,
/// else a multipart upload ([`PART_SIZE`] parts or larger, [`PARTS_IN_FLIGHT`] at
/// once, each retried per [`S3Options::retries`]).
///
/// `progress(done, total)` is called with bytes uploaded as parts complete, the last
/// call being `(total, total)` once the object exists; returning false stops the
/// upload like `cancel` (a false on that last call comes too late). `cancel` is
/// checked between parts ([`Error::Canceled`]). On failure or cancel the parts in flight are let
/// finish and the multipart upload is aborted: the object appears whole or not at
/// all (a previous object under the key stays).
pub fn upload_file(
    path: &Path,
    loc: &S3Location,
    opts: &S3Options,
    progress: &mut dyn FnMut(u64, u64) -> bool,
    cancel: &AtomicBool,
) -> Result<()> {
    let client = Client::new(loc, opts)?;
    upload_to(&client, &client.path, path, progress, cancel)
}

/// [`upload_file`] of `path` to the object `dest` of `client`'s bucket.
fn upload_to(
    client: &Client,
    dest: &ObjectPath,
    path: &Path,
    progress: &mut dyn FnMut(u64, u64) -> bool,
    cancel: &AtomicBool,
) -> Result<()> {
    let file = File::open(path).ctx("opening", path)?;
    let total = file.metadata().ctx("reading metadata of", path)?.len();
    if cancel.load(Ordering::Relaxed) {
        return Err(Error::Canceled);
    }
    let rt = runtime()?;
    if !progress(0, total) {
        return Err(Error::Canceled);
    }
    if total <= SINGLE_PUT_MAX {
        tracing::debug!(url = %client.url, endpoint = %client.endpoint, total, "s3 put");
        let mut data = Vec::with_capacity(total as usize);
        (&file).read_to_end(&mut data).ctx("reading", path)?;
        if data.len() as u64 != total {
            return Err(Error::io(
                "reading",
                path,
                io::Error::other("the file changed size while being uploaded"),
            ));
        }
        rt.block_on(client.store.put(dest, PutPayload::from(data)))
            .map_err(|e| client.error(e))?;
        // The object is stored: a stop now comes too late.
        let _ = progress(total, total);
        return Ok(());
    }
    let part_size = PART_SIZE.max(total.div_ceil(MAX_PARTS).div_ceil(1 << 20) << 20);
    tracing::debug!(
        url = %client.url, endpoint = %client.endpoint, total, part_size,
        parts = total.div_ceil(part_size), "s3 multipart upload"
    );
    rt.block_on(async {
        let mut upload = client
            .store
            .put_multipart(dest)
            .await
            .map_err(|e| client.error(e))?;
        let mut tasks = JoinSet::new();
        let sent = async {
            let (mut next, mut done) = (0u64, 0u64);
            loop {
                while tasks.len() < PARTS_IN_FLIGHT && next < total {
                    if cancel.load(Ordering::Relaxed) {
                        return Err(Error::Canceled);
                    }
                    let len = part_size.min(total - next);
                    let mut buf = vec![0u8; len as usize];
                    file.read_exact_at(&mut buf, next).ctx("reading", path)?;
                    let part = upload.put_part(PutPayload::from(buf));
                    tasks.spawn(async move { part.await.map(|()| len) });
                    next += len;
                }
                match tasks.join_next().await {
                    None => break,
                    Some(Ok(Ok(len))) => {
                        done += len;
                        if done < total && !progress(done, total) {
                            return Err(Error::Canceled);
                        }
                    }
                    Some(Ok(Err(e))) => return Err(client.error(e)),
                    Some(Err(e)) => {
                        return Err(Error::Network(format!(
                            "uploading a part of {} failed: {e}",
                            client.url
                        )));
                    }
                }
                if cancel.load(Ordering::Relaxed) {
                    return Err(Error::Canceled);
                }
            }
            upload.complete().await.map_err(|e| client.error(e))?;
            Ok(())
        }
        .await;
        if let Err(e) = &sent {
            tracing::debug!(url = %client.url, "aborting the multipart upload: {e}");
            // Let the parts in flight finish first: a part request cut off
            // mid-body can still be handled by the server after the abort,
            // leaving a part behind that nothing removes.
            while tasks.join_next().await.is_some() {}
            if let Err(abort) = upload.abort().await {
                tracing::warn!(
                    url = %client.url,
                    "cannot abort the multipart upload ({}); its parts stay until the bucket's lifecycle rules remove them",
                    client.error(abort)
                );
            }
        }
        sent
    })?;
    let _ = progress(total, total);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_url() {
        let loc = S3Location::parse_url("s3://my-bucket/images/a b/x.clip").unwrap();
        assert_eq!(loc.bucket, "my-bucket");
        assert_eq!(loc.key, "images/a b/x.clip");
        assert_eq!(
            (loc.region.as_str(), loc.endpoint.as_str(), loc.path_style),
            ("", "", false)
        );
        assert_eq!(loc.url(), "s3://my-bucket/images/a b/x.clip");
        for bad in [
            "http://b/k",
            "s3://bucket",
            "s3://bucket/",
            "s3:///key",
            "s3://b/a//c",
            "s3://b/a/../c",
            "s3://b c/k",
        ] {
            let e = S3Location::parse_url(bad).unwrap_err();
            assert!(matches!(e, Error::Invalid(_)), "{bad}: {e:?}");
            assert!(e.to_string().contains(&format!("{bad:?}")), "{bad}: {e}");
        }
    }

    #[test]
    fn credentials_debug_redacts() {
        let c = S3Credentials {
            access_key: "AKIDEXAMPLE".into(),
            secret_key: "wJalrXUtnFEMI/K7MDENG".into(),
            session_token: Some("FwoGZXIvYXdzEJr".into()),
        };
        let s = format!(
            "{:?}",
            S3Options {
                credentials: Some(c),
                ..S3Options::default()
            }
        );
        assert!(s.contains("AKIDEXAMPLE"), "{s}");
        assert!(!s.contains("wJalr") && !s.contains("FwoGZ"), "{s}");
    }

    #[test]
    fn scrub_and_xml() {
        let loc = S3Location {
            endpoint: "http://127.0.0.1:9".into(),
            path_style: true,
            ..S3Location::parse_url("s3://b/k").unwrap()
        };
        let opts = S3Options {
            credentials: Some(S3Credentials {
                access_key: "AK".into(),
                secret_key: "TOPSECRET".into(),
                session_token: None,
            }),
            ..S3Options::default()
        };
        let c = Client::new(&loc, &opts).unwrap();
        assert_eq!(
            c.scrub("x TOPSECRET ?X-Amz-Signature=abc&X-Amz-Credential=AK/2024 y"),
            "x <redacted> ?X-Amz-Signature=<redacted>&X-Amz-Credential=<redacted> y"
        );
        let body = "<Error><Code>NoSuchBucket</Code><Message>gone</Message></Error>";
        assert_eq!(xml_field(body, "Code").as_deref(), Some("NoSuchBucket"));
        assert_eq!(xml_field(body, "Message").as_deref(), Some("gone"));
        assert_eq!(xml_field(body, "Key"), None);
    }
}
