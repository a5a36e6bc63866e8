//! Which life of a shard's state this is: its session id and the checkpoint
//! it was restored or rewound from. (Which workers have joined it is in
//! [`crate::membership`].)
//!
//! When a shard restarts from a checkpoint, every other shard must go back
//! to the same checkpoint and every worker must join again before pushing
//! or pulling, or an update made after the checkpoint would be applied on
//! one shard and lost on another. This module only keeps the record; the
//! shard does the loading.

use std::collections::BTreeSet;

/// The checkpoint a shard's state came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    /// The checkpoint's directory name.
    pub checkpoint: String,
    /// Its clock: every worker resumes there.
    pub clock: u64,
    /// The session of the shard restart that led here (this shard's own
    /// session when it was started with `--restore`).
    pub cause: u64,
}

/// One life of a shard's state.
#[derive(Clone, Debug)]
pub struct Incarnation {
    session: u64,
    origin: Option<Origin>,
    handled: BTreeSet<u64>,
}

impl Incarnation {
    /// A fresh shard.
    pub fn fresh(session: u64) -> Self {
        Self { session, origin: None, handled: BTreeSet::new() }
    }

    /// A shard started from `checkpoint` at `clock` (every worker must join first).
    pub fn restored(session: u64, checkpoint: String, clock: u64) -> Self {
        let origin = Origin { checkpoint, clock, cause: session };
        Self { session, origin: Some(origin), handled: BTreeSet::from([session]) }
    }

    /// This life's random id; shard 0's names the checkpoints.
    pub fn session(&self) -> u64 {
        self.session
    }

    /// Where the state came from, if from a checkpoint.
    pub fn origin(&self) -> Option<&Origin> {
        self.origin.as_ref()
    }

    /// Whether the restart `cause` was already answered by a rewind (or is
    /// this shard's own restart), so a rewind for it must change nothing.
    pub fn has_handled(&self, cause: u64) -> bool {
        self.handled.contains(&cause)
    }

    /// Starts the next life, from `origin`, with a new `session` (every
    /// worker must join again).
    pub fn rewound(&mut self, session: u64, origin: Origin) {
        self.handled.insert(origin.cause);
        self.session = session;
        self.origin = Some(origin);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Who must join is checked in `membership::tests::a_restored_shard_requires_a_join`
    // and `a_rewind_starts_a_new_life_that_every_worker_must_join`.
    #[test]
    fn a_restored_shard_requires_a_join_and_knows_its_own_restart() {
        let life = Incarnation::restored(7, "ckpt-a".into(), 20);
        assert!(life.has_handled(7) && !life.has_handled(8));
        assert_eq!(life.origin().map(|o| (o.clock, o.cause)), Some((20, 7)));
    }

    #[test]
    fn a_rewind_starts_a_new_life_that_every_worker_must_join() {
        let mut life = Incarnation::fresh(1);
        assert!(life.origin().is_none());
        life.rewound(2, Origin { checkpoint: "ckpt-b".into(), clock: 30, cause: 9 });
        assert_eq!(life.session(), 2);
        assert_eq!(life.origin().map(|o| o.clock), Some(30));
        assert!(life.has_handled(9) && !life.has_handled(1));
    }
}
