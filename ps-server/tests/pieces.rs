//! Sync pushes in pieces, end to end: workers learn the piece size when
//! they declare, push large parts one piece per request, and every worker
//! reads exactly what whole pushes would have given.

mod common;

use std::collections::BTreeMap;

use bytes::Bytes;
use ndarray::ArrayD;
use ps_proto::pb;
use ps_server::{LocalCluster, PolicyName, ShardConfig};
use ps_worker::{TensorDecl, Worker, WorkerConfig};

const WORKERS: u32 = 2;
const STEPS: u64 = 6;
/// `w` is split over both shards (6 and 5 elements); with pieces of 2
/// elements, each part's push goes in 3 requests.
const LEN: usize = 11;

fn config(sync_piece_bytes: u64) -> ShardConfig {
    ShardConfig {
        num_workers: WORKERS,
        policy: PolicyName::Sync,
        split_threshold: 4,
        sync_piece_bytes: Some(sync_piece_bytes),
        ..ShardConfig::default()
    }
}

fn gradient(worker: u32, step: u64) -> BTreeMap<String, ArrayD<f32>> {
    let g = (0..LEN).map(|i| ((i as u64 * 7 + u64::from(worker) * 13 + step * 5) as f32 * 0.37).sin());
    BTreeMap::from([("w".to_string(), ndarray::Array1::from_iter(g).into_dyn())])
}

fn bits(pulled: &ps_worker::Pulled) -> Vec<u32> {
    pulled.values["w"].iter().map(|v| v.to_bits()).collect()
}

/// Runs `STEPS` steps of every worker (push-pull steps, then push and pull
/// separately) and returns, per worker, the bits it read at each clock.
async fn run(cluster: &LocalCluster) -> Vec<Vec<Vec<u32>>> {
    let runs = (0..WORKERS).map(|id| {
        let spec = cluster.spec().clone();
        async move {
            let mut w = Worker::connect(WorkerConfig::new(spec, id)).await.expect("connect");
            w.declare(&TensorDecl::new("w", &[LEN]).normal(0.0, 0.5, 3)).await.expect("declare");
            let mut reads = vec![bits(&w.pull().await.expect("pull"))];
            for step in 0..STEPS {
                let pulled = if step % 2 == 0 {
                    w.push_pull(&gradient(id, step)).await.expect("push_pull")
                } else {
                    w.push(&gradient(id, step)).await.expect("push");
                    w.pull().await.expect("pull")
                };
                assert_eq!(pulled.versions["w"], vec![step as i64; WORKERS as usize]);
                reads.push(bits(&pulled));
            }
            reads
        }
    });
    futures::future::join_all(runs).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_in_pieces_read_exactly_what_whole_pushes_read() {
    let pieced = LocalCluster::start(2, config(8)).await.expect("cluster");
    let whole = LocalCluster::start(2, config(0)).await.expect("cluster");
    let (pieced_reads, whole_reads) = (run(&pieced).await, run(&whole).await);
    // Two workers' gradients sum to the same bits in either order, so the
    // runs must agree bit for bit, and every worker reads the same bytes.
    assert_eq!(pieced_reads, whole_reads);
    assert_eq!(pieced_reads[0], pieced_reads[1]);
    // A push alone is one request per part whole and one per piece (three
    // per part) in pieces. A step is one Step request per shard, which in
    // pieces carries each part's last piece after the other two, pushed
    // alone. Pulls are one PullMany per shard either way.
    let (w, shards) = (WORKERS as f64, 2.0);
    let (steps, pushes) = ((STEPS as f64 / 2.0).ceil(), (STEPS as f64 / 2.0).floor());
    assert_eq!(common::ok_requests(&whole, "push"), 2.0 * w * pushes);
    assert_eq!(common::ok_requests(&pieced, "push"), 2.0 * w * (3.0 * pushes + 2.0 * steps));
    for cluster in [&whole, &pieced] {
        assert_eq!(common::ok_requests(cluster, "step"), shards * w * steps);
        assert_eq!(common::ok_requests(cluster, "pull_many"), shards * w * (1.0 + pushes));
    }
}

fn raw_push(tensor: &str, offset: u64, len: usize) -> Vec<pb::PushChunk> {
    let header = pb::PushHeader {
        worker: 0,
        clock: 0,
        tensor: tensor.into(),
        offset,
        len: len as u64,
        dtype: pb::WireDtype::F32 as i32,
    };
    let data = Bytes::from(vec![0u8; len * 4]);
    vec![pb::PushChunk { header: Some(header), offset: 0, data }]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_that_is_neither_the_part_nor_one_of_its_pieces_is_refused() {
    let cluster =
        LocalCluster::start(1, ShardConfig { split_threshold: 100, ..config(8) }).await.expect("start");
    let mut w = Worker::connect(WorkerConfig::new(cluster.spec().clone(), 0)).await.expect("connect");
    w.declare(&TensorDecl::new("w", &[LEN])).await.expect("declare");
    w.declare(&TensorDecl::new("a", &[LEN]).async_()).await.expect("declare");
    // Worker 1 leaves, so worker 0's push alone completes a round.
    Worker::connect(WorkerConfig::new(cluster.spec().clone(), 1))
        .await
        .expect("connect")
        .leave()
        .await
        .expect("leave");

    let shifted = w.raw_push(0, raw_push("w", 1, 2)).await.expect_err("a piece one element off");
    assert_eq!(shifted.code(), tonic::Code::InvalidArgument);
    assert!(shifted.message().contains("one piece of it: 2 elements"), "{}", shifted.message());
    let short = w.raw_push(0, raw_push("w", 10, 2)).await.expect_err("past the end");
    assert_eq!(short.code(), tonic::Code::InvalidArgument);
    let not_sync = w.raw_push(0, raw_push("a", 0, 2)).await.expect_err("async parts take whole pushes");
    assert_eq!(not_sync.code(), tonic::Code::InvalidArgument);
    assert!(!not_sync.message().contains("piece"), "{}", not_sync.message());

    // The refusals left nothing behind: the last piece alone is accepted,
    // and the push completes with the other pieces.
    assert!(w.raw_push(0, raw_push("w", 10, 1)).await.expect("last piece").applied);
    for start in [0, 2, 4, 6, 8] {
        assert!(w.raw_push(0, raw_push("w", start, 2)).await.expect("piece").applied);
    }
    assert!(!w.raw_push(0, raw_push("w", 4, 2)).await.expect("retry").applied, "a retried piece");
    w.push_tensor("w", 0, &ArrayD::zeros(vec![LEN])).await.expect("a whole retry");
    let (_, versions) = w.observe("w").await.expect("observe");
    assert_eq!(versions, vec![0, -1], "the round is complete");
}
