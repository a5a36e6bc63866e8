//! Consistent checkpoints: requesting one at a clock, asking how far each
//! shard's share has got, and waiting until it is complete.

use ps_proto::pb;

use crate::connection::Shards;
use crate::error::WorkerError;

/// A checkpoint whose every shard file and manifest are durable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointDone {
    /// Directory name of the checkpoint.
    pub name: String,
    /// Its path (as shard 0 sees it).
    pub dir: String,
    /// Its clock: it holds the updates of clocks `< clock`.
    pub clock: u64,
    /// Bytes of all shard files.
    pub bytes: u64,
}

/// How far one shard's share of a checkpoint has got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointStatus {
    /// The state of this shard's share.
    pub state: CheckpointState,
    /// Whether the whole checkpoint is complete: every shard's file is
    /// durable and the manifest is written.
    pub complete: bool,
}

/// The state of one shard's share of a checkpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckpointState {
    /// Waiting for the shard's parts to reach the checkpoint's clock.
    Capturing {
        /// Parts captured so far.
        captured: u32,
        /// Parts in the checkpoint.
        expected: u32,
    },
    /// Every part is captured; the shard's file is being written.
    Writing,
    /// The shard's file is durable.
    Written {
        /// Bytes of the shard's file.
        bytes: u64,
    },
    /// The shard could not write its file (training goes on).
    Failed {
        /// The shard's message.
        error: String,
    },
}

impl CheckpointStatus {
    /// The status `reply` of shard `shard` for checkpoint `name`, or why it is malformed.
    fn from_pb(name: &str, shard: u32, reply: pb::CheckpointStatusReply) -> Result<Self, WorkerError> {
        let state = match pb::CheckpointState::try_from(reply.state) {
            Ok(pb::CheckpointState::Capturing) => {
                CheckpointState::Capturing { captured: reply.captured, expected: reply.expected }
            }
            Ok(pb::CheckpointState::Writing) => CheckpointState::Writing,
            Ok(pb::CheckpointState::Written) => CheckpointState::Written { bytes: reply.bytes },
            Ok(pb::CheckpointState::Failed) => CheckpointState::Failed { error: reply.error },
            Ok(pb::CheckpointState::Unspecified) | Err(_) => {
                return Err(WorkerError::Checkpoint {
                    name: name.into(),
                    shard,
                    error: format!("the shard reports an unknown state {}", reply.state),
                });
            }
        };
        Ok(Self { state, complete: reply.complete })
    }
}

/// Requests the checkpoint at `clock` on every shard and returns its name.
/// `session` is shard 0's; `worker` is the joined worker asking, if any.
pub(crate) async fn request(
    shards: &Shards,
    clock: u64,
    session: u64,
    worker: Option<u32>,
) -> Result<String, WorkerError> {
    let request = pb::CheckpointRequest { clock, session, worker };
    let replies = shards
        .broadcast("checkpoint", false, request, |mut c, r| async move { c.checkpoint(r).await })
        .await?;
    Ok(replies.into_iter().next().map(|r| r.name).unwrap_or_default())
}

/// The replies of every shard about checkpoint `name`; with `wait`, once
/// each shard's file is durable or its write failed.
async fn shard_replies(
    shards: &Shards,
    name: &str,
    wait: bool,
) -> Result<Vec<pb::CheckpointStatusReply>, WorkerError> {
    let request = pb::CheckpointStatusRequest { name: name.to_string(), wait };
    shards
        .broadcast("checkpoint_status", wait, request, |mut c, r| async move { c.checkpoint_status(r).await })
        .await
}

/// The state of checkpoint `name` on every shard, in shard order; with
/// `wait`, once each shard's file is durable or its write failed.
pub(crate) async fn status(
    shards: &Shards,
    name: &str,
    wait: bool,
) -> Result<Vec<CheckpointStatus>, WorkerError> {
    let replies = shard_replies(shards, name, wait).await?;
    replies
        .into_iter()
        .enumerate()
        .map(|(shard, r)| CheckpointStatus::from_pb(name, shard as u32, r))
        .collect()
}

/// Waits until checkpoint `name` is complete: every shard's file durable
/// and the manifest written.
pub(crate) async fn wait(shards: &Shards, name: &str) -> Result<CheckpointDone, WorkerError> {
    let replies = shard_replies(shards, name, true).await?;
    for (shard, r) in replies.iter().enumerate() {
        if r.state() != pb::CheckpointState::Written {
            return Err(WorkerError::Checkpoint {
                name: name.into(),
                shard: shard as u32,
                error: if r.error.is_empty() { format!("state {:?}", r.state()) } else { r.error.clone() },
            });
        }
    }
    // The last shard to write its share writes the manifest before it reports.
    let replies = shard_replies(shards, name, false).await?;
    let first = replies.first().cloned().unwrap_or_default();
    if !replies.iter().any(|r| r.complete) {
        return Err(WorkerError::Checkpoint {
            name: name.into(),
            shard: 0,
            error: format!("every shard file is written but {}/manifest.json is missing", first.dir),
        });
    }
    Ok(CheckpointDone {
        name: name.into(),
        dir: first.dir,
        clock: first.clock,
        bytes: replies.iter().map(|r| r.bytes).sum(),
    })
}
