//! [`Worker`]: one handle to every shard of a cluster, with a clock.
//!
//! A training loop is `pull()` once, then per step `step(&grads)`: the
//! step pushes the gradients of clock `c`, advances the clock, and returns
//! the values of clock `c + 1`, in one round trip per tensor part. Every
//! call fans out to the shards holding the tensors' parts concurrently,
//! retries transient failures, and reassembles whole tensors.
//!
//! This module is the façade: each method says what it guarantees and hands
//! the work to the module whose job it is.

use std::collections::BTreeMap;

use ndarray::ArrayD;
use ps_proto::ClusterSpec;

use crate::checkpoint::{self, CheckpointDone, CheckpointStatus};
use crate::config::WorkerConfig;
use crate::connection::Shards;
use crate::declared::Declared;
use crate::error::{Restart, WorkerError};
use crate::membership::{self, Joined};
use crate::metrics::WorkerMetrics;
use crate::pull::{self, Pulled};
use crate::push::{self, GradientData};
use crate::several;
use crate::status::{self, ShardStatus};
use crate::tensor::TensorDecl;

#[cfg(feature = "testing")]
mod testing;

/// Shard restarts one [`Worker::step`] rides out before it returns the restart as an error.
pub const MAX_STEP_RECOVERIES: u32 = 16;

/// A worker connected to every shard of a cluster.
///
/// A clone shares the connections and has its own copy of the clock and
/// of the declared tensors.
#[derive(Clone, Debug)]
pub struct Worker {
    shards: Shards,
    tensors: Declared,
    /// Clocks completed so far: the clock the next pull and push use.
    clock: u64,
    num_workers: u32,
    /// Shard 0's session, which names checkpoints; learnt at join.
    session: Option<u64>,
    /// The job's default policy and optimizer, learnt at join.
    policy: Option<ps_proto::Policy>,
    optimizer: Option<ps_proto::OptimizerConfig>,
    /// Whether this handle joined (an observer takes no part in the clocks).
    joined: bool,
}

impl Worker {
    /// Connects to every shard (retrying while shards start) and joins the
    /// job; the worker's clock is where the shards say it resumes (0 for a
    /// fresh job).
    pub async fn connect(cfg: WorkerConfig) -> Result<Self, WorkerError> {
        let mut worker = Self::observer(cfg).await?;
        worker.join().await?;
        Ok(worker)
    }

    /// Connects to every shard without joining, for monitoring: the handle
    /// can [`declare`](Self::declare), [`observe`](Self::observe),
    /// [`status`](Self::status) and request [`checkpoint`](Self::checkpoint)s,
    /// and no shard ever waits for it.
    pub async fn observer(cfg: WorkerConfig) -> Result<Self, WorkerError> {
        if cfg.cluster.shards.is_empty() {
            return Err(WorkerError::Cluster("the cluster spec lists no shards".into()));
        }
        Ok(Self {
            shards: Shards::connect(cfg).await?,
            tensors: Declared::default(),
            clock: 0,
            num_workers: 0,
            session: None,
            policy: None,
            optimizer: None,
            joined: false,
        })
    }

    /// This worker's id.
    pub fn id(&self) -> u32 {
        self.shards.config().worker
    }

    /// The clock the next pull and push use: clocks completed so far.
    pub fn clock(&self) -> u64 {
        self.clock
    }

    /// The metrics this worker records into, if any.
    pub fn metrics(&self) -> Option<&WorkerMetrics> {
        self.shards.config().metrics.as_deref()
    }

    /// Number of workers in the job, as the shards reported it at the last
    /// join (0 for an observer).
    pub fn num_workers(&self) -> u32 {
        self.num_workers
    }

    /// The job's default policy (tensors declared without one get it), as
    /// the shards reported it at the last join (`None` for an observer).
    pub fn default_policy(&self) -> Option<ps_proto::Policy> {
        self.policy
    }

    /// The optimizer of tensors declared without one, as the shards
    /// reported it at the last join (`None` for an observer).
    pub fn default_optimizer(&self) -> Option<ps_proto::OptimizerConfig> {
        self.optimizer
    }

    /// The cluster this worker talks to.
    pub fn cluster(&self) -> &ClusterSpec {
        &self.shards.config().cluster
    }

    /// The shapes of the tensors declared through this handle.
    pub fn shapes(&self) -> BTreeMap<String, Vec<usize>> {
        self.tensors.shapes()
    }

