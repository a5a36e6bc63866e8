//! Property tests of the sync core over random event histories: whatever
//! the interleaving, the rules of DESIGN §3 hold at every step, every
//! released pull may read, and no pull that may read is left waiting.

use std::collections::BTreeMap;

use proptest::prelude::*;
use ps_server::sync::{ClockError, ClockTable, Event, Policy, PullDecision, PushDecision, Update};

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
    /// Worker (re)joins.
    Join(u32),
}

fn step(workers: u32) -> impl Strategy<Value = Step> {
    prop_oneof![
        8 => (0..workers).prop_map(Step::Push),
        2 => (0..workers).prop_map(Step::Retry),
        6 => (0..workers).prop_map(Step::Pull),
        6 => Just(Step::Apply),
        1 => (0..workers).prop_map(Step::Leave),
        1 => (0..workers).prop_map(Step::Join),
    ]
}

fn policy() -> impl Strategy<Value = Policy> {
    prop_oneof![Just(Policy::Sync), (0u32..4).prop_map(|s| Policy::Ssp { staleness: s }), Just(Policy::Async)]
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
        Policy::Sync => {
            prop_assert_eq!(t.applied_clock() as i64, c, "sync reads exactly clocks < c");
        }
        Policy::Ssp { staleness } => {
            for x in 0..4u32 {
                if t.is_live(x) {
                    prop_assert!(v[x as usize] >= c - staleness as i64 - 1, "ssp bound: {:?} at {}", v, c);
                }
            }
        }
        Policy::Async => {}
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn guarantees_hold_on_every_history(policy in policy(), steps in prop::collection::vec(step(4), 1..200)) {
        let mut t = ClockTable::new(policy, 4);
        // committed[w][c]: how often worker w's clock c was counted.
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
                    let Ok(ready) = t.step(Event::Push { worker: w, clock: c, complete: true }) else { continue };
                    if let Some(PushDecision::Apply | PushDecision::Accumulate) = ready.push {
                        let slot = &mut committed[w as usize];
                        if slot.len() <= c as usize { slot.resize(c as usize + 1, 0); }
                        slot[c as usize] += 1;
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
                        Some(PullDecision::Ready) => check_read(&t, policy, &committed, w, c)?,
                        _ => { waiting.insert(id, (w, c)); }
                    }
                    ready
                }
                Step::Apply => t.step(Event::Applied).expect("applied never fails"),
                Step::Leave(w) => {
                    let Ok(ready) = t.step(Event::Leave { worker: w }) else { continue };
                    if let Some(Update::Round(round)) = ready.update {
                        prop_assert_eq!(round.clock, rounds);
                        rounds += 1;
                    }
                    ready
                }
                Step::Join(w) => {
                    let Ok(ready) = t.step(Event::Join { worker: w }) else { continue };
                    ready
                }
            };
            for id in &ready.release {
                let (w, c) = waiting.remove(id).expect("released a pull that was waiting");
                check_read(&t, policy, &committed, w, c)?;
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
