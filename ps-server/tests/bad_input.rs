//! Every bad request gets the status of DESIGN §5, a message that names the
//! tensor, the worker and expected vs got, and leaves the parameters
//! bit-identical.

use std::collections::BTreeMap;

use ndarray::ArrayD;
use ps_proto::pb;
use ps_proto::wire::{self, WireDtype};
use ps_server::{LocalCluster, PolicyName, ShardConfig};
use ps_worker::{TensorDecl, Worker, WorkerConfig, WorkerError};
use tonic::Code;

struct Fixture {
    _cluster: LocalCluster,
    worker: Worker,
}

impl Fixture {
    async fn new(policy: PolicyName) -> Self {
        let config = ShardConfig {
            num_workers: 2,
            policy,
            max_message_bytes: 1 << 20,
            chunk_bytes: 256 << 10,
            ..ShardConfig::default()
        };
        let cluster = LocalCluster::start(1, config).await.expect("start cluster");
        let mut worker =
            Worker::connect(WorkerConfig::new(cluster.spec().clone(), 0)).await.expect("connect");
        worker.declare(&TensorDecl::new("w", &[2, 3]).uniform(-1.0, 1.0, 5)).await.expect("declare");
        Self { _cluster: cluster, worker }
    }

    async fn bits(&self) -> (Vec<u32>, Vec<i64>) {
        let (v, versions) = self.worker.observe("w").await.expect("observe");
        (v.iter().map(|x| x.to_bits()).collect(), versions)
    }

    fn chunk(&self, header: Option<pb::PushHeader>, offset: u64, values: &[f32]) -> pb::PushChunk {
        pb::PushChunk { header, offset, data: wire::encode(values, WireDtype::F32) }
    }

    /// Sends raw chunks and checks the refusal and that nothing changed.
    async fn refused(&self, chunks: Vec<pb::PushChunk>, code: Code, words: &[&str]) {
        let before = self.bits().await;
        let status = self.worker.raw_push(0, chunks).await.expect_err("the push must be refused");
        assert_eq!(status.code(), code, "{status:?}");
        for w in words {
            assert!(status.message().contains(w), "message {:?} lacks {w:?}", status.message());
        }
        assert_eq!(self.bits().await, before, "a refused push changed the tensor");
    }
}

fn header(worker: u32, clock: u64, offset: u64, len: u64) -> Option<pb::PushHeader> {
    Some(pb::PushHeader { worker, clock, tensor: "w".into(), offset, len, dtype: pb::WireDtype::F32 as i32 })
}

fn code(e: WorkerError) -> Code {
    e.code().unwrap_or_else(|| panic!("not an RPC error: {e}"))
}

#[tokio::test]
async fn wrong_range_and_byte_length_are_invalid_argument() {
    let f = Fixture::new(PolicyName::Async).await;
    f.refused(
        vec![f.chunk(header(0, 0, 0, 5), 0, &[0.0; 5])],
        Code::InvalidArgument,
        &["\"w\"", "0..6", "0..5"],
    )
    .await;
    // Header says 6 elements, data holds 5: the sequence ends short.
    f.refused(
        vec![f.chunk(header(0, 0, 0, 6), 0, &[0.0; 5])],
        Code::InvalidArgument,
        &["\"w\"", "worker 0", "20 of 24"],
    )
    .await;
    // A partial element.
    let mut c = f.chunk(header(0, 0, 0, 6), 0, &[0.0; 6]);
    c.data = c.data.slice(0..23);
    f.refused(vec![c], Code::InvalidArgument, &["not a multiple"]).await;
    // The client library checks shapes before sending.
    let bad = BTreeMap::from([("w".to_string(), ArrayD::<f32>::zeros(vec![3, 2]))]);
    let err = f.worker.push_at(0, &bad).await.expect_err("shape");
    assert!(matches!(err, WorkerError::ShapeMismatch { .. }), "{err}");
    assert!(err.to_string().contains("expected shape [2, 3], got [3, 2]"), "{err}");
}