    /// Joins (or rejoins) every shard; returns the clock to resume at, the
    /// lowest any shard reports. Fails if the shards are not the cluster
    /// the spec lists or the worker's id is not in the job.
    pub async fn join(&mut self) -> Result<u64, WorkerError> {
        let joined = membership::join(&self.shards).await?;
        Ok(self.joined(joined))
    }

    /// Catches up with a shard restart: rewinds every shard to the
    /// checkpoint the restarted one came back from (shards that already
    /// did, or are the restarted one, change nothing), then joins again.
    /// Returns the clock to resume at, the checkpoint's. Updates of later
    /// clocks are gone from every shard, so pushing them again applies each
    /// exactly once.
    pub async fn recover(&mut self, restart: &Restart) -> Result<u64, WorkerError> {
        let joined = membership::recover(&self.shards, restart).await?;
        Ok(self.joined(joined))
    }

    /// Takes what the shards said at a join; returns the clock to resume at.
    fn joined(&mut self, joined: Joined) -> u64 {
        self.clock = joined.clock;
        self.num_workers = joined.num_workers;
        self.session = joined.session;
        self.policy = joined.policy;
        self.optimizer = joined.optimizer;
        self.joined = true;
        self.clock
    }

    /// Leaves the job: the shards stop counting this worker as live, so no
    /// barrier, sync round or other worker's pull waits for it.
    pub async fn leave(&self) -> Result<(), WorkerError> {
        membership::leave(&self.shards).await
    }

    /// Declares a tensor on the shards that hold its parts. Every worker may
    /// declare the same tensor; the first declaration creates it, later ones
    /// must agree on the shape (else `ALREADY_EXISTS`).
    pub async fn declare(&mut self, decl: &TensorDecl) -> Result<(), WorkerError> {
        self.tensors.declare(&self.shards, decl).await
    }

    /// Declares every one of `decls`, as [`declare`](Self::declare) would,
    /// in one request per shard however many tensors there are. A refusal
    /// names its tensor.
    pub async fn declare_all(&mut self, decls: &[TensorDecl]) -> Result<(), WorkerError> {
        self.tensors.declare_all(&self.shards, decls).await
    }

    /// Pulls every declared tensor at this worker's clock, waiting as the
    /// policy requires: the values hold at least the updates the policy
    /// promises for this clock, and this worker's own acknowledged pushes.
    /// One request per shard, whatever the number of tensors.
    pub async fn pull(&self) -> Result<Pulled, WorkerError> {
        several::pull(&self.shards, &self.tensors, self.clock).await
    }

    /// Reads one declared tensor as an observer: never waits and takes no
    /// part in the clocks (for evaluation and monitoring). Returns the
    /// values and their version vector.
    pub async fn observe(&self, name: &str) -> Result<(ArrayD<f32>, Vec<i64>), WorkerError> {
        let tensor = self.tensors.get(name)?;
        let (values, versions, _) = pull::pull_tensor(&self.shards, tensor, self.clock, None).await?;
        Ok((values, versions))
    }

    /// Pushes one gradient per declared tensor at this worker's clock, then
    /// advances the clock. Every gradient must have its tensor's shape; a
    /// push is applied exactly once however often it is retried.
    pub async fn push(&mut self, grads: &BTreeMap<String, ArrayD<f32>>) -> Result<(), WorkerError> {
        push::push(&self.shards, &self.tensors, self.clock, grads).await?;
        self.clock += 1;
        Ok(())
    }

    /// One training step's communication in one round trip per shard: pushes
    /// one gradient per declared tensor at this worker's clock, advances the
    /// clock, and returns every tensor pulled at the new clock, exactly as
    /// [`push`](Self::push) then [`pull`](Self::pull) would (the pull sees
    /// the push; it waits as the policy requires). On an error the clock
    /// stays where it was.
    ///
    /// Gradients may be [`ArrayD`]s or, to send f32 gradients without a
    /// copy, [`ArcArray`](ndarray::ArcArray)s (see [`GradientData`]).
    pub async fn push_pull<G: GradientData>(
        &mut self,
        grads: &BTreeMap<String, G>,
    ) -> Result<Pulled, WorkerError> {
        let pulled = several::step(&self.shards, &self.tensors, self.clock, grads, None).await?;
        self.clock += 1;
        Ok(pulled)
    }

