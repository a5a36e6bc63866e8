//! The data path (`Push`, `Pull`, `PushPull` read from and written to HTTP/2
//! frames directly) is plain gRPC on the wire, and `push_pull` is exactly a
//! push followed by a pull.

use std::collections::BTreeMap;

use ndarray::ArrayD;
use ps_proto::pb;
use ps_proto::pb::data_client::DataClient;
use ps_proto::wire::{self, WireDtype};
use ps_server::{LocalCluster, PolicyName, ShardConfig};
use ps_worker::{TensorDecl, Worker, WorkerConfig, WorkerError};

fn config(workers: u32, policy: PolicyName) -> ShardConfig {
    ShardConfig {
        num_workers: workers,
        policy,
        // Several chunks per part, and odd split points below.
        chunk_bytes: 6 << 10,
        split_threshold: 64,
        ..ShardConfig::default()
    }
}

fn values(n: usize, seed: u32) -> Vec<f32> {
    (0..n).map(|i| ((i as u32).wrapping_mul(2_654_435_761) ^ seed) as f32 / u32::MAX as f32 - 0.5).collect()
}

/// A generated tonic client pushes in chunks cut at arbitrary element
/// boundaries, pulls, and push-pulls; what it decodes with prost's codec is
/// what the worker library reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_grpc_clients_interoperate_with_the_data_path() {
    let cluster = LocalCluster::start(1, config(1, PolicyName::Async)).await.expect("cluster");
    let mut worker = Worker::connect(WorkerConfig::new(cluster.spec().clone(), 0)).await.expect("connect");
    let n = 10_000;
    worker.declare(&TensorDecl::new("w", &[n]).constant(0.0).sgd(1.0, 0.0)).await.expect("declare");
    let addr = format!("http://{}", cluster.spec().shards[0]);
    let mut client = DataClient::connect(addr).await.expect("tonic client");

    // A push in f16, in chunks of 3, 4097 and the rest elements.
    let grad = values(n, 7);
    let payload = wire::encode(&grad, WireDtype::F16);
    let cuts = [0, 3 * 2, 4100 * 2, payload.len()];
    let chunks: Vec<pb::PushChunk> = cuts
        .windows(2)
        .enumerate()
        .map(|(i, w)| pb::PushChunk {
            header: (i == 0).then(|| pb::PushHeader {
                worker: 0,
                clock: 0,
                tensor: "w".into(),
                offset: 0,
                len: n as u64,
                dtype: pb::WireDtype::F16 as i32,
            }),
            offset: w[0] as u64,
            data: payload.slice(w[0]..w[1]),
        })
        .collect();
    let reply = client.push(futures::stream::iter(chunks)).await.expect("push").into_inner();
    assert!(reply.applied);
    let mut expected = vec![0.0f32; n];
    wire::decode_into(&mut expected, &payload, WireDtype::F16);
    let expected: Vec<f32> = expected.iter().map(|g| -g).collect();

    // A pull decoded by prost: the data of all chunks is the tensor.
    let pull =
        pb::PullRequest { worker: None, clock: 0, tensor: "w".into(), dtype: pb::WireDtype::F32 as i32 };
    let mut stream = client.pull(pull).await.expect("pull").into_inner();
    let mut bytes = Vec::new();
    let mut chunks = 0;
    while let Some(chunk) = stream.message().await.expect("pull chunk") {
        assert_eq!(chunk.offset as usize, bytes.len());
        assert_eq!(chunk.header.is_some(), chunks == 0);
        bytes.extend_from_slice(&chunk.data);
        chunks += 1;
    }
    assert!(chunks >= 7, "{n} f32 in 6 KiB chunks came in {chunks} chunks");
    let mut pulled = vec![0.0f32; n];
    wire::decode_into(&mut pulled, &bytes, WireDtype::F32);
    assert_eq!(pulled, expected);
    let (observed, _) = worker.observe("w").await.expect("observe");
    assert_eq!(observed.as_slice().expect("contiguous"), &expected[..]);

    // PushPull: the reply is the pull at clock 1, which sees the push.
    let grad = values(n, 9);
    let push = pb::PushChunk {
        header: Some(pb::PushHeader {
            worker: 0,
            clock: 1,
            tensor: "w".into(),
            offset: 0,
            len: n as u64,
            dtype: pb::WireDtype::F32 as i32,
        }),
        offset: 0,
        data: wire::encode(&grad, WireDtype::F32),
    };
    let mut stream = client.push_pull(futures::stream::iter([push])).await.expect("push_pull").into_inner();
    let mut bytes = Vec::new();
    let mut versions = None;
    while let Some(chunk) = stream.message().await.expect("push_pull chunk") {
        if let Some(h) = chunk.header {
            versions = Some(h.versions);
        }
        bytes.extend_from_slice(&chunk.data);
    }
    assert_eq!(versions, Some(vec![1]), "the pull sees the push of clock 1");
    let mut pulled = vec![0.0f32; n];
    wire::decode_into(&mut pulled, &bytes, WireDtype::F32);
    let after: Vec<f32> = expected.iter().zip(&grad).map(|(v, g)| v - g).collect();
    assert_eq!(pulled, after);
}

