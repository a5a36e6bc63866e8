use super::*;
use PullDecision::*;
use PushDecision::*;

/// Steps a whole push and returns its decision.
fn push(t: &mut ClockTable, worker: u32, clock: u64) -> Result<PushDecision, ClockError> {
    let ready = t.step(Event::Push { worker, clock, complete: true })?;
    Ok(ready.push.expect("a push has a decision"))
}

/// Steps a whole push, applies the update it asks for at once, and returns
/// the sync round that completed.
fn commit(t: &mut ClockTable, worker: u32, clock: u64) -> Option<RoundComplete> {
    let ready = t.step(Event::Push { worker, clock, complete: true }).expect("push counted");
    apply(t, ready.update)
}

fn apply(t: &mut ClockTable, update: Option<Update>) -> Option<RoundComplete> {
    let update = update?;
    t.step(Event::Applied).expect("applied");
    match update {
        Update::Round(round) => Some(round),
        Update::Push { .. } => None,
    }
}

fn leave(t: &mut ClockTable, worker: u32) -> Result<Option<RoundComplete>, ClockError> {
    let ready = t.step(Event::Leave { worker })?;
    Ok(apply(t, ready.update))
}

fn join(t: &mut ClockTable, worker: u32) -> Result<u64, ClockError> {
    Ok(t.step(Event::Join { worker, skip_to: 0 })?.resumed_at.expect("a join resumes somewhere"))
}

/// Whether `worker` may read at `clock` now, leaving no waiter behind.
fn check_pull(t: &mut ClockTable, worker: Option<u32>, clock: u64) -> Result<PullDecision, ClockError> {
    let decision = t.step(Event::Pull { id: 999, worker, clock })?.pull.expect("a pull has a decision");
    t.step(Event::Cancel { id: 999 })?;
    Ok(decision)
}

#[test]
fn sync_round_completes_when_all_live_workers_pushed() {
    let mut t = ClockTable::new(Policy::SYNC, 3);
    assert_eq!(check_pull(&mut t, Some(0), 0), Ok(Ready));
    let ready = t.step(Event::Push { worker: 0, clock: 0, complete: true }).unwrap();
    assert_eq!(ready.push, Some(Accumulate));
    assert_eq!(ready.update, None);
    assert_eq!(check_pull(&mut t, Some(0), 1), Ok(Wait));
    assert_eq!(commit(&mut t, 1, 0), None);
    assert_eq!(t.versions(), vec![-1, -1, -1]);
    assert_eq!(commit(&mut t, 2, 0), Some(RoundComplete { clock: 0, contributors: 3 }));
    assert_eq!(t.versions(), vec![0, 0, 0]);
    assert_eq!(check_pull(&mut t, Some(0), 1), Ok(Ready));
    assert_eq!(t.applied_clock(), 1);
}

#[test]
fn sync_rejects_out_of_order_clocks() {
    let mut t = ClockTable::new(Policy::SYNC, 2);
    assert_eq!(push(&mut t, 0, 1), Err(ClockError::PushGap { worker: 0, expected: 0, got: 1 }));
    commit(&mut t, 0, 0);
    assert_eq!(push(&mut t, 0, 0), Ok(Duplicate));
    assert_eq!(push(&mut t, 0, 1), Err(ClockError::PushAhead { worker: 0, round: 0, got: 1 }));
    // Round 0 is open: its values are still exactly those of clock 0.
    assert_eq!(check_pull(&mut t, Some(0), 0), Ok(Ready));
    commit(&mut t, 1, 0);
    assert_eq!(
        check_pull(&mut t, Some(0), 0),
        Err(ClockError::PullBehind { worker: 0, expected: 1, got: 0 })
    );
    assert_eq!(
        check_pull(&mut t, Some(1), 2),
        Err(ClockError::PullAhead { worker: 1, completed: 1, got: 2 })
    );
    assert_eq!(push(&mut t, 2, 0), Err(ClockError::UnknownWorker { worker: 2, num_workers: 2 }));
}

#[test]
fn sync_leave_completes_round_with_remaining_contributors() {
    let mut t = ClockTable::new(Policy::SYNC, 3);
    commit(&mut t, 0, 0);
    commit(&mut t, 1, 0);
    assert_eq!(leave(&mut t, 2), Ok(Some(RoundComplete { clock: 0, contributors: 2 })));
    assert_eq!(t.versions(), vec![0, 0, -1]);
    assert_eq!(push(&mut t, 2, 1), Err(ClockError::NotLive { worker: 2 }));
    // Later rounds need only the two live workers.
    commit(&mut t, 0, 1);
    assert_eq!(commit(&mut t, 1, 1), Some(RoundComplete { clock: 1, contributors: 2 }));
    // A worker that contributed and then left still counts for its round.
    commit(&mut t, 0, 2);
    assert_eq!(leave(&mut t, 0), Ok(None));
    assert_eq!(commit(&mut t, 1, 2), Some(RoundComplete { clock: 2, contributors: 2 }));
    // Rejoin resumes at the round in progress.
    assert_eq!(join(&mut t, 2), Ok(3));
    assert_eq!(push(&mut t, 2, 3), Ok(Accumulate));
}

