use super::*;

fn part(policy: Policy, workers: u32, opt: OptimizerConfig) -> TensorPart {
    let meta = TensorMeta {
        name: "w".into(),
        shape: vec![3],
        offset: 0,
        len: 3,
        policy,
        allow_non_finite: false,
        piece_len: 0,
    };
    TensorPart::new(meta, Init::Constant(1.0), opt, workers, Aggregation::Mean)
}

fn grad(v: &[f32]) -> Gradient {
    Gradient { values: v.to_vec() }
}

#[test]
fn sync_applies_the_mean_once_per_round() {
    let mut p = part(Policy::SYNC, 2, OptimizerConfig::sgd(0.5));
    assert!(p.push(0, 0, grad(&[1.0, 2.0, 3.0])).unwrap().counted);
    assert_eq!(
        p.snapshot(Default::default()).values.to_vec(),
        vec![1.0; 3],
        "no update before the round completes"
    );
    assert!(p.push(1, 0, grad(&[3.0, 2.0, 1.0])).unwrap().counted);
    // mean = [2, 2, 2]; 1 - 0.5 * 2 = 0
    assert_eq!(p.snapshot(Default::default()).values.to_vec(), vec![0.0; 3]);
    assert_eq!(p.snapshot(Default::default()).versions, vec![0, 0]);
    // A retry changes nothing.
    assert!(!p.push(1, 0, grad(&[100.0, 100.0, 100.0])).unwrap().counted);
    assert_eq!(p.snapshot(Default::default()).values.to_vec(), vec![0.0; 3]);
}

#[test]
fn async_applies_each_push_scaled_by_the_job_size() {
    let mut p = part(Policy::ASYNC, 2, OptimizerConfig::sgd(1.0));
    p.push(0, 0, grad(&[1.0, 1.0, 1.0])).unwrap();
    assert_eq!(p.snapshot(Default::default()).values.to_vec(), vec![0.5; 3]);
    assert_eq!(p.snapshot(Default::default()).versions, vec![0, -1]);
    // A worker leaving does not enlarge the others' steps.
    p.leave(1).unwrap();
    p.push(0, 1, grad(&[1.0, 1.0, 1.0])).unwrap();
    assert_eq!(p.snapshot(Default::default()).values.to_vec(), vec![0.0; 3]);
}

#[test]
fn snapshot_is_not_changed_by_later_updates() {
    let mut p = part(Policy::ASYNC, 1, OptimizerConfig::sgd(1.0));
    let before = p.snapshot(Default::default());
    p.push(0, 0, grad(&[1.0, 1.0, 1.0])).unwrap();
    assert_eq!(before.values.to_vec(), vec![1.0; 3]);
    assert_eq!(p.snapshot(Default::default()).values.to_vec(), vec![0.0; 3]);
}

/// The values are shared copy-on-write: a snapshot shares them without a
/// copy; an update changes them in place while nothing else holds them and
/// copies them exactly once while a snapshot does, leaving the snapshot as
/// it was and giving the copy readers of its own.
#[test]
fn a_held_snapshot_makes_exactly_one_update_copy_the_values() {
    for policy in [Policy::ASYNC, Policy::SYNC] {
        let mut p = part(policy, 1, OptimizerConfig::sgd(1.0));
        let at = p.snapshot(Default::default()).values.as_ptr();
        p.push(0, 0, grad(&[1.0; 3])).unwrap();
        assert_eq!(p.take_copies(), 0, "{policy}: nothing held the values");
        assert_eq!(p.snapshot(Default::default()).values.as_ptr(), at, "{policy}: unshared values moved");

        let held = p.snapshot(Default::default());
        assert_eq!(held.values.as_ptr(), at, "{policy}: the snapshot copied the values");
        let readers = Arc::clone(p.readers());
        p.push(0, 1, grad(&[1.0; 3])).unwrap();
        assert_eq!(p.take_copies(), 1, "{policy}: one copy while a snapshot is held");
        assert_eq!(held.values.to_vec(), vec![0.0; 3], "{policy}: the held snapshot changed");
        assert_eq!(held.values.as_ptr(), at);
        let copy = p.snapshot(Default::default()).values.as_ptr();
        assert_ne!(copy, at, "{policy}: the update did not copy shared values");
        assert!(!Arc::ptr_eq(&readers, p.readers()), "{policy}: the copy kept the old values' readers");

        // The copy is the part's own: changed in place, the old snapshot still held.
        p.push(0, 2, grad(&[1.0; 3])).unwrap();
        assert_eq!(p.take_copies(), 0, "{policy}: a second copy");
        assert_eq!(p.snapshot(Default::default()).values.as_ptr(), copy);
        assert_eq!(p.snapshot(Default::default()).values.to_vec(), vec![-2.0; 3]);
        assert_eq!(held.values.to_vec(), vec![0.0; 3]);
    }
}

