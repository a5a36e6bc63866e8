//! Consistent checkpoints: requesting one at a clock, asking how far each
//! shard's share has got, and waiting until it is complete.

use ps_proto::pb;

use crate::connection::Shards;
use crate::error::WorkerError;

/// A checkpoint whose every shard file and manifest are durable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointDone {
    /// Directory name of the checkpoint.
    pub name: String,
    /// Its path (as shard 0 sees it).
    pub dir: String,
    /// Its clock: it holds the updates of clocks `< clock`.
    pub clock: u64,
    /// Bytes of all shard files.
    pub bytes: u64,
}

/// How far one shard's share of a checkpoint has got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointStatus {
    /// The state of this shard's share.
    pub state: CheckpointState,
    /// Whether the whole checkpoint is complete: every shard's file is
    /// durable and the manifest is written.
    pub complete: bool,
}

/// The state of one shard's share of a checkpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckpointState {
    /// Waiting for the shard's parts to reach the checkpoint's clock.
    Capturing {
        /// Parts captured so far.
        captured: u32,
        /// Parts in the checkpoint.
        expected: u32,
    },
    /// Every part is captured; the shard's file is being written.
    Writing,
    /// The shard's file is durable.
    Written {
        /// Bytes of the shard's file.
        bytes: u64,
    },
    /// The shard could not write its file (training goes on).
    Failed {
        /// The shard's message.
        error: String,
    },
}

impl CheckpointStatus {
    /// The status `reply` of shard `shard` for checkpoint `name`, or why it is malformed.
    fn from_pb(name: &str, shard: u32, reply: pb::CheckpointStatusReply) -> Result<Self, WorkerError> {
        let state = match pb::CheckpointState::try_from(reply.state) {
            Ok(pb::CheckpointState::Capturing) => {
                CheckpointState::Capturing { captured: reply.captured, expected: reply.expected }
            }
            Ok(pb::CheckpointState::Writing) => CheckpointState::Writing,
            Ok(pb::CheckpointState::Written) => CheckpointState::Written { bytes: reply.bytes },
            Ok(pb::CheckpointState::Failed) => CheckpointState::Failed { error: reply.error },
            Ok(pb::CheckpointState::Unspecified) | Err(_) => {
                return Err(WorkerError::Checkpoint {
                    name: name.into(),
                    shard,
                    error: format!("the shard reports an unknown state {}", reply.state),
                });
            }
        };
        Ok(Self { state, complete: reply.complete })
    }
}

/// Requests the checkpoint at `clock` on every shard and returns its name.
/// `session` is shard 0's; `worker` is the joined worker asking, if any.
pub(crate) async fn request(
    shards: &Shards,
    clock: u64,
    session: u64,
    worker: Option<u32>,
) -> Result<String, WorkerError> {
    let request = pb::CheckpointRequest { clock, session, worker };
    let replies = shards
        .broadcast("checkpoint", false, request, |mut c, r| async move { c.checkpoint(r).await })
        .await?;
    Ok(replies.into_iter().next().map(|r| r.name).unwrap_or_default())
}

/// The replies of every shard about checkpoint `name`; with `wait`, once
/// each shard's file is durable or its write failed.
async fn shard_replies(
    shards: &Shards,
    name: &str,
    wait: bool,
) -> Result<Vec<pb::CheckpointStatusReply>, WorkerError> {
    let request = pb::CheckpointStatusRequest { name: name.to_string(), wait };
    shards
        .broadcast("checkpoint_status", wait, request, |mut c, r| async move { c.checkpoint_status(r).await })
        .await
}

/// The state of checkpoint `name` on every shard, in shard order; with
/// `wait`, once each shard's file is durable or its write failed.
pub(crate) async fn status(
    shards: &Shards,
    name: &str,
    wait: bool,
) -> Result<Vec<CheckpointStatus>, WorkerError> {
    let replies = shard_replies(shards, name, wait).await?;
    replies
        .into_iter()
        .enumerate()
        .map(|(shard, r)| CheckpointStatus::from_pb(name, shard as u32, r))
        .collect()
}

