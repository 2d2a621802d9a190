//! Shared test utilities for clip's integration tests.
//!
//! - [`TarBuilder`] (`tar_builder`): a hand-made tar writer emitting exactly what it
//!   is told (raw path bytes, any entry order, PAX / GNU long names, xattrs,
//!   devices, base-256 numbers).
//! - [`LayoutBuilder`] (`layout`): writes OCI image layouts (OCI or Docker media
//!   types, gzip / zstd / plain layers, several tags, multi-platform indexes) and
//!   corrupts blobs for negative tests.
//! - [`tree_diff()`] (`tree_diff`): entry-by-entry comparison of two extracted trees.
//! - [`umoci_unpack`], [`require_tool`] (`tools`): the reference unpacker and
//!   external tool checks.
//! - [`tricky_layers`], [`tricky_layout`], [`escaping_layer`] (`fixtures`): the
//!   fixture catalogue, with what umoci 0.4.7 does on each case.
//! - [`goclip_gen`] and `goclip_*` (`goclip`): archives written by the original
//!   Go clip (the version beta9 pins) through `tests/goclip-gen`, and what its
//!   `ExtractMetadata` reads back.
//! - [`TestRegistry`] (`registry`): a real `docker-registry` on loopback (anonymous,
//!   htpasswd or token auth with the test's token server, or a pull-through
//!   mirror of another), plus docker credential
//!   helper and `config.json` writers.
//! - [`Mounted`] (`mount`): a `clipctl mount --daemon` unmounted when dropped.
//! - [`Proxy`] (`proxy`): a counting HTTP proxy that can strip `Range` headers and
//!   records request lines (a forward proxy too, for plain HTTP), injecting
//!   [`Faults`]; it can redirect blob GETs to a [`BlobHost`] (`blob_host`), a
//!   stand-in for blob storage with one-use URLs.
//! - [`S3Server`] (`s3`): a real S3 server (versitygw, posix backend) on loopback,
//!   counting the requests that reach it from its access log.
#![allow(dead_code, unused_imports)]

pub mod blob_host;
pub mod cli;
pub mod fixtures;
pub mod goclip;
pub mod layout;
pub mod mount;
pub mod proxy;
pub mod registry;
pub mod s3;
pub mod tar_builder;
pub mod tools;
pub mod tree_diff;

pub use blob_host::*;
pub use cli::*;
pub use fixtures::*;
pub use goclip::*;
pub use layout::*;
pub use mount::*;
pub use proxy::*;
pub use registry::*;
pub use s3::*;
pub use tar_builder::*;
pub use tools::*;
pub use tree_diff::*;

use sha2::{Digest, Sha256};

/// Hex sha256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// `sha256:<hex>` of `data`.
pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(data))
}
