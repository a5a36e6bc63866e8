//! Property tests of the sync core over random event histories: whatever
//! the interleaving, the rules of DESIGN §3 hold at every step, every
//! released pull may read, and no pull that may read is left waiting.
//! With backup workers, every round closes on exactly its quorum of
//! pushes, each computed from that round's values, and a late push is
//! dropped exactly once; under ssp and async, each push's staleness τ is
//! exactly the updates applied since its worker's last read.

use std::collections::BTreeMap;

use proptest::prelude::*;
use ps_proto::Scaling;
use ps_server::sync::{ClockError, ClockTable, Event, Policy, PullDecision, PushDecision, Ready, Update};

#[derive(Clone, Debug)]
enum Step {
    /// Worker pushes its next clock.
    Push(u32),
    /// Worker retries an old clock (a duplicate) if it has one.
    Retry(u32),
    /// Worker pulls at its own clock.
    Pull(u32),
    /// The pending update, if any, is applied.
    Apply,
    /// Worker leaves.
    Leave(u32),
    /// Worker (re)joins; with `true`, giving up the clock it is at (as a
    /// worker does whose step reached only some shards).
    Join(u32, bool),
}

fn step(workers: u32) -> impl Strategy<Value = Step> {
    prop_oneof![
        8 => (0..workers).prop_map(Step::Push),
        2 => (0..workers).prop_map(Step::Retry),
        6 => (0..workers).prop_map(Step::Pull),
        6 => Just(Step::Apply),
        1 => (0..workers).prop_map(Step::Leave),
        1 => (0..workers, any::<bool>()).prop_map(|(w, skip)| Step::Join(w, skip)),
    ]
}

fn policy() -> impl Strategy<Value = Policy> {
    let scaling = prop_oneof![Just(Scaling::None), Just(Scaling::Inverse), Just(Scaling::Relative)];
    prop_oneof![
        Just(Policy::SYNC),
        (1u32..4).prop_map(|backup| Policy::Sync { backup }),
        ((0u32..4), scaling.clone()).prop_map(|(staleness, scaling)| Policy::Ssp { staleness, scaling }),
        scaling.prop_map(|scaling| Policy::Async { scaling }),
    ]
}

/// What the test knows of the values' history, to check the table against.
#[derive(Default)]
struct Model {
    /// Updates applied so far.
    applied: u64,
    /// Per worker: `applied` at its last read.
    read_at: [u64; 4],
    /// Per worker: the rounds applied at its last read (backup workers).
    read_round: [u64; 4],
    /// Workers whose push is in the round in progress (backup workers).
    in_round: [bool; 4],
}

/// Checks what a pull of `worker` at `clock` reads now.
fn check_read(
    t: &ClockTable,
    policy: Policy,
    committed: &[Vec<u32>],
    worker: u32,
    clock: u64,
) -> Result<(), TestCaseError> {
    let v = t.versions();
    let c = clock as i64;
    // Read-your-writes: the reader's last acknowledged push is in the value.
    let own = committed[worker as usize].len() as i64 - 1;
    prop_assert!(v[worker as usize] >= own, "read-your-writes: {:?}, own clock {}", v, own);
    prop_assert!(t.pending().is_none(), "read while an update is pending");
    match policy {
        Policy::SYNC => {
            prop_assert_eq!(t.applied_clock() as i64, c, "sync reads exactly clocks < c");
        }
        // With backup workers a read is of the latest round, once the
        // reader's own push is in one: read-your-writes above is the rule.
        Policy::Sync { .. } => {}
        Policy::Ssp { staleness, .. } => {
            for x in 0..4u32 {
                if t.is_live(x) {
                    prop_assert!(v[x as usize] >= c - staleness as i64 - 1, "ssp bound: {:?} at {}", v, c);
                }
            }
        }
        Policy::Async { .. } => {}
    }
    Ok(())
}

/// Sync: `rounds` after a leave or join that may have let a round pass
/// with no update (every live worker gave it up, none contributed); at
/// most one passes.
fn passed_empty_round(t: &ClockTable, ready: &Ready, rounds: u64) -> Result<u64, TestCaseError> {
    if t.policy() != Policy::SYNC || ready.update.is_some() {
        return Ok(rounds);
    }
    let now = t.applied_clock();
    prop_assert!(now == rounds || now == rounds + 1, "rounds {} -> {}", rounds, now);
    Ok(now)
}

