//! Applying pushes and releasing pulls and barriers: the waits of a shard,
//! on the parts' release rules and on the replies still reading a part.
//! A pull waits on its own channel, woken by the step that releases it;
//! pushes and barriers watch the part's change channel.

use std::sync::Arc;

use tokio::sync::watch;

use std::sync::atomic::Ordering;

use super::cell::{CancelPull, FinishUpdate};
use super::{Shard, TensorCell};
use crate::error::PsError;
use crate::readers::{ReadLease, UPDATE_WAIT};
use ps_proto::WaitAt;

/// How often a shard says that a pull is still waiting, and for whom.
pub const WAIT_LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(5);
use crate::tensor::{Gradient, PullStart, PushOutcome, Snapshot, TensorPart};

impl Shard {
    /// Applies (or, for a retry, ignores) a validated gradient: of the whole
    /// part, or of piece `piece` of it ([`TensorPart::push_piece`]).
    /// Returns what became of it.
    ///
    /// A push waits first for an update of the part that is still being
    /// applied. An update that pull replies still read from waits (at most
    /// [`UPDATE_WAIT`]) for them to be sent, so that it changes the values
    /// in place rather than copying them; pulls of the part wait for it.
    ///
    /// [`TensorPart::push_piece`]: crate::tensor::TensorPart::push_piece
    pub async fn push(
        &self,
        cell: &TensorCell,
        worker: u32,
        clock: u64,
        piece: Option<usize>,
        grad: Gradient,
    ) -> Result<PushOutcome, PsError> {
        let deadline = tokio::time::Instant::now() + UPDATE_WAIT;
        let mut changed = cell.changed.subscribe();
        let mut closing = self.closing.subscribe();
        let mut grad = Some(grad);
        let (started, pushed, readers) = loop {
            {
                let mut part = cell.lock();
                if cell.is_retired() {
                    drop(part);
                    return Err(self.restarted(Some(worker)));
                }
                if let Some(grad) = grad.take_if(|_| !part.update_pending()) {
                    let _apply = tracing::trace_span!("apply").entered();
                    let started = std::time::Instant::now();
                    let pushed = match piece {
                        None => part.push(worker, clock, grad)?,
                        Some(piece) => {
                            // Taken (left empty) when the piece waits for its turn.
                            let mut values = grad.values;
                            let pushed = part.push_piece(worker, clock, piece, &mut values);
                            self.piece_buffers.give(values);
                            for spare in part.take_spare_buffers() {
                                self.piece_buffers.give(spare);
                            }
                            pushed?
                        }
                    };
                    self.metrics.held_gradients_changed(part.take_held_gradient_change());
                    let readers = pushed.pending.then(|| Arc::clone(part.readers()));
                    break (started, pushed, readers);
                }
            }
            self.wait_for_change(&mut changed, &mut closing).await?;
        };
        // However this future ends from here, the update gets applied.
        let finish = FinishUpdate { shard: self, cell };
        if let Some(readers) = readers {
            self.metrics.update_waited();
            readers.finished(deadline).await;
        }
        drop(finish);
        let elapsed = started.elapsed();
        if pushed.round.is_some() {
            tracing::debug!(worker, clock, elapsed_us = elapsed.as_micros() as u64, "aggregate applied");
        }
        if let Some(staleness) = pushed.staleness {
            self.metrics.push_staleness(staleness);
        }
        if pushed.counted {
            self.metrics.push_applied(worker, clock, elapsed, pushed.round.is_some(), self.members().live());
            Ok(PushOutcome::Counted)
        } else if pushed.dropped {
            tracing::debug!(
                tensor = %cell.meta.name,
                worker,
                clock,
                "push dropped: the round it was computed for closed without it (backup workers)"
            );
            self.metrics.dropped_push();
            Ok(PushOutcome::Dropped)
        } else {
            self.metrics.duplicate_push();
            Ok(PushOutcome::Duplicate)
        }
    }

    /// Applies `cell`'s pending update, if any, and hands on what it
    /// produced: copies counted, checkpoint snapshots delivered, pushes
    /// and barriers waiting on the part told.
    pub(super) fn finish_update(&self, cell: &TensorCell) {
        let (copies, captured, shadows) = {
            let mut part = cell.lock();
            part.finish_update();
            (part.take_copies(), part.take_captured(), part.take_checkpoint_shadow_change())
        };
        self.metrics.update_copied(copies);
        self.metrics.checkpoint().shadow_bytes_changed(shadows);
        self.deliver(&cell.meta, captured);
        cell.notify();
    }

