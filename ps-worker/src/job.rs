//! The job as the shards describe it at a join, and the checks that they
//! describe the same one: a worker refuses a cluster whose shards were
//! started with different settings, and finds shards that live in
//! different histories (one restarted from a checkpoint, the others not
//! rewound to it).

use ps_proto::{OptimizerConfig, Policy, pb};

use crate::error::{Restart, WorkerError};

/// What one shard said about the job at a join.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ShardView {
    pub(crate) num_workers: u32,
    pub(crate) initial_workers: u32,
    pub(crate) policy: Option<Policy>,
    pub(crate) optimizer: Option<OptimizerConfig>,
    pub(crate) split_threshold: u64,
    pub(crate) origin: Option<pb::CheckpointOrigin>,
    /// Where this worker resumes, by this shard; meaningful only when the
    /// shard holds tensors.
    pub(crate) clock: u64,
    /// The lowest clock this worker may still pull on every tensor of the
    /// shard (above `clock` when the sync rounds of `clock` were applied on
    /// some tensors already).
    pub(crate) read_floor: u64,
    pub(crate) has_tensors: bool,
}

impl ShardView {
    /// Reads a join reply. Settings a shard did not send stay `None`.
    pub(crate) fn from_reply(r: &pb::JoinReply) -> Self {
        let job = r.job.unwrap_or_default();
        Self {
            num_workers: r.num_workers,
            initial_workers: job.initial_workers,
            policy: Policy::from_pb(
                job.default_policy,
                Some(job.default_staleness),
                0,
                job.default_backup_workers,
                job.default_staleness_scaling,
            )
            .ok()
            .flatten(),
            optimizer: job.default_optimizer.as_ref().and_then(OptimizerConfig::from_pb),
            split_threshold: job.split_threshold,
            origin: r.origin.clone(),
            clock: r.clock,
            read_floor: r.read_floor,
            has_tensors: r.has_tensors,
        }
    }
}

/// The name and address of shard `i`, as messages name it.
fn shard_name(addresses: &[String], i: usize) -> String {
    match addresses.get(i) {
        Some(a) => format!("shard {i} ({a})"),
        None => format!("shard {i}"),
    }
}

/// Refuses shards that were started with different job settings, naming
/// the setting, both values and the flag that fixes it; and a worker spec
/// whose split threshold differs from the shards'.
pub(crate) fn check_same_job(
    views: &[ShardView],
    addresses: &[String],
    split_threshold: u64,
) -> Result<(), WorkerError> {
    let Some(first) = views.first() else { return Ok(()) };
    // `a` and `b` say what shard 0 and shard `i` have, each naming the setting.
    let differ = |i: usize, a: String, b: String, flag: &str| {
        WorkerError::Cluster(format!(
            "{} has {b} but {} has {a}: start every shard with the same {flag}",
            shard_name(addresses, i),
            shard_name(addresses, 0)
        ))
    };
    let workers = |v: &ShardView| match v.initial_workers == v.num_workers {
        true => format!("{} workers", v.num_workers),
        false => format!("{} workers (up to {})", v.initial_workers, v.num_workers),
    };
    let named = |what: &str, value: Option<String>| format!("{what} {}", value.as_deref().unwrap_or("none"));
    for (i, v) in views.iter().enumerate().skip(1) {
        let (a, b, flag) = if v.num_workers != first.num_workers || v.initial_workers != first.initial_workers
        {
            (workers(first), workers(v), "--workers and --max-workers")
        } else if v.policy != first.policy {
            let policy = |v: &ShardView| named("policy", v.policy.map(|p| p.to_string()));
            (policy(first), policy(v), "--policy, --staleness, --backup-workers and --staleness-scaling")
        } else if v.optimizer != first.optimizer {
            let optimizer = |v: &ShardView| named("optimizer", v.optimizer.map(|o| o.to_string()));
            (optimizer(first), optimizer(v), "--optimizer, --lr, --momentum and --weight-decay")
        } else {
            continue;
        };
        return Err(differ(i, a, b, flag));
    }
    for (i, v) in views.iter().enumerate() {
        if v.split_threshold != 0 && v.split_threshold != split_threshold {
            return Err(WorkerError::Cluster(format!(
                "{} splits tensors of at least {} elements but this worker's cluster spec says {split_threshold}: \
                 give the worker the shards' --split-threshold",
                shard_name(addresses, i),
                v.split_threshold
            )));
        }
    }
    Ok(())
}

/// What a joining worker must do about the shards' histories.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Histories {
    /// Every shard is in the same history: go on.
    Same,
    /// Some shard restarted from a checkpoint the others were not rewound
    /// to: rewind every shard to it (shards that already are change nothing).
    Rewind(Restart),
}

