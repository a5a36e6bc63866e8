//! The on-disk form of a checkpoint.
//!
//! ```text
//! ROOT/ckpt-<clock:012>-<session:016x>/
//!     shard-0000.safetensors   values and optimizer state of shard 0's parts
//!     shard-0000.json          shard 0's fragment: its file's checksum and parts
//!     ...
//!     manifest.sha256          the manifest's SHA-256 (`sha256sum -c` format), renamed in first
//!     manifest.json            renamed in last: the checkpoint exists once it does
//! ```
//!
//! Beside the checkpoints, the root may hold `.retired-<name>` (a checkpoint
//! being deleted: renamed out of sight first, so a kill while deleting leaves
//! nothing that looks like a damaged checkpoint) and `.failed-<name>` (an
//! empty marker: checkpoint `<name>` failed on some shard, so no shard writes
//! into it again). Both are removed at the next start or prune.
//!
//! In a shard file every tensor part is a 1-D f32 array: `params/<tensor>` for
//! the values and `<slot>/<tensor>` for each optimizer state slot (`momentum`,
//! `adam_m`, `adam_v`, `adagrad_accumulator`). The manifest lists, per
//! tensor, its shape and the element range each part covers, so concatenating
//! the parts in offset order and reshaping gives the whole tensor. The file's
//! safetensors metadata repeats what the manifest says of it: `format`,
//! `checkpoint` (the directory name), `clock`, `shard`, and per part
//! `steps/<tensor>` (optimizer steps applied), so each can be cross-checked.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::Aggregation;
use crate::optim::OptimizerConfig;
use crate::sync::Policy;

/// The manifest format this build writes and the newest it reads.
pub const FORMAT_VERSION: u32 = 2;

/// File name of the manifest inside a checkpoint directory.
pub const MANIFEST: &str = "manifest.json";

/// File name of the manifest's checksum inside a checkpoint directory: one
/// line, `<sha256 hex>  manifest.json`, as `sha256sum` writes and checks it.
pub const MANIFEST_SHA256: &str = "manifest.sha256";

/// Prefix of a checkpoint directory being deleted (renamed out of sight first).
pub const RETIRED_PREFIX: &str = ".retired-";

/// Prefix of the empty marker directory of a checkpoint that failed on some shard.
pub const FAILED_PREFIX: &str = ".failed-";

/// The line of [`MANIFEST_SHA256`] for a manifest whose SHA-256 is `sha256`.
pub fn manifest_sha256_line(sha256: &str) -> String {
    format!("{sha256}  {MANIFEST}\n")
}

/// The SHA-256 a [`MANIFEST_SHA256`] line gives for the manifest, if it is one.
pub fn parse_manifest_sha256(line: &str) -> Option<&str> {
    let (hex, name) = line.trim_end_matches('\n').split_once("  ")?;
    let valid = hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase());
    (valid && name == MANIFEST).then_some(hex)
}

/// Safetensors metadata key of the optimizer steps applied to a tensor part.
pub fn steps_key(tensor: &str) -> String {
    format!("steps/{tensor}")
}

/// Directory name of the checkpoint at `clock` requested in shard 0's `session`.
pub fn checkpoint_name(clock: u64, session: u64) -> String {
    format!("ckpt-{clock:012}-{session:016x}")
}

/// The clock and session of a checkpoint directory name, if it is one.
pub fn parse_name(name: &str) -> Option<(u64, u64)> {
    let rest = name.strip_prefix("ckpt-")?;
    let (clock, session) = rest.split_once('-')?;
    Some((clock.parse().ok()?, u64::from_str_radix(session, 16).ok()?))
}

/// Name of shard `shard`'s safetensors file.
pub fn shard_file(shard: u32) -> String {
    format!("shard-{shard:04}.safetensors")
}

/// Name of shard `shard`'s fragment.
pub fn fragment_file(shard: u32) -> String {
    format!("shard-{shard:04}.json")
}

/// Safetensors key of a tensor part's values.
pub fn values_key(tensor: &str) -> String {
    format!("params/{tensor}")
}

/// Safetensors key of one optimizer state slot of a tensor part.
pub fn slot_key(slot: &str, tensor: &str) -> String {
    format!("{slot}/{tensor}")
}

/// One file of a checkpoint and its checksum.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// File name inside the checkpoint directory.
    pub name: String,
    /// Size in bytes.
    pub bytes: u64,
    /// SHA-256 of the whole file, lower-case hex.
    pub sha256: String,
}

