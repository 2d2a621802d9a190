//! Reading archives (`clip_archive`): open, describe, close.

use std::ffi::{c_char, c_int};

use super::*;
use crate::archive::Archive;

// ---------------------------------------------------------------------------
// Archives
// ---------------------------------------------------------------------------

/// An archive read into memory (validated), to inspect.
pub struct clip_archive {
    archive: Opened,
}

/// Our archive, or one of the Go clip.
enum Opened {
    Clip(Box<Archive>),
    Go(Box<crate::goclip::GoArchive>),
}

/// Reads and validates the archive at `path`.
///
/// Archives of the Go clip (gob format) are read too (see `clip_archive_info`).
///
/// Returns: 0; `CLIP_EINVALID` for a NULL argument; `CLIP_ENOTFOUND` if `path`
/// does not exist; `CLIP_EFORMAT` for a file that is not a valid archive (the
/// message says what is wrong); `CLIP_EVERSION` for an archive format version this
/// library does not read.
/// Ownership: `*out` belongs to the caller; close it with `clip_archive_close`.
#[unsafe(no_mangle)]
pub extern "C" fn clip_archive_open(out: *mut *mut clip_archive, path: *const c_char) -> c_int {
    boundary("clip_archive_open", || {
        crate::log::init();
        let out = c_out(out, "out")?;
        let path = c_path(path, "path")?;
        let archive = if crate::goclip::is_goclip_file(path) {
            Opened::Go(Box::new(crate::goclip::read(path)?))
        } else {
            Opened::Clip(Box::new(crate::archive::read(path)?))
        };
        write_out(out, Box::into_raw(Box::new(clip_archive { archive })));
        Ok(())
    })
}

/// Describes an archive as a JSON object:
///
/// ```json
/// {"format_version": 1, "index_only": true, "created_by": "clip 0.1.0",
///  "source": "oci:/layout:tag", "storage_type": "oci",
///  "registry": "host:port", "repository": "repo", "reference": "sha256:...",
///  "manifest_digest": "sha256:...",
///  "platform": {"os": "linux", "architecture": "amd64"},
///  "span_size": 2097152,
///  "layers": [{"digest": "sha256:...", "media_type": "...", "compression": "gzip",
///              "compressed_size": 123, "diff_id": "sha256:...",
///              "uncompressed_size": 456}],
///  "config": {"env": ["PATH=..."], "cmd": [...], "entrypoint": [...],
///             "user": "", "working_dir": "/", "labels": {}, ...},
///  "inodes": 42}
/// ```
///
/// `registry`, `repository` and `reference` are empty when the archive records no
/// registry to fetch from. Keys may be added in later versions.
///
/// An archive of the Go clip has `"format_version": 0` and a `"goclip"` object:
/// `{"format_version": 1, "storage_type": "" | "s3" | "oci", "storage": {...}}`,
/// `storage` being its storage info with the Go clip's field names (`RegistryURL`,
/// `Repository`, `Reference`, `Layers`, `DecompressedHashByLayer`, `ImageMetadata`,
/// or `Bucket`, `Key`, ...), as its `ExtractMetadata` returned it.
///
/// Returns: 0, or `CLIP_EINVALID` for a NULL argument.
/// Ownership: `*out` belongs to the caller; free it with `clip_string_free`.
/// Thread-safety: any number of threads may call this on one archive at once.
#[unsafe(no_mangle)]
pub extern "C" fn clip_archive_info(out: *mut *mut c_char, archive: *const clip_archive) -> c_int {
    boundary("clip_archive_info", || {
        let out = c_out(out, "out")?;
        let a = c_ref(archive, "archive")?;
        let doc = match &a.archive {
            Opened::Clip(a) => a.info_json(),
            Opened::Go(g) => g.info_json(),
        };
        write_out(out, out_string(doc)?);
        Ok(())
    })
}

/// Closes an archive. NULL is ignored.
///
/// Ownership: takes `archive`, which must not be used again.
#[unsafe(no_mangle)]
pub extern "C" fn clip_archive_close(archive: *mut clip_archive) {
    boundary_void("clip_archive_close", || free_box(archive));
}
