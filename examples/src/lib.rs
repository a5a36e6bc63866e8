//! The built-in training job and the sync-policy comparison: Fashion-MNIST
//! classified by softmax regression or an MLP, trained through the parameter
//! server, and the same job under sync, ssp and async against a compute-only
//! baseline.
//!
//! # Layout
//! - [`job`]: the training job — IDX data, models, one worker's loop. Used by
//!   the `ps-worker` binary and by `compare`.
//! - [`access`]: command-line flags for a cluster that requires a token or TLS.
//! - [`run`]: one policy's run — worker threads, an observer taking parameter snapshots.
//! - [`baseline`]: the same model trained in one process without the server.
//! - [`consistency`]: the checker of session guarantees and staleness over recorded reads.
//! - [`report`]: CSV, the summary and consistency tables.
//! - [`plot`]: accuracy and loss curves as PNG and SVG.
//!
//! Binaries: `ps-worker` (one worker of the job against running shards, and
//! the operator's `ps-worker checkpoint`) and `compare` (the main job).

pub mod access;
pub mod baseline;
pub mod consistency;
pub mod job;
pub mod plot;
pub mod report;
pub mod run;

/// The README, whose Rust example runs as a doctest, so the library example
/// a newcomer copies always compiles and works.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeExample;