/// Where one part of a tensor is stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PartEntry {
    /// The shard that held the part.
    pub shard: u32,
    /// First element of the tensor in this part.
    pub offset: u64,
    /// Elements in this part.
    pub len: u64,
    /// The safetensors file that stores it.
    pub file: String,
    /// Key of the values in that file.
    pub key: String,
    /// Key of each optimizer state slot, by slot name.
    pub slots: BTreeMap<String, String>,
    /// Optimizer steps applied to the part.
    pub optimizer_steps: u64,
}

/// One tensor: what it is and where its parts are.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TensorEntry {
    /// Tensor name.
    pub name: String,
    /// Shape of the whole tensor (row-major).
    pub shape: Vec<u64>,
    /// Its policy, written as its text form (`sync`, `ssp(3)`, `async`).
    pub policy: Policy,
    /// Whether NaN/Inf gradients are accepted.
    pub allow_non_finite: bool,
    /// Its optimizer's hyper-parameters.
    pub optimizer: OptimizerConfig,
    /// Its parts in offset order; together they cover every element once.
    pub parts: Vec<PartEntry>,
}

impl TensorEntry {
    /// Elements in the whole tensor.
    pub fn numel(&self) -> u64 {
        self.shape.iter().product()
    }
}

/// One shard's share of a checkpoint, written after its safetensors file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Fragment {
    /// Format version.
    pub format: u32,
    /// The checkpoint's directory name.
    pub name: String,
    /// The checkpoint's clock.
    pub clock: u64,
    /// The shard that wrote it.
    pub shard: u32,
    /// The cluster and job that wrote it.
    #[serde(flatten)]
    pub job: JobEntry,
    /// When the shard's file became durable (Unix milliseconds).
    pub written_unix_ms: u64,
    /// The shard's safetensors file.
    pub file: FileEntry,
    /// The shard's tensor parts, one part per entry.
    pub tensors: Vec<TensorEntry>,
}

/// What every shard of a cluster agrees on, recorded with each checkpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobEntry {
    /// Shards in the cluster.
    pub num_shards: u32,
    /// Tensors with at least this many elements are split over all shards.
    pub split_threshold: u64,
    /// Workers in the job.
    pub num_workers: u32,
    /// The cluster's default policy (text form).
    pub policy: Policy,
    /// How gradients are combined.
    pub aggregation: Aggregation,
}

/// The cluster a checkpoint was taken on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterEntry {
    /// Shards.
    pub num_shards: u32,
    /// Tensors with at least this many elements were split over all shards.
    pub split_threshold: u64,
}

/// A complete checkpoint: written last; without it the directory is not a checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Format version ([`FORMAT_VERSION`] when written by this build).
    pub format: u32,
    /// The checkpoint's directory name.
    pub name: String,
    /// Holds exactly the updates of clocks `< clock` of every worker.
    pub clock: u64,
    /// The cluster's default policy (text form).
    pub policy: Policy,
    /// How gradients were combined.
    pub aggregation: Aggregation,
    /// Workers in the job.
    pub num_workers: u32,
    /// The cluster that wrote it.
    pub cluster: ClusterEntry,
    /// When the last shard file became durable (Unix milliseconds).
    pub created_unix_ms: u64,
    /// Every tensor, by name.
    pub tensors: Vec<TensorEntry>,
    /// Every shard file with its checksum.
    pub files: Vec<FileEntry>,
}

