//! Random access to a blob: the seam between the codec and where bytes live.
//!
//! [`RangeSource`] is implemented by [`FileSource`] (pread on a local file: a layout
//! blob, or the data section of a v1 archive) and, later, by the registry client
//! (HTTP Range). Everything above it (span decoding, the content store, the FUSE
//! filesystem) is written against the trait only.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};

/// A blob that can be read at any offset. Implementations are shared between
/// threads.
pub trait RangeSource: Send + Sync {
    /// Total size of the blob in bytes.
    fn size(&self) -> u64;
    /// Fills `buf` with the bytes at `offset`; a range past the end is an error.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()>;
    /// A human-readable name for errors ("layout blob /x/blobs/sha256/ab..").
    fn describe(&self) -> String;
    /// A sequential reader over `[start, end)`. The default reads in chunks with
    /// [`RangeSource::read_at`]; a remote source overrides it to fetch the range in
    /// one request.
    fn reader<'a>(&'a self, start: u64, end: u64) -> Result<Box<dyn std::io::Read + Send + 'a>> {
        Ok(Box::new(RangeReader::new(self, start, end)))
    }
}

/// A [`RangeSource`] over a window of a local file.
#[derive(Debug)]
pub struct FileSource {
    file: File,
    path: PathBuf,
    base: u64,
    size: u64,
}

impl FileSource {
    /// Opens the whole file.
    pub fn open(path: &Path) -> Result<FileSource> {
        let file = File::open(path).ctx("opening", path)?;
        let size = file.metadata().ctx("reading metadata of", path)?.len();
        Ok(FileSource {
            file,
            path: path.to_path_buf(),
            base: 0,
            size,
        })
    }

    /// A source over `len` bytes of `file` starting at `base`.
    pub fn window(file: File, path: &Path, base: u64, len: u64) -> FileSource {
        FileSource {
            file,
            path: path.to_path_buf(),
            base,
            size: len,
        }
    }
}

impl RangeSource for FileSource {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let end = offset.checked_add(buf.len() as u64);
        if end.is_none_or(|e| e > self.size) {
            return Err(Error::format(format!(
                "{}: read of {} bytes at {offset} is past its end ({} bytes)",
                self.describe(),
                buf.len(),
                self.size
            )));
        }
        self.file
            .read_exact_at(buf, self.base + offset)
            .ctx("reading", &self.path)
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}

/// Sequential reads of `[start, end)` of a [`RangeSource`], in chunks.
pub struct RangeReader<'a, S: RangeSource + ?Sized> {
    source: &'a S,
    pos: u64,
    end: u64,
    /// Bytes read from the source so far.
    pub bytes_read: u64,
}

impl<'a, S: RangeSource + ?Sized> RangeReader<'a, S> {
    /// A reader over `[start, end)` of `source`.
    pub fn new(source: &'a S, start: u64, end: u64) -> RangeReader<'a, S> {
        RangeReader {
            source,
            pos: start,
            end: end.min(source.size()),
            bytes_read: 0,
        }
    }
}

impl<S: RangeSource + ?Sized> std::io::Read for RangeReader<'_, S> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = (self.end.saturating_sub(self.pos)).min(buf.len() as u64) as usize;
        if n == 0 {
            return Ok(0);
        }
        self.source
            .read_at(self.pos, &mut buf[..n])
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        self.pos += n as u64;
        self.bytes_read += n as u64;
        Ok(n)
    }
}
