//! A shard: the tensor parts it holds, its workers' membership, and the
//! waiting of pulls and barriers on the sync core's release rules.
//!
//! Each tensor part sits behind its own `std::sync::Mutex`: no `.await` ever
//! happens while one is held, and updates are short, so a blocking mutex is
//! cheaper than an async one. A pull that must wait registers, under the
//! part's lock, a channel of its own that the step releasing it sends on,
//! so it is woken once and no release is missed. Pushes waiting for an
//! update and barriers subscribe to the part's `watch` channel *before*
//! checking, for the same reason.
//!
//! # Lock order
//! Outermost first; a lock is taken only while holding locks above it:
//! 1. `rewinding` (one rewind at a time);
//! 2. the membership record ([`crate::membership`]);
//! 3. the tensor map;
//! 4. the checkpoint registry ([`crate::checkpoint::registry`]);
//! 5. one tensor part, then its readers ([`crate::readers`]).
//!
//! The shard's methods live in four files: this one (construction,
//! membership, declarations, status), `push.rs` (a push in one call, from
//! its header to its application), `wait.rs` (applying pushes, releasing
//! pulls and barriers) and `life.rs` (checkpoints, and coming back from one).
//! `cell.rs` holds one tensor part with its change channel.
//!
//! The incarnation (session and origin) is taken last: nothing is locked
//! while it is held. No lock is held across an `.await`.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Instant;

use ps_proto::{WaitAt, placement};
use tokio::sync::watch;

use crate::buffers::PieceBuffers;
use crate::checkpoint::registry::Checkpoints;
use crate::checkpoint::{CutInfo, Loaded};
use crate::config::{ShardConfig, WorkerLoss};
use crate::error::{PsError, shown};
use crate::incarnation::Incarnation;
use crate::init::Init;
use crate::membership::{Decision, Membership, Refusal};
use crate::metrics::ShardMetrics;
use crate::optim::{Optimizer, OptimizerConfig};
use crate::sync::Policy;
use crate::tensor::{TensorMeta, TensorPart};

mod cell;
mod life;
mod push;
mod redeclare;
mod wait;

pub use wait::WAIT_LOG_EVERY;

#[cfg(test)]
mod tests;

pub use cell::TensorCell;
pub use push::{PushHead, PushTarget};

/// A request to create a tensor (or to check that it exists as described).
#[derive(Clone, Debug, PartialEq)]
pub struct Declaration {
    /// Tensor name.
    pub name: String,
    /// Shape of the whole tensor.
    pub shape: Vec<u64>,
    /// Initial values.
    pub init: Init,
    /// Optimizer; the shard default when `None`.
    pub optimizer: Option<OptimizerConfig>,
    /// Policy; the shard default when `None`.
    pub policy: Option<Policy>,
    /// Whether NaN/Inf gradients are accepted.
    pub allow_non_finite: bool,
}

/// The outcome of a declaration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Declared {
    /// First element of the tensor held here.
    pub offset: u64,
    /// Elements held here.
    pub len: u64,
    /// Whether this call created the part.
    pub created: bool,
    /// Elements per piece a push may cover instead of the whole part (0: none).
    pub piece_len: u64,
}

/// Counts one request of a worker as in flight while it lives; when it
/// drops, the request has ended and the worker was heard from.
#[derive(Debug)]
pub struct LeaseGuard {
    membership: Arc<Mutex<Membership>>,
    worker: u32,
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        let mut members = self.membership.lock().unwrap_or_else(|p| p.into_inner());
        members.end(self.worker, Instant::now());
    }
}

/// Where a joining worker resumes, as this shard sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Joined {
    /// The smallest of the worker's per-tensor clocks.
    pub clock: u64,
    /// The lowest clock the worker may still pull on every tensor: above
    /// `clock` when the sync rounds of `clock` were applied on some tensors
    /// already (the worker's step reached them before it stopped, or the
    /// other workers' steps did before it joined), so that clock can no
    /// longer be read there exactly.
    pub floor: u64,
}

/// The outcome of a rewind request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rewound {
    /// The clock every worker resumes at.
    pub clock: u64,
    /// The shard's session afterwards.
    pub session: u64,
    /// Whether this request did the rewind (false: an earlier one had).
    pub rewound: bool,
}

/// A point-in-time summary of one tensor part.
#[derive(Clone, Debug)]
pub struct TensorStatus {
    /// What the part is.
    pub meta: TensorMeta,
    /// Per worker, the highest clock applied.
    pub versions: Vec<i64>,
    /// Sync: rounds applied; others: the minimum live clock.
    pub applied_clock: u64,
    /// Bytes of values, optimizer state and buffers.
    pub bytes_held: usize,
    /// The live workers the wait asked about waits for, in id order
    /// (empty when none does, or no wait was asked about).
    pub holding_back: Vec<u32>,
}