/// Compares the shards' histories. Shards are in one history when they
/// all came from the same checkpoint (or none did) and agree on where
/// this worker resumes, give or take the one step a worker may have
/// pushed to some shards but not all. When they came from different
/// checkpoints, the newest checkpoint wins (every worker picks the same
/// one). Shards that came from no checkpoint yet disagree about the clock
/// cannot be reconciled: refused with what to do.
pub(crate) fn compare_histories(
    views: &[ShardView],
    addresses: &[String],
    worker: u32,
) -> Result<Histories, WorkerError> {
    let names: Vec<Option<&str>> =
        views.iter().map(|v| v.origin.as_ref().map(|o| o.checkpoint.as_str())).collect();
    if names.windows(2).any(|w| w[0] != w[1]) {
        // Origins differ, so at least one shard has one.
        if let Some(newest) =
            views.iter().filter_map(|v| v.origin.as_ref()).max_by_key(|o| (o.clock, o.cause))
        {
            let restart = Restart { checkpoint: newest.checkpoint.clone(), cause: newest.cause };
            return Ok(Histories::Rewind(restart));
        }
    }
    let holding = || views.iter().enumerate().filter(|(_, v)| v.has_tensors).map(|(i, v)| (i, v.clock));
    let low = holding().min_by_key(|(_, c)| *c);
    let high = holding().max_by_key(|(_, c)| *c);
    if let (Some((lo, lo_clock)), Some((hi, hi_clock))) = (low, high)
        && hi_clock > lo_clock + 1
    {
        return Err(WorkerError::Cluster(format!(
            "{} resumes worker {worker} at clock {lo_clock} but {} at clock {hi_clock}: they hold different \
             histories. Restart {} with --restore (and --checkpoint-dir) so it rejoins from the newest \
             checkpoint, or restart every shard",
            shard_name(addresses, lo),
            shard_name(addresses, hi),
            shard_name(addresses, lo)
        )));
    }
    Ok(Histories::Same)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(clock: u64) -> ShardView {
        ShardView {
            num_workers: 4,
            initial_workers: 4,
            policy: Some(Policy::ssp(3)),
            optimizer: Some(OptimizerConfig::sgd(0.3)),
            split_threshold: 100,
            origin: None,
            clock,
            read_floor: 0,
            has_tensors: true,
        }
    }

    fn origin(checkpoint: &str, clock: u64, cause: u64) -> Option<pb::CheckpointOrigin> {
        Some(pb::CheckpointOrigin { checkpoint: checkpoint.into(), clock, cause })
    }

    fn addresses() -> Vec<String> {
        vec!["127.0.0.1:7070".into(), "127.0.0.1:7071".into()]
    }

    /// A change to one shard's view, and what the refusal must say.
    type Case = (fn(&mut ShardView), &'static str);

    #[test]
    fn shards_with_different_settings_are_refused_naming_the_setting_and_the_flag() {
        let cases: [Case; 4] = [
            (
                |v| {
                    v.num_workers = 2;
                    v.initial_workers = 2;
                },
                "has 2 workers but shard 0 (127.0.0.1:7070) has 4 workers",
            ),
            (
                |v| v.policy = Some(Policy::ASYNC),
                "policy async but shard 0 (127.0.0.1:7070) has policy ssp(3)",
            ),
            (|v| v.optimizer = Some(OptimizerConfig::adam(1e-3)), "--optimizer"),
            (|v| v.initial_workers = 2, "--max-workers"),
        ];
        for (change, expected) in cases {
            let mut other = view(0);
            change(&mut other);
            let err = check_same_job(&[view(0), other], &addresses(), 100).unwrap_err().to_string();
            assert!(err.contains("shard 1 (127.0.0.1:7071)") && err.contains(expected), "{err}");
        }
        assert!(check_same_job(&[view(0), view(0)], &addresses(), 100).is_ok());
        let err = check_same_job(&[view(0), view(0)], &addresses(), 7).unwrap_err().to_string();
        assert!(err.contains("--split-threshold") && err.contains("says 7"), "{err}");
    }

    #[test]
    fn shards_from_different_checkpoints_rewind_to_the_newest() {
        let mut restored = view(400);
        restored.origin = origin("ckpt-400-a", 400, 9);
        let survivor = view(412);
        assert_eq!(
            compare_histories(&[restored.clone(), survivor.clone()], &addresses(), 2).ok(),
            Some(Histories::Rewind(Restart { checkpoint: "ckpt-400-a".into(), cause: 9 }))
        );
        let mut newer = view(800);
        newer.origin = origin("ckpt-800-b", 800, 3);
        assert_eq!(
            compare_histories(&[restored.clone(), newer], &addresses(), 2).ok(),
            Some(Histories::Rewind(Restart { checkpoint: "ckpt-800-b".into(), cause: 3 }))
        );
        let mut same = view(401);
        same.origin = origin("ckpt-400-a", 400, 5);
        assert_eq!(compare_histories(&[restored, same], &addresses(), 2).ok(), Some(Histories::Same));
    }

    #[test]
    fn shards_without_checkpoints_may_differ_by_one_step_and_no_more() {
        assert_eq!(compare_histories(&[view(10), view(11)], &addresses(), 1).ok(), Some(Histories::Same));
        let mut empty = view(0);
        empty.has_tensors = false;
        assert_eq!(compare_histories(&[view(412), empty], &addresses(), 1).ok(), Some(Histories::Same));
        let err = compare_histories(&[view(412), view(0)], &addresses(), 1).unwrap_err().to_string();
        assert!(
            err.contains("shard 1 (127.0.0.1:7071) resumes worker 1 at clock 0")
                && err.contains("clock 412")
                && err.contains("--restore"),
            "{err}"
        );
    }
}
