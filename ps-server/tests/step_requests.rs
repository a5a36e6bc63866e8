//! `Step` and `PullMany`, several tensor parts in one request: pushes are
//! applied one by one in request order and a refusal names its tensor;
//! replies stream each part when its own policy releases it; the worker
//! library sends one request per shard whatever the number of tensors.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use ndarray::ArrayD;
use ps_proto::pb;
use ps_proto::pb::data_client::DataClient;
use ps_proto::wire::{self, WireDtype};
use ps_server::{LocalCluster, PolicyName, ShardConfig};
use ps_worker::{TensorDecl, Worker, WorkerConfig};

fn config(workers: u32, policy: PolicyName) -> ShardConfig {
    ShardConfig { num_workers: workers, policy, staleness: 0, metrics: true, ..ShardConfig::default() }
}

/// The chunks of one push of `values` for `tensor` at `clock` as `worker`,
/// in two chunks so that a part's data is not always one message.
fn push_chunks(worker: u32, clock: u64, tensor: &str, values: &[f32]) -> Vec<pb::PushChunk> {
    let payload = wire::encode(values, WireDtype::F32);
    let cut = (values.len() / 2) * 4;
    vec![
        pb::PushChunk {
            header: Some(pb::PushHeader {
                worker,
                clock,
                tensor: tensor.into(),
                offset: 0,
                len: values.len() as u64,
                dtype: pb::WireDtype::F32 as i32,
            }),
            offset: 0,
            data: payload.slice(..cut),
        },
        pb::PushChunk { header: None, offset: cut as u64, data: payload.slice(cut..) },
    ]
}

/// The parts of a `Step` or `PullMany` reply, in arrival order: tensor,
/// version vector, values.
async fn read_parts(
    mut stream: tonic::Streaming<pb::PullChunk>,
) -> Result<Vec<(String, Vec<i64>, Vec<f32>)>, tonic::Status> {
    let mut parts: Vec<(String, Vec<i64>, Vec<f32>)> = Vec::new();
    while let Some(chunk) = stream.message().await? {
        if let Some(h) = chunk.header {
            parts.push((h.tensor, h.versions, Vec::new()));
        }
        let part = parts.last_mut().expect("the first chunk has a header");
        let mut values = vec![0f32; chunk.data.len() / 4];
        wire::decode_into(&mut values, &chunk.data, WireDtype::F32);
        part.2.extend(values);
    }
    Ok(parts)
}

async fn versions(
    client: &mut DataClient<tonic::transport::Channel>,
    tensors: &[&str],
) -> BTreeMap<String, Vec<i64>> {
    let req = pb::PullManyRequest {
        worker: None,
        clock: 0,
        tensors: tensors.iter().map(|t| t.to_string()).collect(),
        dtype: pb::WireDtype::F32 as i32,
    };
    let parts =
        read_parts(client.pull_many(req).await.expect("pull_many").into_inner()).await.expect("parts");
    parts.into_iter().map(|(t, v, _)| (t, v)).collect()
}

