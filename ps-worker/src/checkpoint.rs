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

/// The state of checkpoint `name` on every shard; with `wait`, once each
/// shard's file is durable or its write failed.
pub(crate) async fn status(
    shards: &Shards,
    name: &str,
    wait: bool,
) -> Result<Vec<pb::CheckpointStatusReply>, WorkerError> {
    let request = pb::CheckpointStatusRequest { name: name.to_string(), wait };
    shards
        .broadcast("checkpoint_status", wait, request, |mut c, r| async move { c.checkpoint_status(r).await })
        .await
}

/// Waits until checkpoint `name` is complete: every shard's file durable
/// and the manifest written.
pub(crate) async fn wait(shards: &Shards, name: &str) -> Result<CheckpointDone, WorkerError> {
    let replies = status(shards, name, true).await?;
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
    let replies = status(shards, name, false).await?;
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