    /// Waits until the policy lets `worker` (or an observer) read `tensor` at
    /// `clock`, then returns a snapshot and the lease that counts the reply
    /// as reading the values until it drops. A waiting pull is woken once,
    /// by the step that releases it. Fails at once on a clock error and with
    /// `Unavailable` if the shard shuts down while waiting.
    pub async fn pull(
        &self,
        cell: &TensorCell,
        worker: Option<u32>,
        clock: u64,
    ) -> Result<(Snapshot, ReadLease), PsError> {
        let started = std::time::Instant::now();
        let id = self.next_pull.fetch_add(1, Ordering::Relaxed);
        let released = {
            let mut part = cell.lock();
            if cell.is_retired() {
                drop(part);
                return Err(self.restarted(worker));
            }
            match part.pull(id, worker, clock)? {
                PullStart::Read => return Ok(self.read(&mut part, worker, clock, started)),
                PullStart::Wait(released) => released,
            }
        };
        // Counted as waiting until this future ends, however it ends.
        let _waiting = self.metrics.pull_waiting();
        let mut cancel = CancelPull { cell, id: Some(id) };
        let mut closing = self.closing.subscribe();
        let mut released = released;
        let outcome = loop {
            tokio::select! {
                outcome = &mut released => break outcome,
                e = self.closed(&mut closing) => return Err(e),
                () = tokio::time::sleep(WAIT_LOG_EVERY) => {
                    self.log_wait(cell, worker, WaitAt::Pull(clock), started);
                }
            }
        };
        cancel.id = None;
        let mut part = cell.lock();
        match outcome {
            _ if cell.is_retired() => {
                drop(part);
                Err(self.restarted(worker))
            }
            Ok(Ok(())) => Ok(self.read(&mut part, worker, clock, started)),
            Ok(Err(source)) => Err(PsError::Clock { tensor: cell.meta.name.clone(), source }),
            Err(_) => Err(PsError::ShuttingDown { shard: self.config.shard_id }),
        }
    }

    /// Says, at most once per [`WAIT_LOG_EVERY`] for the whole shard, that
    /// a pull or a barrier is still waiting and for which workers.
    fn log_wait(&self, cell: &TensorCell, worker: Option<u32>, wait: WaitAt, started: std::time::Instant) {
        let now = std::time::Instant::now();
        {
            let mut last = self.wait_logged.lock().unwrap_or_else(|p| p.into_inner());
            if last.is_some_and(|at| now.duration_since(at) < WAIT_LOG_EVERY) {
                return;
            }
            *last = Some(now);
        }
        let (waiting_for, what, clock) = match wait {
            WaitAt::Pull(clock) => (cell.lock().clocks().holding_back(clock), "a pull", clock),
            WaitAt::Barrier(clock) => (cell.lock().clocks().behind_barrier(clock), "a barrier", clock),
        };
        self.metrics.waited_on(&waiting_for, WAIT_LOG_EVERY.as_secs());
        let advice = ps_proto::wait_at::advice(&waiting_for, &self.unheard_workers());
        let waited = started.elapsed().as_secs();
        tracing::warn!(
            shard = self.config.shard_id,
            tensor = %cell.meta.name,
            worker,
            clock,
            waited_s = waited,
            ?waiting_for,
            "{what} has waited {waited} s for workers {waiting_for:?} to push; {advice}"
        );
    }

    /// A released pull's read: the snapshot, its lease, and its metrics.
    fn read(
        &self,
        part: &mut TensorPart,
        worker: Option<u32>,
        clock: u64,
        started: std::time::Instant,
    ) -> (Snapshot, ReadLease) {
        let snapshot = part.read(worker, started.elapsed());
        let lease = part.readers().lease();
        // With backup workers, worker clocks and rounds move apart, and every
        // read is of the latest round: there is no clock staleness to show.
        let staleness = worker.filter(|_| part.meta().policy.backup_workers() == 0).map(|_| {
            let clocks = part.clocks();
            (0..clocks.num_workers())
                .filter(|w| clocks.is_live(*w))
                .map(|w| (clock as i64 - 1 - snapshot.versions[w as usize]).max(0) as u64)
                .max()
                .unwrap_or(0)
        });
        self.metrics.pulled(staleness, snapshot.waited);
        (snapshot, lease)
    }

    /// Resolves once the shard is closing, with the error that says why.
    async fn closed(&self, closing: &mut watch::Receiver<bool>) -> PsError {
        let _ = closing.wait_for(|closing| *closing).await;
        match self.check_running() {
            Err(e) => e,
            Ok(()) => PsError::ShuttingDown { shard: self.config.shard_id },
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
    /// tensor of this shard (in sync: those rounds are applied). Says
    /// every [`WAIT_LOG_EVERY`] for which workers it still waits.
    pub async fn barrier(&self, worker: u32, clock: u64) -> Result<(), PsError> {
        // Cells first, then the check: a rewind in between is then refused.
        let cells: Vec<Arc<TensorCell>> =
            self.tensors.read().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
        self.check_worker(worker)?;
        let started = std::time::Instant::now();
        let mut closing = self.closing.subscribe();
        let mut next_log = tokio::time::Instant::now() + WAIT_LOG_EVERY;
        for cell in cells {
            let mut changed = cell.changed.subscribe();
            while !cell.lock().clocks().reached(clock) {
                if cell.is_retired() {
                    return Err(self.restarted(Some(worker)));
                }
                // A change seen or not, the loop checks again.
                tokio::select! {
                    changed = self.wait_for_change(&mut changed, &mut closing) => changed?,
                    () = tokio::time::sleep_until(next_log) => {
                        next_log += WAIT_LOG_EVERY;
                        self.log_wait(&cell, Some(worker), WaitAt::Barrier(clock), started);
                    }
                }
            }
        }
        self.metrics.barrier_waited(started.elapsed());
        Ok(())
    }
}