/// A shard's state. Cloning the `Arc` around it is how handlers share it.
#[derive(Debug)]
pub struct Shard {
    config: ShardConfig,
    tensors: RwLock<BTreeMap<String, Arc<TensorCell>>>,
    /// Who takes part: live, evicted, joined this life, requests in
    /// flight, silence, and the job's stop reason.
    membership: Arc<Mutex<Membership>>,
    closing: watch::Sender<bool>,
    metrics: ShardMetrics,
    /// This life of the shard's state: session (shard 0's names the
    /// checkpoints) and origin checkpoint.
    incarnation: Mutex<Incarnation>,
    /// Held for a whole rewind, so concurrent requests load once.
    rewinding: Mutex<()>,
    /// Present when the shard has a checkpoint directory.
    checkpoints: Option<Arc<Checkpoints>>,
    /// Buffers of pushed pieces, kept for the next piece.
    piece_buffers: PieceBuffers,
    /// The id of the next pull, by which its release names it.
    next_pull: AtomicU64,
    /// When a waiting pull was last logged ([`WAIT_LOG_EVERY`]).
    wait_logged: Mutex<Option<Instant>>,
}

impl Shard {
    /// An empty shard.
    pub fn new(config: ShardConfig) -> Self {
        let live: Vec<bool> = (0..config.num_workers).map(|w| config.starts_live(w)).collect();
        let metrics =
            ShardMetrics::new(config.shard_id, config.num_workers, config.default_policy(), config.metrics);
        metrics.set_live_workers(live.iter().filter(|l| **l).count());
        let checkpoints = config.checkpoint_dir.as_ref().map(|root| {
            let info = CutInfo {
                root: root.clone(),
                shard: config.shard_id,
                job: crate::checkpoint::format::JobEntry {
                    num_shards: config.num_shards,
                    split_threshold: config.split_threshold,
                    num_workers: config.num_workers,
                    policy: config.default_policy(),
                    aggregation: config.aggregation,
                },
                keep: config.keep_checkpoints,
                max_pending: config.max_pending_checkpoints,
            };
            Checkpoints::new(info, metrics.checkpoint().clone())
        });
        let timeout = (config.worker_timeout_ms > 0)
            .then(|| std::time::Duration::from_millis(config.worker_timeout_ms));
        let membership = Membership::new(live, true, timeout, config.on_worker_loss, Instant::now())
            .with_join_grace(std::time::Duration::from_millis(config.join_grace_ms));
        Self {
            tensors: RwLock::default(),
            membership: Arc::new(Mutex::new(membership)),
            closing: watch::Sender::new(false),
            metrics,
            incarnation: Mutex::new(Incarnation::fresh(rand::random())),
            rewinding: Mutex::new(()),
            checkpoints,
            piece_buffers: PieceBuffers::new(config.pieces_received_at_once()),
            next_pull: AtomicU64::new(0),
            wait_logged: Mutex::new(None),
            config,
        }
    }

    /// A shard holding its share of the checkpoint `loaded`, re-partitioned
    /// for this shard's cluster (which may have another shard count), with
    /// every worker live at the checkpoint's clock. Workers must join before
    /// they push or pull.
    pub fn restore(config: ShardConfig, loaded: &Loaded) -> Result<Self, PsError> {
        let mut shard = Shard::new(config);
        let tensors = shard.load_cells(loaded)?;
        shard.tensors = RwLock::new(tensors);
        let restored = Incarnation::restored(shard.life().session(), loaded.name(), loaded.manifest.clock);
        shard.incarnation = Mutex::new(restored);
        shard.members().rewound(|w| shard.config.starts_live(w), Instant::now());
        Ok(shard)
    }

