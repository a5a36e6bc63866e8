//! A sync round's sum does not depend on the order its gradients arrive in:
//! every order gives the bits of the sum folded in worker-id order.

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use super::*;

/// Values whose f32 sum depends on the order they are added in.
const SPREAD: [f32; 8] = [1e8, 1.0, -1e8, 1e-3, 3.0, -7e7, 5e-4, 2.5e8];

/// Worker `w`'s gradient of `len` elements in round `round`.
fn gradient(w: u32, round: u64, len: usize) -> Vec<f32> {
    (0..len)
        .map(|i| SPREAD[(w as usize * 3 + i + round as usize) % SPREAD.len()] * (1.0 + i as f32))
        .collect()
}

/// A sync part of `len` elements in pieces of `piece_len` (0: whole),
/// starting at zeros, whose round applies `-sum` exactly (sum, lr 1).
fn sync_part(workers: u32, len: u64, piece_len: u64) -> TensorPart {
    let meta = TensorMeta {
        name: "w".into(),
        shape: vec![len],
        offset: 0,
        len,
        policy: Policy::SYNC,
        allow_non_finite: false,
        piece_len,
    };
    TensorPart::new(meta, Init::Constant(0.0), OptimizerConfig::sgd(1.0), workers, Aggregation::Sum)
}

fn bits(p: &TensorPart) -> Vec<u32> {
    p.snapshot(Default::default()).values.iter().map(|v| v.to_bits()).collect()
}

/// The bits a part starting at zeros holds after a round summing `grads`
/// in the order given: `0 - sum`.
fn folded_bits<'a>(grads: impl IntoIterator<Item = &'a Vec<f32>>) -> Vec<u32> {
    let mut grads = grads.into_iter();
    let mut sum = grads.next().cloned().unwrap_or_default();
    for g in grads {
        for (s, x) in sum.iter_mut().zip(g) {
            *s += x;
        }
    }
    sum.iter().map(|s| (0.0 - s).to_bits()).collect()
}

/// All orderings of `0..n`.
fn permutations(n: u32) -> Vec<Vec<u32>> {
    if n == 0 {
        return vec![Vec::new()];
    }
    let mut all = Vec::new();
    for rest in permutations(n - 1) {
        for at in 0..=rest.len() {
            let mut p = rest.clone();
            p.insert(at, n - 1);
            all.push(p);
        }
    }
    all
}

#[test]
fn the_values_order_matters_for_the_test_data() {
    let grads: Vec<Vec<f32>> = (0..4).map(|w| gradient(w, 0, 6)).collect();
    let in_order = folded_bits(&grads);
    let differs =
        permutations(4).iter().any(|p| folded_bits(p.iter().map(|w| &grads[*w as usize])) != in_order);
    assert!(differs, "some arrival order must change an arrival-order sum");
}

#[test]
fn every_arrival_order_of_four_and_five_workers_gives_the_worker_order_bits() {
    for workers in [4u32, 5] {
        let grads: Vec<Vec<f32>> = (0..workers).map(|w| gradient(w, 0, 6)).collect();
        let expected = folded_bits(&grads);
        for order in permutations(workers) {
            let mut p = sync_part(workers, 6, 0);
            for &w in &order {
                assert!(p.push(w, 0, Gradient { values: grads[w as usize].clone() }).unwrap().counted);
                assert!(p.held_gradients() < workers as usize, "at most W - 1 are held");
            }
            assert_eq!(p.clocks().applied_clock(), 1);
            assert_eq!(p.held_gradients(), 0, "nothing held after the round");
            assert_eq!(bits(&p), expected, "{workers} workers, arrival order {order:?}");
        }
    }
}

#[test]
fn eight_workers_over_several_rounds_give_the_same_bits_in_any_order() {
    let (workers, len, rounds) = (8u32, 7usize, 3u64);
    let run = |seed: u64| {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut p = sync_part(workers, len as u64, 0);
        for round in 0..rounds {
            let mut order: Vec<u32> = (0..workers).collect();
            order.shuffle(&mut rng);
            for w in order {
                p.push(w, round, Gradient { values: gradient(w, round, len) }).unwrap();
            }
        }
        bits(&p)
    };
    let first = run(0);
    for seed in 1..200 {
        assert_eq!(run(seed), first, "seed {seed}");
    }
}

