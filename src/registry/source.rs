//! A registry blob as a [`RangeSource`]: what a mount reads layers through when the
//! archive's storage reference names a registry.

use std::sync::Arc;

use crate::archive::{Archive, StorageRef};
use crate::digest::Digest;
use crate::error::Result;
use crate::source::RangeSource;

use super::{Client, RegistryOptions};

/// A layer blob in a registry, read with one HTTP Range request per read.
#[derive(Debug)]
pub struct RegistrySource {
    client: Arc<Client>,
    digest: Digest,
    size: u64,
}

impl RegistrySource {
    /// The blob `digest` of `size` bytes, through `client`. Nothing is sent until
    /// the first read.
    pub fn new(client: Arc<Client>, digest: Digest, size: u64) -> RegistrySource {
        RegistrySource {
            client,
            digest,
            size,
        }
    }
}

impl RangeSource for RegistrySource {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        if offset
            .checked_add(buf.len() as u64)
            .is_none_or(|e| e > self.size)
        {
            return Err(crate::error::Error::format(format!(
                "{}: read of {} bytes at {offset} is past its end ({} bytes)",
                self.describe(),
                buf.len(),
                self.size
            )));
        }
        self.client.read_range(&self.digest, offset, buf)
    }

    fn describe(&self) -> String {
        format!("registry blob {}@{}", self.client.name(), self.digest)
    }

    fn reader<'a>(&'a self, start: u64, end: u64) -> Result<Box<dyn std::io::Read + Send + 'a>> {
        let end = end.min(self.size);
        Ok(Box::new(self.client.open_blob_range(
            self.digest,
            start.min(end),
            end,
        )))
    }
}

/// One source per layer of `archive`, fetched from the registry `storage` names
/// (one client, so one token, shared by all layers). No request is sent here: a
/// mount comes up without touching the network.
pub fn layer_sources(
    archive: &Archive,
    storage: &StorageRef,
    opts: &RegistryOptions,
) -> Result<Vec<Arc<dyn RangeSource>>> {
    let client = Arc::new(Client::new(&storage.registry, &storage.repository, opts)?);
    Ok(archive
        .layers
        .iter()
        .map(|l| {
            Arc::new(RegistrySource::new(
                Arc::clone(&client),
                l.digest,
                l.compressed_size,
            )) as Arc<dyn RangeSource>
        })
        .collect())
}