    /// This shard's parts of the checkpoint `loaded`, counted in the metrics.
    fn load_cells(&self, loaded: &Loaded) -> Result<BTreeMap<String, Arc<TensorCell>>, PsError> {
        let cfg = &self.config;
        let clock = loaded.manifest.clock;
        let mut tensors = BTreeMap::new();
        for t in &loaded.manifest.tensors {
            let corrupt = |reason: String| {
                PsError::Checkpoint(crate::checkpoint::CheckpointError::corrupt(
                    loaded.dir.join(crate::checkpoint::format::MANIFEST),
                    format!("tensor {:?}: {reason}", t.name),
                ))
            };
            let Some(part) = placement::part_on_shard(
                &t.name,
                t.numel(),
                cfg.num_shards,
                cfg.split_threshold,
                cfg.shard_id,
            ) else {
                continue;
            };
            let policy = t.policy;
            t.optimizer.validate().map_err(corrupt)?;
            let values = loaded.read_range(t, |p| Some(p.key.as_str()), part.offset, part.len)?;
            let mut slots = Vec::new();
            for slot in Optimizer::slot_names(&t.optimizer) {
                slots.push(loaded.read_range(
                    t,
                    |p| p.slots.get(*slot).map(String::as_str),
                    part.offset,
                    part.len,
                )?);
            }
            let steps = t
                .parts
                .iter()
                .find(|p| p.offset < part.offset + part.len && part.offset < p.offset + p.len)
                .map_or(0, |p| p.optimizer_steps);
            let optimizer =
                Optimizer::restore(t.optimizer, part.len as usize, steps, slots).map_err(corrupt)?;
            let meta = TensorMeta {
                name: t.name.clone(),
                shape: t.shape.clone(),
                offset: part.offset,
                len: part.len,
                policy,
                allow_non_finite: t.allow_non_finite,
                piece_len: cfg.piece_len(policy, part.len),
            };
            let mut tensor =
                TensorPart::restored(meta, values, optimizer, cfg.num_workers, cfg.aggregation, clock);
            for w in (0..cfg.num_workers).filter(|w| !cfg.starts_live(*w)) {
                tensor.leave(w)?;
            }
            self.count_tensor(&tensor, true);
            tensors.insert(t.name.clone(), Arc::new(TensorCell::new(tensor, None)));
        }
        Ok(tensors)
    }

    /// Adds (or, when `created` is false, removes) a part's bytes in the metrics.
    fn count_tensor(&self, tensor: &TensorPart, created: bool) {
        let buffers = if tensor.meta().policy.is_sync() { tensor.meta().len as usize * 4 } else { 0 };
        let (values, state) = (tensor.meta().len as usize * 4, tensor.optimizer().state_bytes());
        if created {
            self.metrics.tensor_created(values, state, buffers);
        } else {
            self.metrics.tensor_removed(values, state, buffers);
        }
    }

    /// Its configuration.
    pub fn config(&self) -> &ShardConfig {
        &self.config
    }

    /// Its metrics.
    pub fn metrics(&self) -> &ShardMetrics {
        &self.metrics
    }

    /// Wakes every waiter with `Unavailable`; later waits fail at once.
    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    /// The membership record. Lock order: taken before the tensor map and
    /// any part (see the module doc); never held across an `.await`.
    fn members(&self) -> MutexGuard<'_, Membership> {
        self.membership.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The live worker ids.
    pub fn live_workers(&self) -> Vec<u32> {
        let members = self.members();
        members.live().iter().enumerate().filter(|(_, l)| **l).map(|(w, _)| w as u32).collect()
    }

    /// The live workers this shard has heard nothing from since it started
    /// (or was restored or rewound), in id order.
    pub fn unheard_workers(&self) -> Vec<u32> {
        self.members().unheard()
    }

    /// Checks that `worker` exists and is live (a cheap early check; the
    /// authoritative one happens under the tensor's lock).
    pub fn check_worker(&self, worker: u32) -> Result<(), PsError> {
        let refusal = self.members().check(worker);
        match refusal {
            Ok(()) => Ok(()),
            Err(Refusal::NotJoined) => Err(self.restarted(Some(worker))),
            Err(Refusal::Unknown(e) | Refusal::NotLive(e)) => Err(PsError::Worker(e)),
            Err(Refusal::NeverJoined) => Err(PsError::NotJoined { worker }),
            Err(Refusal::Evicted) => {
                Err(PsError::Evicted { worker, timeout_ms: self.config.worker_timeout_ms })
            }
        }
    }

    /// Counts one request of `worker` as in flight for as long as the
    /// returned guard lives, so a worker blocked in a long pull is never
    /// silent; `None` for an unknown worker.
    pub fn lease(&self, worker: u32) -> Option<LeaseGuard> {
        self.members()
            .begin(worker, Instant::now())
            .then(|| LeaseGuard { membership: Arc::clone(&self.membership), worker })
    }

    /// Whether the shard is shutting down.
    pub fn is_closing(&self) -> bool {
        *self.closing.borrow()
    }