#[test]
fn sync_rejoin_keeps_a_pending_contribution() {
    let mut t = ClockTable::new(Policy::SYNC, 2);
    commit(&mut t, 0, 0);
    assert_eq!(leave(&mut t, 0), Ok(None), "worker 1 has not pushed round 0");
    assert_eq!(join(&mut t, 0), Ok(1), "worker 0 already pushed clock 0");
    assert_eq!(push(&mut t, 0, 0), Ok(Duplicate));
    assert_eq!(commit(&mut t, 1, 0), Some(RoundComplete { clock: 0, contributors: 2 }));
}

#[test]
fn ssp_bounds_staleness() {
    let mut t = ClockTable::new(Policy::ssp(2), 2);
    for c in 0..3 {
        assert_eq!(check_pull(&mut t, Some(0), c), Ok(Ready));
        let ready = t.step(Event::Push { worker: 0, clock: c, complete: true }).unwrap();
        assert_eq!(ready.push, Some(Apply));
        // No read in between: each push is computed from the start value.
        assert_eq!(ready.update, Some(Update::Push { worker: 0, clock: c, staleness: c }));
        t.step(Event::Applied).unwrap();
    }
    // Worker 0 at clock 3, worker 1 at 0: pull(3) needs min >= 1.
    assert_eq!(check_pull(&mut t, Some(0), 3), Ok(Wait));
    assert_eq!(check_pull(&mut t, Some(0), 2), Ok(Ready));
    commit(&mut t, 1, 0);
    assert_eq!(check_pull(&mut t, Some(0), 3), Ok(Ready));
    assert_eq!(t.versions(), vec![2, 0]);
}

#[test]
fn ssp_zero_is_lockstep() {
    let mut t = ClockTable::new(Policy::ssp(0), 2);
    commit(&mut t, 0, 0);
    assert_eq!(check_pull(&mut t, Some(0), 1), Ok(Wait));
    commit(&mut t, 1, 0);
    assert_eq!(check_pull(&mut t, Some(0), 1), Ok(Ready));
}

#[test]
fn async_never_waits() {
    let mut t = ClockTable::new(Policy::ASYNC, 2);
    for c in 0..100 {
        assert_eq!(check_pull(&mut t, Some(0), c), Ok(Ready));
        commit(&mut t, 0, c);
    }
    assert_eq!(t.versions(), vec![99, -1]);
    assert_eq!(push(&mut t, 0, 5), Ok(Duplicate));
}

#[test]
fn observers_never_wait() {
    let mut t = ClockTable::new(Policy::SYNC, 2);
    assert_eq!(check_pull(&mut t, None, 1000), Ok(Ready));
}

#[test]
fn ssp_leave_releases_waiters_and_rejoin_starts_at_frontier() {
    let mut t = ClockTable::new(Policy::ssp(1), 2);
    for c in 0..4 {
        commit(&mut t, 0, c);
    }
    assert_eq!(check_pull(&mut t, Some(0), 4), Ok(Wait));
    assert_eq!(leave(&mut t, 1), Ok(None));
    assert_eq!(check_pull(&mut t, Some(0), 4), Ok(Ready));
    assert_eq!(join(&mut t, 1), Ok(4));
    assert_eq!(push(&mut t, 1, 4), Ok(Apply));
}

#[test]
fn waiting_pulls_are_released_by_id_when_their_rule_holds() {
    let mut t = ClockTable::new(Policy::ssp(0), 3);
    commit(&mut t, 0, 0);
    commit(&mut t, 1, 0);
    let wait = |t: &mut ClockTable, id, worker| {
        t.step(Event::Pull { id, worker: Some(worker), clock: 1 }).unwrap().pull
    };
    assert_eq!(wait(&mut t, 10, 0), Some(Wait));
    assert_eq!(wait(&mut t, 11, 1), Some(Wait));
    assert_eq!(t.waiting().collect::<Vec<_>>(), vec![10, 11]);
    t.step(Event::Cancel { id: 11 }).unwrap();
    let ready = t.step(Event::Push { worker: 2, clock: 0, complete: true }).unwrap();
    assert!(ready.release.is_empty(), "nothing is released before the update is applied");
    let ready = t.step(Event::Applied).unwrap();
    assert_eq!(ready.release, vec![10], "the cancelled pull is not released");
    assert_eq!(ready.frontier, Some(1));
    assert_eq!(t.waiting().count(), 0);
}

