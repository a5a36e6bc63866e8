//! A sync round's sum, folded in worker-id order whatever order the
//! gradients arrive in.
//!
//! f32 addition does not associate: `(1e8 + 1) - 1e8` is 0 but
//! `(1e8 - 1e8) + 1` is 1. So that the same job run twice gives
//! bit-identical parameters, each piece of the sum is folded in worker-id
//! order: worker `k`'s gradient is added only once every worker below `k`
//! has been settled for that piece, that is, folded in, or known not to
//! contribute (it is not live and delivered nothing there). A gradient that
//! arrives before its turn is held (its buffer moved in, not copied) and
//! folded, then freed, as soon as the workers below it are settled. At most
//! `W - 1` gradients (per piece) are held: the one whose turn it is is
//! never held.
//!
//! The one exception is a worker that leaves and joins again within a
//! round after the fold has passed it: its gradient is added when it
//! arrives, after those of higher ids folded by then.

use std::collections::BTreeMap;
use std::ops::Range;

/// The running sum of one sync round of a tensor part, with the gradients
/// that arrived before their turn.
///
/// Guarantees: for each piece, the gradients delivered for it are added in
/// increasing worker id (see the module doc for a worker that rejoins
/// after its turn passed); a piece's first gradient is moved or copied in,
/// never added to zeros; nothing of a round is left in it after
/// [`finish`](Self::finish).
#[derive(Debug)]
pub(super) struct RoundSum {
    len: usize,
    piece_len: usize,
    workers: u32,
    /// The sum. A part taking whole pushes frees it between rounds (its
    /// first gradient of a round is moved in); a part taking pieces keeps it.
    sum: Vec<f32>,
    /// Per piece: whether `sum` holds a gradient of this round there.
    filled: Vec<bool>,
    /// Per piece: the lowest worker not yet settled there.
    turn: Vec<u32>,
    /// Gradients (of one piece each) that arrived before their turn, by
    /// worker and piece.
    held: BTreeMap<(u32, usize), Vec<f32>>,
    /// Buffers of held pieces, folded since [`take_spare`](Self::take_spare).
    spare: Vec<Vec<f32>>,
    /// [`held_bytes`](Self::held_bytes) at the last
    /// [`take_held_change`](Self::take_held_change).
    reported: usize,
}

impl RoundSum {
    /// An empty sum of `len` elements taken in pieces of `piece_len` (0:
    /// whole pushes only), for workers `0..workers`.
    pub(super) fn new(len: usize, piece_len: usize, workers: u32) -> Self {
        let pieces = if piece_len == 0 { 1 } else { len.div_ceil(piece_len).max(1) };
        Self {
            len,
            piece_len,
            workers,
            sum: Vec::new(),
            filled: vec![false; pieces],
            turn: vec![0; pieces],
            held: BTreeMap::new(),
            spare: Vec::new(),
            reported: 0,
        }
    }

    /// Number of pieces (1: whole pushes only).
    pub(super) fn pieces(&self) -> usize {
        self.filled.len()
    }

    /// The elements of piece `piece` (below [`pieces`](Self::pieces)), relative to the part.
    pub(super) fn piece_range(&self, piece: usize) -> Range<usize> {
        if self.piece_len == 0 {
            return 0..self.len;
        }
        let start = (piece * self.piece_len).min(self.len);
        start..(start + self.piece_len).min(self.len)
    }

    /// Bytes held: the sum, the gradients waiting for their turn, and the
    /// spare buffers of folded ones.
    pub(super) fn bytes(&self) -> usize {
        self.sum.capacity() * 4 + self.held_bytes()
    }

    /// Bytes of the gradients waiting for their turn and the spare buffers
    /// of folded ones (the sum itself is the part's aggregation buffer).
    pub(super) fn held_bytes(&self) -> usize {
        self.held.values().chain(&self.spare).map(Vec::capacity).sum::<usize>() * 4
    }

    /// How [`held_bytes`](Self::held_bytes) changed since the last call.
    pub(super) fn take_held_change(&mut self) -> i64 {
        let now = self.held_bytes();
        let change = now as i64 - self.reported as i64;
        self.reported = now;
        change
    }

