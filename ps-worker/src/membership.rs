//! A worker's place in the job: joining every shard, catching up with a
//! shard restart, leaving, and waiting at a barrier.

use futures::future::try_join_all;
use ps_proto::{OptimizerConfig, Policy, WaitAt, pb};

use crate::connection::Shards;
use crate::declared::{Declared, TensorInfo};
use crate::error::{Restart, WorkerError};
use crate::held::Held;
use crate::job::{self, Histories, ShardView};

/// What the shards told a worker that joined.
#[derive(Clone, Debug)]
pub(crate) struct Joined {
    /// The clock to resume at: the lowest any shard reports.
    pub(crate) clock: u64,
    /// The lowest clock the worker may still pull everywhere: above
    /// `clock` when the sync rounds of `clock` were applied on some
    /// tensors already (see [`give_up_half_step`]).
    floor: u64,
    /// Per shard, where it resumes this worker (`u64::MAX` for a shard
    /// holding no tensor).
    shard_clocks: Vec<u64>,
    /// Workers in the job.
    pub(crate) num_workers: u32,
    /// Shard 0's session, which names checkpoints.
    pub(crate) session: Option<u64>,
    /// The job's default policy (every shard agrees).
    pub(crate) policy: Option<Policy>,
    /// The optimizer of tensors declared without one (every shard agrees).
    pub(crate) optimizer: Option<OptimizerConfig>,
}

/// Joins (or rejoins) every shard, checking that the shards are the ones
/// the cluster spec lists, that they were started for the same job, and
/// that the worker's id is in it. Shards found in different histories
/// (one restarted from a checkpoint the others were not rewound to) are
/// first rewound to the newest such checkpoint, so a worker relaunched
/// after any failure never mixes two histories.
pub(crate) async fn join(shards: &Shards) -> Result<Joined, WorkerError> {
    let (joined, histories) = join_once(shards).await?;
    match histories {
        Histories::Same if joined.floor > joined.clock => give_up_half_step(shards, &joined).await,
        Histories::Same => Ok(joined),
        Histories::Rewind(restart) => {
            tracing::warn!(
                worker = shards.config().worker,
                checkpoint = %restart.checkpoint,
                "the shards hold different histories: a shard came back from a checkpoint the others \
                 were not rewound to; rewinding every shard to it"
            );
            recover(shards, &restart).await
        }
    }
}

/// Clock `c`, where the worker resumes, cannot be read exactly on every
/// tensor: the sync rounds of `c` were applied on some already (a step of
/// this worker reached them before it stopped, or the other workers' steps
/// did before it joined). The worker then cannot take part in step `c`
/// exactly, so it gives it up where it did not arrive: on every shard still
/// at `c`, it leaves (the rounds of `c` close without its gradient, as for
/// an evicted worker) and joins again at `c + 1`. Where it arrived, it
/// counts.
async fn give_up_half_step(shards: &Shards, joined: &Joined) -> Result<Joined, WorkerError> {
    let worker = shards.config().worker;
    let (clock, floor) = (joined.clock, joined.floor);
    tracing::warn!(
        worker,
        clock,
        "clock {clock} cannot be read again exactly: its sync rounds were applied on some tensors (this \
         worker's step reached them before it stopped, or the other workers' steps did before it joined); \
         the rounds of clock {clock} still open close without this worker's gradient, and it resumes at \
         clock {floor}"
    );
    if let Some(metrics) = &shards.config().metrics {
        metrics.gave_up_clock();
    }
    let behind: Vec<u32> =
        joined.shard_clocks.iter().enumerate().filter(|(_, c)| **c < floor).map(|(s, _)| s as u32).collect();
    try_join_all(behind.iter().map(|&shard| async move {
        let leave = pb::LeaveRequest { worker };
        shards.call("leave", shard, None, false, &leave, |mut c, r| async move { c.leave(r).await }).await?;
        let join = pb::JoinRequest { worker, skip_to: floor };
        shards.call("join", shard, None, false, &join, |mut c, r| async move { c.join(r).await }).await
    }))
    .await?;
    let (joined, _) = join_once(shards).await?;
    if joined.clock != floor || joined.floor > joined.clock {
        return Err(WorkerError::Cluster(format!(
            "worker {worker} gave up clock {clock} but the shards resume it at clock {} (lowest clock \
             it may read: {}): restart every shard with --restore from the newest checkpoint",
            joined.clock, joined.floor
        )));
    }
    Ok(joined)
}