fn cut(clock: u64) -> CutId {
    CutId { clock, name: format!("c{clock}") }
}

fn grad_for(worker: u32, clock: u64) -> Gradient {
    let v: Vec<f32> = (0..3).map(|i| ((worker * 7 + i) as f32 * 0.3 + clock as f32 * 0.11).sin()).collect();
    grad(&v)
}

#[test]
fn sync_cut_is_captured_when_its_round_is_reached() {
    let mut p = part(Policy::SYNC, 2, OptimizerConfig::adam(0.1));
    p.register_cut(cut(2)).unwrap();
    for clock in 0..2 {
        assert!(p.take_captured().is_empty(), "captured before round {clock} was applied");
        p.push(0, clock, grad_for(0, clock)).unwrap();
        p.push(1, clock, grad_for(1, clock)).unwrap();
    }
    let at_two = p.snapshot(Default::default()).values;
    // Round 2 in progress: contributions to it are not applied, let alone captured.
    p.push(0, 2, grad_for(0, 2)).unwrap();
    let snaps = p.take_captured();
    assert_eq!(snaps.len(), 1);
    assert_eq!(snaps[0].values, at_two);
    assert_eq!(snaps[0].optimizer.steps(), 2);
    p.push(1, 2, grad_for(1, 2)).unwrap();
    assert_ne!(p.snapshot(Default::default()).values, at_two);
    assert_eq!(snaps[0].values, at_two, "a snapshot never changes");
    // Registering at the round in progress captures at once; at a past one fails.
    p.register_cut(cut(3)).unwrap();
    assert_eq!(p.take_captured().len(), 1);
    let err = p.register_cut(cut(2)).unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert!(err.to_string().contains("3 sync rounds are already applied"), "{err}");
}

/// Reads as worker `w` would (a released pull's snapshot), so that its
/// next push counts from this value.
fn read(p: &mut TensorPart, w: u32) -> Vec<f32> {
    p.read(Some(w), Default::default()).values.to_vec()
}

#[test]
fn backup_workers_close_a_round_on_its_quorum_and_drop_the_late_push() {
    let mut p = part(Policy::Sync { backup: 1 }, 3, OptimizerConfig::sgd(1.0));
    for w in 0..3 {
        read(&mut p, w);
    }
    assert!(p.push(0, 0, grad(&[2.0, 2.0, 2.0])).unwrap().counted);
    let closing = p.push(1, 0, grad(&[4.0, 4.0, 4.0])).unwrap();
    assert_eq!(closing.round.map(|r| r.contributors), Some(2), "W - b = 2 pushes close the round");
    // The mean of the two, not of three: 1 - 3.
    assert_eq!(read(&mut p, 0), vec![-2.0; 3]);
    let late = p.push(2, 0, grad(&[100.0; 3])).unwrap();
    assert!(late.dropped && !late.counted, "{late:?}");
    assert_eq!(read(&mut p, 1), vec![-2.0; 3], "a dropped push changes no value");
    assert!(!p.push(2, 0, grad(&[100.0; 3])).unwrap().dropped, "a retry is a duplicate, not dropped twice");
    assert_eq!(p.snapshot(Default::default()).versions, vec![0, 0, 0]);
    assert_eq!(p.snapshot(Default::default()).rounds, 1);
}

