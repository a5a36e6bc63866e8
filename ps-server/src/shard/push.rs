//! A push in one call, from its header to its application: the part it
//! names and the piece of it, the worker's request counted as in flight,
//! the worker checked live, its gradient received, then applied.

use std::future::Future;
use std::sync::Arc;

use ps_proto::placement::{self, Part};
use tracing::Instrument;

use super::{Shard, TensorCell};
use crate::error::PsError;
use crate::meta::TensorMeta;
use crate::tensor::{Gradient, PushOutcome};

/// What a push's header says: whose push, of which clock, to which elements
/// of which tensor.
#[derive(Clone, Copy, Debug)]
pub struct PushHead<'a> {
    /// The tensor's name.
    pub tensor: &'a str,
    /// The pushing worker.
    pub worker: u32,
    /// The clock the gradient was computed at.
    pub clock: u64,
    /// First element the gradient covers.
    pub offset: u64,
    /// Elements the gradient covers.
    pub len: u64,
}

/// A push whose header the shard accepted: the part it goes to, and the
/// piece of that part it covers (`None`: all of it). Cloning shares the part.
#[derive(Clone, Debug)]
pub struct PushTarget {
    cell: Arc<TensorCell>,
    piece: Option<usize>,
}

impl PushTarget {
    /// The part the push goes to.
    pub fn meta(&self) -> &TensorMeta {
        self.cell.meta()
    }

    /// The piece of the part the push covers; `None` for the whole part.
    pub fn piece(&self) -> Option<usize> {
        self.piece
    }
}

impl Shard {
    /// Takes one push from its header to its application. Looks up the
    /// part `head` names and the range it covers (the whole part or one of
    /// its pieces), counts a request of the worker as in flight until the
    /// push ends, and checks that the worker is live; only then does
    /// `receive` read the gradient for that target, with anything that must
    /// live until it is applied (the share of a memory budget its buffer
    /// takes). The gradient is applied as [`Shard::push`] applies it.
    /// Returns what became of the push.
    ///
    /// A header refused here fails before `receive` runs, so nothing of the
    /// gradient is read; any failure leaves the part unchanged.
    pub async fn push_with<E, Held, Fut>(
        &self,
        head: PushHead<'_>,
        receive: impl FnOnce(PushTarget) -> Fut,
    ) -> Result<PushOutcome, E>
    where
        E: From<PsError>,
        Fut: Future<Output = Result<(Gradient, Held), E>>,
    {
        let cell = self.tensor(head.tensor)?;
        let piece = self.piece_of(cell.meta(), &head)?;
        let _lease = self.lease(head.worker);
        self.check_worker(head.worker)?;
        let (grad, _held) = receive(PushTarget { cell: Arc::clone(&cell), piece }).await?;
        let span =
            tracing::debug_span!("push", tensor = %head.tensor, worker = head.worker, clock = head.clock);
        Ok(self.push(&cell, head.worker, head.clock, piece, grad).instrument(span).await?)
    }

    /// Which piece of the part `meta` the range of `head` is: `None` for
    /// the whole part; refused unless it is the part or one of its pieces.
    fn piece_of(&self, meta: &TensorMeta, head: &PushHead<'_>) -> Result<Option<usize>, PsError> {
        if (head.offset, head.len) == (meta.offset, meta.len) {
            return Ok(None);
        }
        let shard = self.config.shard_id;
        let whole = Part { shard, offset: meta.offset, len: meta.len };
        let index = placement::piece_index(whole, meta.piece_len, head.offset, head.len);
        let index = index.ok_or_else(|| PsError::WrongRange {
            tensor: meta.name.clone(),
            shard,
            expected_offset: meta.offset,
            expected_end: meta.offset + meta.len,
            piece_len: meta.piece_len,
            got_offset: head.offset,
            got_end: head.offset.saturating_add(head.len),
        })?;
        Ok(Some(index))
    }
}