/// How a test worker sends each step.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Steps {
    /// `push` then `pull`.
    Separate,
    /// `push_pull` of borrowed `ArrayD` gradients.
    Combined,
    /// `push_pull` of shared `ArcArray` gradients: "big" in standard
    /// layout (sent from its own memory in f32), "small" a strided view
    /// (copied, as a borrowed one would be).
    Shared,
}

async fn run_steps(
    policy: PolicyName,
    mode: Steps,
    steps: u64,
    dtype: WireDtype,
) -> Vec<Vec<(BTreeMap<String, Vec<u32>>, BTreeMap<String, Vec<i64>>)>> {
    let cluster = LocalCluster::start(2, config(2, policy)).await.expect("cluster");
    let mut tasks = Vec::new();
    for id in 0..2u32 {
        let spec = cluster.spec().clone();
        tasks.push(tokio::spawn(async move {
            let cfg = WorkerConfig { wire_dtype: dtype, ..WorkerConfig::new(spec, id) };
            let mut w = Worker::connect(cfg).await.expect("connect");
            // "big" is split over both shards; "small" lives whole on one.
            w.declare(&TensorDecl::new("big", &[40, 301]).uniform(-1.0, 1.0, 3).adam(0.01))
                .await
                .expect("big");
            w.declare(&TensorDecl::new("small", &[5]).constant(1.0).sgd(0.1, 0.9)).await.expect("small");
            let mut seen = Vec::new();
            for step in 0..steps {
                let grads: BTreeMap<String, ArrayD<f32>> = [("big", 40 * 301), ("small", 5)]
                    .into_iter()
                    .map(|(name, n)| {
                        let g = values(n, (step as u32) << 8 | id);
                        (name.to_string(), ArrayD::from_shape_vec(vec![n], g).expect("shape"))
                    })
                    .map(|(name, g)| {
                        let shape = if name == "big" { vec![40, 301] } else { vec![5] };
                        (name, g.into_shape_with_order(shape).expect("reshape"))
                    })
                    .collect();
                let pulled = match mode {
                    Steps::Combined => w.push_pull(&grads).await.expect("push_pull"),
                    Steps::Separate => {
                        w.push(&grads).await.expect("push");
                        w.pull().await.expect("pull")
                    }
                    Steps::Shared => {
                        let shared: BTreeMap<String, ndarray::ArcArray<f32, ndarray::IxDyn>> = grads
                            .into_iter()
                            .map(|(name, g)| {
                                if name == "big" {
                                    return (name, g.into_shared());
                                }
                                // Every other element of a twice-as-long array.
                                let wide = ndarray::Array1::from_shape_fn(2 * g.len(), |i| {
                                    if i % 2 == 0 { g[[i / 2]] } else { f32::NAN }
                                });
                                let strided = wide.into_shared().slice_move(ndarray::s![..;2]).into_dyn();
                                assert!(!strided.is_standard_layout());
                                (name, strided)
                            })
                            .collect();
                        w.push_pull(&shared).await.expect("push_pull of shared gradients")
                    }
                };
                assert_eq!(w.clock(), step + 1);
                let bits = pulled
                    .values
                    .iter()
                    .map(|(k, v)| (k.clone(), v.iter().map(|x| x.to_bits()).collect()))
                    .collect();
                seen.push((bits, pulled.versions));
            }
            seen
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.push(t.await.expect("worker task"));
    }
    all
}

/// In sync, where every read is determined, `push_pull` returns bit for
/// bit what `push` then `pull` return, with the same version vectors, over
/// split and whole tensors, with Adam and momentum, in f32 and f16, from
/// borrowed and from shared gradients.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_pull_is_push_then_pull() {
    for dtype in [WireDtype::F32, WireDtype::F16] {
        let combined = run_steps(PolicyName::Sync, Steps::Combined, 6, dtype).await;
        let separate = run_steps(PolicyName::Sync, Steps::Separate, 6, dtype).await;
        let shared = run_steps(PolicyName::Sync, Steps::Shared, 6, dtype).await;
        assert_eq!(combined, separate, "{dtype:?}");
        assert_eq!(shared, separate, "{dtype:?}, shared gradients");
        for (step, (_, versions)) in combined[0].iter().enumerate() {
            assert_eq!(versions["big"], vec![step as i64; 2], "sync reads see both workers' step {step}");
        }
    }
}

/// Under ssp and async the combined call keeps read-your-writes: every
/// read includes the worker's own push of that step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_pull_reads_its_own_push_in_every_policy() {
    for policy in [PolicyName::Ssp, PolicyName::Async] {
        let runs = run_steps(policy, Steps::Combined, 8, WireDtype::F32).await;
        for (id, run) in runs.iter().enumerate() {
            for (step, (_, versions)) in run.iter().enumerate() {
                for v in versions.values() {
                    assert!(v[id] >= step as i64, "{policy:?}: worker {id} step {step} read {v:?}");
                }
            }
        }
    }
}

/// A push the shard refuses pulls nothing, changes nothing and leaves the
/// worker's clock where it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_push_pull_changes_nothing() {
    let cluster = LocalCluster::start(1, config(1, PolicyName::Sync)).await.expect("cluster");
    let mut worker = Worker::connect(WorkerConfig::new(cluster.spec().clone(), 0)).await.expect("connect");
    worker.declare(&TensorDecl::new("w", &[4]).constant(2.0)).await.expect("declare");
    let bad = BTreeMap::from([(
        "w".to_string(),
        ArrayD::from_shape_vec(vec![4], vec![0.0, f32::NAN, 0.0, 0.0]).unwrap(),
    )]);
    let err = worker.push_pull(&bad).await.expect_err("a NaN gradient is refused");
    assert!(matches!(err, WorkerError::Rpc { .. }), "{err}");
    assert_eq!(err.code(), Some(tonic::Code::InvalidArgument), "{err}");
    assert!(err.to_string().contains("\"w\""), "{err}");
    assert_eq!(worker.clock(), 0);
    let (v, versions) = worker.observe("w").await.expect("observe");
    assert_eq!(v.as_slice().expect("contiguous"), &[2.0; 4]);
    assert_eq!(versions, vec![-1]);
}

