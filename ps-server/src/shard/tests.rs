use super::*;
use crate::config::PolicyName;
use crate::readers::{ReadLease, UPDATE_WAIT};
use crate::tensor::{Gradient, Snapshot};

fn shard(policy: PolicyName) -> Arc<Shard> {
    let shard = Shard::new(ShardConfig { num_workers: 2, policy, ..ShardConfig::default() });
    let decl = Declaration {
        name: "w".into(),
        shape: vec![4],
        init: Init::Constant(1.0),
        optimizer: None,
        policy: None,
        allow_non_finite: false,
    };
    shard.declare(decl).expect("declare");
    Arc::new(shard)
}

/// A shard of `policy` and worker 0's pull at clock 0, whose reply is
/// still reading the values while the lease is held.
async fn reading(policy: PolicyName) -> (Arc<Shard>, Snapshot, ReadLease) {
    let shard = shard(policy);
    let cell = shard.tensor("w").expect("tensor");
    let (read, lease) = shard.pull(&cell, Some(0), 0).await.expect("pull");
    (shard, read, lease)
}

fn push(shard: &Arc<Shard>, worker: u32, clock: u64) -> tokio::task::JoinHandle<Result<bool, PsError>> {
    let shard = Arc::clone(shard);
    tokio::spawn(async move {
        let cell = shard.tensor("w")?;
        let outcome = shard.push(&cell, worker, clock, None, Gradient { values: vec![1.0; 4] }).await?;
        Ok(outcome == crate::tensor::PushOutcome::Counted)
    })
}

fn pull(shard: &Arc<Shard>, worker: u32, clock: u64) -> tokio::task::JoinHandle<Result<Snapshot, PsError>> {
    let shard = Arc::clone(shard);
    tokio::spawn(async move {
        let cell = shard.tensor("w")?;
        shard.pull(&cell, Some(worker), clock).await.map(|(snapshot, _lease)| snapshot)
    })
}

/// The value of the shard's counter `name`.
fn counter(shard: &Shard, name: &str) -> f64 {
    let text = ps_proto::exposition::encode(std::slice::from_ref(shard.metrics().registry()));
    let line = text.lines().find(|l| l.starts_with(&format!("{name}{{"))).expect("the counter is exposed");
    line.rsplit(' ').next().and_then(|v| v.parse().ok()).expect("a value")
}

/// Lets every spawned task run until it waits; paused time does not move.
async fn settle() {
    for _ in 0..8 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn an_update_waits_for_the_replies_reading_the_values_and_changes_them_in_place() {
    let (shard, read, lease) = reading(PolicyName::Async).await;
    let values_at = read.values.as_ptr();
    let started = tokio::time::Instant::now();
    let update = push(&shard, 1, 0);
    settle().await;
    assert!(!update.is_finished(), "the update did not wait for the reply reading the values");
    // A pull that could read now lets the waiting update go first.
    let held = pull(&shard, 0, 0);
    settle().await;
    assert!(!held.is_finished(), "a pull read while an update was waiting");
    drop((read, lease));
    assert!(update.await.expect("task").expect("push"));
    let after = held.await.expect("task").expect("pull");
    assert_eq!(after.versions, vec![-1, 0], "the held pull reads after the update");
    assert_eq!(after.values.as_ptr(), values_at, "the update copied the values");
    assert_eq!(tokio::time::Instant::now(), started, "the update waited for its deadline");
    assert_eq!(counter(&shard, "ps_server_update_waits_total"), 1.0);
    assert_eq!(counter(&shard, "ps_server_update_copies_total"), 0.0);
}

#[tokio::test(start_paused = true)]
async fn a_reply_that_is_never_sent_holds_an_update_back_only_until_the_deadline() {
    let (shard, read, _lease) = reading(PolicyName::Async).await;
    let started = tokio::time::Instant::now();
    assert!(push(&shard, 1, 0).await.expect("task").expect("push"));
    assert_eq!(tokio::time::Instant::now(), started + UPDATE_WAIT);
    // The update copied the values: the reply still sends the old ones.
    assert_eq!(read.values.to_vec(), vec![1.0; 4]);
    let after = pull(&shard, 0, 0).await.expect("task").expect("pull");
    assert_ne!(after.values.to_vec(), vec![1.0; 4]);
    drop(after);
    // The copy has no readers: the reply that is never sent no longer
    // holds updates back.
    let next = tokio::time::Instant::now();
    assert!(push(&shard, 0, 0).await.expect("task").expect("push"));
    assert_eq!(tokio::time::Instant::now(), next, "a later update waited for the old reply");
    assert_eq!(counter(&shard, "ps_server_update_waits_total"), 1.0);
    assert_eq!(counter(&shard, "ps_server_update_copies_total"), 1.0);
}

#[tokio::test(start_paused = true)]
async fn only_the_push_that_completes_a_sync_round_waits_for_the_replies() {
    let (shard, read, lease) = reading(PolicyName::Sync).await;
    // Worker 0's push only adds to the round's sum: it does not wait.
    let started = tokio::time::Instant::now();
    assert!(push(&shard, 0, 0).await.expect("task").expect("push"));
    assert_eq!(tokio::time::Instant::now(), started, "a push that changes no values waited");
    let completing = push(&shard, 1, 0);
    settle().await;
    assert!(!completing.is_finished(), "the push completing the round did not wait for the reply");
    drop((read, lease));
    assert!(completing.await.expect("task").expect("push"));
    let after = pull(&shard, 0, 1).await.expect("task").expect("pull");
    assert_eq!(after.versions, vec![0, 0]);
}
