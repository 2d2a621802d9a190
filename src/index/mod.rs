//! Indexing: one streaming pass per layer ([`layer`]), then merging the layers'
//! entries, bottom first, into one tree ([`merge`]).

pub mod layer;
pub mod merge;

pub use layer::{LayerIndex, index_layer};
pub use merge::{TreeBuilder, merge};
