//! A shard's checkpoints in flight: which parts each still waits for, and
//! the background write once all are captured.
//!
//! At most [`CutInfo::max_pending`] checkpoints are pending (registered,
//! not yet written or failed) at once: in ssp and async each may keep a
//! shadow copy of the parts it waits for, so the bound bounds that memory.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::watch;

use super::{CheckpointError, CutId, CutInfo, PartSnapshot, write_shard_cut};
use crate::meta::TensorMeta;
use crate::metrics::CheckpointMetrics;

/// Where one checkpoint stands on this shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CutState {
    /// Waiting for parts to reach the clock.
    Capturing {
        /// Parts captured so far.
        captured: usize,
        /// Parts in the checkpoint.
        expected: usize,
    },
    /// Every part is captured; the shard file is being written.
    Writing,
    /// The shard file and fragment are durable.
    Written {
        /// Bytes of the shard file.
        bytes: u64,
    },
    /// The write failed; the message names the path and the cause.
    Failed(String),
}

impl CutState {
    /// Whether the state is final.
    pub fn is_done(&self) -> bool {
        matches!(self, CutState::Written { .. } | CutState::Failed(_))
    }
}

/// A checkpoint's state on this shard and where it is written.
#[derive(Clone, Debug)]
pub struct CutStatus {
    /// The checkpoint.
    pub cut: CutId,
    /// Its state on this shard.
    pub state: CutState,
    /// Its directory.
    pub dir: PathBuf,
    /// Whether its manifest exists: the checkpoint is complete on every shard.
    pub complete: bool,
}

#[derive(Debug)]
struct Entry {
    cut: CutId,
    expected: usize,
    parts: Vec<(TensorMeta, PartSnapshot)>,
    state: CutState,
}

/// The checkpoints of one shard.
#[derive(Debug)]
pub struct Checkpoints {
    info: CutInfo,
    cuts: Mutex<BTreeMap<String, Entry>>,
    changed: watch::Sender<()>,
    metrics: CheckpointMetrics,
}

impl Checkpoints {
    /// No checkpoints yet; they will be written under `info.root`.
    pub fn new(info: CutInfo, metrics: CheckpointMetrics) -> Arc<Self> {
        Arc::new(Self { info, cuts: Mutex::default(), changed: watch::Sender::new(()), metrics })
    }