#[test]
fn backup_workers_cut_at_clock_c_holds_the_first_c_rounds() {
    let mut p = part(Policy::Sync { backup: 1 }, 3, OptimizerConfig::sgd(0.5));
    p.register_cut(cut(2)).unwrap();
    for w in 0..3 {
        read(&mut p, w);
    }
    // Round 0 from workers 0 and 1; worker 2's push comes late.
    p.push(0, 0, grad_for(0, 0)).unwrap();
    p.push(1, 0, grad_for(1, 0)).unwrap();
    assert!(p.push(2, 0, grad_for(2, 0)).unwrap().dropped);
    for w in 0..3 {
        read(&mut p, w);
    }
    assert!(p.take_captured().is_empty(), "one round applied, the cut holds two");
    // Round 1 from workers 2 and 0, on worker clocks 1.
    p.push(2, 1, grad_for(2, 1)).unwrap();
    p.push(0, 1, grad_for(0, 1)).unwrap();
    let at_two = p.snapshot(Default::default()).values;
    let snaps = p.take_captured();
    assert_eq!(snaps.len(), 1);
    assert_eq!((snaps[0].values.clone(), snaps[0].optimizer.steps()), (at_two, 2));
    // Rounds, not worker clocks, name cuts: round 2 is in progress.
    let err = p.register_cut(cut(1)).unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
}

#[test]
fn inverse_staleness_scaling_divides_the_gradient_by_tau() {
    let mut p = part(Policy::Async { scaling: ps_proto::Scaling::Inverse }, 2, OptimizerConfig::sgd(1.0));
    let mut plain = part(Policy::ASYNC, 2, OptimizerConfig::sgd(1.0));
    for q in [&mut p, &mut plain] {
        read(q, 0);
        read(q, 1);
        // Worker 0's push has tau 0, then three of worker 1 on the same read:
        // tau 1, 2, 3. The mean over W = 2 workers halves each.
        assert_eq!(q.push(0, 0, grad(&[4.0; 3])).unwrap().staleness, Some(0));
        for c in 0..3 {
            assert_eq!(q.push(1, c, grad(&[12.0; 3])).unwrap().staleness, Some(c + 1));
        }
    }
    // 1 - (4 + 12/1 + 12/2 + 12/3) / 2 = 1 - 13 = -12; unscaled 1 - 20 = -19.
    assert_eq!(read(&mut p, 0), vec![-12.0; 3]);
    assert_eq!(read(&mut plain, 0), vec![-19.0; 3]);
}

#[test]
fn relative_staleness_scaling_spares_pushes_up_to_w_minus_1_updates_stale() {
    let mut p = part(Policy::Async { scaling: ps_proto::Scaling::Relative }, 3, OptimizerConfig::sgd(1.0));
    read(&mut p, 0);
    read(&mut p, 1);
    // tau 0, then 1, 2, 3 for worker 1: factors 1, 1, 1 and 2/3 (W - 1 = 2).
    p.push(0, 0, grad(&[9.0; 3])).unwrap();
    for c in 0..3 {
        p.push(1, c, grad(&[9.0; 3])).unwrap();
    }
    // 1 - (3 + 3 + 3 + 2), each push 9/W = 3 before scaling.
    for v in read(&mut p, 0) {
        assert!((v + 10.0).abs() < 1e-5, "{v}");
    }
}

#[test]
fn async_cut_is_late_once_any_worker_passed_it() {
    let mut p = part(Policy::ASYNC, 2, OptimizerConfig::sgd(0.1));
    for clock in 0..4 {
        p.push(1, clock, grad_for(1, clock)).unwrap();
    }
    let err = p.register_cut(cut(3)).unwrap_err();
    assert!(err.to_string().contains("worker 1 has already pushed clock 3"), "{err}");
    p.register_cut(cut(4)).unwrap();
}

