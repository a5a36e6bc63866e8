//! The sync-policy comparison: the same training job under sync, ssp and
//! async on a parameter-server cluster, against a compute-only baseline.
//!
//! # Layout
//! - [`run`]: one policy's run — worker threads, an observer taking parameter snapshots.
//! - [`baseline`]: the same model trained in one process without the server.
//! - [`consistency`]: the checker of session guarantees and staleness over recorded reads.
//! - [`report`]: CSV, the summary and consistency tables.
//! - [`plot`]: accuracy and loss curves as PNG and SVG.

pub mod baseline;
pub mod consistency;
pub mod plot;
pub mod report;
pub mod run;
