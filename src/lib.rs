//! clip: lazy-loading container images.
//!
//! clip turns an ordinary OCI image (gzip, zstd or plain tar layers, unconverted)
//! into a small index-only `.clip` archive: the merged file tree of the image, where
//! each file's bytes sit in which layer, and decompression checkpoints so that any
//! byte range can be read by decompressing at most one span of a layer.
//!
//! The crate is layered; each module is one concept:
//!
//! - [`digest`]: content digests (`sha256:<hex>`), parsed strictly.
//! - [`oci`]: manifests, indexes, image configs, media types, platform choice.
//! - [`layout`]: the local OCI image layout (what skopeo, buildah and umoci write).
//! - [`source`]: [`source::RangeSource`], random access to a blob (pread on a layout
//!   blob today, HTTP Range on a registry later).
//! - [`codec`]: decompression with checkpoints: gzip (our own DEFLATE decoder with
//!   zran-style resume points and sparse windows), zstd frames, plain tar.
//! - [`tar`]: a push-based tar header parser that never copies payload bytes.
//! - [`index`]: indexing one layer (one streaming pass: digest, diff_id, checkpoints,
//!   span hashes, tar entries) and merging layers into one tree (whiteouts, opaque
//!   directories, hardlinks).
//! - [`tree`]: the merged file tree, as stored in an archive and served by a mount.
//! - [`archive`]: the `.clip` file format (see `docs/FORMAT.md`), writer and reader.
//! - [`image`]: an opened archive bound to its layer sources: read files, extract.
//! - [`goclip`]: archives written by the Go clip (gob format): a strict gob decoder,
//!   and serving them through an [`image::Image`].
//! - [`reference`]: image references (`host/repo:tag`, `@sha256:`, `oci:/dir:tag`).
//! - [`registry`]: the OCI distribution API client (auth, retries, Range reads).
//! - [`s3`]: the S3 client: uploading an archive, ranged reads of it
//!   ([`s3::S3Source`]) for `.rclip` archives.
//! - [`tier`]: the shared content tier (a cluster cache or an S3 bucket) between
//!   the local span cache and the layer sources.
//! - [`trace`]: read tracing events (file reads and the span work below them).
//! - [`create`]: the high-level "index this image into that archive" operation.
//! - [`mount`] and [`fs`]: the FUSE mount of an image.
//! - [`profile`]: startup profiles, the layer ranges a workload read in order,
//!   recorded by one mount and replayed (fetched ahead, in parallel) by the next.
//! - [`limits`]: the limits every reader of hostile input enforces (layers,
//!   manifests, entries, path length and depth, decompression ratio).
//! - [`log`]: a global stderr log subscriber with a changeable level (for the C ABI).
//! - [`ffi`]: the C ABI (`include/clip.h`); the only module with `unsafe` code.
//!
//! The `clipctl` binary and the C ABI are thin layers over this API.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod archive;
pub mod codec;
pub mod create;
pub mod digest;
pub mod error;
pub mod extract;
#[allow(unsafe_code)]
pub mod ffi;
pub mod fs;
pub mod goclip;
pub mod image;
pub mod index;
pub mod layout;
pub mod limits;
pub mod log;
pub mod mount;
pub mod oci;
pub mod pack;
pub mod profile;
pub mod reference;
pub mod registry;
pub mod s3;
pub mod source;
pub mod store;
pub mod tar;
pub mod tier;
pub mod trace;
pub mod tree;

pub use error::{Error, Result};

/// The version of this library, as in `Cargo.toml`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
