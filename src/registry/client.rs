//! The distribution API client.

use std::sync::atomic::AtomicU64;

/// Bytes and requests over the network, for tests and benchmarks.
#[derive(Debug, Default)]
pub struct TransferStats {
    /// HTTP requests sent (including retries and token requests).
    pub requests: AtomicU64,
    /// Response body bytes received.
    pub bytes: AtomicU64,
}

/// A client for one registry.
pub struct Client {}
