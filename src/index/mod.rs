//! Indexing: one streaming pass per layer ([`layer`]), then merging the layers'
//! entries, bottom first, into one tree ([`merge`]). What a layer's pass produced
//! can be kept and reused through the layer-index cache ([`cache`]).

pub mod cache;
pub mod layer;
pub mod merge;

pub use layer::{LayerIndex, index_layer};
pub use merge::{TreeBuilder, merge};