    /// One training step, the fast path: pushes `grads` (one gradient per
    /// declared tensor) at this worker's clock, advances the clock, and
    /// returns every tensor at the new clock, read in the same round trip
    /// per part as the push ([`push_pull`](Self::push_pull)). A user's loop
    /// is `let mut params = worker.pull().await?;` then, per step,
    /// `params = worker.step(&grads).await?;`.
    ///
    /// Recovery is inside. When a shard came back from a checkpoint, every
    /// shard is rewound to it ([`recover`](Self::recover)), `grads` are
    /// dropped (they were computed from values the checkpoint undid), and
    /// the values at the checkpoint's clock are returned:
    /// [`clock`](Self::clock) then names the step that comes next. Every
    /// other error is returned as it is; after [`MAX_STEP_RECOVERIES`]
    /// restarts within one call, so is the restart.
    pub async fn step<G: GradientData>(
        &mut self,
        grads: &BTreeMap<String, G>,
    ) -> Result<Pulled, WorkerError> {
        let mut pulled = Pulled::default();
        self.step_into(grads, &mut pulled).await?;
        Ok(pulled)
    }

    /// [`step`](Self::step), with the values read into the arrays of
    /// `into` (a previous step's or pull's result): each tensor's array is
    /// reused when it is contiguous and of the tensor's size, so a loop
    /// `worker.step_into(&grads, &mut params).await?` allocates its arrays
    /// once, not every step. On success `into` holds exactly what `step`
    /// would return; on error the tensors it lost are allocated afresh by
    /// the next call.
    pub async fn step_into<G: GradientData>(
        &mut self,
        grads: &BTreeMap<String, G>,
        into: &mut Pulled,
    ) -> Result<(), WorkerError> {
        let mut result =
            several::step(&self.shards, &self.tensors, self.clock, grads, Some(&mut *into)).await;
        if result.is_ok() {
            self.clock += 1;
        }
        for _ in 0..MAX_STEP_RECOVERIES {
            match result {
                Err(WorkerError::ShardRestarted { restart, .. }) => {
                    self.recover(&restart).await?;
                    result = self.pull().await;
                }
                Err(e) => return Err(e),
                Ok(pulled) => {
                    *into = pulled;
                    return Ok(());
                }
            }
        }
        result.map(|pulled| *into = pulled)
    }

    /// Waits until every live worker has completed `clock` clocks on every shard.
    pub async fn barrier(&self, clock: u64) -> Result<(), WorkerError> {
        membership::barrier(&self.shards, &self.tensors, clock).await
    }

    /// Requests the consistent checkpoint at `clock` on every shard and
    /// returns its name. It will hold exactly the updates of clocks `< clock`
    /// of every worker; each shard captures its parts in memory when they
    /// reach `clock` and writes them in the background, so this returns at
    /// once. Every worker of a job may (and, in ssp and async, should)
    /// request it before pushing `clock`; requests for the same clock name
    /// the same checkpoint. Fails with `FAILED_PRECONDITION` when some update
    /// of clock `>= clock` is already applied, or when a shard has no
    /// checkpoint directory.
    pub async fn checkpoint(&mut self, clock: u64) -> Result<String, WorkerError> {
        let session = match self.session {
            Some(s) => s,
            None => *self.session.insert(status::session(&self.shards).await?),
        };
        // Shards refuse a joined worker that missed a restart (its session is stale).
        let worker = self.joined.then_some(self.id());
        checkpoint::request(&self.shards, clock, session, worker).await
    }

    /// How far checkpoint `name` has got on every shard, in shard order;
    /// with `wait`, once each shard's file is durable or its write failed.
    pub async fn checkpoint_status(
        &self,
        name: &str,
        wait: bool,
    ) -> Result<Vec<CheckpointStatus>, WorkerError> {
        checkpoint::status(&self.shards, name, wait).await
    }

    /// Waits until checkpoint `name` is complete: every shard's file durable
    /// and the manifest written. Fails, naming the shard and the cause, if a
    /// shard could not write its share.
    pub async fn wait_checkpoint(&self, name: &str) -> Result<CheckpointDone, WorkerError> {
        checkpoint::wait(&self.shards, name).await
    }

    /// What every shard reports of itself, in shard order.
    pub async fn status(&self) -> Result<Vec<ShardStatus>, WorkerError> {
        status::status(&self.shards).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_empty_cluster_spec_is_refused_by_observers_too() {
        let spec = ps_proto::ClusterSpec::new(Vec::new());
        for observer in [true, false] {
            let cfg = WorkerConfig::new(spec.clone(), 0);
            let result = if observer { Worker::observer(cfg).await } else { Worker::connect(cfg).await };
            match result {
                Err(e) => assert!(e.to_string().contains("lists no shards"), "{e}"),
                Ok(_) => panic!("a worker connected to a cluster of no shards (observer: {observer})"),
            }
        }
    }
}
