//! One tensor part behind its lock, with the channel that announces its
//! changes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

use tokio::sync::watch;

use crate::init::Init;
use crate::optim::OptimizerConfig;
use crate::sync::PullId;
use crate::tensor::{TensorMeta, TensorPart};

/// One tensor part and the channel that announces its changes.
#[derive(Debug)]
pub struct TensorCell {
    /// What the part is; fixed at declaration, so readable without the lock.
    pub(super) meta: TensorMeta,
    pub(super) part: Mutex<TensorPart>,
    pub(super) changed: watch::Sender<()>,
    /// Set when a rewind replaced this part: waiters on it give up.
    pub(super) retired: AtomicBool,
    /// The optimizer settings it was created with, for re-declarations.
    pub(super) optimizer: OptimizerConfig,
    /// The initializer it was declared with; `None` when restored from a checkpoint.
    pub(super) init: Option<Init>,
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

    /// `part`, as declared with `init` (`None`: restored).
    pub(super) fn new(part: TensorPart, init: Option<Init>) -> Self {
        Self {
            meta: part.meta().clone(),
            optimizer: *part.optimizer().config(),
            init,
            part: Mutex::new(part),
            changed: watch::Sender::new(()),
            retired: AtomicBool::new(false),
        }
    }

    pub(super) fn notify(&self) {
        self.changed.send_replace(());
    }

    pub(super) fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Acquire)
    }
}

/// Applies a part's pending update when dropped: a push whose request
/// ends while it waits for the pull replies still leaves its update applied.
pub(super) struct FinishUpdate<'a> {
    pub(super) shard: &'a super::Shard,
    pub(super) cell: &'a TensorCell,
}

impl Drop for FinishUpdate<'_> {
    fn drop(&mut self) {
        self.shard.finish_update(self.cell);
    }
}

/// Takes a waiting pull off its part when dropped armed (`id` set): its
/// request ended before it was released.
pub(super) struct CancelPull<'a> {
    pub(super) cell: &'a TensorCell,
    pub(super) id: Option<PullId>,
}

impl Drop for CancelPull<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            self.cell.lock().cancel_pull(id);
        }
    }
}