/// Replays, on a fresh part, the pushes of `history` with clock below
/// `below`, in their order.
fn replay(policy: Policy, opt: OptimizerConfig, history: &[(u32, u64)], below: u64) -> TensorPart {
    let workers = history.iter().map(|(w, _)| w + 1).max().unwrap_or(1).max(3);
    let mut p = part(policy, workers, opt);
    for &(w, c) in history.iter().filter(|(_, c)| *c < below) {
        p.push(w, c, grad_for(w, c)).unwrap();
    }
    p
}

/// In ssp and async, with workers racing ahead of each other, a cut at
/// `c` holds exactly the pushes of clocks `< c` applied in arrival order:
/// bit-identical values and optimizer state to a replay of just those.
#[test]
fn ssp_and_async_cuts_equal_a_replay_of_the_earlier_clocks() {
    use rand::{Rng, SeedableRng};
    for policy in [Policy::ASYNC, Policy::ssp(100)] {
        for seed in 0..200u64 {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let opt = if seed % 2 == 0 { OptimizerConfig::adam(0.05) } else { OptimizerConfig::sgd(0.1) };
            let mut p = part(policy, 3, opt);
            let c = rng.random_range(1..6u64);
            // Worker 0 is fast, worker 2 slow: random interleavings up to clock 8.
            let mut next = [0u64; 3];
            let mut history = Vec::new();
            let mut registered = false;
            while next.iter().any(|n| *n < 8) {
                if !registered && (next.iter().all(|n| *n <= c) && rng.random_bool(0.3) || next.contains(&c))
                {
                    p.register_cut(cut(c)).unwrap();
                    registered = true;
                }
                let w = [0u32, 0, 0, 1, 1, 2][rng.random_range(0..6)];
                if next[w as usize] >= 8 {
                    continue;
                }
                let clock = next[w as usize];
                if !registered && clock >= c {
                    continue;
                }
                p.push(w, clock, grad_for(w, clock)).unwrap();
                history.push((w, clock));
                next[w as usize] += 1;
            }
            let snaps = p.take_captured();
            assert_eq!(snaps.len(), 1, "seed {seed}: cut at {c} not captured exactly once");
            let expected = replay(policy, opt, &history, c);
            assert_eq!(snaps[0].values, expected.snapshot(Default::default()).values, "seed {seed}, cut {c}");
            assert_eq!(snaps[0].optimizer.slots(), expected.optimizer().slots(), "seed {seed}");
            assert_eq!(snaps[0].optimizer.steps(), expected.optimizer().steps());
            let live = replay(policy, opt, &history, u64::MAX);
            assert_eq!(p.snapshot(Default::default()).values, live.snapshot(Default::default()).values);
        }
    }
}

#[test]
fn a_slow_worker_leaving_completes_an_async_cut() {
    let mut p = part(Policy::ASYNC, 3, OptimizerConfig::sgd(0.1));
    p.register_cut(cut(2)).unwrap();
    for clock in 0..4 {
        p.push(0, clock, grad_for(0, clock)).unwrap();
    }
    assert!(p.take_captured().is_empty());
    assert!(p.checkpoint_shadow_bytes() > 0);
    p.leave(1).unwrap();
    assert!(p.take_captured().is_empty(), "worker 2 is still live and behind");
    p.leave(2).unwrap();
    let snaps = p.take_captured();
    assert_eq!(snaps.len(), 1);
    let expected = replay(Policy::ASYNC, OptimizerConfig::sgd(0.1), &[(0, 0), (0, 1)], 2);
    assert_eq!(snaps[0].values, expected.snapshot(Default::default()).values);
    assert_eq!(p.checkpoint_shadow_bytes(), 0);
}

/// A sync part of 5 elements whose pushes may come in pieces of 2
/// (pieces 0..2, 2..4 and 4..5), SGD with learning rate 1 and the mean.
fn pieced(workers: u32) -> TensorPart {
    let meta = TensorMeta {
        name: "w".into(),
        shape: vec![5],
        offset: 0,
        len: 5,
        policy: Policy::SYNC,
        allow_non_finite: false,
        piece_len: 2,
    };
    TensorPart::new(meta, Init::Constant(0.0), OptimizerConfig::sgd(1.0), workers, Aggregation::Mean)
}