#[tokio::test]
async fn malformed_chunk_sequences_are_invalid_argument() {
    let f = Fixture::new(PolicyName::Async).await;
    let gap = vec![f.chunk(header(0, 0, 0, 6), 0, &[0.0; 2]), f.chunk(None, 12, &[0.0; 4])];
    f.refused(gap, Code::InvalidArgument, &["gap", "expected a chunk at byte offset 8, got offset 12"]).await;
    let overlap = vec![f.chunk(header(0, 0, 0, 6), 0, &[0.0; 3]), f.chunk(None, 8, &[0.0; 3])];
    f.refused(overlap, Code::InvalidArgument, &["overlapping", "offset 12, got offset 8"]).await;
    let too_long = vec![f.chunk(header(0, 0, 0, 6), 0, &[0.0; 4]), f.chunk(None, 16, &[0.0; 4])];
    f.refused(too_long, Code::InvalidArgument, &["runs past", "24 bytes"]).await;
    let second_header =
        vec![f.chunk(header(0, 0, 0, 6), 0, &[0.0; 3]), f.chunk(header(0, 0, 0, 6), 12, &[0.0; 3])];
    f.refused(second_header, Code::InvalidArgument, &["carries a header"]).await;
    f.refused(vec![f.chunk(None, 0, &[0.0; 6])], Code::InvalidArgument, &["no header"]).await;
    f.refused(vec![], Code::InvalidArgument, &["no chunks"]).await;
}

#[tokio::test]
async fn unknown_tensor_is_not_found() {
    let f = Fixture::new(PolicyName::Async).await;
    let mut c = f.chunk(header(0, 0, 0, 6), 0, &[0.0; 6]);
    if let Some(h) = c.header.as_mut() {
        h.tensor = "nope".into();
    }
    f.refused(vec![c], Code::NotFound, &["\"nope\""]).await;
    let err = f.worker.observe("nope").await.expect_err("undeclared on this worker");
    assert!(matches!(err, WorkerError::UnknownTensor { .. }));
}

#[tokio::test]
async fn redeclaring_with_another_shape_is_already_exists() {
    let mut f = Fixture::new(PolicyName::Async).await;
    let before = f.bits().await;
    let err = f.worker.declare(&TensorDecl::new("w", &[3, 2])).await.expect_err("conflict");
    let message = err.to_string();
    assert!(
        message.contains("\"w\"") && message.contains("[2, 3]") && message.contains("[3, 2]"),
        "{message}"
    );
    assert_eq!(code(err), Code::AlreadyExists);
    // The same declaration again is fine and keeps the values; another
    // initializer is another declaration.
    f.worker.declare(&TensorDecl::new("w", &[2, 3]).uniform(-1.0, 1.0, 5)).await.expect("same declaration");
    assert_eq!(f.bits().await, before);
    let err = f.worker.declare(&TensorDecl::new("w", &[2, 3]).constant(9.0)).await.expect_err("other init");
    assert_eq!(code(err), Code::AlreadyExists);
    assert_eq!(f.bits().await, before);
}

#[tokio::test]
async fn non_finite_gradients_are_refused_unless_allowed() {
    let mut f = Fixture::new(PolicyName::Async).await;
    let nan = [0.0, 0.0, 0.0, 0.0, f32::NAN, 0.0];
    f.refused(
        vec![f.chunk(header(0, 0, 0, 6), 0, &nan)],
        Code::InvalidArgument,
        &["\"w\"", "worker 0", "element 4", "NaN"],
    )
    .await;
    let inf = [f32::INFINITY, 0.0, 0.0, 0.0, 0.0, 0.0];
    f.refused(vec![f.chunk(header(0, 0, 0, 6), 0, &inf)], Code::InvalidArgument, &["element 0", "inf"]).await;
    // A tensor that allows them takes them.
    f.worker.declare(&TensorDecl::new("loose", &[2]).allow_non_finite()).await.expect("declare");
    let g = ndarray::arr1(&[f32::NAN, 1.0]).into_dyn();
    f.worker.push_tensor("loose", 0, &g).await.expect("allowed");
    let (v, _) = f.worker.observe("loose").await.expect("observe");
    assert!(v[[0]].is_nan());
}

#[tokio::test]
async fn unknown_or_departed_workers_are_failed_precondition() {
    let f = Fixture::new(PolicyName::Async).await;
    f.refused(
        vec![f.chunk(header(7, 0, 0, 6), 0, &[0.0; 6])],
        Code::FailedPrecondition,
        &["unknown worker 7", "ids are 0 to 1", "an id below 2"],
    )
    .await;
    let mut leaver =
        Worker::connect(WorkerConfig::new(f.worker.cluster().clone(), 1)).await.expect("connect");
    leaver.declare(&TensorDecl::new("w", &[2, 3]).uniform(-1.0, 1.0, 5)).await.expect("declare");
    leaver.leave().await.expect("leave");
    f.refused(
        vec![f.chunk(header(1, 0, 0, 6), 0, &[0.0; 6])],
        Code::FailedPrecondition,
        &["worker 1 has left"],
    )
    .await;
}

