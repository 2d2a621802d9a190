//! S3-compatible object storage (placeholder until the client lands).

use serde::{Deserialize, Serialize};

/// Where an object lives in an S3-compatible store.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct S3Location {
    /// Bucket name.
    pub bucket: String,
    /// Object key.
    pub key: String,
    /// Region (empty: the default).
    pub region: String,
    /// Endpoint URL (empty: AWS).
    pub endpoint: String,
    /// Path-style requests instead of virtual-hosted style.
    pub path_style: bool,
}

/// Credentials for an S3-compatible store.
#[derive(Clone, Default)]
#[allow(missing_debug_implementations)]
pub struct S3Credentials {
    /// Access key id.
    pub access_key: String,
    /// Secret access key.
    pub secret_key: String,
    /// Session token, for temporary credentials.
    pub session_token: Option<String>,
}

/// How to reach an S3-compatible store.
#[derive(Debug, Clone, Default)]
pub struct S3Options {
    /// Credentials (none: the `AWS_*` environment variables).
    pub credentials: Option<S3Credentials>,
    /// Retries per request.
    pub retries: usize,
    /// Timeout per request.
    pub timeout: std::time::Duration,
}

/// A window of an S3 object (placeholder).
pub struct S3Source;

impl S3Source {
    /// Opens a window of an object.
    pub fn open(
        _loc: &S3Location,
        _opts: &S3Options,
        _base: u64,
        _len: Option<u64>,
    ) -> crate::Result<S3Source> {
        Err(crate::Error::Unsupported("S3 is not built in yet".into()))
    }
}

impl crate::source::RangeSource for S3Source {
    fn size(&self) -> u64 {
        0
    }
    fn read_at(&self, _offset: u64, _buf: &mut [u8]) -> crate::Result<()> {
        Err(crate::Error::Unsupported("S3 is not built in yet".into()))
    }
    fn describe(&self) -> String {
        String::new()
    }
}

/// Uploads a file (placeholder).
pub fn upload_file(
    _path: &std::path::Path,
    _loc: &S3Location,
    _opts: &S3Options,
    _progress: &mut dyn FnMut(u64, u64),
    _cancel: &std::sync::atomic::AtomicBool,
) -> crate::Result<()> {
    Err(crate::Error::Unsupported("S3 is not built in yet".into()))
}

impl S3Location {
    /// Parses `s3://BUCKET/KEY` (placeholder).
    pub fn parse_url(url: &str) -> crate::Result<S3Location> {
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| crate::Error::Invalid(format!("{url:?} is not an s3:// URL")))?;
        let (bucket, key) = rest
            .split_once('/')
            .ok_or_else(|| crate::Error::Invalid(format!("{url:?} names no key")))?;
        Ok(S3Location {
            bucket: bucket.into(),
            key: key.into(),
            ..Default::default()
        })
    }
}

impl std::fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("S3Credentials(..)")
    }
}
