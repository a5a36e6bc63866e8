//! Property tests of the sync core over random event histories: whatever
//! the interleaving, the rules of DESIGN §3 hold at every step.

use proptest::prelude::*;
use ps_server::sync::{ClockTable, Policy, PullDecision, PushDecision};

#[derive(Clone, Debug)]
enum Event {
    /// Worker pushes its next clock.
    Push(u32),
    /// Worker retries an old clock (a duplicate) if it has one.
    Retry(u32),
    /// Worker pulls at its own clock.
    Pull(u32),
    /// Worker leaves.
    Leave(u32),
    /// Worker (re)joins.
    Join(u32),
}

fn event(workers: u32) -> impl Strategy<Value = Event> {
    prop_oneof![
        8 => (0..workers).prop_map(Event::Push),
        2 => (0..workers).prop_map(Event::Retry),
        6 => (0..workers).prop_map(Event::Pull),
        1 => (0..workers).prop_map(Event::Leave),
        1 => (0..workers).prop_map(Event::Join),
    ]
}

fn policy() -> impl Strategy<Value = Policy> {
    prop_oneof![Just(Policy::Sync), (0u32..4).prop_map(|s| Policy::Ssp { staleness: s }), Just(Policy::Async)]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn guarantees_hold_on_every_history(policy in policy(), events in prop::collection::vec(event(4), 1..200)) {
        let mut t = ClockTable::new(policy, 4);
        // applied[w][c]: how often worker w's clock c was committed.
        let mut committed = vec![Vec::<u32>::new(); 4];
        let mut last_versions = t.versions();
        let mut rounds = 0u64;
        for e in events {
            match e {
                Event::Push(w) => {
                    let Some(c) = t.worker_clock(w) else { continue };
                    if let Ok(PushDecision::Apply | PushDecision::Accumulate) = t.check_push(w, c) {
                        let completes = t.push_completes_round(w);
                        let round = t.commit_push(w, c);
                        prop_assert_eq!(round.is_some(), completes, "push_completes_round foretells the round");
                        if let Some(round) = round {
                            prop_assert_eq!(round.clock, rounds, "sync rounds complete in order");
                            prop_assert!(round.contributors >= 1);
                            rounds += 1;
                        }
                        let slot = &mut committed[w as usize];
                        if slot.len() <= c as usize { slot.resize(c as usize + 1, 0); }
                        slot[c as usize] += 1;
                    }
                }
                Event::Retry(w) => {
                    let c = t.worker_clock(w).unwrap_or(0);
                    if c > 0 && t.is_live(w) {
                        prop_assert_eq!(t.check_push(w, c - 1), Ok(PushDecision::Duplicate), "a retry is a duplicate");
                    }
                }
                Event::Pull(w) => {
                    let c = t.worker_clock(w).unwrap_or(0);
                    if let Ok(PullDecision::Ready) = t.check_pull(Some(w), c) {
                        let v = t.versions();
                        let c = c as i64;
                        // Read-your-writes: the reader's last acknowledged push is in the value.
                        let own = committed[w as usize].len() as i64 - 1;
                        prop_assert!(v[w as usize] >= own, "read-your-writes: {:?}, own clock {}", v, own);
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
                    }
                }
                Event::Leave(w) => {
                    if let Ok(Some(round)) = t.leave(w) {
                        prop_assert_eq!(round.clock, rounds);
                        rounds += 1;
                    }
                }
                Event::Join(w) => {
                    let _ = t.join(w);
                }
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
