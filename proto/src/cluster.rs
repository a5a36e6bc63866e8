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

    /// Checks that the spec names at least one shard, that every entry is
    /// a `host:port` address (optionally after `http://` or `https://`),
    /// and that no two are the same; the error names the first entry that
    /// is not, and says what is expected.
    pub fn validate(&self) -> Result<(), String> {
        if self.shards.is_empty() {
            return Err("the shard list is empty: give every shard's host:port, in shard-id order".into());
        }
        for (i, addr) in self.shards.iter().enumerate() {
            let bare = addr.split_once("://").map_or(addr.as_str(), |(_, rest)| rest);
            let well_formed = bare.rsplit_once(':').is_some_and(|(host, port)| {
                !host.is_empty()
                    && !host.contains(char::is_whitespace)
                    && port.parse::<u16>().is_ok_and(|p| p > 0)
            });
            if !well_formed {
                return Err(format!(
                    "shard {i} of the shard list has an invalid address {addr:?}: expected host:port such as 127.0.0.1:7070"
                ));
            }
            if let Some(j) = self.shards[..i].iter().position(|a| a == addr) {
                return Err(format!(
                    "shards {j} and {i} of the shard list are both {addr}; each shard needs its own address"
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(list: &[&str]) -> ClusterSpec {
        ClusterSpec::new(list.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn a_shard_list_is_checked_entry_by_entry() {
        assert_eq!(spec(&["127.0.0.1:7070", "https://ps-1.example:443", "[::1]:7071"]).validate(), Ok(()));
        let err = |list: &[&str]| spec(list).validate().expect_err("refused");
        assert!(err(&[]).contains("empty"));
        assert!(
            err(&["127.0.0.1:18500", "", "foo"])
                .starts_with("shard 1 of the shard list has an invalid address \"\"")
        );
        assert!(
            err(&["127.0.0.1:18500", "foo"])
                .contains("shard 1 of the shard list has an invalid address \"foo\": expected host:port")
        );
        assert!(err(&["127.0.0.1:0"]).contains("shard 0"), "port 0 names no shard");
        assert!(err(&["not a uri:1"]).contains("shard 0"));
        assert!(err(&["a:1", "b:2", "a:1"]).contains("shards 0 and 2"));
    }
}
