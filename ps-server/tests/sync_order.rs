//! A sync job is reproducible whatever order its gradients arrive in: two
//! runs of five workers, whose pushes reach the shards in different orders
//! each round, end with bit-identical parameters, with whole pushes and
//! with pushes in pieces.

use std::collections::BTreeMap;

use ndarray::ArrayD;
use ps_server::{LocalCluster, PolicyName, ShardConfig};
use ps_worker::{TensorDecl, Worker, WorkerConfig};

const WORKERS: u32 = 5;
const ROUNDS: u64 = 4;
/// `w` is split over both shards (6 and 5 elements).
const LEN: usize = 11;

/// Values whose f32 sum depends on the order they are added in.
const SPREAD: [f32; 8] = [1e8, 1.0, -1e8, 1e-3, 3.0, -7e7, 5e-4, 2.5e8];

fn gradient(worker: u32, round: u64) -> Vec<f32> {
    (0..LEN)
        .map(|i| SPREAD[(worker as usize * 3 + i + round as usize) % SPREAD.len()] * (1.0 + i as f32))
        .collect()
}

fn grads(worker: u32, round: u64) -> BTreeMap<String, ArrayD<f32>> {
    BTreeMap::from([("w".to_string(), ndarray::Array1::from(gradient(worker, round)).into_dyn())])
}

/// Round `round`'s arrival order in run `run`: run 0 goes up, rotated by
/// the round; run 1 goes down, rotated the other way.
fn arrival_order(run: u32, round: u64) -> Vec<u32> {
    let shift = round as u32 % WORKERS;
    (0..WORKERS)
        .map(|i| match run {
            0 => (i + shift) % WORKERS,
            _ => (2 * WORKERS - 1 - i - shift) % WORKERS,
        })
        .collect()
}

/// The elements' sum when added in `order`.
fn fold(order: &[u32], round: u64) -> Vec<u32> {
    let mut sum = [0.0f32; LEN];
    for (n, w) in order.iter().enumerate() {
        for (s, g) in sum.iter_mut().zip(gradient(*w, round)) {
            *s = if n == 0 { g } else { *s + g };
        }
    }
    sum.iter().map(|s| s.to_bits()).collect()
}

fn config(sync_piece_bytes: u64) -> ShardConfig {
    ShardConfig {
        num_workers: WORKERS,
        policy: PolicyName::Sync,
        split_threshold: 4,
        sync_piece_bytes: Some(sync_piece_bytes),
        ..ShardConfig::default()
    }
}

/// Runs `ROUNDS` rounds on a fresh cluster: each round every worker pushes
/// in turn, in `arrival_order(run, round)`, each push acknowledged before
/// the next is sent; then all pull. Returns the bits each worker read last.
async fn run(sync_piece_bytes: u64, run: u32) -> Vec<Vec<u32>> {
    let cluster = LocalCluster::start(2, config(sync_piece_bytes)).await.expect("cluster");
    let mut workers = Vec::new();
    for id in 0..WORKERS {
        let mut w = Worker::connect(WorkerConfig::new(cluster.spec().clone(), id)).await.expect("connect");
        w.declare(&TensorDecl::new("w", &[LEN]).normal(0.0, 0.5, 3)).await.expect("declare");
        w.pull().await.expect("pull");
        workers.push(w);
    }
    let mut last = Vec::new();
    for round in 0..ROUNDS {
        for id in arrival_order(run, round) {
            workers[id as usize].push(&grads(id, round)).await.expect("push");
        }
        let pulls = futures::future::join_all(workers.iter().map(|w| w.pull())).await;
        last = pulls
            .into_iter()
            .map(|p| {
                let p = p.expect("pull");
                assert_eq!(p.versions["w"], vec![round as i64; WORKERS as usize]);
                p.values["w"].iter().map(|v| v.to_bits()).collect()
            })
            .collect();
    }
    drop(workers);
    cluster.shutdown().await.expect("shutdown");
    last
}

#[test]
fn the_two_runs_arrival_orders_would_give_different_sums() {
    let differs = (0..ROUNDS)
        .any(|round| fold(&arrival_order(0, round), round) != fold(&arrival_order(1, round), round));
    assert!(differs, "summed in arrival order, the two runs would differ");
    assert_ne!(arrival_order(0, 1), arrival_order(1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_runs_with_different_arrival_orders_end_bit_identical() {
    let (first, second) = (run(0, 0).await, run(0, 1).await);
    assert!(first.iter().all(|w| *w == first[0]), "every worker reads the same bytes");
    assert_eq!(first, second, "whole pushes: the arrival order changed the parameters");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_runs_in_pieces_with_different_arrival_orders_end_bit_identical() {
    // Pieces of 2 elements: each part's push goes in 3 requests.
    let (first, second) = (run(8, 0).await, run(8, 1).await);
    assert_eq!(first, second, "pieces: the arrival order changed the parameters");
    assert_eq!(first, run(0, 1).await, "pieces sum like whole pushes");
}
