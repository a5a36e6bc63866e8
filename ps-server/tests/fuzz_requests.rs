//! Property test over arbitrary requests of every RPC, sent raw to an
//! embedded shard: the shard never panics, always answers, and a refused
//! request changes nothing (tensors, values, version vectors, live workers).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use proptest::prelude::*;
use ps_proto::pb;
use ps_proto::pb::data_client::DataClient;
use ps_proto::pb::parameter_server_client::ParameterServerClient;
use ps_server::{LocalCluster, PolicyName, ShardConfig};
use ps_worker::{TensorDecl, Worker, WorkerConfig};
use tonic::transport::Channel;

static PANICKED: AtomicBool = AtomicBool::new(false);

#[derive(Clone, Debug)]
enum Req {
    Join(u32),
    Leave(u32),
    Declare(pb::TensorSpec),
    Push(Vec<pb::PushChunk>),
    Pull(pb::PullRequest),
    Barrier(u32, u64),
    Checkpoint(u64, u64, Option<u32>),
    CheckpointStatus(String),
    Rewind(String, u64, u32),
    Status,
}

fn worker() -> impl Strategy<Value = u32> {
    prop_oneof![0u32..3, Just(u32::MAX)]
}

fn clock() -> impl Strategy<Value = u64> {
    prop_oneof![0u64..4, Just(u64::MAX)]
}

fn name() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["a", "b", "zzz", "", "a/../b"]).prop_map(String::from)
}

fn float() -> impl Strategy<Value = f32> {
    prop_oneof![-2.0f32..2.0, Just(f32::NAN), Just(f32::INFINITY), Just(-0.0)]
}

fn spec() -> impl Strategy<Value = pb::TensorSpec> {
    let shape = prop::collection::vec(prop_oneof![0u64..5, Just(1 << 40), Just(u64::MAX)], 0..4);
    let init = prop_oneof![
        Just(None),
        float().prop_map(|c| Some(pb::Initializer { kind: Some(pb::initializer::Kind::Constant(c)) })),
        (float(), float(), any::<u64>()).prop_map(|(low, high, seed)| Some(pb::Initializer {
            kind: Some(pb::initializer::Kind::Uniform(pb::Uniform { low, high, seed }))
        })),
        (float(), float(), any::<u64>()).prop_map(|(mean, std, seed)| Some(pb::Initializer {
            kind: Some(pb::initializer::Kind::Normal(pb::Normal { mean, std, seed }))
        })),
    ];
    let optimizer = prop_oneof![
        Just(None),
        (float(), float(), float()).prop_map(|(learning_rate, momentum, weight_decay)| Some(pb::Optimizer {
            kind: Some(pb::optimizer::Kind::Sgd(pb::Sgd { learning_rate, momentum, weight_decay }))
        })),
        (float(), float(), float(), float()).prop_map(|(learning_rate, beta1, beta2, epsilon)| Some(
            pb::Optimizer {
                kind: Some(pb::optimizer::Kind::Adam(pb::Adam {
                    learning_rate,
                    beta1,
                    beta2,
                    epsilon,
                    weight_decay: 0.0
                }))
            }
        )),
    ];
    let options = (0u32..4, -1i32..3);
    (name(), shape, init, optimizer, -1i32..5, prop::option::of(0u32..5), any::<bool>(), options).prop_map(
        |(
            name,
            shape,
            init,
            optimizer,
            policy,
            staleness,
            allow_non_finite,
            (backup_workers, staleness_scaling),
        )| {
            pb::TensorSpec {
                name,
                shape,
                init,
                optimizer,
                policy,
                staleness,
                allow_non_finite,
                backup_workers,
                staleness_scaling,
            }
        },
    )
}

fn push() -> impl Strategy<Value = Vec<pb::PushChunk>> {
    let header = (worker(), clock(), name(), 0u64..12, prop_oneof![0u64..12, Just(u64::MAX)], -1i32..4)
        .prop_map(|(worker, clock, tensor, offset, len, dtype)| pb::PushHeader {
            worker,
            clock,
            tensor,
            offset,
            len,
            dtype,
        });
    let data = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..48),
        prop::collection::vec(float(), 0..12).prop_map(|v| v.iter().flat_map(|f| f.to_le_bytes()).collect()),
    ];
    let chunk = (prop::option::of(header), prop_oneof![0u64..48, Just(u64::MAX)], data)
        .prop_map(|(header, offset, data)| pb::PushChunk { header, offset, data: data.into() });
    prop::collection::vec(chunk, 0..4)
}

fn request() -> impl Strategy<Value = Req> {
    prop_oneof![
        worker().prop_map(Req::Join),
        worker().prop_map(Req::Leave),
        spec().prop_map(Req::Declare),
        push().prop_map(Req::Push),
        (prop::option::of(worker()), clock(), name(), -1i32..4).prop_map(|(worker, clock, tensor, dtype)| {
            Req::Pull(pb::PullRequest { worker, clock, tensor, dtype })
        }),
        (worker(), clock()).prop_map(|(w, c)| Req::Barrier(w, c)),
        (clock(), any::<u64>(), prop::option::of(worker())).prop_map(|(c, s, w)| Req::Checkpoint(c, s, w)),
        name().prop_map(Req::CheckpointStatus),
        (
            prop_oneof![
                name(),
                Just("ckpt-000000000003-0000000000000001".to_string()),
                Just("../ckpt-000000000003-0000000000000001".to_string())
            ],
            any::<u64>(),
            worker()
        )
            .prop_map(|(n, c, w)| Req::Rewind(n, c, w)),
        Just(Req::Status),
    ]
}