    /// The buffers of held pieces folded since the last call, for the
    /// caller to reuse (a part of one piece keeps none: a whole push's
    /// buffer becomes the sum or is freed).
    pub(super) fn take_spare(&mut self) -> Vec<Vec<f32>> {
        std::mem::take(&mut self.spare)
    }

    /// Gradients waiting for their turn.
    pub(super) fn held(&self) -> usize {
        self.held.len()
    }

    /// Takes `worker`'s whole gradient for `pieces` (the pieces of its push
    /// not delivered before): each is folded now if its turn has come, else
    /// held. `live` says which workers may still deliver. A part of one
    /// piece holds the gradient's own buffer; a part taking pieces copies
    /// out the pieces it holds.
    pub(super) fn offer_whole(
        &mut self,
        worker: u32,
        grad: Vec<f32>,
        pieces: &[usize],
        live: impl Fn(u32) -> bool,
    ) {
        if self.pieces() == 1 {
            return self.offer(worker, 0, Incoming::Owned(grad), &live);
        }
        for &piece in pieces {
            let range = self.piece_range(piece);
            self.offer(worker, piece, Incoming::Borrowed(&grad[range]), &live);
        }
    }

    /// Takes `worker`'s piece `piece` (its elements in `grad`): folded now
    /// if its turn has come, leaving `grad` to the caller, else held,
    /// taking `grad`'s buffer and leaving it empty.
    pub(super) fn offer_piece(
        &mut self,
        worker: u32,
        piece: usize,
        grad: &mut Vec<f32>,
        live: impl Fn(u32) -> bool,
    ) {
        self.offer(worker, piece, Incoming::Lent(grad), &live);
    }

    /// Folds what the workers' liveness now allows: after a worker left,
    /// the gradients held behind it.
    pub(super) fn settle(&mut self, live: impl Fn(u32) -> bool) {
        for piece in 0..self.pieces() {
            self.advance(piece, &live);
        }
    }

    /// The round's sum, once the round is complete: folds the gradients
    /// still held, in worker order per piece (those behind a worker that
    /// contributed some pieces and left), and zeros the pieces no
    /// contributor delivered.
    pub(super) fn complete(&mut self) -> &[f32] {
        for ((_, piece), grad) in std::mem::take(&mut self.held) {
            self.fold(piece, Incoming::Owned(grad));
        }
        self.ensure_sum();
        for piece in 0..self.pieces() {
            if !self.filled[piece] {
                let range = self.piece_range(piece);
                self.sum[range].fill(0.0);
            }
        }
        &self.sum
    }

    /// Starts the next round: nothing filled, every turn back to worker 0,
    /// and (for whole pushes) the sum freed.
    pub(super) fn finish(&mut self) {
        self.filled.fill(false);
        self.turn.fill(0);
        self.held.clear();
        if self.pieces() == 1 {
            self.sum = Vec::new();
        }
    }

    /// Folds `grad` if `worker`'s turn for `piece` has come (or passed:
    /// it rejoined after it), else holds it; then folds what follows.
    fn offer(&mut self, worker: u32, piece: usize, grad: Incoming<'_>, live: &impl Fn(u32) -> bool) {
        self.advance(piece, live);
        let turn = self.turn[piece];
        if worker > turn {
            self.held.insert((worker, piece), grad.into_owned());
            return;
        }
        self.fold(piece, grad);
        if worker == turn {
            self.turn[piece] += 1;
            self.advance(piece, live);
        }
    }

    /// Moves `piece`'s turn past every worker settled there: folding the
    /// held gradients in order, and skipping workers that are not live and
    /// delivered nothing there.
    fn advance(&mut self, piece: usize, live: &impl Fn(u32) -> bool) {
        while self.turn[piece] < self.workers {
            let worker = self.turn[piece];
            if let Some(grad) = self.held.remove(&(worker, piece)) {
                self.fold(piece, Incoming::Owned(grad));
            } else if live(worker) {
                return;
            }
            self.turn[piece] += 1;
        }
    }

