//! Consistent checkpoints: cuts at a clock, their durable on-disk form, and restore.
//!
//! A checkpoint at clock `c` holds exactly the updates of clocks `< c` of
//! every worker on every tensor part, in every policy:
//! - [`cut`]: the pure per-part state machine that captures the part at `c`
//!   (copy-on-write; in ssp and async a shadow copy keeps early updates of
//!   clocks `>= c` out of the snapshot).
//! - [`format`]: directory layout, safetensors keys, the JSON manifest.
//! - [`write`]: writing one shard's files atomically and, once every shard's
//!   files are durable, the manifest that makes the checkpoint exist.
//! - [`verify`]: the manifest against its checksum, and against the
//!   directory name, the shard fragments and the shard files' metadata.
//! - [`retention`]: listing the root, retiring old and failed checkpoints
//!   (out of sight first), cleaning up what a kill left behind.
//! - [`registry`]: a shard's checkpoints in flight and their bound.
//! - [`restore`]: finding the newest complete, checksum-valid checkpoint and
//!   re-partitioning it onto a (possibly different) set of shards.

pub mod cut;
pub mod error;
pub mod format;
pub mod registry;
pub mod restore;
pub mod retention;
pub mod verify;
pub mod write;

pub use cut::{CutId, PartCuts, PartSnapshot};
pub use error::CheckpointError;
pub use format::{Manifest, checkpoint_name};
pub use restore::{Loaded, Skipped, find_checkpoint};
pub use write::{CutInfo, Written, write_shard_cut};
