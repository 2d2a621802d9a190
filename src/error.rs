//! Errors: one enum for the whole crate, with context wrappers that name the thing
//! at fault (a path, a layer, an archive), and a stable [`ErrorCode`] per kind that
//! the C ABI and the CLI expose.
//!
//! Every message is complete on its own (`layer sha256:..: blob is truncated`), so
//! the wrappers do not also expose their cause through `Error::source`: a chain
//! printer (anyhow's `{:#}`, a C caller's log) would otherwise say it twice.
//! [`ErrorCode`] looks through the wrappers.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A stable classification of errors, mapped one to one onto the C ABI codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// Something failed that has no more specific code (I/O, for example).
    Generic,
    /// A named thing (tag, file, blob) does not exist.
    NotFound,
    /// The caller passed an invalid argument.
    Invalid,
    /// Credentials were missing or refused.
    Auth,
    /// The operation was cancelled.
    Canceled,
    /// Input data (archive, blob, layout, tar stream) is malformed or fails verification.
    Format,
    /// An archive of a format version this build does not read.
    Version,
    /// Something valid that this build does not support.
    Unsupported,
    /// A registry could not be reached or kept failing (after retries).
    Network,
}

/// Every error clip reports.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O operation on a named file failed.
    #[error("{op} {}: {err}", path.display())]
    Io {
        /// What was being done ("reading", "creating", ...).
        op: &'static str,
        /// The file at fault.
        path: PathBuf,
        /// The underlying error.
        err: io::Error,
    },
    /// A named thing does not exist.
    #[error("{0}")]
    NotFound(String),
    /// An argument is invalid.
    #[error("{0}")]
    Invalid(String),
    /// Input data is malformed.
    #[error("{0}")]
    Format(String),
    /// Content does not match its digest.
    #[error("{what}: digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        /// What was verified ("blob", "diff_id of layer", "span 3", ...).
        what: String,
        /// The digest that was expected.
        expected: String,
        /// The digest the content has.
        actual: String,
    },
    /// An archive of an unsupported format version.
    #[error("unsupported archive format version {found} (this build reads version {supported}){}", version_hint(*.found))]
    Version {
        /// The version found in the file.
        found: u32,
        /// The version this build reads.
        supported: u32,
    },
    /// Valid input this build does not support.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// A registry could not be reached, or kept failing after retries.
    #[error("{0}")]
    Network(String),
    /// Authentication was required or refused.
    #[error("unauthorized: {0}")]
    Auth(String),
    /// The operation was cancelled by the caller.
    #[error("operation cancelled")]
    Canceled,
    /// An error while processing one layer.
    #[error("layer {digest}: {inner}")]
    WithLayer {
        /// The layer's blob digest.
        digest: String,
        /// What went wrong.
        inner: Box<Error>,
    },
    /// An error concerning one path (of a file, an archive, a layout).
    #[error("{}: {inner}", path.display())]
    WithPath {
        /// The path at fault.
        path: PathBuf,
        /// What went wrong.
        inner: Box<Error>,
    },
}

/// Archives of the Go clip share our magic bytes; their header reads as a large
/// version number here.
fn version_hint(found: u32) -> &'static str {
    if found > 0xff {
        "; this looks like an archive of the Go clip, whose format is not read: index the image again"
    } else {
        ""
    }
}

impl Error {
    /// The stable code of this error (context wrappers are looked through).
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::Io { err, .. } if err.kind() == io::ErrorKind::NotFound => ErrorCode::NotFound,
            Error::Io { .. } => ErrorCode::Generic,
            Error::NotFound(_) => ErrorCode::NotFound,
            Error::Invalid(_) => ErrorCode::Invalid,
            Error::Format(_) | Error::DigestMismatch { .. } => ErrorCode::Format,
            Error::Version { .. } => ErrorCode::Version,
            Error::Unsupported(_) => ErrorCode::Unsupported,
            Error::Auth(_) => ErrorCode::Auth,
            Error::Network(_) => ErrorCode::Network,
            Error::Canceled => ErrorCode::Canceled,
            Error::WithLayer { inner, .. } | Error::WithPath { inner, .. } => inner.code(),
        }
    }

    /// Wraps this error in a context naming `path`.
    pub fn with_path(self, path: impl AsRef<Path>) -> Error {
        Error::WithPath {
            path: path.as_ref().to_path_buf(),
            inner: Box::new(self),
        }
    }

    /// Wraps this error in a context naming the layer `digest`.
    pub fn with_layer(self, digest: impl fmt::Display) -> Error {
        Error::WithLayer {
            digest: digest.to_string(),
            inner: Box::new(self),
        }
    }

    /// An I/O error on `path` while doing `op`.
    pub fn io(op: &'static str, path: impl AsRef<Path>, err: io::Error) -> Error {
        Error::Io {
            op,
            path: path.as_ref().to_path_buf(),
            err,
        }
    }

    /// A format error with a message.
    pub fn format(msg: impl Into<String>) -> Error {
        Error::Format(msg.into())
    }
}

/// Adds a path to I/O results: `file.read(..).ctx("reading", &path)?`.
pub trait IoContext<T> {
    /// Turns an `io::Error` into [`Error::Io`] naming `path`.
    fn ctx(self, op: &'static str, path: impl AsRef<Path>) -> Result<T>;
}

impl<T> IoContext<T> for std::result::Result<T, io::Error> {
    fn ctx(self, op: &'static str, path: impl AsRef<Path>) -> Result<T> {
        self.map_err(|e| Error::io(op, path, e))
    }
}

impl From<crate::tar::TarError> for Error {
    fn from(e: crate::tar::TarError) -> Error {
        Error::Format(format!("tar stream: {e}"))
    }
}