/// Pushes piece `piece` from a buffer holding `v`, as the shard does.
fn push_piece(p: &mut TensorPart, w: u32, clock: u64, piece: usize, v: &[f32]) -> Result<Pushed, PsError> {
    p.push_piece(w, clock, piece, &mut v.to_vec())
}

fn values(p: &TensorPart) -> Vec<f32> {
    p.snapshot(Default::default()).values.to_vec()
}

#[test]
fn a_push_in_pieces_counts_once_all_its_pieces_are_in_and_sums_like_a_whole_push() {
    let mut p = pieced(2);
    let g0 = [1.0, 2.0, 3.0, 4.0, 5.0];
    let g1 = [0.5, -2.0, 1.5, -0.0, 3.0];
    // Worker 0 in pieces, out of order; worker 1 whole.
    assert!(push_piece(&mut p, 0, 0, 2, &g0[4..]).unwrap().counted);
    assert!(push_piece(&mut p, 0, 0, 0, &g0[..2]).unwrap().counted);
    assert!(!push_piece(&mut p, 0, 0, 0, &g0[..2]).unwrap().counted, "a retried piece changes nothing");
    assert_eq!(p.clocks().worker_clock(0), Some(0), "the push is not complete yet");
    let pushed = push_piece(&mut p, 0, 0, 1, &g0[2..4]).unwrap();
    assert!(pushed.counted);
    assert_eq!(pushed.round, None, "worker 1 has not pushed: no update yet");
    assert_eq!(p.clocks().worker_clock(0), Some(1), "complete with its last piece");
    assert!(
        !push_piece(&mut p, 0, 0, 1, &g0[2..4]).unwrap().counted,
        "a piece of a complete push is a duplicate"
    );
    assert_eq!(values(&p), vec![0.0; 5], "no update before the round completes");
    let pushed = p.push(1, 0, grad(&g1)).unwrap();
    assert!(pushed.counted);
    assert_eq!(pushed.round.map(|r| (r.clock, r.contributors)), Some((0, 2)));
    let mean: Vec<f32> = g0.iter().zip(&g1).map(|(a, b)| -(a + b) * 0.5).collect();
    assert_eq!(values(&p), mean);

    // The same round with whole pushes gives the same bits.
    let mut whole = pieced(2);
    whole.push(0, 0, grad(&g0)).unwrap();
    whole.push(1, 0, grad(&g1)).unwrap();
    assert_eq!(
        values(&p).iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
        values(&whole).iter().map(|v| v.to_bits()).collect::<Vec<_>>()
    );
}

#[test]
fn only_the_last_piece_of_the_rounds_last_push_changes_the_values() {
    let mut p = pieced(2);
    p.push(1, 0, grad(&[1.0; 5])).unwrap();
    assert_eq!(push_piece(&mut p, 0, 0, 0, &[1.0; 2]).unwrap().round, None);
    assert_eq!(push_piece(&mut p, 0, 0, 2, &[1.0; 1]).unwrap().round, None);
    let again = push_piece(&mut p, 0, 0, 0, &[1.0; 2]).unwrap();
    assert!(!again.counted && again.round.is_none(), "an arrived piece changes nothing");
    assert_eq!(values(&p), vec![0.0; 5]);
    // A whole push after some pieces adds only the pieces still missing,
    // and brings the round's last one.
    let pushed = p.push(0, 0, grad(&[1.0, 1.0, 7.0, 7.0, 1.0])).unwrap();
    assert_eq!(pushed.round.map(|r| r.clock), Some(0), "a whole push brings the missing piece too");
    assert_eq!(values(&p), vec![-1.0, -1.0, -4.0, -4.0, -1.0]);
    // The next round starts from an empty sum, though the part keeps its buffer.
    push_piece(&mut p, 0, 1, 0, &[2.0; 2]).unwrap();
    push_piece(&mut p, 0, 1, 1, &[2.0; 2]).unwrap();
    push_piece(&mut p, 0, 1, 2, &[2.0; 1]).unwrap();
    p.push(1, 1, grad(&[0.0; 5])).unwrap();
    assert_eq!(values(&p), vec![-2.0, -2.0, -5.0, -5.0, -2.0]);
}