    /// Adds `grad`, the elements of piece `piece`, to the sum: moved in
    /// where it can be (the round's first gradient of a part of one
    /// piece), copied where the sum holds nothing of this round yet, added
    /// elsewhere.
    /// A held piece's buffer is kept for [`take_spare`](Self::take_spare).
    fn fold(&mut self, piece: usize, grad: Incoming<'_>) {
        let first = !std::mem::replace(&mut self.filled[piece], true);
        let grad = match grad {
            Incoming::Owned(grad) if first && self.pieces() == 1 => {
                self.sum = grad;
                return;
            }
            grad => grad,
        };
        let range = self.piece_range(piece);
        if first {
            self.ensure_sum();
            self.sum[range].copy_from_slice(grad.as_slice());
        } else {
            add(&mut self.sum[range], grad.as_slice());
        }
        if self.pieces() > 1
            && let Incoming::Owned(buffer) = grad
        {
            self.spare.push(buffer);
        }
    }

    fn ensure_sum(&mut self) {
        if self.sum.len() != self.len {
            self.sum = vec![0.0; self.len];
        }
    }
}

/// A gradient offered to the sum: owned (moved in or held as is), lent
/// (held by taking its buffer), or borrowed (held by copying).
enum Incoming<'a> {
    Owned(Vec<f32>),
    Lent(&'a mut Vec<f32>),
    Borrowed(&'a [f32]),
}

impl Incoming<'_> {
    fn as_slice(&self) -> &[f32] {
        match self {
            Incoming::Owned(v) => v,
            Incoming::Lent(v) => v,
            Incoming::Borrowed(s) => s,
        }
    }

    fn into_owned(self) -> Vec<f32> {
        match self {
            Incoming::Owned(v) => v,
            Incoming::Lent(v) => std::mem::take(v),
            Incoming::Borrowed(s) => s.to_vec(),
        }
    }
}

/// `sum[i] += grad[i]`.
fn add(sum: &mut [f32], grad: &[f32]) {
    for (s, g) in sum.iter_mut().zip(grad) {
        *s += g;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIVE: fn(u32) -> bool = |_| true;

    #[test]
    fn the_rounds_first_whole_gradient_becomes_the_sum_without_a_copy() {
        let mut round = RoundSum::new(4, 0, 3);
        let first = vec![1.0; 4];
        let at = first.as_ptr();
        round.offer_whole(0, first, &[0], LIVE);
        assert_eq!(round.sum.as_ptr(), at, "in order: moved in");
        round.offer_whole(1, vec![2.0; 4], &[0], LIVE);
        round.offer_whole(2, vec![3.0; 4], &[0], LIVE);
        assert_eq!(round.complete(), &[6.0; 4]);
        round.finish();
        assert_eq!(round.bytes(), 0, "a part of one piece frees its sum between rounds");

        // Out of order: the held buffer of the first to fold is moved in.
        let held = vec![2.0; 4];
        let at = held.as_ptr();
        round.offer_whole(1, held, &[0], LIVE);
        assert_eq!(round.held(), 1);
        assert_eq!(round.bytes(), 16, "the held gradient counts");
        round.settle(|w| w != 0);
        assert_eq!(
            (round.held(), round.sum.as_ptr()),
            (0, at),
            "worker 0 left: worker 1's buffer is the sum"
        );
    }

    #[test]
    fn a_piece_in_its_turn_leaves_its_buffer_and_one_before_it_is_taken() {
        let mut round = RoundSum::new(4, 2, 2);
        let mut early = vec![1.0; 2];
        let at = early.as_ptr();
        round.offer_piece(1, 0, &mut early, LIVE);
        assert!(early.is_empty() && early.capacity() == 0, "held: its buffer is taken, not copied");
        let mut in_turn = vec![2.0; 2];
        round.offer_piece(0, 0, &mut in_turn, LIVE);
        assert_eq!(in_turn, vec![2.0; 2], "folded at once: the caller keeps its buffer");
        assert_eq!(round.held(), 0, "worker 1's piece followed worker 0's");
        let spare = round.take_spare();
        assert_eq!(
            spare.iter().map(|b| b.as_ptr()).collect::<Vec<_>>(),
            vec![at],
            "its buffer is given back"
        );
        assert!(round.take_spare().is_empty());
        assert_eq!(round.complete(), &[3.0, 3.0, 0.0, 0.0], "an undelivered piece is zeros");
    }
}