/// A push the shard refuses at its first chunk returns that refusal at
/// once, though the worker had hundreds of chunks left to encode and send.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_refused_at_its_header_returns_without_sending_the_rest() {
    let cluster = LocalCluster::start(1, config(1, PolicyName::Sync)).await.expect("cluster");
    // Worker 5 of a 1-worker job: the shard refuses its pushes by their header.
    let cfg = WorkerConfig { chunk_bytes: 4 << 10, ..WorkerConfig::new(cluster.spec().clone(), 5) };
    let mut observer = Worker::observer(cfg).await.expect("observer");
    let n = 1 << 18;
    observer.declare(&TensorDecl::new("w", &[n]).constant(0.0)).await.expect("declare");
    let grads = BTreeMap::from([("w".to_string(), ArrayD::from_elem(vec![n], 0.5f32))]);
    let refused = tokio::time::timeout(std::time::Duration::from_secs(20), observer.push(&grads))
        .await
        .expect("the refusal comes back without the remaining 255 chunks being sent")
        .expect_err("an unknown worker's push is refused");
    assert_eq!(refused.code(), Some(tonic::Code::FailedPrecondition), "{refused}");
    let (v, _) = observer.observe("w").await.expect("observe");
    assert!(v.iter().all(|x| *x == 0.0));
}