#[test]
fn a_refused_piece_changes_nothing() {
    let mut p = pieced(2);
    let bad_length = push_piece(&mut p, 0, 0, 1, &[1.0; 3]);
    assert!(matches!(bad_length, Err(PsError::InvalidArgument(_))), "{bad_length:?}");
    assert!(matches!(push_piece(&mut p, 0, 0, 3, &[1.0]), Err(PsError::InvalidArgument(_))), "no piece 3");
    assert!(matches!(push_piece(&mut p, 0, 1, 0, &[1.0; 2]), Err(PsError::Clock { .. })), "clock ahead");
    push_piece(&mut p, 0, 0, 0, &[1.0; 2]).unwrap();
    push_piece(&mut p, 0, 0, 1, &[1.0; 2]).unwrap();
    push_piece(&mut p, 0, 0, 2, &[1.0; 1]).unwrap();
    p.push(1, 0, grad(&[1.0; 5])).unwrap();
    assert_eq!(values(&p), vec![-1.0; 5], "the refused pieces left no trace in the sum");
}

#[test]
fn a_worker_leaving_with_some_pieces_in_counts_with_zeros_for_the_rest() {
    let mut p = pieced(2);
    p.push(1, 0, grad(&[2.0; 5])).unwrap();
    push_piece(&mut p, 0, 0, 1, &[4.0; 2]).unwrap();
    p.leave(0).unwrap();
    // Mean of [2; 5] and [0, 0, 4, 4, 0] over the two contributors.
    assert_eq!(values(&p), vec![-1.0, -1.0, -3.0, -3.0, -1.0]);
    assert_eq!(p.clocks().applied_clock(), 1);
}

#[test]
fn pieces_no_contributor_delivered_count_as_zeros() {
    let mut p = pieced(2);
    // A full round first, so the kept sum holds old values everywhere.
    p.push(0, 0, grad(&[8.0; 5])).unwrap();
    p.push(1, 0, grad(&[8.0; 5])).unwrap();
    assert_eq!(values(&p), vec![-8.0; 5]);
    push_piece(&mut p, 0, 1, 0, &[2.0; 2]).unwrap();
    p.leave(0).unwrap();
    assert_eq!(p.clocks().applied_clock(), 1, "worker 1 is still to push");
    push_piece(&mut p, 1, 1, 0, &[4.0; 2]).unwrap();
    p.leave(1).unwrap();
    assert_eq!(values(&p), vec![-11.0, -11.0, -8.0, -8.0, -8.0]);
}