/// A step of three tensors whose second push holds a NaN: the refusal
/// names that tensor, the first push stays applied, the third was never
/// applied, and the version vectors say so. The corrected request then
/// applies the other two and finds the first a duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_applies_its_pushes_in_order_and_a_refusal_names_its_tensor() {
    let cluster = LocalCluster::start(1, config(1, PolicyName::Async)).await.expect("cluster");
    let mut worker = Worker::connect(WorkerConfig::new(cluster.spec().clone(), 0)).await.expect("connect");
    let names = ["a", "b", "c"];
    let decls: Vec<TensorDecl> =
        names.iter().map(|n| TensorDecl::new(*n, &[6]).constant(1.0).sgd(1.0, 0.0)).collect();
    worker.declare_all(&decls).await.expect("declare");
    let mut client =
        DataClient::connect(format!("http://{}", cluster.spec().shards[0])).await.expect("client");

    let mut bad = vec![0.5f32; 6];
    bad[4] = f32::NAN;
    let request: Vec<pb::PushChunk> = [("a", vec![0.5f32; 6]), ("b", bad), ("c", vec![0.5f32; 6])]
        .iter()
        .flat_map(|(t, v)| push_chunks(0, 0, t, v))
        .collect();
    // The first push is applied before the reply starts; the refusal of a
    // later one ends the reply's stream.
    let reply = client.step(futures::stream::iter(request)).await.expect("the first push is applied");
    let refused = read_parts(reply.into_inner()).await.expect_err("a NaN is refused");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(refused.message().contains("\"b\"") || refused.message().contains(" b"), "{}", refused.message());
    assert!(refused.message().contains("NaN"), "{}", refused.message());
    assert_eq!(ps_proto::frame::refused_tensor(&refused).as_deref(), Some("b"), "in the trailers' metadata");
    let seen = versions(&mut client, &names).await;
    assert_eq!(seen["a"], vec![0], "the push before the refused one stays applied");
    assert_eq!(seen["b"], vec![-1], "the refused push changed nothing");
    assert_eq!(seen["c"], vec![-1], "the push after the refused one was never applied");

    let request: Vec<pb::PushChunk> = names.iter().flat_map(|t| push_chunks(0, 0, t, &[0.5f32; 6])).collect();
    let parts = read_parts(client.step(futures::stream::iter(request)).await.expect("step").into_inner())
        .await
        .expect("parts");
    let mut got: Vec<&str> = parts.iter().map(|(t, _, _)| t.as_str()).collect();
    got.sort_unstable();
    assert_eq!(got, names, "one part per tensor");
    for (tensor, versions, values) in &parts {
        assert_eq!(versions, &vec![0], "{tensor}");
        // Applied once each: 1 - 0.5, the duplicate of `a` ignored.
        assert_eq!(values, &vec![0.5f32; 6], "{tensor}");
    }
}

/// Under per-tensor policies, a step's reply sends the async tensor at
/// once while the sync tensor of the same request waits for the other
/// worker's push.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_part_held_back_by_its_policy_does_not_hold_back_another() {
    let cluster = LocalCluster::start(1, config(2, PolicyName::Async)).await.expect("cluster");
    let mut w1 = Worker::connect(WorkerConfig::new(cluster.spec().clone(), 1)).await.expect("connect");
    let decls = [TensorDecl::new("held", &[4]).sync(), TensorDecl::new("free", &[4]).async_()];
    w1.declare_all(&decls).await.expect("declare");
    let mut client =
        DataClient::connect(format!("http://{}", cluster.spec().shards[0])).await.expect("client");
    let request: Vec<pb::PushChunk> =
        ["held", "free"].iter().flat_map(|t| push_chunks(0, 0, t, &[0.25f32; 4])).collect();
    let mut stream = client.step(futures::stream::iter(request)).await.expect("step").into_inner();
    let first = stream.message().await.expect("a part").expect("not the end");
    assert_eq!(first.header.as_ref().map(|h| h.tensor.as_str()), Some("free"));
    // The sync part waits for worker 1's push of clock 0; bounded so that a
    // regression fails instead of hanging.
    let early = tokio::time::timeout(Duration::from_millis(300), stream.message()).await;
    assert!(early.is_err(), "the sync part came before worker 1 pushed: {early:?}");
    let grads: BTreeMap<String, ArrayD<f32>> =
        ["held", "free"].iter().map(|t| (t.to_string(), ArrayD::from_elem(vec![4], 0.25f32))).collect();
    w1.push(&grads).await.expect("worker 1 pushes clock 0");
    let second = tokio::time::timeout(Duration::from_secs(30), stream.message())
        .await
        .expect("the sync part came once its round closed")
        .expect("a part")
        .expect("not the end");
    assert_eq!(second.header.as_ref().map(|h| h.tensor.as_str()), Some("held"));
    assert_eq!(second.header.map(|h| h.versions), Some(vec![0, 0]));
}