/// Waits until checkpoint `name` is complete: every shard's file durable
/// and the manifest written.
pub(crate) async fn wait(shards: &Shards, name: &str) -> Result<CheckpointDone, WorkerError> {
    let replies = shard_replies(shards, name, true).await?;
    let failed = replies.iter().enumerate().filter(|(_, r)| r.state() != pb::CheckpointState::Written);
    if let Some((shard, r)) = root_cause(failed, |(_, r)| &r.error) {
        return Err(WorkerError::Checkpoint {
            name: name.into(),
            shard: shard as u32,
            error: if r.error.is_empty() { format!("state {:?}", r.state()) } else { r.error.clone() },
        });
    }
    // The last shard to write its share writes the manifest before it reports.
    let replies = shard_replies(shards, name, false).await?;
    let first = replies.first().cloned().unwrap_or_default();
    if !replies.iter().any(|r| r.complete) {
        return Err(WorkerError::Checkpoint {
            name: name.into(),
            shard: 0,
            error: format!("every shard file is written but {}/manifest.json is missing", first.dir),
        });
    }
    Ok(CheckpointDone {
        name: name.into(),
        dir: first.dir,
        clock: first.clock,
        bytes: replies.iter().map(|r| r.bytes).sum(),
    })
}

/// What a shard says when it stops writing its share because another
/// shard's failed (`CheckpointError::FailedElsewhere` on the server).
const FAILED_ELSEWHERE: &str = "checkpoint failed on another shard";

/// Of the shards that failed, the one to name: the first whose own write
/// failed, rather than one that stopped because of it.
fn root_cause<T>(failed: impl Iterator<Item = T> + Clone, error: impl Fn(&T) -> &str) -> Option<T> {
    let mut all = failed.clone();
    failed.into_iter().find(|f| !error(f).contains(FAILED_ELSEWHERE)).or_else(|| all.next())
}

/// A checkpoint a shard could not write: which one, on which shard, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointFailure {
    /// Directory name of the checkpoint.
    pub name: String,
    /// The shard that reported the failure.
    pub shard: u32,
    /// The shard's message (names the path and the cause).
    pub error: String,
}

impl std::fmt::Display for CheckpointFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "checkpoint {} failed on shard {}: {}", self.name, self.shard, self.error)
    }
}

/// The checkpoints a job asked for without waiting (as with a periodic
/// `--checkpoint-every`), and what became of them: each failure is
/// returned once, by [`poll`](Self::poll) or [`finish`](Self::finish), so
/// the caller can warn about it, and [`all_failed`](Self::all_failed) says
/// whether the job got no checkpoint at all.
#[derive(Debug, Default)]
pub struct CheckpointWatch {
    pending: Vec<String>,
    complete: usize,
    failed: usize,
    /// Pending when a shard restarted or was rewound, so never settled.
    forgotten: usize,
}

impl CheckpointWatch {
    /// Nothing asked for yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that checkpoint `name` was requested.
    pub fn requested(&mut self, name: String) {
        if !self.pending.contains(&name) {
            self.pending.push(name);
        }
    }

    /// Asks the shards (without waiting) how the pending checkpoints stand;
    /// returns those that failed since the last call.
    pub async fn poll(&mut self, worker: &crate::Worker) -> Result<Vec<CheckpointFailure>, WorkerError> {
        self.settle(worker, false).await
    }

    /// Waits until every pending checkpoint is complete or failed, or
    /// `patience` has passed (then the rest stay pending: see
    /// [`pending`](Self::pending)); returns those that failed since the
    /// last call. Asks the shards every 100 ms rather than in one waiting
    /// request, so no checkpoint that will never settle (one a rewind
    /// made moot) holds it for longer.
    pub async fn finish(
        &mut self,
        worker: &crate::Worker,
        patience: std::time::Duration,
    ) -> Result<Vec<CheckpointFailure>, WorkerError> {
        let until = tokio::time::Instant::now() + patience;
        let mut failures = self.settle(worker, false).await?;
        while !self.pending.is_empty() && tokio::time::Instant::now() < until {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            failures.extend(self.settle(worker, false).await?);
        }
        Ok(failures)
    }

