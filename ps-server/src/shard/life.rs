//! A shard's checkpoints, and coming back from one: the session that names
//! checkpoints, cuts at a clock, and rewinding when a shard restarted.

use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard};
use std::time::Instant;

use super::{Rewound, Shard, TensorCell};
use crate::checkpoint::registry::{Checkpoints, CutStatus};
use crate::checkpoint::{CutId, PartSnapshot, checkpoint_name};
use crate::error::{PsError, shown};
use crate::incarnation::{Incarnation, Origin};
use crate::meta::TensorMeta;

impl Shard {
    pub(super) fn life(&self) -> MutexGuard<'_, Incarnation> {
        self.incarnation.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The error that tells `worker` this shard came back from a checkpoint.
    pub(super) fn restarted(&self, worker: Option<u32>) -> PsError {
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
                "cannot rewind shard {} to {}: not a checkpoint name (ckpt-<clock>-<session>)",
                self.config.shard_id,
                shown(checkpoint)
            )));
        }
        let dir = root.join(checkpoint);
        if !dir.join(crate::checkpoint::format::MANIFEST).is_file() {
            return Err(PsError::UnknownCheckpoint {
                shard: self.config.shard_id,
                checkpoint: checkpoint.to_string(),
                hint: " to rewind to (a checkpoint without its manifest does not exist)",
            });
        }
        let loaded = crate::checkpoint::restore::load(&dir)?;
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
            let mut part = cell.lock();
            part.drop_waiters();
            self.count_tensor(&part, false);
            // The part goes with its shadows: take back what was counted for them.
            let change = part.take_checkpoint_shadow_change();
            self.metrics.checkpoint().shadow_bytes_changed(change - part.checkpoint_shadow_bytes() as i64);
            let held = part.take_held_gradient_change();
            self.metrics.held_gradients_changed(held - part.held_gradient_bytes() as i64);
            drop(part);
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

    pub(super) fn checkpoints(&self) -> Result<&Arc<Checkpoints>, PsError> {
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
            let status = checkpoints.status(name).ok_or_else(|| PsError::UnknownCheckpoint {
                shard: self.config.shard_id,
                checkpoint: name.to_string(),
                hint: ": none of that name was requested (Checkpoint answers with the name to ask about)",
            })?;
            if !wait || status.state.is_done() {
                return Ok(status);
            }
            self.wait_for_change(&mut changed, &mut closing).await?;
        }
    }

    pub(super) fn deliver(&self, meta: &TensorMeta, captured: Vec<PartSnapshot>) {
        if let (Some(checkpoints), false) = (&self.checkpoints, captured.is_empty()) {
            checkpoints.deliver(captured.into_iter().map(|s| (meta.clone(), s)).collect());
        }
    }
}