#[test]
fn a_pending_update_holds_pulls_and_refuses_other_changes() {
    let mut t = ClockTable::new(Policy::ASYNC, 2);
    let ready = t.step(Event::Push { worker: 0, clock: 0, complete: true }).unwrap();
    assert_eq!(ready.update, Some(Update::Push { worker: 0, clock: 0, staleness: 0 }));
    assert_eq!(t.versions(), vec![-1, -1], "versions describe the values without the update");
    assert_eq!(t.step(Event::Pull { id: 1, worker: Some(1), clock: 0 }).unwrap().pull, Some(Wait));
    assert_eq!(
        t.step(Event::Pull { id: 2, worker: None, clock: 0 }).unwrap().pull,
        Some(Ready),
        "observers read the values as they are"
    );
    assert_eq!(t.step(Event::Push { worker: 1, clock: 0, complete: true }), Err(ClockError::UpdatePending));
    assert_eq!(t.step(Event::Leave { worker: 1 }), Err(ClockError::UpdatePending));
    assert_eq!(t.step(Event::Join { worker: 1, skip_to: 0 }), Err(ClockError::UpdatePending));
    let ready = t.step(Event::Applied).unwrap();
    assert_eq!(ready.release, vec![1]);
    assert_eq!(t.versions(), vec![0, -1]);
    assert_eq!(t.step(Event::Applied).unwrap(), super::Ready::default(), "applying twice changes nothing");
}

#[test]
fn a_leaving_worker_s_own_waiting_pulls_are_refused() {
    let mut t = ClockTable::new(Policy::SYNC, 2);
    commit(&mut t, 0, 0);
    assert_eq!(t.step(Event::Pull { id: 7, worker: Some(0), clock: 1 }).unwrap().pull, Some(Wait));
    let ready = t.step(Event::Leave { worker: 0 }).unwrap();
    assert_eq!(ready.refuse, vec![(7, ClockError::NotLive { worker: 0 })]);
    assert_eq!(ready.update, None, "worker 1 has not pushed round 0");
}

#[test]
fn a_piece_is_checked_but_not_counted_until_the_push_is_complete() {
    let mut t = ClockTable::new(Policy::SYNC, 1);
    let ready = t.step(Event::Push { worker: 0, clock: 0, complete: false }).unwrap();
    assert_eq!((ready.push, ready.update), (Some(Accumulate), None));
    assert_eq!(t.worker_clock(0), Some(0));
    assert_eq!(
        t.step(Event::Push { worker: 0, clock: 1, complete: false }),
        Err(ClockError::PushGap { worker: 0, expected: 0, got: 1 })
    );
    let ready = t.step(Event::Push { worker: 0, clock: 0, complete: true }).unwrap();
    assert_eq!(ready.update, Some(Update::Round(RoundComplete { clock: 0, contributors: 1 })));
}

#[test]
fn holding_back_names_the_workers_a_pull_waits_for() {
    let mut t = ClockTable::new(Policy::SYNC, 3);
    commit(&mut t, 0, 0);
    assert_eq!(t.holding_back(1), vec![1, 2]);
    commit(&mut t, 2, 0);
    assert_eq!(t.holding_back(1), vec![1]);
    assert_eq!(t.holding_back(0), Vec::<u32>::new(), "round 0 needs nothing");
    leave(&mut t, 1).unwrap();
    assert_eq!(t.holding_back(1), Vec::<u32>::new());

    let mut t = ClockTable::new(Policy::ssp(1), 3);
    for c in 0..3 {
        commit(&mut t, 0, c);
    }
    commit(&mut t, 1, 0);
    assert_eq!(t.holding_back(3), vec![1, 2], "pull(3) needs clocks >= 2: workers 1 (at 1) and 2 (at 0)");
    assert_eq!(t.holding_back(2), vec![2]);
    assert_eq!(ClockTable::new(Policy::ASYNC, 2).holding_back(9), Vec::<u32>::new());
}

#[test]
fn behind_barrier_names_the_workers_a_barrier_waits_for() {
    let mut t = ClockTable::new(Policy::ssp(1), 3);
    for c in 0..3 {
        commit(&mut t, 0, c);
    }
    commit(&mut t, 1, 0);
    assert_eq!(t.behind_barrier(3), vec![1, 2], "a barrier ignores the staleness bound");
    assert_eq!(t.behind_barrier(1), vec![2]);
    assert!(!t.reached(1) && t.behind_barrier(0).is_empty() && t.reached(0));
    let mut t = ClockTable::new(Policy::ASYNC, 2);
    commit(&mut t, 1, 0);
    assert_eq!(t.behind_barrier(1), vec![0], "async barriers wait too");
    let mut t = ClockTable::new(Policy::SYNC, 2);
    commit(&mut t, 0, 0);
    assert_eq!(t.behind_barrier(1), vec![1]);
}