/// One join of every shard, with the checks of the job's settings; says
/// whether the shards' histories agree.
async fn join_once(shards: &Shards) -> Result<(Joined, Histories), WorkerError> {
    let worker = shards.config().worker;
    let n = shards.count();
    let replies = shards
        .broadcast("join", false, pb::JoinRequest { worker, skip_to: 0 }, |mut c, r| async move {
            c.join(r).await
        })
        .await?;
    for (shard, r) in replies.iter().enumerate() {
        if r.num_shards != n || r.shard != shard as u32 {
            let addr = shards.config().cluster.shards.get(shard).map_or("?", String::as_str);
            return Err(WorkerError::Cluster(format!(
                "the cluster spec lists {n} shard{}, but the shard at position {shard} ({addr}) says it is shard {} of {}: \
                 give the worker every shard's address, in shard-id order (the shards' --shards list)",
                if n == 1 { "" } else { "s" },
                r.shard,
                r.num_shards
            )));
        }
    }
    let views: Vec<ShardView> = replies.iter().map(ShardView::from_reply).collect();
    let spec = &shards.config().cluster;
    job::check_same_job(&views, &spec.shards, spec.split_threshold)?;
    if let Some(r) = replies.first()
        && worker >= r.num_workers
    {
        return Err(WorkerError::Cluster(format!(
            "worker id {worker} is out of range: this job's worker ids are 0 to {}: give each worker \
             an id below {} (the shards' --workers)",
            r.num_workers.saturating_sub(1),
            r.num_workers
        )));
    }
    let histories = job::compare_histories(&views, &spec.shards, worker)?;
    let joined = Joined {
        clock: views
            .iter()
            .filter(|v| v.has_tensors)
            .map(|v| v.clock)
            .min()
            .unwrap_or_else(|| replies.iter().map(|r| r.clock).min().unwrap_or(0)),
        floor: views.iter().filter(|v| v.has_tensors).map(|v| v.read_floor).max().unwrap_or(0),
        shard_clocks: views.iter().map(|v| if v.has_tensors { v.clock } else { u64::MAX }).collect(),
        num_workers: replies.first().map_or(0, |r| r.num_workers),
        session: replies.first().map(|r| r.session),
        policy: views.first().and_then(|v| v.policy),
        optimizer: views.first().and_then(|v| v.optimizer),
    };
    if let (Some(metrics), Some(policy)) = (&shards.config().metrics, joined.policy) {
        metrics.set_policy(&policy.to_string());
    }
    Ok((joined, histories))
}

/// Rewinds every shard to the checkpoint `restart` names (shards that
/// already did, or are the restarted one, change nothing), then joins again.
pub(crate) async fn recover(shards: &Shards, restart: &Restart) -> Result<Joined, WorkerError> {
    let worker = shards.config().worker;
    let request = pb::RewindRequest { checkpoint: restart.checkpoint.clone(), cause: restart.cause, worker };
    let replies =
        shards.broadcast("rewind", false, request, |mut c, r| async move { c.rewind(r).await }).await?;
    let rewound = replies.iter().filter(|r| r.rewound).count();
    let (joined, histories) = join_once(shards).await?;
    if let Histories::Rewind(other) = histories {
        return Err(WorkerError::Cluster(format!(
            "after rewinding every shard to {}, the shards still come from different checkpoints \
             (one from {}): restart every shard with --restore",
            restart.checkpoint, other.checkpoint
        )));
    }
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

/// Waits until every live worker has completed `clock` clocks on every
/// shard; says every few seconds on which shards and for whom it waits.
pub(crate) async fn barrier(shards: &Shards, tensors: &Declared, clock: u64) -> Result<(), WorkerError> {
    let worker = shards.config().worker;
    let request = pb::BarrierRequest { worker, clock };
    let infos: Vec<&TensorInfo> = tensors.iter().collect();
    let (request, infos) = (&request, infos.as_slice());
    try_join_all((0..shards.count()).map(|shard| async move {
        let held = Held { shards, shard, op: "barrier", clock, wait: WaitAt::Barrier(clock), tensors: infos };
        let call =
            shards.call("barrier", shard, None, true, request, |mut c, r| async move { c.barrier(r).await });
        held.awaiting(call).await
    }))
    .await?;
    Ok(())
}
