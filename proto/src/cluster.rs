//! The cluster spec: the one description of a job that every shard and worker shares.

use serde::{Deserialize, Serialize};

/// Tensors with at least this many elements are split across all shards by default.
pub const DEFAULT_SPLIT_THRESHOLD: u64 = 1 << 20;

/// Shards and placement settings of a cluster.
///
/// Two processes with equal specs compute identical tensor placements.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterSpec {
    /// gRPC address (`host:port`) of each shard, indexed by shard id.
    pub shards: Vec<String>,
    /// Tensors with at least this many elements are split into contiguous
    /// ranges over all shards; smaller ones live whole on one shard.
    #[serde(default = "default_split_threshold")]
    pub split_threshold: u64,
}

fn default_split_threshold() -> u64 {
    DEFAULT_SPLIT_THRESHOLD
}

impl ClusterSpec {
    /// A spec over the given shard addresses with the default split threshold.
    pub fn new(shards: Vec<String>) -> Self {
        Self { shards, split_threshold: DEFAULT_SPLIT_THRESHOLD }
    }

    /// Number of shards.
    pub fn num_shards(&self) -> u32 {
        self.shards.len() as u32
    }
}
