//! A short real training run on an embedded cluster: the loss goes down and
//! the model beats chance by a wide margin, under every policy.

use std::sync::Arc;
use std::time::Duration;

use indicatif::ProgressBar;
use ps_examples::consistency;
use ps_examples::job::data;
use ps_examples::job::model::{Model, ModelKind};
use ps_examples::job::train::{Stragglers, TrainConfig};
use ps_examples::report;
use ps_examples::run::{self, RunSpec};
use ps_proto::Policy;
use ps_proto::WireDtype;
use ps_server::{LocalCluster, ShardConfig};
use ps_worker::OptimizerConfig;

#[test]
fn two_workers_learn_fashion_mnist_under_each_policy() {
    let splits = Arc::new(data::load(&data::default_data_dir()).expect("shipped data loads"));
    let job = TrainConfig {
        model: Model { kind: ModelKind::Softmax, inputs: 784, hidden: 0, classes: 10, seed: 3 },
        batch: 32,
        epochs: 1,
        seed: 3,
        workers: 2,
        optimizer: Some(OptimizerConfig::sgd(0.3)),
        stragglers: Stragglers::none(),
        max_steps: Some(300),
        checkpoint_every: None,
    };
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    for policy in [Policy::SYNC, Policy::ssp(2), Policy::ASYNC] {
        let cluster = runtime
            .block_on(LocalCluster::start(2, ShardConfig { num_workers: 2, ..ShardConfig::default() }))
            .expect("cluster");
        let spec = RunSpec {
            policy,
            cluster: cluster.spec().clone(),
            namespace: String::new(),
            job: job.clone(),
            wire_dtype: WireDtype::F32,
            snapshot_every: Duration::from_secs(3600),
            board: None,
        };
        let result = run::run(&spec, &splits, &ProgressBar::hidden()).expect("run");
        runtime.block_on(cluster.shutdown()).expect("shutdown");
        assert_eq!(result.steps.len(), 600, "{}", policy);
        let mean = |range: std::ops::Range<u64>| {
            let l: Vec<f32> =
                result.steps.iter().filter(|s| range.contains(&s.clock)).map(|s| s.loss).collect();
            l.iter().sum::<f32>() / l.len() as f32
        };
        let (first, last) = (mean(0..30), mean(270..300));
        assert!(last < first * 0.6, "{}: loss {first} -> {last}", policy);
        let (_, accuracy) = report::evaluate(&job.model, &result.snapshots, &splits.test, &splits.test, 100);
        assert!(accuracy > 0.6, "{}: test accuracy {accuracy} (chance is 0.1)", policy);
        let check = consistency::check(&report::reads(&result.steps), policy.staleness_bound());
        assert!(
            check.read_your_writes.held() && check.monotonic_reads.held() && check.monotonic_writes.held()
        );
        assert!(check.bounded_staleness.held(), "{}: {check:?}", policy);
    }
}
