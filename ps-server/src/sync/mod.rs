//! The synchronisation core: a pure, I/O-free state machine per tensor part.
//!
//! [`ClockTable`] is fed events (a push, a pull, a worker joining or leaving)
//! and answers with decisions (apply this push now, accumulate it, it is a
//! duplicate, this pull may proceed or must wait, this sync round is
//! complete). It never touches tensors, sockets or time, so every rule of
//! DESIGN §3 can be tested from recorded histories. The three policies are one
//! table with different release rules: see [`ClockTable::check_pull`].
//! [`Delivered`] tracks the pieces of sync pushes that arrive in pieces.

mod clock;
mod pieces;

pub use clock::{ClockError, ClockTable, PullDecision, PushDecision, RoundComplete};
pub use pieces::Delivered;
pub use ps_proto::Policy;
