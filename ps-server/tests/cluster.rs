//! Multi-process tests: real `ps-server` processes on 127.0.0.1, workers
//! driven through the `ps-worker` library, one per Tokio task.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use ndarray::{Array1, ArrayD};
use ps_worker::{TensorDecl, Worker, WorkerConfig};

const LR: f32 = 0.05;

async fn connect(spec: &ps_proto::ClusterSpec, id: u32) -> Worker {
    let mut w = Worker::connect(WorkerConfig::new(spec.clone(), id)).await.expect("connect");
    w.declare(&TensorDecl::new("w", &[DIM]).normal(0.0, 0.1, 11)).await.expect("declare w");
    w.declare(&TensorDecl::new("b", &[1])).await.expect("declare b");
    w
}

/// Values a worker read at each clock, as raw bits.
type Reads = Vec<Vec<u32>>;

fn bits(values: &BTreeMap<String, ArrayD<f32>>) -> Vec<u32> {
    values.values().flat_map(|a| a.iter().map(|v| v.to_bits())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_equals_single_process_sgd_on_two_shards() {
    const WORKERS: u32 = 4;
    const STEPS: u64 = 50;
    // Split threshold 8: `w` (12 elements) is split over both shards.
    let (_servers, spec) = spawn_cluster(2, 8, &["--workers", "4", "--policy", "sync", "--lr", "0.05"]);
    let mut tasks = Vec::new();
    for id in 0..WORKERS {
        let spec = spec.clone();
        tasks.push(tokio::spawn(async move {
            let mut worker = connect(&spec, id).await;
            let mut reads: Reads = Vec::new();
            for step in 0..STEPS {
                let pulled = worker.pull().await.expect("pull");
                assert_eq!(pulled.versions["w"], vec![step as i64 - 1; WORKERS as usize], "sync versions");
                reads.push(bits(&pulled.values));
                let (w, b) = unpack(&pulled.values);
                worker.push(&grad_map(&w, b, id, step)).await.expect("push");
            }
            reads.push(bits(&worker.pull().await.expect("final pull").values));
            reads
        }));
    }
    let mut all_reads = Vec::new();
    for t in tasks {
        all_reads.push(t.await.expect("worker task"));
    }
    for (id, reads) in all_reads.iter().enumerate().skip(1) {
        assert_eq!(reads, &all_reads[0], "worker {id} read different bytes than worker 0");
    }

    // The same SGD in one process, on the union of the workers' batches.
    let observer = connect(&spec, 0).await;
    let (w, b) = reference_sgd(STEPS, LR, |_| WORKERS);
    let (served_w, versions) = observer.observe("w").await.expect("observe w");
    let (served_b, _) = observer.observe("b").await.expect("observe b");
    assert_eq!(versions, vec![STEPS as i64 - 1; WORKERS as usize]);
    let max_diff = served_w.iter().zip(w.iter()).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(max_diff <= 1e-5, "w differs from single-process SGD by {max_diff}");
    assert!((served_b[[0]] - b).abs() <= 1e-5, "b: served {} vs reference {b}", served_b[[0]]);
    // It also learned something.
    let (x, y) = batch(99, 0);
    assert!(loss(&w, b, &x, &y) < loss(&Array1::zeros(DIM), 0.0, &x, &y) / 4.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssp_never_reads_staler_than_the_bound_and_fast_workers_run_ahead() {
    const WORKERS: u32 = 3;
    const STEPS: u64 = 40;
    const S: i64 = 2;
    let (_servers, spec) = spawn_cluster(2, 8, &["--workers", "3", "--policy", "ssp", "--staleness", "2"]);
    let mut tasks = Vec::new();
    for id in 0..WORKERS {
        let spec = spec.clone();
        tasks.push(tokio::spawn(async move {
            let mut worker = connect(&spec, id).await;
            // Worker 0 is 5x slower than the others.
            let compute = Duration::from_millis(if id == 0 { 10 } else { 2 });
            let mut max_lead = 0i64;
            for step in 0..STEPS {
                let pulled = worker.pull().await.expect("pull");
                let c = step as i64;
                for (name, versions) in &pulled.versions {
                    for (other, v) in versions.iter().enumerate() {
                        // Every update of clocks < c - s is included...
                        assert!(
                            *v >= c - S - 1,
                            "worker {id} at clock {c} read {name} with worker {other} at {v}"
                        );
                    }
                    // ...and all of the reader's own.
                    assert_eq!(versions[id as usize], c - 1, "read-your-writes for {name}");
                }
                max_lead = max_lead.max(c - 1 - pulled.versions["w"][0]);
                let (w, b) = unpack(&pulled.values);
                tokio::time::sleep(compute).await;
                worker.push(&grad_map(&w, b, id, step)).await.expect("push");
            }
            worker.leave().await.expect("leave");
            max_lead
        }));
    }
    let mut leads = Vec::new();
    for t in tasks {
        leads.push(t.await.expect("worker task"));
    }
    // Fast workers saw the slow worker behind them (no accidental lockstep),
    // but never by more than the bound.
    assert!(leads[1] > 0 || leads[2] > 0, "fast workers never ran ahead: {leads:?}");
    assert!(leads.iter().all(|l| *l <= S), "lead beyond the bound: {leads:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_pulls_never_wait_for_a_stalled_worker_and_converge() {
    let (_servers, spec) = spawn_cluster(2, 8, &["--workers", "2", "--policy", "async", "--lr", "0.1"]);
    // Worker 1 joins and then stalls forever (never pushes, never leaves).
    let _stalled = connect(&spec, 1).await;
    let mut worker = connect(&spec, 0).await;
    let (x, y) = batch(7, 0);
    let (w, b) = unpack(&worker.pull().await.expect("pull").values);
    let initial = loss(&w, b, &x, &y);
    let run = async {
        for step in 0..300 {
            let (w, b) = unpack(&worker.pull().await.expect("pull").values);
            worker.push(&grad_map(&w, b, 0, step)).await.expect("push");
        }
    };
    tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("async pulls blocked on a stalled worker");
    let pulled = worker.pull().await.expect("pull");
    assert_eq!(pulled.versions["w"], vec![299, -1]);
    let (w, b) = unpack(&pulled.values);
    let fin = loss(&w, b, &x, &y);
    assert!(fin < initial / 100.0, "did not converge: loss {initial} -> {fin}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_worker_that_runs_out_of_data_leaves_and_the_rest_divide_by_three() {
    const WORKERS: u32 = 4;
    const STEPS: u64 = 30;
    const SHORT: u64 = STEPS - 10;
    let (_servers, spec) = spawn_cluster(2, 8, &["--workers", "4", "--policy", "sync", "--lr", "0.05"]);
    let mut tasks = Vec::new();
    for id in 0..WORKERS {
        let spec = spec.clone();
        tasks.push(tokio::spawn(async move {
            let mut worker = connect(&spec, id).await;
            let steps = if id == 3 { SHORT } else { STEPS };
            for step in 0..steps {
                let (w, b) = unpack(&worker.pull().await.expect("pull").values);
                worker.push(&grad_map(&w, b, id, step)).await.expect("push");
            }
            worker.leave().await.expect("leave");
        }));
    }
    let all = async {
        for t in tasks {
            t.await.expect("worker task");
        }
    };
    tokio::time::timeout(Duration::from_secs(120), all).await.expect("workers hung after one left");

    let (w, b) = reference_sgd(STEPS, LR, |step| if step < SHORT { WORKERS } else { WORKERS - 1 });
    let observer = connect(&spec, 0).await;
    let (served_w, versions) = observer.observe("w").await.expect("observe");
    assert_eq!(versions, vec![29, 29, 29, 19]);
    let max_diff = served_w.iter().zip(w.iter()).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(max_diff <= 1e-5, "w differs from the replay by {max_diff}");
    let (served_b, _) = observer.observe("b").await.expect("observe b");
    assert!((served_b[[0]] - b).abs() <= 1e-5, "b: served {} vs replay {b}", served_b[[0]]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_tensor_policies_in_one_job() {
    let (_servers, spec) = spawn_cluster(2, 8, &["--workers", "2", "--policy", "sync", "--lr", "0.5"]);
    let mut w0 = Worker::connect(WorkerConfig::new(spec.clone(), 0)).await.expect("connect");
    let mut w1 = Worker::connect(WorkerConfig::new(spec.clone(), 1)).await.expect("connect");
    for w in [&mut w0, &mut w1] {
        w.declare(&TensorDecl::new("emb", &[4]).async_()).await.expect("declare emb");
        w.declare(&TensorDecl::new("dense", &[4])).await.expect("declare dense");
    }
    let ones = ndarray::arr1(&[1.0f32; 4]).into_dyn();
    // Worker 0 runs 5 clocks ahead on the async tensor while worker 1 is idle.
    for clock in 0..5 {
        let (_, v) = w0.pull_tensor("emb", Some(clock), Some(0)).await.expect("async pull");
        assert_eq!(v, vec![clock as i64 - 1, -1]);
        w0.push_tensor("emb", clock, &ones).await.expect("async push");
    }
    // emb: 5 pushes, each scaled by 1/2 (mean over 2 live workers), lr 0.5.
    let (emb, _) = w0.observe("emb").await.expect("observe");
    assert_eq!(emb.as_slice().expect("contiguous"), &[-1.25; 4]);

    // The sync tensor waits for worker 1 at clock 1.
    w0.push_tensor("dense", 0, &ones).await.expect("sync push");
    let blocked =
        tokio::time::timeout(Duration::from_millis(300), w0.pull_tensor("dense", Some(1), Some(0))).await;
    assert!(blocked.is_err(), "sync pull returned before worker 1 pushed clock 0");
    let (dense, _) = w0.observe("dense").await.expect("observe");
    assert_eq!(dense.as_slice().expect("contiguous"), &[0.0; 4], "sync applied a partial round");
    let waiter = {
        let w0 = w0.clone();
        tokio::spawn(async move { w0.pull_tensor("dense", Some(1), Some(0)).await })
    };
    w1.push_tensor("dense", 0, &(ones.clone() * 3.0)).await.expect("sync push");
    let (dense, v) = waiter.await.expect("task").expect("pull released");
    assert_eq!(v, vec![0, 0]);
    // mean(1, 3) = 2, lr 0.5.
    assert_eq!(dense.as_slice().expect("contiguous"), &[-1.0; 4]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resending_an_acknowledged_push_changes_nothing_in_any_policy() {
    for policy in ["sync", "ssp", "async"] {
        let (_servers, spec) = spawn_cluster(2, 8, &["--workers", "1", "--policy", policy]);
        let mut worker = connect(&spec, 0).await;
        let (w, b) = unpack(&worker.pull().await.expect("pull").values);
        let grads = grad_map(&w, b, 0, 0);
        worker.push(&grads).await.expect("push");
        let before = worker.pull().await.expect("pull");
        // The same request again, then a different payload for the same clock.
        worker.push_at(0, &grads).await.expect("resend");
        let doubled: BTreeMap<_, _> = grads.iter().map(|(k, v)| (k.clone(), v * 2.0)).collect();
        worker.push_at(0, &doubled).await.expect("resend with other values");
        let after = worker.pull().await.expect("pull");
        assert_eq!(bits(&before.values), bits(&after.values), "{policy}: a resent push changed parameters");
        assert_eq!(before.versions, after.versions, "{policy}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_256_mib_tensor_round_trips_through_two_shards() {
    const LEN: usize = 64 << 20;
    let (_servers, spec) = spawn_cluster(2, 1 << 20, &["--workers", "1", "--policy", "async", "--lr", "1"]);
    let mut worker = Worker::connect(WorkerConfig::new(spec.clone(), 0)).await.expect("connect");
    worker.declare(&TensorDecl::new("big", &[LEN]).constant(1.0)).await.expect("declare");
    let status = worker.status().await.expect("status");
    assert!(
        status.iter().all(|s| s.tensors.len() == 1 && s.tensors[0].len == (LEN / 2) as u64),
        "{status:?}"
    );
    let grad = ndarray::Array1::from_shape_fn(LEN, |i| (i % 1000) as f32 * 0.001).into_dyn();
    worker.push(&BTreeMap::from([("big".to_string(), grad)])).await.expect("push 256 MiB");
    let pulled = worker.pull().await.expect("pull 256 MiB");
    let big = &pulled.values["big"];
    assert_eq!(big.len(), LEN);
    for i in [0, 1, 999, 1000, LEN / 2 - 1, LEN / 2, LEN - 1] {
        let expected = 1.0 - (i % 1000) as f32 * 0.001;
        assert_eq!(big[[i]], expected, "element {i}");
    }
    assert!(big.iter().enumerate().all(|(i, v)| *v == 1.0 - (i % 1000) as f32 * 0.001));
}

#[test]
fn ps_server_refuses_an_inconsistent_configuration() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ps-server"))
        .args(["--listen", "127.0.0.1:0", "--shard-id", "2", "--num-shards", "2", "--workers", "1"])
        .output()
        .expect("run ps-server");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("shard_id 2 is out of range for 2 shards"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ps_server_reads_a_toml_config_and_flags_override_it() {
    let dir = std::env::temp_dir().join(format!("ps-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("shard.toml");
    std::fs::write(&path, "num_workers = 3\npolicy = \"ssp\"\nstaleness = 5\n").expect("write config");
    let (_servers, spec) =
        spawn_cluster(1, 8, &["--config", path.to_str().expect("utf-8 path"), "--staleness", "7"]);
    let mut worker = Worker::connect(WorkerConfig::new(spec, 2)).await.expect("worker 2 of 3 exists");
    worker.declare(&TensorDecl::new("t", &[1])).await.expect("declare");
    let status = worker.status().await.expect("status");
    assert_eq!(status[0].num_workers, 3);
    assert_eq!(status[0].default_policy, ps_worker::Policy::ssp(7));
    assert_eq!(status[0].tensors[0].policy, ps_worker::Policy::ssp(7), "the flag overrides the file");
    std::fs::remove_dir_all(&dir).expect("clean up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ps_server_takes_the_shard_list_from_a_cluster_file() {
    let dir = std::env::temp_dir().join(format!("ps-cluster-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("cluster.toml");
    // The addresses only set the shard count here; placement uses split_threshold from the file.
    std::fs::write(
        &path,
        "shards = [\"127.0.0.1:1\", \"127.0.0.1:2\", \"127.0.0.1:3\"]\nsplit_threshold = 4\n",
    )
    .expect("write cluster file");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ps-server"))
        .args(["--listen", "127.0.0.1:0", "--shard-id", "2", "--cluster", path.to_str().expect("utf-8 path")])
        .args(["--metrics-listen", "off", "--workers", "1"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn ps-server");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().expect("stdout")),
        &mut line,
    )
    .expect("read");
    let _server = common::Killed(child);
    assert!(line.starts_with("ps-server shard 2/3 listening on "), "{line:?}");
    let addr = line.trim().rsplit(' ').next().expect("address").to_string();
    // A worker that knows only shard 2 as a one-shard cluster sees what that shard says of itself.
    let probe = Worker::observer(WorkerConfig::new(ps_proto::ClusterSpec::new(vec![addr]), 0))
        .await
        .expect("connect");
    let status = probe.status().await.expect("status");
    assert_eq!((status[0].shard, status[0].num_shards), (2, 3));
    // split_threshold = 4 from the file: a 12-element tensor is split in three, shard 2 holds 8..12.
    let mut raw = ps_proto::pb::parameter_server_client::ParameterServerClient::connect(format!(
        "http://{}",
        probe.cluster().shards[0]
    ))
    .await
    .expect("raw client");
    let spec = ps_proto::pb::TensorSpec { name: "t".into(), shape: vec![12], ..Default::default() };
    let reply =
        raw.declare(ps_proto::pb::DeclareRequest { spec: Some(spec) }).await.expect("declare").into_inner();
    assert_eq!((reply.offset, reply.len), (8, 4));
    std::fs::remove_dir_all(&dir).expect("clean up");
}

/// A shard whose log goes to a file (not a terminal) writes it without ANSI
/// colour codes.
#[test]
fn logs_written_to_a_file_are_plain_text() {
    let dir = std::env::temp_dir().join(format!("ps-plain-log-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let log = dir.join("shard.log");
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_ps-server"));
    command
        .args(["--listen", "127.0.0.1:0", "--workers", "1", "--metrics-listen", "off"])
        .env("RUST_LOG", "info")
        .stderr(std::fs::File::create(&log).expect("log file"));
    let _shard =
        common::ShardProcess::start(command, ps_server::process::START_TIMEOUT).expect("shard starts");
    // The "serving" line follows the listening line; wait for it, bounded.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let text = loop {
        let text = std::fs::read_to_string(&log).expect("read log");
        if text.contains("serving") {
            break text;
        }
        assert!(std::time::Instant::now() < deadline, "no 'serving' log line within 30 s: {text:?}");
        std::thread::yield_now();
    };
    assert!(!text.contains('\u{1b}'), "ANSI codes in a log file: {text:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