    /// The checkpoints asked for whose outcome is not known yet.
    pub fn pending(&self) -> &[String] {
        &self.pending
    }

    async fn settle(
        &mut self,
        worker: &crate::Worker,
        wait: bool,
    ) -> Result<Vec<CheckpointFailure>, WorkerError> {
        let mut failures = Vec::new();
        let mut i = 0;
        while i < self.pending.len() {
            // On error the rest stay pending, for the next call.
            let statuses = match worker.checkpoint_status(&self.pending[i], wait).await {
                Ok(statuses) => statuses,
                // A shard that restarted or was rewound since has no record
                // of it: its outcome can no longer be learnt (a restored
                // shard came back from a complete checkpoint, so the job
                // has one).
                Err(e) if e.code() == Some(tonic::Code::NotFound) => {
                    tracing::debug!(checkpoint = %self.pending[i], "a shard no longer knows this checkpoint: {e}");
                    self.pending.remove(i);
                    self.forgotten += 1;
                    continue;
                }
                Err(e) => return Err(e),
            };
            match classify(&self.pending[i], &statuses) {
                Outcome::Failed(f) => {
                    self.pending.remove(i);
                    self.failed += 1;
                    failures.push(f);
                }
                Outcome::Complete => {
                    self.pending.remove(i);
                    self.complete += 1;
                }
                Outcome::Pending => i += 1,
            }
        }
        Ok(failures)
    }

    /// Checkpoints known complete.
    pub fn complete(&self) -> usize {
        self.complete
    }

    /// Checkpoints known failed.
    pub fn failed(&self) -> usize {
        self.failed
    }

    /// Whether at least one checkpoint was asked for, none completed, and
    /// every one whose outcome is known failed.
    pub fn all_failed(&self) -> bool {
        self.failed > 0 && self.complete == 0 && self.forgotten == 0
    }
}

enum Outcome {
    Complete,
    Failed(CheckpointFailure),
    Pending,
}

/// What the shards' statuses of checkpoint `name` say about it as a whole:
/// failed if any shard failed (the first one is named), complete once the
/// manifest is written, pending otherwise.
fn classify(name: &str, statuses: &[CheckpointStatus]) -> Outcome {
    let failed = statuses.iter().enumerate().filter_map(|(shard, s)| match &s.state {
        CheckpointState::Failed { error } => Some((shard, error)),
        _ => None,
    });
    if let Some((shard, error)) = root_cause(failed, |(_, e)| e.as_str()) {
        return Outcome::Failed(CheckpointFailure {
            name: name.into(),
            shard: shard as u32,
            error: error.clone(),
        });
    }
    let written = statuses.iter().all(|s| matches!(s.state, CheckpointState::Written { .. }));
    if written && statuses.iter().any(|s| s.complete) { Outcome::Complete } else { Outcome::Pending }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(state: CheckpointState, complete: bool) -> CheckpointStatus {
        CheckpointStatus { state, complete }
    }

    #[test]
    fn a_failure_on_any_shard_names_it_and_completion_needs_the_manifest() {
        let written = CheckpointState::Written { bytes: 8 };
        let failed = CheckpointState::Failed { error: "disk full".into() };
        match classify("c", &[status(written.clone(), false), status(failed, false)]) {
            Outcome::Failed(f) => assert_eq!(f.to_string(), "checkpoint c failed on shard 1: disk full"),
            _ => panic!("a failed shard was not reported"),
        }
        assert!(matches!(classify("c", &[status(written.clone(), false)]), Outcome::Pending));
        assert!(matches!(classify("c", &[status(written, true)]), Outcome::Complete));
        assert!(matches!(classify("c", &[status(CheckpointState::Writing, false)]), Outcome::Pending));
    }
}
