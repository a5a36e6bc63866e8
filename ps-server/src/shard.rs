//! A shard: the tensor parts it holds, its workers' membership, and the
//! waiting of pulls and barriers on the sync core's release rules.
//!
//! Each tensor part sits behind its own `std::sync::Mutex`: no `.await` ever
//! happens while one is held, and updates are short, so a blocking mutex is
//! cheaper than an async one. Waiters subscribe to the part's `watch`
//! channel *before* checking the rule, so no change between check and wait
//! is missed.
//!
//! # Lock order
//! Outermost first; a lock is taken only while holding locks above it:
//! 1. `rewinding` (one rewind at a time);
//! 2. the membership record ([`crate::membership`]);
//! 3. the tensor map;
//! 4. the checkpoint registry ([`crate::checkpoint::registry`]);
//! 5. one tensor part, then its readers ([`crate::readers`]).
//!
//! The incarnation (session and origin) is taken last: nothing is locked
//! while it is held. No lock is held across an `.await`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Instant;

use ps_proto::placement;
use tokio::sync::watch;

use crate::buffers::PieceBuffers;
use crate::checkpoint::registry::{Checkpoints, CutStatus};
use crate::checkpoint::{CutId, CutInfo, Loaded, PartSnapshot, checkpoint_name, format::parse_policy};
use crate::config::{ShardConfig, WorkerLoss};
use crate::error::PsError;
use crate::incarnation::{Incarnation, Origin};
use crate::init::Init;
use crate::membership::{Decision, Membership, Refusal};
use crate::metrics::ShardMetrics;
use crate::optim::{Optimizer, OptimizerConfig};
use crate::readers::{ReadLease, UPDATE_WAIT, UpdateTurn};
use crate::sync::{Policy, PullDecision};
use crate::tensor::{Gradient, Snapshot, TensorMeta, TensorPart};

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

/// One tensor part and the channel that announces its changes.
#[derive(Debug)]
pub struct TensorCell {
    /// What the part is; fixed at declaration, so readable without the lock.
    meta: TensorMeta,
    part: Mutex<TensorPart>,
    changed: watch::Sender<()>,
    /// Set when a rewind replaced this part: waiters on it give up.
    retired: AtomicBool,
}

impl TensorCell {
    /// What the part is (name, shape, range, policy).
    pub fn meta(&self) -> &TensorMeta {
        &self.meta
    }

    /// Locks the part. A poisoned lock (a panic while holding it) is taken
    /// over: updates are written so a panic cannot leave a half-applied step
    /// behind a completed clock.
    pub fn lock(&self) -> MutexGuard<'_, TensorPart> {
        self.part.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn new(part: TensorPart) -> Self {
        Self {
            meta: part.meta().clone(),
            part: Mutex::new(part),
            changed: watch::Sender::new(()),
            retired: AtomicBool::new(false),
        }
    }

    fn notify(&self) {
        self.changed.send_replace(());
    }

    fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Acquire)
    }
}

/// An update waiting for a part's pull replies, which holds back new pulls
/// of the part. However it ends, those pulls then look again.
struct HeldPulls<'a> {
    cell: &'a TensorCell,
    turn: Option<UpdateTurn>,
}