/// Pushes `w`'s piece `i` of round `round` (or its whole push for `None`).
fn deliver(p: &mut TensorPart, w: u32, round: u64, piece: Option<usize>) -> Pushed {
    let len = p.meta().len as usize;
    let g = gradient(w, round, len);
    match piece {
        Some(i) => {
            let r = p.round.piece_range(i);
            p.push_piece(w, round, i, &mut g[r].to_vec()).unwrap()
        }
        None => p.push(w, round, Gradient { values: g }).unwrap(),
    }
}

#[test]
fn pieces_in_any_interleaving_give_the_bits_of_whole_pushes_in_worker_order() {
    for seed in 0..300u64 {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let workers = rng.random_range(4..9u32);
        let (len, piece_len) = (7u64, rng.random_range(1..4u64));
        let (mut pieced, mut whole) = (sync_part(workers, len, piece_len), sync_part(workers, len, 0));
        let pieces = pieced.round.pieces();
        for round in 0..2u64 {
            let mut events: Vec<(u32, Option<usize>)> =
                (0..workers).flat_map(|w| (0..pieces).map(move |i| (w, Some(i)))).collect();
            events.shuffle(&mut rng);
            // Some workers finish with a whole push (it brings their missing pieces).
            for w in 0..workers {
                if rng.random_bool(0.2)
                    && let Some(last) = events.iter().rposition(|(v, _)| *v == w)
                {
                    events[last] = (w, None);
                }
            }
            for (w, piece) in events {
                assert!(deliver(&mut pieced, w, round, piece).counted, "seed {seed}");
                if rng.random_bool(0.2) {
                    assert!(
                        !deliver(&mut pieced, w, round, piece).counted,
                        "seed {seed}: a retry is ignored"
                    );
                }
                assert!(pieced.held_gradients() <= (workers as usize - 1) * pieces, "seed {seed}");
            }
            for w in 0..workers {
                deliver(&mut whole, w, round, None);
            }
            assert_eq!(pieced.clocks().applied_clock(), round + 1, "seed {seed}");
            assert_eq!(bits(&pieced), bits(&whole), "seed {seed}, round {round}");
        }
    }
}

#[test]
fn a_gradient_waits_for_the_lower_workers_then_is_folded_and_freed() {
    let mut p = sync_part(4, 6, 0);
    let before = p.bytes_held();
    deliver(&mut p, 3, 0, None);
    deliver(&mut p, 2, 0, None);
    assert_eq!(p.held_gradients(), 2, "workers 0 and 1 have not pushed");
    assert_eq!(p.bytes_held(), before + 2 * 6 * 4, "held gradients are counted as held bytes");
    deliver(&mut p, 0, 0, None);
    assert_eq!(p.held_gradients(), 2, "worker 1 still to come");
    deliver(&mut p, 1, 0, None);
    assert_eq!(p.held_gradients(), 0);
    assert_eq!(p.bytes_held(), before, "the round's buffers are freed once it is applied");
    let grads: Vec<Vec<f32>> = (0..4).map(|w| gradient(w, 0, 6)).collect();
    assert_eq!(bits(&p), folded_bits(&grads));
}

#[test]
fn a_retried_push_while_held_is_held_once_and_summed_once() {
    let grads: Vec<Vec<f32>> = (0..4).map(|w| gradient(w, 0, 6)).collect();
    let mut p = sync_part(4, 6, 0);
    assert!(deliver(&mut p, 2, 0, None).counted);
    assert!(!deliver(&mut p, 2, 0, None).counted, "the retry is a duplicate");
    assert_eq!(p.held_gradients(), 1);
    for w in [3, 1, 0] {
        deliver(&mut p, w, 0, None);
    }
    assert_eq!(bits(&p), folded_bits(&grads));

    // The same with pieces: a retried held piece is not held twice.
    let mut q = sync_part(4, 6, 2);
    assert!(deliver(&mut q, 1, 0, Some(2)).counted);
    assert!(!deliver(&mut q, 1, 0, Some(2)).counted);
    assert_eq!(q.held_gradients(), 1);
    for w in [3, 2, 1, 0] {
        for i in 0..3 {
            deliver(&mut q, w, 0, Some(i));
        }
    }
    assert_eq!(bits(&q), folded_bits(&grads));
}

