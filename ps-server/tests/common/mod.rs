//! Helpers shared by the integration tests: real `ps-server` processes on
//! ephemeral ports, and a small seeded linear-regression problem.
#![allow(dead_code)]

pub(crate) mod proxy;
pub(crate) mod raw;

use std::collections::BTreeMap;
use std::process::Child;

use ndarray::{Array1, Array2, ArrayD, Axis};
use ps_proto::ClusterSpec;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::SeedableRng;

pub(crate) use ps_server::process::ShardProcess;

/// A child process killed (SIGKILL) when dropped.
pub(crate) struct Killed(pub(crate) Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `num_shards` real `ps-server` processes on 127.0.0.1 with
/// ephemeral ports and `args` in common, and returns them with the cluster
/// spec (split threshold `split_threshold`), accepting connections.
pub(crate) fn spawn_cluster(
    num_shards: u32,
    split_threshold: u64,
    args: &[&str],
) -> (Vec<ShardProcess>, ClusterSpec) {
    let exe = std::path::Path::new(env!("CARGO_BIN_EXE_ps-server"));
    ps_server::process::start_cluster(exe, num_shards, split_threshold, args)
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Dimension of the linear model.
pub(crate) const DIM: usize = 12;
/// Rows per minibatch.
pub(crate) const BATCH: usize = 8;

/// The true weights the data is generated from.
pub(crate) fn true_weights() -> Array1<f32> {
    Array1::from_iter((0..DIM).map(|i| (i as f32 * 0.37).sin()))
}

/// A deterministic minibatch for (worker, step): features and targets.
pub(crate) fn batch(worker: u32, step: u64) -> (Array2<f32>, Array1<f32>) {
    let mut rng = ChaCha8Rng::seed_from_u64(0x5eed ^ (u64::from(worker) << 32) ^ step);
    let x = Array2::from_shape_fn((BATCH, DIM), |_| rng.random_range(-1.0f32..1.0));
    let noise = Array1::from_shape_fn(BATCH, |_| rng.random_range(-0.01f32..0.01));
    let y = x.dot(&true_weights()) + 1.5 + noise;
    (x, y)
}

/// Gradients of the mean squared error at (w, b) on (x, y).
pub(crate) fn gradients(w: &Array1<f32>, b: f32, x: &Array2<f32>, y: &Array1<f32>) -> (Array1<f32>, f32) {
    let residual = x.dot(w) + b - y;
    let scale = 2.0 / x.nrows() as f32;
    (x.t().dot(&residual) * scale, residual.sum() * scale)
}

/// The mean squared error at (w, b) on (x, y).
pub(crate) fn loss(w: &Array1<f32>, b: f32, x: &Array2<f32>, y: &Array1<f32>) -> f32 {
    let r = x.dot(w) + b - y;
    r.mapv(|v| v * v).mean().unwrap_or(f32::NAN)
}

/// The gradient map a worker pushes for the linear model.
pub(crate) fn grad_map(w: &Array1<f32>, b: f32, worker: u32, step: u64) -> BTreeMap<String, ArrayD<f32>> {
    let (x, y) = batch(worker, step);
    let (gw, gb) = gradients(w, b, &x, &y);
    BTreeMap::from([("w".to_string(), gw.into_dyn()), ("b".to_string(), ndarray::arr1(&[gb]).into_dyn())])
}

/// `w` and `b` out of a pull.
pub(crate) fn unpack(values: &BTreeMap<String, ArrayD<f32>>) -> (Array1<f32>, f32) {
    let w = values["w"].clone().into_dimensionality().expect("w is 1-D");
    (w, values["b"][[0]])
}

/// Mean over rows of a stack of per-worker gradients, summed in worker order.
pub(crate) fn mean_rows(rows: &[Array1<f32>]) -> Array1<f32> {
    let stacked = ndarray::stack(Axis(0), &rows.iter().map(|r| r.view()).collect::<Vec<_>>()).expect("stack");
    stacked.sum_axis(Axis(0)) / rows.len() as f32
}

/// Single-process SGD on the linear model from the initial values the tests
/// declare (`w`: Normal(0, 0.1) seed 11, `b`: 0): at each step, the mean
/// gradient of workers `0..present(step)`, at learning rate `lr`.
pub(crate) fn reference_sgd(steps: u64, lr: f32, present: impl Fn(u64) -> u32) -> (Array1<f32>, f32) {
    let mut w: Array1<f32> =
        ps_server::init::Init::Normal { mean: 0.0, std: 0.1, seed: 11 }.fill(0, DIM).into();
    let mut b = 0.0f32;
    for step in 0..steps {
        let n = present(step);
        let (gws, gbs): (Vec<_>, Vec<_>) = (0..n)
            .map(|id| {
                let (x, y) = batch(id, step);
                gradients(&w, b, &x, &y)
            })
            .unzip();
        w = &w - &(mean_rows(&gws) * lr);
        b -= lr * gbs.iter().sum::<f32>() / n as f32;
    }
    (w, b)
}

/// The `ps-worker` binary (the operator's `ps-worker checkpoint`), which
/// the examples package builds next to `ps-server` when the workspace is
/// built (`cargo test --workspace` builds every binary).
pub(crate) fn ps_worker_bin() -> std::path::PathBuf {
    let path = std::path::PathBuf::from(env!("CARGO_BIN_EXE_ps-server")).with_file_name("ps-worker");
    assert!(path.exists(), "{} is missing: run the tests with --workspace", path.display());
    path
}

/// Sum over shards of `ps_server_requests_total` for `rpc` with code ok.
pub(crate) fn ok_requests(cluster: &ps_server::LocalCluster, rpc: &str) -> f64 {
    let text = ps_server::metrics::encode(cluster.registries());
    text.lines()
        .filter(|l| l.starts_with("ps_server_requests_total{"))
        .filter(|l| l.contains(&format!("rpc=\"{rpc}\"")) && l.contains("code=\"ok\""))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}