/// Requests that cannot be a step are refused before anything is applied
/// to the tensor they name, each with a message that says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_several_part_requests_are_refused_with_the_reason() {
    let cluster = LocalCluster::start(1, config(2, PolicyName::Async)).await.expect("cluster");
    let mut w = Worker::connect(WorkerConfig::new(cluster.spec().clone(), 0)).await.expect("connect");
    w.declare_all(&[TensorDecl::new("a", &[2]), TensorDecl::new("b", &[2])]).await.expect("declare");
    let mut client =
        DataClient::connect(format!("http://{}", cluster.spec().shards[0])).await.expect("client");
    let step = |chunks: Vec<pb::PushChunk>| {
        let mut client = client.clone();
        async move {
            let reply = client.step(futures::stream::iter(chunks)).await?;
            read_parts(reply.into_inner()).await.map(drop)
        }
    };
    let twice = [push_chunks(0, 0, "a", &[1.0, 1.0]), push_chunks(0, 0, "a", &[1.0, 1.0])].concat();
    let err = step(twice).await.expect_err("a tensor twice");
    assert!(err.message().contains("pushed twice"), "{}", err.message());
    let two_workers = [push_chunks(0, 1, "a", &[1.0, 1.0]), push_chunks(1, 1, "b", &[1.0, 1.0])].concat();
    let err = step(two_workers).await.expect_err("two workers in one step");
    assert!(err.message().contains("one worker's step"), "{}", err.message());
    let err = step(Vec::new()).await.expect_err("no pushes");
    assert!(err.message().contains("no pushes"), "{}", err.message());
    let headless = vec![pb::PushChunk { header: None, offset: 0, data: Bytes::from_static(&[0; 8]) }];
    let err = step(headless).await.expect_err("no header");
    assert!(err.message().contains("no header"), "{}", err.message());
    let empty = pb::PullManyRequest { worker: None, clock: 0, tensors: vec![], dtype: 0 };
    let err = client.pull_many(empty).await.expect_err("no tensors");
    assert!(err.message().contains("names no tensor"), "{}", err.message());
    let dup = pb::PullManyRequest { worker: None, clock: 0, tensors: vec!["a".into(), "a".into()], dtype: 0 };
    let err = client.pull_many(dup).await.expect_err("twice");
    assert!(err.message().contains("twice"), "{}", err.message());
}

/// Through the worker library, a step refused for one tensor's gradient
/// is an error naming that tensor, whichever part of the request it was,
/// and a pull of an unknown tensor in a `PullMany` names it too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_error_of_a_refused_part_names_its_tensor() {
    let cluster = LocalCluster::start(1, config(1, PolicyName::Async)).await.expect("cluster");
    let mut worker = Worker::connect(WorkerConfig::new(cluster.spec().clone(), 0)).await.expect("connect");
    let decls: Vec<TensorDecl> =
        ["a", "b", "c"].iter().map(|n| TensorDecl::new(*n, &[4]).constant(1.0).sgd(1.0, 0.0)).collect();
    worker.declare_all(&decls).await.expect("declare");
    worker.pull().await.expect("pull");
    for bad_one in ["a", "c"] {
        let grads: BTreeMap<String, ArrayD<f32>> = ["a", "b", "c"]
            .iter()
            .map(|n| {
                let v = if *n == bad_one { f32::NAN } else { 0.0 };
                (n.to_string(), ArrayD::from_elem(vec![4], v))
            })
            .collect();
        match worker.step(&grads).await {
            Err(ps_worker::WorkerError::Rpc { tensor, status, .. }) => {
                assert_eq!(status.code(), tonic::Code::InvalidArgument);
                assert_eq!(tensor.as_deref(), Some(bad_one), "{}", status.message());
            }
            other => panic!("a NaN in {bad_one} must be refused naming it, got {other:?}"),
        }
    }
}

