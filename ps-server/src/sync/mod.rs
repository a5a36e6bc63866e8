//! The synchronisation core: a pure, I/O-free state machine per tensor part.
//!
//! [`ClockTable::step`] is the one entry point: an [`Event`] goes in (a
//! push, an applied update, a pull, a cancelled pull, a join, a leave, a
//! read) and a [`Ready`] comes out, saying what follows: accumulate, apply
//! or drop the gradient (with its staleness), apply a completed round, which waiting pulls to release or
//! refuse by id, and whether checkpoint cuts may be due. Each decision is
//! made once, by the step that returns it. The table never touches
//! tensors, sockets or time, so every rule of DESIGN §3 can be tested from
//! recorded histories (`tests/testdata/clock/`). The three policies are one
//! table with different release rules. [`Delivered`] tracks the pieces of
//! sync pushes that arrive in pieces.

mod clock;
mod pieces;

pub use clock::{
    ClockError, ClockTable, Event, PullDecision, PullId, PushDecision, Ready, RoundComplete, Update,
};
pub use pieces::Delivered;
pub use ps_proto::Policy;
