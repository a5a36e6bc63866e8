//! What each shard reports of itself: [`ShardStatus`], for monitoring and
//! operators' tools.

use ps_proto::{Policy, WaitAt, pb};

use crate::connection::Shards;
use crate::error::WorkerError;

/// What one shard reports of itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardStatus {
    /// The shard's id, as the shard knows it.
    pub shard: u32,
    /// The number of shards of its cluster, as the shard knows it.
    pub num_shards: u32,
    /// The number of workers of the job.
    pub num_workers: u32,
    /// The policy of tensors declared without one.
    pub default_policy: Policy,
    /// The workers the shard counts as live, in id order.
    pub live_workers: Vec<u32>,
    /// The tensor parts the shard holds.
    pub tensors: Vec<TensorStatus>,
    /// Whether the shard writes checkpoints (started with a checkpoint directory).
    pub checkpoints: bool,
}

/// One tensor part a shard holds, as the shard reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorStatus {
    /// The tensor's name on the shards (after the worker's namespace, if any).
    pub name: String,
    /// The part's first element.
    pub offset: u64,
    /// The part's number of elements.
    pub len: u64,
    /// The tensor's policy (with its staleness bound, for ssp).
    pub policy: Policy,
    /// Per worker, the highest clock applied to the part (-1: none).
    pub versions: Vec<i64>,
    /// Sync: rounds applied; ssp and async: the lowest clock of the live workers.
    pub applied_clock: u64,
}

impl ShardStatus {
    /// The status `reply` of shard `shard`, or why it is malformed.
    fn from_pb(shard: u32, reply: pb::StatusReply) -> Result<Self, WorkerError> {
        let policy = |value: i32, staleness: u32, backup: u32, scaling: i32, tensor: &str| {
            match Policy::from_pb(value, Some(staleness), 0, backup, scaling) {
                Ok(Some(policy)) => Ok(policy),
                Ok(None) => Err("no policy in the status reply".to_string()),
                Err(e) => Err(format!("{e} in the status reply")),
            }
            .map_err(|detail| WorkerError::Protocol { shard, tensor: tensor.into(), detail })
        };
        let tensors = reply
            .tensors
            .into_iter()
            .map(|t| {
                Ok(TensorStatus {
                    policy: policy(t.policy, t.staleness, t.backup_workers, t.staleness_scaling, &t.name)?,
                    name: t.name,
                    offset: t.offset,
                    len: t.len,
                    versions: t.versions,
                    applied_clock: t.applied_clock,
                })
            })
            .collect::<Result<_, WorkerError>>()?;
        Ok(Self {
            shard: reply.shard,
            num_shards: reply.num_shards,
            num_workers: reply.num_workers,
            default_policy: policy(
                reply.default_policy,
                reply.default_staleness,
                reply.default_backup_workers,
                reply.default_staleness_scaling,
                "",
            )?,
            live_workers: reply.live_workers,
            checkpoints: reply.checkpoints,
            tensors,
        })
    }
}

/// The status of every shard, in shard order.
pub(crate) async fn status(shards: &Shards) -> Result<Vec<ShardStatus>, WorkerError> {
    let request = pb::StatusRequest::default();
    let replies =
        shards.broadcast("status", false, request, |mut c, r| async move { c.status(r).await }).await?;
    replies.into_iter().enumerate().map(|(shard, r)| ShardStatus::from_pb(shard as u32, r)).collect()
}

/// Shard 0's session, which names checkpoints.
pub(crate) async fn session(shards: &Shards) -> Result<u64, WorkerError> {
    Ok(status_of(shards, 0, pb::StatusRequest::default()).await?.session)
}

/// Whom a wait on one shard waits for, as the shard sees it.
pub(crate) struct Waits {
    /// The live workers the wait's tensors wait for there, in id order.
    pub(crate) on: Vec<u32>,
    /// The live workers the shard has heard nothing from since it started.
    pub(crate) unheard: Vec<u32>,
}

/// Whom `wait` waits for on `shard`, on the tensor parts named `tensors`
/// (their names on the shards).
pub(crate) async fn holding_back(
    shards: &Shards,
    shard: u32,
    wait: WaitAt,
    tensors: &std::collections::HashSet<&str>,
) -> Result<Waits, WorkerError> {
    let reply = status_of(shards, shard, wait.status_request()).await?;
    let mut on: Vec<u32> = reply
        .tensors
        .into_iter()
        .filter(|t| tensors.contains(t.name.as_str()))
        .flat_map(|t| t.holding_back)
        .collect();
    on.sort_unstable();
    on.dedup();
    Ok(Waits { on, unheard: reply.unheard_workers })
}

/// `shard`'s reply to `request`.
async fn status_of(
    shards: &Shards,
    shard: u32,
    request: pb::StatusRequest,
) -> Result<pb::StatusReply, WorkerError> {
    shards.call("status", shard, None, false, &request, |mut c, r| async move { c.status(r).await }).await
}