/// What a refused request must leave untouched.
/// Raw clients of both services of one shard, on one channel.
#[derive(Clone)]
struct Client {
    control: ParameterServerClient<Channel>,
    data: DataClient<Channel>,
}

#[derive(Debug, PartialEq)]
struct State {
    status: pb::StatusReply,
    values: Vec<(String, Vec<u32>)>,
}

async fn state(client: &mut Client) -> State {
    let mut status =
        client.control.status(pb::StatusRequest::default()).await.expect("status answers").into_inner();
    status.session = 0;
    // Whom the shard has heard from moves with every request of a worker,
    // refused or not, as its lease does: liveness, not the job's state.
    status.unheard_workers.clear();
    let mut values = Vec::new();
    for t in &status.tensors {
        let req = pb::PullRequest { worker: None, clock: 0, tensor: t.name.clone(), dtype: 0 };
        let mut stream = client.data.pull(req).await.expect("observer pull").into_inner();
        let mut bits = Vec::new();
        while let Some(chunk) = stream.message().await.expect("pull chunk") {
            bits.extend(chunk.data.chunks_exact(4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])));
        }
        values.push((t.name.clone(), bits));
    }
    State { status, values }
}

/// Sends one request; `Ok(true)` if the shard accepted it, `Ok(false)` if it
/// refused it, `Err` if it did not answer within the bound (waits only).
async fn send(client: &mut Client, req: Req) -> Result<bool, ()> {
    let bounded = Duration::from_millis(100);
    let outcome = match req {
        Req::Join(worker) => client.control.join(pb::JoinRequest { worker, skip_to: 0 }).await.map(|_| ()),
        Req::Leave(worker) => client.control.leave(pb::LeaveRequest { worker }).await.map(|_| ()),
        Req::Declare(spec) => {
            client.control.declare(pb::DeclareRequest { spec: Some(spec) }).await.map(|_| ())
        }
        Req::Push(chunks) => client.data.push(futures::stream::iter(chunks)).await.map(|_| ()),
        Req::Pull(req) => match tokio::time::timeout(bounded, client.data.pull(req)).await {
            Err(_) => return Err(()),
            Ok(Err(status)) => Err(status),
            Ok(Ok(reply)) => {
                let mut stream = reply.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(_)) => {}
                        Ok(None) => break Ok(()),
                        Err(status) => break Err(status),
                    }
                }
            }
        },
        Req::Barrier(worker, clock) => {
            match tokio::time::timeout(bounded, client.control.barrier(pb::BarrierRequest { worker, clock }))
                .await
            {
                Err(_) => return Err(()),
                Ok(r) => r.map(|_| ()),
            }
        }
        Req::Checkpoint(clock, session, worker) => {
            client.control.checkpoint(pb::CheckpointRequest { clock, session, worker }).await.map(|_| ())
        }
        Req::CheckpointStatus(name) => client
            .control
            .checkpoint_status(pb::CheckpointStatusRequest { name, wait: false })
            .await
            .map(|_| ()),
        Req::Rewind(checkpoint, cause, worker) => {
            client.control.rewind(pb::RewindRequest { checkpoint, cause, worker }).await.map(|_| ())
        }
        Req::Status => client.control.status(pb::StatusRequest::default()).await.map(|_| ()),
    };
    Ok(outcome.is_ok())
}

#[test]
fn arbitrary_requests_never_panic_and_refused_ones_change_nothing() {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICKED.store(true, Ordering::SeqCst);
        hook(info);
    }));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("rt");
    let root = std::env::temp_dir().join(format!("ps-fuzz-{}", std::process::id()));
    let (cluster, client) = rt.block_on(async {
        let config = ShardConfig {
            num_workers: 2,
            policy: PolicyName::Async,
            split_threshold: 8,
            checkpoint_dir: Some(root.clone()),
            ..ShardConfig::default()
        };
        let cluster = LocalCluster::start(1, config).await.expect("cluster");
        let mut w = Worker::connect(WorkerConfig::new(cluster.spec().clone(), 0)).await.expect("connect");
        w.declare(&TensorDecl::new("a", &[4]).constant(0.5)).await.expect("declare a");
        w.declare(&TensorDecl::new("b", &[3, 3]).normal(0.0, 1.0, 3).adam(0.01)).await.expect("declare b");
        let channel = Channel::from_shared(format!("http://{}", cluster.spec().shards[0]))
            .expect("shard address")
            .connect()
            .await
            .expect("raw client");
        let client =
            Client { control: ParameterServerClient::new(channel.clone()), data: DataClient::new(channel) };
        (cluster, client)
    });
    let config = ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() };
    proptest!(config, |(requests in prop::collection::vec(request(), 1..12))| {
        let mut client = client.clone();
        rt.block_on(async {
            for req in requests {
                let before = state(&mut client).await;
                let accepted = send(&mut client, req.clone()).await;
                let after = state(&mut client).await;
                if accepted != Ok(true) {
                    prop_assert_eq!(&before, &after, "refused or unanswered {:?} changed the state", req);
                }
                prop_assert!(!PANICKED.load(Ordering::SeqCst), "the shard panicked on {:?}", req);
            }
            Ok(())
        })?;
    });
    drop(cluster);
    let _ = std::fs::remove_dir_all(&root);
}