/// Whatever the order in which workers' pieces arrive, with retries
/// and some pushes finished by one whole push, each round applies every
/// worker's gradient exactly once: the same bits as whole pushes, every
/// retry refused, and the round complete exactly after its last piece.
/// (Integer gradients, sums and a power-of-two learning rate keep every
/// sum exact, so the order of the additions does not matter.)
#[test]
fn any_interleaving_of_pieces_retries_and_whole_pushes_applies_each_push_once() {
    use rand::seq::SliceRandom;
    use rand::{Rng, SeedableRng};
    for seed in 0..300u64 {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let workers = rng.random_range(2..5u32);
        let len = rng.random_range(1..12u64);
        let piece_len = rng.random_range(1..5u64);
        let part = |piece_len| {
            let meta = TensorMeta {
                name: "w".into(),
                shape: vec![len],
                offset: 0,
                len,
                policy: Policy::SYNC,
                allow_non_finite: false,
                piece_len,
            };
            TensorPart::new(meta, Init::Constant(0.0), OptimizerConfig::sgd(0.5), workers, Aggregation::Sum)
        };
        let (mut pieced, mut whole) = (part(piece_len), part(0));
        let pieces = ps_proto::placement::pieces(ps_proto::Part { shard: 0, offset: 0, len }, piece_len);
        for round in 0..3u64 {
            let g = |w: u32| -> Vec<f32> {
                (0..len).map(|i| ((u64::from(w) * 7 + round * 3 + i) % 9) as f32 - 4.0).collect()
            };
            let mut events: Vec<(u32, Option<usize>)> =
                (0..workers).flat_map(|w| (0..pieces.len()).map(move |i| (w, Some(i)))).collect();
            events.shuffle(&mut rng);
            // Some workers send their last piece as a whole push instead.
            for w in 0..workers {
                if rng.random_bool(0.3)
                    && let Some(last) = events.iter().rposition(|(v, _)| *v == w)
                {
                    events[last] = (w, None);
                }
            }
            for (n, (w, piece)) in events.iter().copied().enumerate() {
                let push = |p: &mut TensorPart| match piece {
                    Some(i) => {
                        let r = pieces[i].offset as usize..(pieces[i].offset + pieces[i].len) as usize;
                        push_piece(p, w, round, i, &g(w)[r])
                    }
                    None => p.push(w, round, Gradient { values: g(w) }),
                };
                assert!(push(&mut pieced).unwrap().counted, "seed {seed}: the first arrival counts");
                if rng.random_bool(0.25) {
                    assert!(!push(&mut pieced).unwrap().counted, "seed {seed}: a retry changes nothing");
                }
                let last = n + 1 == events.len();
                assert_eq!(pieced.clocks().applied_clock(), round + u64::from(last), "seed {seed}");
            }
            for w in 0..workers {
                whole.push(w, round, Gradient { values: g(w) }).unwrap();
            }
            let bits = |p: &TensorPart| values(p).iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&pieced), bits(&whole), "seed {seed}, round {round}");
        }
    }
}

#[test]
fn an_update_read_by_a_reply_waits_and_holds_pulls_until_finished() {
    let mut p = part(Policy::ASYNC, 2, OptimizerConfig::sgd(1.0));
    let lease = p.readers().lease();
    let pushed = p.push(0, 0, grad(&[2.0, 2.0, 2.0])).unwrap();
    assert!(pushed.counted && pushed.pending, "a reply reads the values: the update waits");
    assert_eq!(values(&p), vec![1.0; 3], "not applied yet");
    assert_eq!(p.snapshot(Default::default()).versions, vec![-1, -1], "versions match the values");
    let PullStart::Wait(mut released) = p.pull(1, Some(1), 0).unwrap() else {
        panic!("a pull waits for the pending update")
    };
    assert!(released.try_recv().is_err(), "not released yet");
    drop(lease);
    p.finish_update();
    assert_eq!(released.try_recv().unwrap(), Ok(()), "released by the update's end");
    assert_eq!(values(&p), vec![0.0; 3]);
    assert_eq!(p.take_copies(), 0, "the reply had finished: updated in place");
    assert!(matches!(p.pull(2, Some(1), 0).unwrap(), PullStart::Read));
}

#[test]
fn an_update_finished_while_a_reply_still_reads_copies_the_values_once() {
    let mut p = part(Policy::SYNC, 1, OptimizerConfig::sgd(1.0));
    let held = p.snapshot(Default::default());
    let _lease = p.readers().lease();
    assert!(p.push(0, 0, grad(&[1.0; 3])).unwrap().pending);
    p.finish_update();
    assert_eq!(p.take_copies(), 1);
    assert_eq!(held.values.to_vec(), vec![1.0; 3], "the reply's values are untouched");
    assert_eq!(values(&p), vec![0.0; 3]);
}

#[test]
fn a_worker_leaving_refuses_its_waiting_pull() {
    let mut p = part(Policy::SYNC, 2, OptimizerConfig::sgd(1.0));
    p.push(0, 0, grad(&[1.0; 3])).unwrap();
    let PullStart::Wait(mut released) = p.pull(5, Some(0), 1).unwrap() else { panic!("waits for worker 1") };
    p.leave(0).unwrap();
    assert_eq!(released.try_recv().unwrap(), Err(crate::sync::ClockError::NotLive { worker: 0 }));
}
