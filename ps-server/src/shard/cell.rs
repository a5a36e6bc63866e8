//! One tensor part behind its lock, with the channel that announces its
//! changes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

use tokio::sync::watch;

use crate::readers::UpdateTurn;
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

    pub(super) fn new(part: TensorPart) -> Self {
        Self {
            meta: part.meta().clone(),
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

/// An update waiting for a part's pull replies, which holds back new pulls
/// of the part. However it ends, those pulls then look again.
pub(super) struct HeldPulls<'a> {
    pub(super) cell: &'a TensorCell,
    pub(super) turn: Option<UpdateTurn>,
}

impl Drop for HeldPulls<'_> {
    fn drop(&mut self) {
        // The turn ends first, so a woken pull finds no update waiting.
        self.turn.take();
        self.cell.notify();
    }
}