    /// What every checkpoint of this shard records.
    pub fn info(&self) -> &CutInfo {
        &self.info
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Entry>> {
        self.cuts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers `cut` over `expected` parts. `register_parts` registers it
    /// on every part (undoing its own work on failure) and returns the parts
    /// captured at once. It runs under this registry's lock, so a concurrent
    /// request for the same cut returns only once every part knows it.
    /// Registering a known cut again is a no-op that returns `false`.
    /// Refuses a new cut with [`CheckpointError::TooManyPending`] while
    /// `max_pending` others are pending.
    pub fn register<E: From<CheckpointError>>(
        self: &Arc<Self>,
        cut: CutId,
        expected: usize,
        register_parts: impl FnOnce(&CutId) -> Result<Vec<(TensorMeta, PartSnapshot)>, E>,
    ) -> Result<bool, E> {
        let mut cuts = self.lock();
        if cuts.contains_key(&cut.name) {
            return Ok(false);
        }
        let pending = cuts.values().filter(|e| !e.state.is_done()).count();
        let limit = self.info.max_pending.max(1);
        if pending >= limit {
            self.metrics.failed(false);
            return Err(CheckpointError::TooManyPending { shard: self.info.shard, pending, limit }.into());
        }
        let captured = match register_parts(&cut) {
            Ok(c) => c,
            Err(e) => {
                self.metrics.failed(false);
                return Err(e);
            }
        };
        self.metrics.registered();
        tracing::info!(shard = self.info.shard, clock = cut.clock, name = %cut.name, "checkpoint registered");
        let name = cut.name.clone();
        cuts.insert(
            name.clone(),
            Entry { cut, expected, parts: Vec::new(), state: CutState::Capturing { captured: 0, expected } },
        );
        self.add(&mut cuts, &name, captured);
        drop(cuts);
        self.changed.send_replace(());
        Ok(true)
    }

    /// Hands over snapshots the parts captured.
    pub fn deliver(self: &Arc<Self>, captured: Vec<(TensorMeta, PartSnapshot)>) {
        if captured.is_empty() {
            return;
        }
        let mut cuts = self.lock();
        let mut by_name: BTreeMap<String, Vec<(TensorMeta, PartSnapshot)>> = BTreeMap::new();
        for (meta, snap) in captured {
            by_name.entry(snap.cut.name.clone()).or_default().push((meta, snap));
        }
        for (name, parts) in by_name {
            self.add(&mut cuts, &name, parts);
        }
        drop(cuts);
        self.changed.send_replace(());
    }

    fn add(
        self: &Arc<Self>,
        cuts: &mut BTreeMap<String, Entry>,
        name: &str,
        parts: Vec<(TensorMeta, PartSnapshot)>,
    ) {
        let Some(entry) = cuts.get_mut(name) else { return };
        entry.parts.extend(parts);
        entry.state = CutState::Capturing { captured: entry.parts.len(), expected: entry.expected };
        if entry.parts.len() < entry.expected {
            return;
        }
        entry.state = CutState::Writing;
        let parts = std::mem::take(&mut entry.parts);
        let cut = entry.cut.clone();
        let this = Arc::clone(self);
        let captured_at = Instant::now();
        let span = tracing::info_span!("checkpoint_write", shard = self.info.shard, clock = cut.clock, name = %cut.name);
        let spawned = std::thread::Builder::new().name("ps-checkpoint".into()).spawn(move || {
            let _span = span.entered();
            let result = write_shard_cut(&this.info, &cut, &parts);
            drop(parts);
            this.finish(&cut, captured_at, result);
        });
        if let Err(e) = spawned {
            entry.state = CutState::Failed(format!("cannot start the checkpoint writer thread: {e}"));
            self.metrics.failed(true);
        }
    }

    fn finish(&self, cut: &CutId, captured_at: Instant, result: Result<super::Written, CheckpointError>) {
        let state = match result {
            Ok(w) => {
                self.metrics.written(cut.clock, captured_at.elapsed(), w.bytes);
                tracing::info!(
                    shard = self.info.shard,
                    clock = cut.clock,
                    dir = %w.dir.display(),
                    bytes = w.bytes,
                    write_ms = captured_at.elapsed().as_millis() as u64,
                    manifest = w.manifest,
                    "checkpoint written"
                );
                CutState::Written { bytes: w.bytes }
            }
            Err(e) => {
                self.metrics.failed(true);
                tracing::error!(shard = self.info.shard, clock = cut.clock, error = %e, "checkpoint write failed; training goes on");
                CutState::Failed(e.to_string())
            }
        };
        if let Some(entry) = self.lock().get_mut(&cut.name) {
            entry.state = state;
        }
        self.changed.send_replace(());
    }

    /// Marks every checkpoint still capturing as failed with `reason`: its
    /// parts will never reach the clock (the state they belonged to is gone).
    pub fn abandon(&self, reason: &str) {
        let mut cuts = self.lock();
        for entry in cuts.values_mut() {
            if let CutState::Capturing { .. } = entry.state {
                entry.parts.clear();
                entry.state = CutState::Failed(reason.to_string());
                self.metrics.failed(true);
            }
        }
        drop(cuts);
        self.changed.send_replace(());
    }

    /// The state of checkpoint `name`, if it was registered here.
    pub fn status(&self, name: &str) -> Option<CutStatus> {
        let cuts = self.lock();
        let entry = cuts.get(name)?;
        let dir = self.info.root.join(name);
        let complete = dir.join(super::format::MANIFEST).exists();
        Some(CutStatus { cut: entry.cut.clone(), state: entry.state.clone(), dir, complete })
    }

    /// A receiver that sees every state change.
    pub fn subscribe(&self) -> watch::Receiver<()> {
        self.changed.subscribe()
    }
}