/// A read of `worker` took place: the table and the model both note it.
fn read(t: &mut ClockTable, model: &mut Model, worker: u32) {
    t.step(Event::Read { worker }).expect("a read is never refused");
    model.read_at[worker as usize] = model.applied;
    model.read_round[worker as usize] = t.applied_clock();
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn guarantees_hold_on_every_history(policy in policy(), steps in prop::collection::vec(step(4), 1..200)) {
        let mut t = ClockTable::new(policy, 4);
        let mut model = Model::default();
        let backup = policy.backup_workers();
        // committed[w][c]: how often worker w's clock c was counted (or dropped).
        let mut committed = vec![Vec::<u32>::new(); 4];
        let mut last_versions = t.versions();
        let mut rounds = 0u64;
        // Waiting pulls: id -> (worker, clock).
        let mut waiting = BTreeMap::<u64, (u32, u64)>::new();
        let mut next_id = 0u64;
        for s in steps {
            let ready = match s {
                Step::Push(w) => {
                    let Some(c) = t.worker_clock(w) else { continue };
                    let live_before = (0..4).filter(|x| t.is_live(*x)).count() as u32;
                    let Ok(ready) = t.step(Event::Push { worker: w, clock: c, complete: true }) else { continue };
                    if let Some(PushDecision::Apply | PushDecision::Accumulate | PushDecision::Dropped) = ready.push {
                        let slot = &mut committed[w as usize];
                        if slot.len() <= c as usize { slot.resize(c as usize + 1, 0); }
                        slot[c as usize] += 1;
                    }
                    if backup > 0 {
                        // A push counts iff its round is the one its worker read and it has none yet.
                        let fresh = model.read_round[w as usize] == t.applied_clock() && !model.in_round[w as usize];
                        let expected = if fresh { PushDecision::Accumulate } else { PushDecision::Dropped };
                        prop_assert_eq!(ready.push, Some(expected), "backup push of w{} c{}", w, c);
                        if fresh { model.in_round[w as usize] = true; }
                        if let Some(Update::Round(round)) = ready.update {
                            let quorum = (4 - backup).min(live_before).max(1);
                            prop_assert_eq!(round.contributors, quorum, "a round closes on its quorum");
                        }
                    }
                    if let Some(Update::Push { worker, staleness, .. }) = ready.update {
                        prop_assert_eq!(staleness, model.applied - model.read_at[worker as usize], "tau of w{} c{}", worker, c);
                    }
                    if let Some(Update::Round(round)) = ready.update {
                        prop_assert_eq!(round.clock, rounds, "sync rounds complete in order");
                        prop_assert!(round.contributors >= 1);
                        rounds += 1;
                    }
                    ready
                }
                Step::Retry(w) => {
                    let c = t.worker_clock(w).unwrap_or(0);
                    if c == 0 || !t.is_live(w) { continue }
                    let retry = t.step(Event::Push { worker: w, clock: c - 1, complete: true });
                    match retry {
                        Err(ClockError::UpdatePending) => continue,
                        Ok(ready) => {
                            prop_assert_eq!(ready.push, Some(PushDecision::Duplicate), "a retry is a duplicate");
                            ready
                        }
                        Err(e) => return Err(TestCaseError::fail(format!("retry refused: {e}"))),
                    }
                }
                Step::Pull(w) => {
                    let c = t.worker_clock(w).unwrap_or(0);
                    let id = next_id;
                    next_id += 1;
                    let Ok(ready) = t.step(Event::Pull { id, worker: Some(w), clock: c }) else { continue };
                    match ready.pull {
                        Some(PullDecision::Ready) => {
                            check_read(&t, policy, &committed, w, c)?;
                            read(&mut t, &mut model, w);
                        }
                        _ => { waiting.insert(id, (w, c)); }
                    }
                    ready
                }
                Step::Apply => {
                    let pending = t.pending();
                    let ready = t.step(Event::Applied).expect("applied never fails");
                    if pending.is_some() { model.applied += 1; }
                    if let Some(Update::Round(_)) = pending { model.in_round = [false; 4]; }
                    ready
                }
                Step::Leave(w) => {
                    let live_before = (0..4).filter(|x| t.is_live(*x) && *x != w).count() as u32;
                    let Ok(ready) = t.step(Event::Leave { worker: w }) else { continue };
                    if let Some(Update::Round(round)) = ready.update {
                        prop_assert_eq!(round.clock, rounds);
                        if backup > 0 {
                            let quorum = (4 - backup).min(live_before).max(1);
                            prop_assert_eq!(round.contributors, quorum, "a leave closes a round on its quorum");
                        }
                        rounds += 1;
                    }
                    rounds = passed_empty_round(&t, &ready, rounds)?;
                    ready
                }
                Step::Join(w, skip) => {
                    let was_live = t.is_live(w);
                    let skip_to = if skip { t.worker_clock(w).map_or(0, |c| c.max(t.applied_clock()) + 1) } else { 0 };
                    let Ok(ready) = t.step(Event::Join { worker: w, skip_to }) else { continue };
                    if !was_live {
                        // A rejoining worker reads again before it pushes.
                        model.read_at[w as usize] = model.applied;
                        model.read_round[w as usize] = t.applied_clock();
                    }
                    rounds = passed_empty_round(&t, &ready, rounds)?;
                    ready
                }
            };
            for id in &ready.release {
                let (w, c) = waiting.remove(id).expect("released a pull that was waiting");
                check_read(&t, policy, &committed, w, c)?;
                read(&mut t, &mut model, w);
            }
            for (id, _) in &ready.refuse {
                prop_assert!(waiting.remove(id).is_some(), "refused a pull that was not waiting");
            }
            // No pull is left waiting that may read now.
            for (&id, &(w, c)) in &waiting {
                let probe = u64::MAX;
                if let Ok(r) = t.step(Event::Pull { id: probe, worker: Some(w), clock: c }) {
                    prop_assert_eq!(r.pull, Some(PullDecision::Wait), "pull {} ({}, {}) could read but waits", id, w, c);
                }
                t.step(Event::Cancel { id: probe }).expect("cancel");
            }
            let v = t.versions();
            for (now, before) in v.iter().zip(&last_versions) {
                prop_assert!(now >= before, "versions went back: {:?} -> {:?}", last_versions, v);
            }
            last_versions = v;
        }
        for (w, clocks) in committed.iter().enumerate() {
            prop_assert!(clocks.iter().all(|n| *n <= 1), "worker {} committed a clock twice: {:?}", w, clocks);
        }
    }
}
