//! A registry blob as a [`crate::source::RangeSource`].

/// A layer blob in a registry, read with HTTP Range requests.
pub struct RegistrySource {}

use std::sync::Arc;

use crate::archive::{Archive, StorageRef};
use crate::error::{Error, Result};
use crate::source::RangeSource;

use super::RegistryOptions;

/// One source per layer of `archive`, fetched from the registry `storage` names.
pub fn layer_sources(
    _archive: &Archive,
    storage: &StorageRef,
    _opts: &RegistryOptions,
) -> Result<Vec<Arc<dyn RangeSource>>> {
    Err(Error::Unsupported(format!(
        "fetching layers from {}/{} is not implemented yet",
        storage.registry, storage.repository
    )))
}