/// `step_into` reads each tensor into the array the previous step
/// returned (one part or split over both shards), and gives the values
/// and versions `step` gives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn step_into_reuses_the_arrays_and_gives_what_step_gives() {
    let cluster = LocalCluster::start(2, ShardConfig { split_threshold: 16, ..config(2, PolicyName::Async) })
        .await
        .expect("cluster");
    let spec = cluster.spec().clone();
    let connect = |id| Worker::connect(WorkerConfig::new(spec.clone(), id));
    let (mut a, mut b) = (connect(0).await.expect("worker 0"), connect(1).await.expect("worker 1"));
    let decls = [
        TensorDecl::new("small", &[3]).constant(1.0).sgd(0.5, 0.0),
        TensorDecl::new("split", &[8, 4]).sgd(0.5, 0.0),
    ];
    a.declare_all(&decls).await.expect("declare");
    b.declare_all(&decls).await.expect("declare");
    let grads: BTreeMap<String, ArrayD<f32>> = [
        ("small".to_string(), ArrayD::from_elem(vec![3], 1.0f32)),
        ("split".to_string(), ArrayD::from_shape_fn(vec![8, 4], |i| (i[0] * 4 + i[1]) as f32)),
    ]
    .into();
    let mut params = a.pull().await.expect("pull");
    let ptrs: Vec<*const f32> = params.values.values().map(|v| v.as_ptr()).collect();
    for clock in 1..=3i64 {
        a.step_into(&grads, &mut params).await.expect("step_into");
        let expected = b.step(&grads).await.expect("step");
        let now: Vec<*const f32> = params.values.values().map(|v| v.as_ptr()).collect();
        assert_eq!(now, ptrs, "clock {clock}: the same arrays are refilled");
        assert_eq!(
            params.versions["small"],
            vec![clock - 1, clock - 2],
            "clock {clock}: its own pushes and the other's before"
        );
        // Each push applies lr / W = 0.25 of its gradient.
        assert_eq!(params.values["small"], ArrayD::from_elem(vec![3], 1.0 - 0.25 * (2 * clock - 1) as f32));
        // Worker 1 pushed after worker 0 at every clock: it reads both.
        assert_eq!(expected.versions["split"], vec![clock - 1, clock - 1]);
        assert_eq!(expected.values["split"], grads["split"].mapv(|g| -0.25 * g * (2 * clock) as f32));
    }
    assert_eq!(a.clock(), 3);
    let mut fresh = ps_worker::Pulled::default();
    b.step_into(&grads, &mut fresh).await.expect("into an empty Pulled");
    assert_eq!(fresh.values.len(), 2, "an empty Pulled is filled like step's result");
}

/// 200 tensors over 2 shards: declaring, pulling and stepping them is one
/// request per shard each, and the parts per request are in the metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_tensors_take_one_request_per_shard() {
    let cluster = LocalCluster::start(2, config(1, PolicyName::Sync)).await.expect("cluster");
    let mut w = Worker::connect(WorkerConfig::new(cluster.spec().clone(), 0)).await.expect("connect");
    let decls: Vec<TensorDecl> =
        (0..200).map(|i| TensorDecl::new(format!("t{i:03}"), &[3, 5]).constant(i as f32)).collect();
    w.declare_all(&decls).await.expect("declare");
    assert_eq!(common::ok_requests(&cluster, "declare_many"), 2.0);
    assert_eq!(common::ok_requests(&cluster, "declare"), 0.0);
    let pulled = w.pull().await.expect("pull");
    assert_eq!(pulled.values.len(), 200);
    assert_eq!(pulled.values["t007"], ArrayD::from_elem(vec![3, 5], 7.0f32));
    assert_eq!(common::ok_requests(&cluster, "pull_many"), 2.0);
    let grads: BTreeMap<String, ArrayD<f32>> =
        (0..200).map(|i| (format!("t{i:03}"), ArrayD::from_elem(vec![3, 5], 1.0f32))).collect();
    let stepped = w.step(&grads).await.expect("step");
    assert_eq!(stepped.versions["t199"], vec![0]);
    assert_eq!(common::ok_requests(&cluster, "step"), 2.0);
    assert_eq!(common::ok_requests(&cluster, "push") + common::ok_requests(&cluster, "pull"), 0.0);
    let text = ps_server::metrics::encode(cluster.registries());
    let parts: f64 = text
        .lines()
        .filter(|l| l.starts_with("ps_server_step_parts_sum"))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum();
    assert_eq!(parts, 200.0, "every tensor is one part of one of the two steps");
}
