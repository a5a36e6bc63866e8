//! Applying pushes and releasing pulls and barriers: the waits of a shard,
//! on the parts' release rules and on the replies still reading a part.

use std::sync::Arc;

use tokio::sync::watch;

use super::{HeldPulls, Shard, TensorCell};
use crate::error::PsError;
use crate::readers::{ReadLease, UPDATE_WAIT};
use crate::sync::{Policy, PullDecision};
use crate::tensor::{Gradient, Snapshot};

impl Shard {
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

    pub(super) async fn wait_for_change(
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
}