#[tokio::test]
async fn clocks_the_policy_cannot_accept_are_failed_precondition() {
    let f = Fixture::new(PolicyName::Sync).await;
    // A gap: clock 3 before 0.
    f.refused(
        vec![f.chunk(header(0, 3, 0, 6), 0, &[0.0; 6])],
        Code::FailedPrecondition,
        &["worker 0", "clock 3", "next clock is 0"],
    )
    .await;
    // Sync: clock 1 while round 0 still waits for worker 1.
    f.worker.raw_push(0, vec![f.chunk(header(0, 0, 0, 6), 0, &[1.0; 6])]).await.expect("clock 0");
    f.refused(
        vec![f.chunk(header(0, 1, 0, 6), 0, &[0.0; 6])],
        Code::FailedPrecondition,
        &["round in progress is clock 0"],
    )
    .await;
    // Pulling ahead of one's own clock.
    let err = f.worker.pull_tensor("w", Some(5), Some(0)).await.expect_err("pull ahead");
    assert_eq!(code(err), Code::FailedPrecondition);
}

#[tokio::test]
async fn oversized_messages_are_resource_exhausted() {
    let f = Fixture::new(PolicyName::Async).await;
    // The shard accepts messages up to 1 MiB; this 16 MiB part goes in
    // chunks of 2 MiB (an eighth of it, within the worker's largest chunk).
    let mut worker = Worker::connect(WorkerConfig {
        chunk_bytes: 2 << 20,
        max_message_bytes: 64 << 20,
        ..WorkerConfig::new(f.worker.cluster().clone(), 0)
    })
    .await
    .expect("connect");
    worker.declare(&TensorDecl::new("big", &[4 << 20])).await.expect("declare");
    let (before, _) = worker.observe("big").await.expect("observe");
    let g = ndarray::Array1::<f32>::ones(4 << 20).into_dyn();
    let err = worker.push_tensor("big", 0, &g).await.expect_err("too large");
    assert!(err.to_string().contains("limit of 1048576 bytes"), "{err}");
    assert_eq!(code(err), Code::ResourceExhausted);
    assert_eq!(worker.observe("big").await.expect("observe").0, before);
    // With chunks under the limit the same push goes through.
    let mut small = Worker::connect(WorkerConfig {
        chunk_bytes: 512 << 10,
        ..WorkerConfig::new(f.worker.cluster().clone(), 0)
    })
    .await
    .expect("connect");
    small.declare(&TensorDecl::new("big", &[4 << 20])).await.expect("declare");
    small.push_tensor("big", 0, &g).await.expect("push in small chunks");
    assert_ne!(small.observe("big").await.expect("observe").0, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_shard_list_or_worker_id_is_refused_saying_what_to_change() {
    let config = ShardConfig { num_workers: 2, ..ShardConfig::default() };
    let cluster = LocalCluster::start(2, config).await.expect("cluster");
    let right = cluster.spec().clone();
    let no_retry = |spec: ps_proto::ClusterSpec, id: u32| WorkerConfig {
        retry: ps_worker::RetryPolicy::never(),
        ..WorkerConfig::new(spec, id)
    };
    let swapped = ps_proto::ClusterSpec::new(right.shards.iter().rev().cloned().collect());
    let e = Worker::connect(no_retry(swapped, 0)).await.expect_err("shards listed out of order");
    let text = e.to_string();
    assert!(
        text.contains(&format!("at position 0 ({})", right.shards[1]))
            && text.contains("says it is shard 1 of 2")
            && text.contains("in shard-id order"),
        "{text}"
    );
    let short = ps_proto::ClusterSpec::new(vec![right.shards[0].clone()]);
    let text = Worker::connect(no_retry(short, 0)).await.expect_err("one shard of two").to_string();
    assert!(text.contains("lists 1 shard, but") && text.contains("of 2"), "{text}");
    let text = Worker::connect(no_retry(right, 5)).await.expect_err("worker 5 of 2").to_string();
    assert!(text.contains("FailedPrecondition: unknown worker 5: this job's worker ids are 0 to 1: give each worker an id below 2"), "{text}");
    cluster.shutdown().await.expect("shutdown");
}