    /// Deals with every live worker silent for longer than the worker
    /// timeout with nothing in flight, as `on_worker_loss` says: evicts it
    /// (it leaves, as if it had called `leave`), reports it and keeps
    /// waiting, or stops the job. The membership record decides; this
    /// carries the decisions out.
    pub fn handle_silent_workers(&self) {
        let decisions = self.members().tick(Instant::now());
        let (shard, timeout_ms) = (self.config.shard_id, self.config.worker_timeout_ms);
        for decision in decisions {
            match decision {
                Decision::Evict(worker) => {
                    if self.leave_as(worker, true).is_ok() {
                        self.metrics.evicted();
                        tracing::warn!(shard, worker, timeout_ms, "evicted a silent worker");
                    }
                }
                Decision::Silent(worker) => {
                    tracing::warn!(
                        shard,
                        worker,
                        timeout_ms,
                        "worker is silent; waiting for it (--on-worker-loss wait)"
                    );
                }
                Decision::Back(worker) => tracing::info!(shard, worker, "silent worker is back"),
                Decision::Fail(worker) => {
                    let reason = format!(
                        "worker {worker} sent nothing for {timeout_ms} ms and ps-server runs with --on-worker-loss fail"
                    );
                    tracing::error!(shard, worker, timeout_ms, "stopping the job: a worker is lost");
                    self.fail(reason);
                }
            }
        }
        if self.config.on_worker_loss == WorkerLoss::Wait {
            self.metrics.silent_workers(self.members().silent_count());
        }
    }

    /// Stops the job: waiting requests and every later one fail with `ABORTED` and `reason`.
    pub fn fail(&self, reason: String) {
        self.members().fail(reason);
        self.closing.send_replace(true);
    }

    /// Fails if the job was stopped.
    pub fn check_running(&self) -> Result<(), PsError> {
        match self.members().failure() {
            Some(reason) => Err(PsError::JobFailed { reason: reason.to_string() }),
            None => Ok(()),
        }
    }

    /// The tensor part named `name`.
    pub fn tensor(&self, name: &str) -> Result<Arc<TensorCell>, PsError> {
        let tensors = self.tensors.read().unwrap_or_else(|p| p.into_inner());
        tensors.get(name).cloned().ok_or_else(|| PsError::UnknownTensor { tensor: name.to_string() })
    }

    /// Creates the part of a tensor placed on this shard, or checks that the
    /// existing one has the same shape and settings ([`redeclare::check`]).
    pub fn declare(&self, decl: Declaration) -> Result<Declared, PsError> {
        if decl.name.is_empty() {
            return Err(PsError::InvalidArgument("tensor name must not be empty".into()));
        }
        let len = decl.shape.iter().try_fold(1u64, |acc, d| acc.checked_mul(*d)).ok_or_else(|| {
            PsError::InvalidArgument(format!(
                "tensor {}: shape {:?} overflows u64",
                shown(&decl.name),
                decl.shape
            ))
        })?;
        if len == 0 {
            return Err(PsError::InvalidArgument(format!(
                "tensor {}: shape {:?} has no elements",
                shown(&decl.name),
                decl.shape
            )));
        }
        if let Some(opt) = &decl.optimizer {
            opt.validate()
                .map_err(|e| PsError::InvalidArgument(format!("tensor {}: {e}", shown(&decl.name))))?;
        }
        let cfg = &self.config;
        if let Some(backup) = decl.policy.map(|p| p.backup_workers()).filter(|b| *b > 0) {
            let workers = cfg.initial_workers.unwrap_or(cfg.num_workers);
            if backup >= workers {
                return Err(PsError::InvalidArgument(format!(
                    "tensor {}: {backup} backup workers leave no worker to close a round with {workers} \
                     workers: use at most {}",
                    shown(&decl.name),
                    workers - 1
                )));
            }
        }
        let part =
            placement::part_on_shard(&decl.name, len, cfg.num_shards, cfg.split_threshold, cfg.shard_id)
                .ok_or_else(|| PsError::NotPlacedHere {
                    tensor: decl.name.clone(),
                    len,
                    shard: cfg.shard_id,
                })?;
        let part_bytes = part.len.saturating_mul(4);
        if part_bytes > cfg.max_tensor_bytes {
            return Err(PsError::TooLarge {
                what: format!("tensor {} part on shard {}", shown(&decl.name), cfg.shard_id),
                got: part_bytes,
                limit: cfg.max_tensor_bytes,
            });
        }
        // Hold the membership while creating so a concurrent leave cannot be missed.
        let members = self.members();
        let mut tensors = self.tensors.write().unwrap_or_else(|p| p.into_inner());
        if let Some(existing) = tensors.get(&decl.name) {
            redeclare::check(existing, &decl, cfg)?;
            let piece_len = existing.meta().piece_len;
            return Ok(Declared { offset: part.offset, len: part.len, created: false, piece_len });
        }
        let policy = decl.policy.unwrap_or_else(|| cfg.default_policy());
        let meta = TensorMeta {
            name: decl.name.clone(),
            shape: decl.shape,
            offset: part.offset,
            len: part.len,
            policy,
            allow_non_finite: decl.allow_non_finite,
            piece_len: cfg.piece_len(policy, part.len),
        };
        let piece_len = meta.piece_len;
        let optimizer = decl.optimizer.unwrap_or(cfg.optimizer);
        let mut tensor = TensorPart::new(meta, decl.init, optimizer, cfg.num_workers, cfg.aggregation);
        let init = Some(decl.init);
        for (w, _) in members.live().iter().enumerate().filter(|(_, l)| !**l) {
            tensor.leave(w as u32)?;
        }
        self.count_tensor(&tensor, true);
        tensors.insert(decl.name, Arc::new(TensorCell::new(tensor, init)));
        tracing::debug!(shard = cfg.shard_id, offset = part.offset, len = part.len, "declared tensor");
        Ok(Declared { offset: part.offset, len: part.len, created: true, piece_len })
    }

