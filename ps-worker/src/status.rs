//! What each shard reports of itself.

use ps_proto::pb;

use crate::connection::Shards;
use crate::error::WorkerError;

/// The status of every shard, in shard order.
pub(crate) async fn status(shards: &Shards) -> Result<Vec<pb::StatusReply>, WorkerError> {
    shards.broadcast("status", false, pb::StatusRequest {}, |mut c, r| async move { c.status(r).await }).await
}

/// Shard 0's session, which names checkpoints.
pub(crate) async fn session(shards: &Shards) -> Result<u64, WorkerError> {
    let reply = shards
        .call("status", 0, None, false, &pb::StatusRequest {}, |mut c, r| async move { c.status(r).await })
        .await?;
    Ok(reply.session)
}