impl Drop for HeldPulls<'_> {
    fn drop(&mut self) {
        // The turn ends first, so a woken pull finds no update waiting.
        self.turn.take();
        self.cell.notify();
    }
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
                    policy: config.default_policy().label(),
                    aggregation: config.aggregation,
                },
                keep: config.keep_checkpoints,
            };
            Checkpoints::new(info, metrics.checkpoint().clone())
        });
        let timeout = (config.worker_timeout_ms > 0)
            .then(|| std::time::Duration::from_millis(config.worker_timeout_ms));
        let membership = Membership::new(live, true, timeout, config.on_worker_loss, Instant::now());
        Self {
            tensors: RwLock::default(),
            membership: Arc::new(Mutex::new(membership)),
            closing: watch::Sender::new(false),
            metrics,
            incarnation: Mutex::new(Incarnation::fresh(rand::random())),
            rewinding: Mutex::new(()),
            checkpoints,
            piece_buffers: PieceBuffers::new(config.pieces_received_at_once()),
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
            let policy =
                parse_policy(&t.policy).ok_or_else(|| corrupt(format!("unknown policy {:?}", t.policy)))?;
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
            tensors.insert(t.name.clone(), Arc::new(TensorCell::new(tensor)));
        }
        Ok(tensors)
    }

    /// Adds (or, when `created` is false, removes) a part's bytes in the metrics.
    fn count_tensor(&self, tensor: &TensorPart, created: bool) {
        let buffers = if tensor.meta().policy == Policy::Sync { tensor.meta().len as usize * 4 } else { 0 };
        let (values, state) = (tensor.meta().len as usize * 4, tensor.optimizer().state_bytes());
        if created {
            self.metrics.tensor_created(values, state, buffers);
        } else {
            self.metrics.tensor_removed(values, state, buffers);
        }
    }

    fn life(&self) -> MutexGuard<'_, Incarnation> {
        self.incarnation.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The error that tells `worker` this shard came back from a checkpoint.
    fn restarted(&self, worker: Option<u32>) -> PsError {
        let life = self.life();
        let origin =
            life.origin().cloned().unwrap_or(Origin { checkpoint: String::new(), clock: 0, cause: 0 });
        PsError::Restarted {
            shard: self.config.shard_id,
            worker,
            checkpoint: origin.checkpoint,
            clock: origin.clock,
            cause: origin.cause,
        }
    }

    /// Replaces this shard's state with its share of `checkpoint` (under the
    /// checkpoint directory) because the shard restart `cause` came back from
    /// it. Afterwards every worker is live at the checkpoint's clock and must
    /// join before pushing or pulling; waiting requests fail with
    /// [`PsError::Restarted`]; checkpoints still capturing are abandoned.
    /// Changes nothing if this restart was already answered (or is this
    /// shard's own), so every worker may ask.
    pub fn rewind(&self, checkpoint: &str, cause: u64, worker: u32) -> Result<Rewound, PsError> {
        let _one_at_a_time = self.rewinding.lock().unwrap_or_else(|p| p.into_inner());
        let unchanged = |life: &Incarnation| Rewound {
            clock: life.origin().map_or(0, |o| o.clock),
            session: life.session(),
            rewound: false,
        };
        if self.life().has_handled(cause) {
            return Ok(unchanged(&self.life()));
        }
        let root = self
            .config
            .checkpoint_dir
            .as_ref()
            .ok_or(PsError::NoCheckpointDir { shard: self.config.shard_id })?;
        if crate::checkpoint::format::parse_name(checkpoint).is_none() {
            return Err(PsError::InvalidArgument(format!(
                "cannot rewind shard {} to {checkpoint:?}: not a checkpoint name (ckpt-<clock>-<session>)",
                self.config.shard_id
            )));
        }
        let loaded = crate::checkpoint::restore::load(&root.join(checkpoint))?;
        let cells = self.load_cells(&loaded)?;
        let clock = loaded.manifest.clock;
        let session = rand::random();
        let old = {
            let mut members = self.members();
            let mut tensors = self.tensors.write().unwrap_or_else(|p| p.into_inner());
            members.rewound(|w| self.config.starts_live(w), Instant::now());
            let old = std::mem::replace(&mut *tensors, cells);
            for cell in old.values() {
                cell.retired.store(true, Ordering::Release);
            }
            self.life().rewound(session, Origin { checkpoint: checkpoint.to_string(), clock, cause });
            self.metrics.rewound(members.live_count());
            old
        };
        for cell in old.values() {
            self.count_tensor(&cell.lock(), false);
            cell.notify();
        }
        if let Some(checkpoints) = &self.checkpoints {
            checkpoints
                .abandon(&format!("abandoned: shard {} rewound to {checkpoint}", self.config.shard_id));
        }
        tracing::warn!(
            shard = self.config.shard_id,
            worker,
            checkpoint,
            clock,
            cause = format_args!("{cause:016x}"),
            "rewound to a checkpoint because a shard restarted; every worker must join again"
        );
        Ok(Rewound { clock, session, rewound: true })
    }

    /// The random id of this life of the shard's state (see
    /// [`checkpoint`](Self::checkpoint)); a rewind draws a new one.
    pub fn session(&self) -> u64 {
        self.life().session()
    }

    /// The checkpoint this shard was restored or rewound from, if any.
    pub fn origin(&self) -> Option<Origin> {
        self.life().origin().cloned()
    }

    fn checkpoints(&self) -> Result<&Arc<Checkpoints>, PsError> {
        self.checkpoints.as_ref().ok_or(PsError::NoCheckpointDir { shard: self.config.shard_id })
    }

    /// Registers the checkpoint at `clock` named after `session` (shard 0's
    /// session, so every shard and worker names it alike) and returns its
    /// name. Each tensor part is captured once it holds exactly the updates
    /// of clocks `< clock`; the shard file is then written in the
    /// background. Idempotent: any worker may request the same checkpoint.
    /// Fails, changing nothing, when an update of clock `>= clock` is
    /// already applied to some part, or when `worker` has not joined since
    /// the shard came back from a checkpoint.
    pub fn checkpoint(&self, clock: u64, session: u64, worker: Option<u32>) -> Result<CutId, PsError> {
        if let Some(w) = worker
            && !self.members().has_joined(w)
        {
            return Err(self.restarted(Some(w)));
        }
        let checkpoints = self.checkpoints()?;
        let cut = CutId { clock, name: checkpoint_name(clock, session) };
        let cells: Vec<Arc<TensorCell>> =
            self.tensors.read().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
        checkpoints.register(cut.clone(), cells.len(), |cut| {
            let mut captured = Vec::new();
            for (i, cell) in cells.iter().enumerate() {
                let mut part = cell.lock();
                if let Err(e) = part.register_cut(cut.clone()) {
                    drop(part);
                    for done in &cells[..i] {
                        done.lock().cancel_cut(&cut.name);
                    }
                    return Err(e);
                }
                captured.extend(part.take_captured().into_iter().map(|s| (cell.meta.clone(), s)));
            }
            Ok(captured)
        })?;
        Ok(cut)
    }

    /// The state of checkpoint `name` on this shard; with `wait`, once its
    /// file is durable or its write failed.
    pub async fn checkpoint_status(&self, name: &str, wait: bool) -> Result<CutStatus, PsError> {
        let checkpoints = self.checkpoints()?;
        let mut changed = checkpoints.subscribe();
        let mut closing = self.closing.subscribe();
        loop {
            let status = checkpoints.status(name).ok_or_else(|| {
                PsError::InvalidArgument(format!(
                    "no checkpoint {name:?} was requested on shard {}",
                    self.config.shard_id
                ))
            })?;
            if !wait || status.state.is_done() {
                return Ok(status);
            }
            self.wait_for_change(&mut changed, &mut closing).await?;
        }
    }

    fn deliver(&self, meta: &TensorMeta, captured: Vec<PartSnapshot>) {
        if let (Some(checkpoints), false) = (&self.checkpoints, captured.is_empty()) {
            checkpoints.deliver(captured.into_iter().map(|s| (meta.clone(), s)).collect());
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

    /// Checks that `worker` exists and is live (a cheap early check; the
    /// authoritative one happens under the tensor's lock).
    pub fn check_worker(&self, worker: u32) -> Result<(), PsError> {
        let refusal = self.members().check(worker);
        match refusal {
            Ok(()) => Ok(()),
            Err(Refusal::NotJoined) => Err(self.restarted(Some(worker))),
            Err(Refusal::Unknown(e) | Refusal::NotLive(e)) => Err(PsError::Worker(e)),
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
    /// existing one has the same shape (other settings of a re-declaration
    /// are ignored: the first declaration wins).
    pub fn declare(&self, decl: Declaration) -> Result<Declared, PsError> {
        if decl.name.is_empty() {
            return Err(PsError::InvalidArgument("tensor name must not be empty".into()));
        }
        let len = decl.shape.iter().try_fold(1u64, |acc, d| acc.checked_mul(*d)).ok_or_else(|| {
            PsError::InvalidArgument(format!("tensor {:?}: shape {:?} overflows u64", decl.name, decl.shape))
        })?;
        if len == 0 {
            return Err(PsError::InvalidArgument(format!(
                "tensor {:?}: shape {:?} has no elements",
                decl.name, decl.shape
            )));
        }
        if let Some(opt) = &decl.optimizer {
            opt.validate().map_err(|e| PsError::InvalidArgument(format!("tensor {:?}: {e}", decl.name)))?;
        }
        let cfg = &self.config;
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
                what: format!("tensor {:?} part on shard {}", decl.name, cfg.shard_id),
                got: part_bytes,
                limit: cfg.max_tensor_bytes,
            });
        }
        // Hold the membership while creating so a concurrent leave cannot be missed.
        let members = self.members();
        let mut tensors = self.tensors.write().unwrap_or_else(|p| p.into_inner());
        if let Some(existing) = tensors.get(&decl.name) {
            if existing.meta().shape != decl.shape {
                return Err(PsError::ShapeConflict {
                    tensor: decl.name,
                    existing: existing.meta().shape.clone(),
                    requested: decl.shape,
                });
            }
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
        for (w, _) in members.live().iter().enumerate().filter(|(_, l)| !**l) {
            tensor.leave(w as u32)?;
        }
        self.count_tensor(&tensor, true);
        tensors.insert(decl.name, Arc::new(TensorCell::new(tensor)));
        tracing::debug!(shard = cfg.shard_id, offset = part.offset, len = part.len, "declared tensor");
        Ok(Declared { offset: part.offset, len: part.len, created: true, piece_len })
    }

    /// Buffers of pushed pieces, kept for the next piece: take one to receive a piece into.
    pub fn piece_buffers(&self) -> &PieceBuffers {
        &self.piece_buffers
    }

    /// Applies (or, for a retry, ignores) a validated gradient: of the whole
    /// part, or of piece `piece` of it ([`TensorPart::push_piece`]).
    /// Returns whether anything changed.
    ///
    /// A push that changes the values first waits (at most [`UPDATE_WAIT`])
    /// for the pull replies still being sent from them, so that it changes
    /// them in place rather than copying them.
    pub async fn push(
        &self,
        cell: &TensorCell,
        worker: u32,
        clock: u64,
        piece: Option<usize>,
        grad: Gradient,
    ) -> Result<bool, PsError> {
        let deadline = tokio::time::Instant::now() + UPDATE_WAIT;
        let mut held = None;
        let (started, applied, completed_round, copies, captured) = loop {
            let readers = {
                let mut part = cell.lock();
                if cell.is_retired() {
                    drop(part);
                    return Err(self.restarted(Some(worker)));
                }
                // Leases are taken under this lock, so none appears between this check and the update.
                let wait = part.readers().reading() > 0
                    && part.push_changes_values(worker, clock, piece)
                    && tokio::time::Instant::now() < deadline;
                if !wait {
                    let _apply = tracing::trace_span!("apply").entered();
                    let started = std::time::Instant::now();
                    let rounds = part.clocks().applied_clock();
                    let applied = match piece {
                        None => part.push(worker, clock, grad)?,
                        Some(piece) => {
                            let applied = part.push_piece(worker, clock, piece, &grad.values);
                            self.piece_buffers.give(grad.values);
                            applied?
                        }
                    };
                    let completed =
                        part.meta().policy == Policy::Sync && part.clocks().applied_clock() > rounds;
                    break (started, applied, completed, part.take_copies(), part.take_captured());
                }
                Arc::clone(part.readers())
            };
            held.get_or_insert_with(|| {
                self.metrics.update_waited();
                HeldPulls { cell, turn: Some(readers.wait_turn()) }
            });
            readers.finished(deadline).await;
        };
        drop(held);
        self.metrics.update_copied(copies);
        self.deliver(&cell.meta, captured);
        let elapsed = started.elapsed();
        if completed_round {
            tracing::debug!(worker, clock, elapsed_us = elapsed.as_micros() as u64, "aggregate applied");
        }
        if applied {
            cell.notify();
            self.metrics.push_applied(worker, clock, elapsed, completed_round, self.members().live());
        } else {
            self.metrics.duplicate_push();
        }
        Ok(applied)
    }

    /// Waits until the policy lets `worker` (or an observer) read `tensor` at
    /// `clock`, then returns a snapshot and the lease that counts the reply
    /// as reading the values until it drops. A pull that could read while
    /// an update waits for the replies lets the update go first. Fails at
    /// once on a clock error and with `Unavailable` if the shard shuts down
    /// while waiting.
    pub async fn pull(
        &self,
        cell: &TensorCell,
        worker: Option<u32>,
        clock: u64,
    ) -> Result<(Snapshot, ReadLease), PsError> {
        let started = std::time::Instant::now();
        let mut changed = cell.changed.subscribe();
        let mut closing = self.closing.subscribe();
        // Counted as waiting from the first Wait until this future ends, however it ends.
        let mut waiting = None;
        loop {
            if cell.is_retired() {
                return Err(self.restarted(worker));
            }
            {
                let part = cell.lock();
                if part.check_pull(worker, clock)? == PullDecision::Ready && !part.readers().update_waiting()
                {
                    let snapshot = part.snapshot(started.elapsed());
                    let lease = part.readers().lease();
                    let staleness = worker.map(|_| {
                        let clocks = part.clocks();
                        (0..clocks.num_workers())
                            .filter(|w| clocks.is_live(*w))
                            .map(|w| (clock as i64 - 1 - snapshot.versions[w as usize]).max(0) as u64)
                            .max()
                            .unwrap_or(0)
                    });
                    drop(part);
                    self.metrics.pulled(staleness, snapshot.waited);
                    return Ok((snapshot, lease));
                }
            }
            waiting.get_or_insert_with(|| self.metrics.pull_waiting());
            self.wait_for_change(&mut changed, &mut closing).await?;
        }
    }

    async fn wait_for_change(
        &self,
        changed: &mut watch::Receiver<()>,
        closing: &mut watch::Receiver<bool>,
    ) -> Result<(), PsError> {
        if *closing.borrow_and_update() {
            self.check_running()?;
            return Err(PsError::ShuttingDown { shard: self.config.shard_id });
        }
        tokio::select! {
            r = changed.changed() => r.map_err(|_| PsError::ShuttingDown { shard: self.config.shard_id }),
            _ = closing.changed() => {
                self.check_running()?;
                Err(PsError::ShuttingDown { shard: self.config.shard_id })
            }
        }
    }

    /// Waits until every live worker has completed `clock` clocks on every
    /// tensor of this shard (in sync: those rounds are applied).
    pub async fn barrier(&self, worker: u32, clock: u64) -> Result<(), PsError> {
        // Cells first, then the check: a rewind in between is then refused.
        let cells: Vec<Arc<TensorCell>> =
            self.tensors.read().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
        self.check_worker(worker)?;
        let started = std::time::Instant::now();
        let mut closing = self.closing.subscribe();
        for cell in cells {
            let mut changed = cell.changed.subscribe();
            while !cell.lock().clocks().reached(clock) {
                if cell.is_retired() {
                    return Err(self.restarted(Some(worker)));
                }
                self.wait_for_change(&mut changed, &mut closing).await?;
            }
        }
        self.metrics.barrier_waited(started.elapsed());
        Ok(())
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
            let (copies, captured) = {
                let mut part = cell.lock();
                part.leave(worker)?;
                (part.take_copies(), part.take_captured())
            };
            self.metrics.update_copied(copies);
            self.deliver(&cell.meta, captured);
            cell.notify();
        }
        self.metrics.membership(false, members.live_count());
        tracing::info!(shard = self.config.shard_id, worker, "worker left");
        Ok(())
    }

    /// Makes `worker` live on every tensor and returns the clock it resumes
    /// at: the smallest of its per-tensor clocks, so a worker that crashed
    /// mid-step re-pushes what is missing (duplicates are ignored).
    pub fn join(&self, worker: u32) -> Result<u64, PsError> {
        let mut members = self.members();
        members.join(worker, Instant::now()).map_err(PsError::Worker)?;
        let mut resume: Option<u64> = None;
        let tensors = self.tensors.read().unwrap_or_else(|p| p.into_inner());
        for cell in tensors.values() {
            let clock = cell.lock().join(worker)?;
            cell.notify();
            resume = Some(resume.map_or(clock, |r| r.min(clock)));
        }
        let resume = resume.or(self.life().origin().map(|o| o.clock)).unwrap_or(0);
        drop(tensors);
        self.metrics.membership(true, members.live_count());
        tracing::info!(shard = self.config.shard_id, worker, clock = resume, "worker joined");
        Ok(resume)
    }

    /// A summary of every tensor part, by name.
    pub fn status(&self) -> Vec<TensorStatus> {
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
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PolicyName;

    fn shard(policy: PolicyName) -> Arc<Shard> {
        let shard = Shard::new(ShardConfig { num_workers: 2, policy, ..ShardConfig::default() });
        let decl = Declaration {
            name: "w".into(),
            shape: vec![4],
            init: Init::Constant(1.0),
            optimizer: None,
            policy: None,
            allow_non_finite: false,
        };
        shard.declare(decl).expect("declare");
        Arc::new(shard)
    }

    /// A shard of `policy` and worker 0's pull at clock 0, whose reply is
    /// still reading the values while the lease is held.
    async fn reading(policy: PolicyName) -> (Arc<Shard>, Snapshot, ReadLease) {
        let shard = shard(policy);
        let cell = shard.tensor("w").expect("tensor");
        let (read, lease) = shard.pull(&cell, Some(0), 0).await.expect("pull");
        (shard, read, lease)
    }

    fn push(shard: &Arc<Shard>, worker: u32, clock: u64) -> tokio::task::JoinHandle<Result<bool, PsError>> {
        let shard = Arc::clone(shard);
        tokio::spawn(async move {
            let cell = shard.tensor("w")?;
            shard.push(&cell, worker, clock, None, Gradient { values: vec![1.0; 4] }).await
        })
    }

    fn pull(
        shard: &Arc<Shard>,
        worker: u32,
        clock: u64,
    ) -> tokio::task::JoinHandle<Result<Snapshot, PsError>> {
        let shard = Arc::clone(shard);
        tokio::spawn(async move {
            let cell = shard.tensor("w")?;
            shard.pull(&cell, Some(worker), clock).await.map(|(snapshot, _lease)| snapshot)
        })
    }

    /// The value of the shard's counter `name`.
    fn counter(shard: &Shard, name: &str) -> f64 {
        let text = ps_proto::exposition::encode(std::slice::from_ref(shard.metrics().registry()));
        let line =
            text.lines().find(|l| l.starts_with(&format!("{name}{{"))).expect("the counter is exposed");
        line.rsplit(' ').next().and_then(|v| v.parse().ok()).expect("a value")
    }

    /// Lets every spawned task run until it waits; paused time does not move.
    async fn settle() {
        for _ in 0..8 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_update_waits_for_the_replies_reading_the_values_and_changes_them_in_place() {
        let (shard, read, lease) = reading(PolicyName::Async).await;
        let values_at = Arc::as_ptr(&read.values);
        let started = tokio::time::Instant::now();
        let update = push(&shard, 1, 0);
        settle().await;
        assert!(!update.is_finished(), "the update did not wait for the reply reading the values");
        // A pull that could read now lets the waiting update go first.
        let held = pull(&shard, 0, 0);
        settle().await;
        assert!(!held.is_finished(), "a pull read while an update was waiting");
        drop((read, lease));
        assert!(update.await.expect("task").expect("push"));
        let after = held.await.expect("task").expect("pull");
        assert_eq!(after.versions, vec![-1, 0], "the held pull reads after the update");
        assert_eq!(Arc::as_ptr(&after.values), values_at, "the update copied the values");
        assert_eq!(tokio::time::Instant::now(), started, "the update waited for its deadline");
        assert_eq!(counter(&shard, "ps_server_update_waits_total"), 1.0);
        assert_eq!(counter(&shard, "ps_server_update_copies_total"), 0.0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_reply_that_is_never_sent_holds_an_update_back_only_until_the_deadline() {
        let (shard, read, _lease) = reading(PolicyName::Async).await;
        let started = tokio::time::Instant::now();
        assert!(push(&shard, 1, 0).await.expect("task").expect("push"));
        assert_eq!(tokio::time::Instant::now(), started + UPDATE_WAIT);
        // The update copied the values: the reply still sends the old ones.
        assert_eq!(*read.values, vec![1.0; 4]);
        let after = pull(&shard, 0, 0).await.expect("task").expect("pull");
        assert_ne!(*after.values, vec![1.0; 4]);
        drop(after);
        // The copy has no readers: the reply that is never sent no longer
        // holds updates back.
        let next = tokio::time::Instant::now();
        assert!(push(&shard, 0, 0).await.expect("task").expect("push"));
        assert_eq!(tokio::time::Instant::now(), next, "a later update waited for the old reply");
        assert_eq!(counter(&shard, "ps_server_update_waits_total"), 1.0);
        assert_eq!(counter(&shard, "ps_server_update_copies_total"), 1.0);
    }

    #[tokio::test(start_paused = true)]
    async fn only_the_push_that_completes_a_sync_round_waits_for_the_replies() {
        let (shard, read, lease) = reading(PolicyName::Sync).await;
        // Worker 0's push only adds to the round's sum: it does not wait.
        let started = tokio::time::Instant::now();
        assert!(push(&shard, 0, 0).await.expect("task").expect("push"));
        assert_eq!(tokio::time::Instant::now(), started, "a push that changes no values waited");
        let completing = push(&shard, 1, 0);
        settle().await;
        assert!(!completing.is_finished(), "the push completing the round did not wait for the reply");
        drop((read, lease));
        assert!(completing.await.expect("task").expect("push"));
        let after = pull(&shard, 0, 1).await.expect("task").expect("pull");
        assert_eq!(after.versions, vec![0, 0]);
    }
}
