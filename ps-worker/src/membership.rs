//! A worker's place in the job: joining every shard, catching up with a
//! shard restart, leaving, and waiting at a barrier.

use ps_proto::pb;

use crate::connection::Shards;
use crate::error::{Restart, WorkerError};

/// What the shards told a worker that joined.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Joined {
    /// The clock to resume at: the lowest any shard reports.
    pub(crate) clock: u64,
    /// Workers in the job.
    pub(crate) num_workers: u32,
    /// Shard 0's session, which names checkpoints.
    pub(crate) session: Option<u64>,
}

/// Joins (or rejoins) every shard, checking that the shards are the ones
/// the cluster spec lists and that the worker's id is in the job.
pub(crate) async fn join(shards: &Shards) -> Result<Joined, WorkerError> {
    let worker = shards.config().worker;
    let n = shards.count();
    let replies = shards
        .broadcast("join", false, pb::JoinRequest { worker }, |mut c, r| async move { c.join(r).await })
        .await?;
    for (shard, r) in replies.iter().enumerate() {
        if r.num_shards != n || r.shard != shard as u32 {
            return Err(WorkerError::Cluster(format!(
                "the cluster spec lists {n} shards, but the shard at position {shard} says it is shard {} of {}",
                r.shard, r.num_shards
            )));
        }
        if worker >= r.num_workers {
            return Err(WorkerError::Cluster(format!(
                "worker id {worker} is out of range: the job has workers 0..{}",
                r.num_workers
            )));
        }
    }
    Ok(Joined {
        clock: replies.iter().map(|r| r.clock).min().unwrap_or(0),
        num_workers: replies.first().map_or(0, |r| r.num_workers),
        session: replies.first().map(|r| r.session),
    })
}

/// Rewinds every shard to the checkpoint `restart` names (shards that
/// already did, or are the restarted one, change nothing), then joins again.
pub(crate) async fn recover(shards: &Shards, restart: &Restart) -> Result<Joined, WorkerError> {
    let worker = shards.config().worker;
    let request = pb::RewindRequest { checkpoint: restart.checkpoint.clone(), cause: restart.cause, worker };
    let replies =
        shards.broadcast("rewind", false, request, |mut c, r| async move { c.rewind(r).await }).await?;
    let rewound = replies.iter().filter(|r| r.rewound).count();
    let joined = join(shards).await?;
    tracing::warn!(
        worker,
        checkpoint = %restart.checkpoint,
        clock = joined.clock,
        shards_rewound_now = rewound,
        "a shard restarted from a checkpoint; every shard is back there and this worker resumes"
    );
    Ok(joined)
}

/// Leaves the job on every shard.
pub(crate) async fn leave(shards: &Shards) -> Result<(), WorkerError> {
    let worker = shards.config().worker;
    shards
        .broadcast("leave", false, pb::LeaveRequest { worker }, |mut c, r| async move { c.leave(r).await })
        .await?;
    Ok(())
}

/// Waits until every live worker has completed `clock` clocks on every shard.
pub(crate) async fn barrier(shards: &Shards, clock: u64) -> Result<(), WorkerError> {
    let worker = shards.config().worker;
    let request = pb::BarrierRequest { worker, clock };
    shards.broadcast("barrier", true, request, |mut c, r| async move { c.barrier(r).await }).await?;
    Ok(())
}
