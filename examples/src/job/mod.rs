//! The built-in training job: Fashion-MNIST (or any IDX set in its layout)
//! classified by softmax regression or an MLP, trained through the
//! parameter server. Used by the `ps-worker` binary and the `compare` example.
//!
//! - [`idx`]: the IDX file reader.
//! - [`data`]: data sets, checksums and each worker's disjoint share.
//! - [`model`]: forward and backward passes.
//! - [`train`]: one worker's loop, stragglers and step records.

pub mod data;
pub mod idx;
pub mod model;
pub mod train;