    /// Buffers of pushed pieces, kept for the next piece: take one to receive a piece into.
    pub fn piece_buffers(&self) -> &PieceBuffers {
        &self.piece_buffers
    }

    /// Removes `worker` from the live set of every tensor, releasing waiters
    /// and completing sync rounds that only waited for it.
    pub fn leave(&self, worker: u32) -> Result<(), PsError> {
        self.leave_as(worker, false)
    }

    /// [`leave`](Self::leave); `evicted` records that the worker was made to, for silence.
    fn leave_as(&self, worker: u32, evicted: bool) -> Result<(), PsError> {
        let mut members = self.members();
        members.leave(worker, evicted).map_err(PsError::Worker)?;
        for cell in self.tensors.read().unwrap_or_else(|p| p.into_inner()).values() {
            let (copies, captured, shadows) = {
                let mut part = cell.lock();
                part.leave(worker)?;
                self.metrics.held_gradients_changed(part.take_held_gradient_change());
                (part.take_copies(), part.take_captured(), part.take_checkpoint_shadow_change())
            };
            self.metrics.update_copied(copies);
            self.metrics.checkpoint().shadow_bytes_changed(shadows);
            self.deliver(&cell.meta, captured);
            cell.notify();
        }
        self.metrics.membership(false, members.live_count());
        tracing::info!(shard = self.config.shard_id, worker, "worker left");
        Ok(())
    }

    /// Makes `worker` live on every tensor and says where it resumes: the
    /// smallest of its per-tensor clocks, so a worker that crashed mid-step
    /// re-pushes what is missing (duplicates are ignored); and the lowest
    /// clock it may still pull on every tensor ([`Joined::floor`]). A worker
    /// that had left may skip the one clock it could not finish (`skip_to`,
    /// see [`Event::Join`](crate::sync::Event::Join)).
    pub fn join(&self, worker: u32, skip_to: u64) -> Result<Joined, PsError> {
        let mut members = self.members();
        members.join(worker, Instant::now()).map_err(PsError::Worker)?;
        let mut resume: Option<u64> = None;
        let mut floor = 0;
        let tensors = self.tensors.read().unwrap_or_else(|p| p.into_inner());
        for cell in tensors.values() {
            let mut part = cell.lock();
            let clock = part.join(worker, skip_to)?;
            floor = floor.max(part.clocks().read_floor(worker));
            drop(part);
            cell.notify();
            resume = Some(resume.map_or(clock, |r| r.min(clock)));
        }
        let resume = resume.or(self.life().origin().map(|o| o.clock)).unwrap_or(0);
        drop(tensors);
        self.metrics.membership(true, members.live_count());
        tracing::info!(shard = self.config.shard_id, worker, clock = resume, "worker joined");
        Ok(Joined { clock: resume, floor })
    }

    /// A summary of every tensor part, by name; with `wait`, each names
    /// the workers that wait would wait for.
    pub fn status(&self, wait: Option<WaitAt>) -> Vec<TensorStatus> {
        self.tensors
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|cell| {
                let part = cell.lock();
                TensorStatus {
                    meta: part.meta().clone(),
                    versions: part.clocks().versions(),
                    applied_clock: part.clocks().applied_clock(),
                    bytes_held: part.bytes_held(),
                    holding_back: match wait {
                        None => Vec::new(),
                        Some(WaitAt::Pull(clock)) => part.clocks().holding_back(clock),
                        Some(WaitAt::Barrier(clock)) => part.clocks().behind_barrier(clock),
                    },
                }
            })
            .collect()
    }
}