impl Manifest {
    /// Merges the fragments of every shard `0..num_shards` into a manifest,
    /// checking that they belong to one checkpoint and that every tensor's
    /// parts cover it exactly once. Deterministic: any shard merging the same
    /// fragments writes the same bytes.
    pub fn merge(mut fragments: Vec<Fragment>) -> Result<Manifest, String> {
        fragments.sort_by_key(|f| f.shard);
        let first = fragments.first().ok_or("no fragments")?.clone();
        for (i, f) in fragments.iter().enumerate() {
            if f.shard != i as u32 {
                return Err(format!("fragment of shard {i} is missing"));
            }
            let same = f.name == first.name
                && f.clock == first.clock
                && f.job == first.job
                && f.format == first.format;
            if !same {
                return Err(format!(
                    "fragment of shard {i} belongs to another checkpoint ({} at clock {}, {} shards)",
                    f.name, f.clock, f.job.num_shards
                ));
            }
        }
        if fragments.len() != first.job.num_shards as usize {
            return Err(format!("{} of {} fragments present", fragments.len(), first.job.num_shards));
        }
        let mut tensors: BTreeMap<String, TensorEntry> = BTreeMap::new();
        for f in &fragments {
            for t in &f.tensors {
                match tensors.get_mut(&t.name) {
                    None => {
                        tensors.insert(t.name.clone(), t.clone());
                    }
                    Some(existing) if existing.shape == t.shape => existing.parts.extend(t.parts.clone()),
                    Some(existing) => {
                        return Err(format!(
                            "tensor {:?} has shape {:?} on one shard and {:?} on shard {}",
                            t.name, existing.shape, t.shape, f.shard
                        ));
                    }
                }
            }
        }
        for t in tensors.values_mut() {
            t.parts.sort_by_key(|p| p.offset);
            let mut next = 0;
            for p in &t.parts {
                if p.offset != next {
                    return Err(format!(
                        "tensor {:?}: parts leave elements {next}..{} uncovered or covered twice",
                        t.name, p.offset
                    ));
                }
                next = p.offset + p.len;
            }
            if next != t.numel() {
                return Err(format!("tensor {:?}: parts cover {next} of {} elements", t.name, t.numel()));
            }
        }
        Ok(Manifest {
            format: first.format,
            name: first.name.clone(),
            clock: first.clock,
            policy: first.job.policy,
            aggregation: first.job.aggregation,
            num_workers: first.job.num_workers,
            cluster: ClusterEntry {
                num_shards: first.job.num_shards,
                split_threshold: first.job.split_threshold,
            },
            created_unix_ms: fragments.iter().map(|f| f.written_unix_ms).max().unwrap_or(0),
            tensors: tensors.into_values().collect(),
            files: fragments.into_iter().map(|f| f.file).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fragment(shard: u32, parts: &[(u64, u64)]) -> Fragment {
        Fragment {
            format: FORMAT_VERSION,
            name: checkpoint_name(4, 7),
            clock: 4,
            shard,
            job: JobEntry {
                num_shards: 2,
                split_threshold: 8,
                num_workers: 2,
                policy: Policy::SYNC,
                aggregation: Aggregation::Mean,
            },
            written_unix_ms: 100 + u64::from(shard),
            file: FileEntry { name: shard_file(shard), bytes: 1, sha256: "00".into() },
            tensors: parts
                .iter()
                .map(|&(offset, len)| TensorEntry {
                    name: "w".into(),
                    shape: vec![4, 4],
                    policy: Policy::SYNC,
                    allow_non_finite: false,
                    optimizer: OptimizerConfig::sgd(0.1),
                    parts: vec![PartEntry {
                        shard,
                        offset,
                        len,
                        file: shard_file(shard),
                        key: values_key("w"),
                        slots: BTreeMap::new(),
                        optimizer_steps: 4,
                    }],
                })
                .collect(),
        }
    }

    #[test]
    fn names_round_trip() {
        assert_eq!(parse_name(&checkpoint_name(20, 0xabc)), Some((20, 0xabc)));
        assert_eq!(parse_name("ckpt-x-1"), None);
        assert_eq!(parse_name("other"), None);
        for p in [Policy::SYNC, Policy::ASYNC, Policy::ssp(3)] {
            let json = serde_json::to_string(&p).unwrap();
            assert_eq!(json, format!("\"{p}\""), "manifests hold the text form");
            assert_eq!(serde_json::from_str::<Policy>(&json).unwrap(), p);
        }
        assert!(serde_json::from_str::<Policy>("\"ssp(x)\"").is_err());
    }

    #[test]
    fn manifest_sha256_lines_round_trip_and_refuse_other_lines() {
        let hex = "ab".repeat(32);
        assert_eq!(parse_manifest_sha256(&manifest_sha256_line(&hex)), Some(hex.as_str()));
        assert_eq!(parse_manifest_sha256(&format!("{hex}  other.json\n")), None);
        assert_eq!(parse_manifest_sha256(&format!("{}  manifest.json\n", &hex[1..])), None);
        assert_eq!(parse_manifest_sha256(""), None);
    }

    #[test]
    fn merge_stitches_parts_in_offset_order() {
        let m = Manifest::merge(vec![fragment(1, &[(8, 8)]), fragment(0, &[(0, 8)])]).unwrap();
        assert_eq!(m.tensors[0].parts.iter().map(|p| p.offset).collect::<Vec<_>>(), vec![0, 8]);
        assert_eq!(m.created_unix_ms, 101);
        assert_eq!(m.files.len(), 2);
    }

    #[test]
    fn merge_refuses_gaps_missing_shards_and_mixed_checkpoints() {
        assert!(Manifest::merge(vec![fragment(0, &[(0, 8)])]).unwrap_err().contains("1 of 2"));
        assert!(Manifest::merge(vec![fragment(0, &[(0, 8)]), fragment(1, &[(9, 7)])]).is_err());
        let mut other = fragment(1, &[(8, 8)]);
        other.clock = 8;
        assert!(
            Manifest::merge(vec![fragment(0, &[(0, 8)]), other]).unwrap_err().contains("another checkpoint")
        );
    }
}