#[test]
fn a_worker_leaving_mid_round_is_skipped_wherever_its_leave_falls() {
    let workers = 5u32;
    let grads: Vec<Vec<f32>> = (0..workers).map(|w| gradient(w, 0, 6)).collect();
    for leaver in 0..workers {
        let stayers: Vec<u32> = (0..workers).filter(|w| *w != leaver).collect();
        let expected = folded_bits(stayers.iter().map(|w| &grads[*w as usize]));
        for order in permutations(workers - 1) {
            for leave_at in 0..workers as usize {
                let mut p = sync_part(workers, 6, 0);
                for (n, &i) in order.iter().enumerate() {
                    if n == leave_at {
                        p.leave(leaver).unwrap();
                    }
                    deliver(&mut p, stayers[i as usize], 0, None);
                }
                if leave_at == order.len() {
                    assert!(p.held_gradients() > 0 || leaver == workers - 1, "held behind the leaver");
                    p.leave(leaver).unwrap();
                }
                assert_eq!(p.clocks().applied_clock(), 1);
                assert_eq!(p.held_gradients(), 0);
                assert_eq!(bits(&p), expected, "leaver {leaver} at {leave_at}, order {order:?}");
            }
        }
    }
}

#[test]
fn a_worker_leaving_with_some_pieces_in_adds_them_in_its_turn() {
    let (workers, len) = (4u32, 6usize);
    // Worker 1 delivers piece 1 (elements 2..4) only, then leaves; the
    // pieces it left out wait on it for workers 2 and 3, whose order
    // matters: (1e8 + 1) - 1e8 is 0, (1e8 - 1e8) + 1 is 1.
    let worker_1 = [0.0, 0.0, 0.5, 0.5, 0.0, 0.0];
    let grads = [vec![1e8; len], worker_1.to_vec(), vec![1.0; len], vec![-1e8; len]];
    let reference = {
        let mut p = sync_part(workers, len as u64, 0);
        for (w, g) in grads.iter().enumerate() {
            p.push(w as u32, 0, Gradient { values: g.clone() }).unwrap();
        }
        bits(&p)
    };
    for order in permutations(3) {
        let others = [0u32, 2, 3];
        let mut p = sync_part(workers, len as u64, 2);
        p.push_piece(1, 0, 1, &mut vec![0.5; 2]).unwrap();
        for &i in &order {
            let w = others[i as usize];
            p.push(w, 0, Gradient { values: grads[w as usize].clone() }).unwrap();
        }
        assert_eq!(p.held_gradients(), 4, "pieces 0 and 2 of workers 2 and 3 wait on worker 1");
        p.leave(1).unwrap();
        assert_eq!(p.clocks().applied_clock(), 1, "order {order:?}");
        assert_eq!(bits(&p), reference, "order {order:?}");
    }
    assert_eq!(reference[0], 0.0f32.to_bits(), "worker order: 0 - ((1e8 + 1) - 1e8)");
}

#[test]
fn a_worker_rejoining_after_its_turn_passed_is_added_when_it_arrives() {
    let mut p = sync_part(3, 6, 0);
    p.leave(0).unwrap();
    deliver(&mut p, 1, 0, None);
    assert_eq!(p.held_gradients(), 0, "worker 0 is gone: worker 1 is folded at once");
    assert_eq!(p.join(0, 0).unwrap(), 0);
    deliver(&mut p, 0, 0, None);
    let pushed = deliver(&mut p, 2, 0, None);
    assert_eq!(pushed.round.map(|r| r.contributors), Some(3));
    let grads: Vec<Vec<f32>> = [1, 0, 2].iter().map(|w| gradient(*w, 0, 6)).collect();
    assert_eq!(bits(&p), folded_bits(&grads), "1, then 0 when it arrived, then 2");
}

#[test]
fn after_a_round_every_worker_gave_up_the_next_folds_in_worker_order_again() {
    let mut p = sync_part(3, 6, 0);
    for w in 0..3 {
        deliver(&mut p, w, 0, None);
    }
    let after_round_0 = bits(&p);
    // Round 1: every worker gives it up (leaves, and joins again skipping it).
    for w in 0..3 {
        p.leave(w).unwrap();
        assert_eq!(p.join(w, 2).unwrap(), 2);
    }
    assert_eq!(p.clocks().applied_clock(), 2, "round 1 passed");
    assert_eq!(bits(&p), after_round_0, "with no update");
    // Round 2 arrives 2, 1, 0: 2 and 1 wait for 0's turn, as in any round.
    deliver(&mut p, 2, 2, None);
    deliver(&mut p, 1, 2, None);
    assert_eq!(p.held_gradients(), 2, "the turns start at worker 0 again");
    let pushed = deliver(&mut p, 0, 2, None);
    assert_eq!(pushed.round.map(|r| r.contributors), Some(3));
    assert_eq!(p.held_gradients(), 0);
}
