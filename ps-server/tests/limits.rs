//! Hostile sizes and floods against a real `ps-server` process: a 2 GB
//! declared length, a 2 GiB tensor above the limit, and 2,000 push streams
//! left open are refused or held back without the server's RSS growing.

mod common;

use std::time::Duration;

use common::*;
use ps_proto::pb;
use ps_proto::pb::data_client::DataClient;
use ps_proto::pb::parameter_server_client::ParameterServerClient;
use ps_worker::{TensorDecl, Worker, WorkerConfig};

/// Resident set size of process `pid`, in bytes (Linux).
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kib * 1024
}

fn header(tensor: &str, offset: u64, len: u64) -> pb::PushHeader {
    pb::PushHeader { worker: 0, clock: 0, tensor: tensor.into(), offset, len, dtype: 0 }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_sizes_and_stream_floods_are_refused_without_memory_growth() {
    let (servers, spec) = spawn_cluster(
        1,
        8,
        &[
            "--workers",
            "1",
            "--policy",
            "async",
            "--max-tensor-bytes",
            "1073741824",
            "--max-concurrent-streams",
            "64",
        ],
    );
    let pid = servers[0].pid();
    let mut w = Worker::connect(WorkerConfig::new(spec.clone(), 0)).await.expect("connect");
    w.declare(&TensorDecl::new("big", &[1 << 20])).await.expect("declare a 4 MiB tensor");
    let before = rss(pid);

    // A 2 GiB tensor, above --max-tensor-bytes: refused before any allocation.
    let err = w.declare(&TensorDecl::new("huge", &[1 << 29])).await.expect_err("2 GiB declared");
    assert_eq!(err.code(), Some(tonic::Code::ResourceExhausted), "{err}");
    assert!(err.to_string().contains("2147483648 bytes exceeds the limit of 1073741824"), "{err}");

    // A push declaring a 2 GB length, and one whose chunk claims to sit 2 GB in.
    let data = ps_proto::wire::encode(&[1.0f32; 4], ps_proto::WireDtype::F32);
    let long = pb::PushChunk { header: Some(header("big", 0, 1 << 29)), offset: 0, data: data.clone() };
    let status = w.raw_push(0, vec![long]).await.expect_err("2 GB declared length");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    let far = vec![
        pb::PushChunk { header: Some(header("big", 0, 1 << 20)), offset: 0, data: data.clone() },
        pb::PushChunk { header: None, offset: (2 << 30) - 16, data },
    ];
    let status = w.raw_push(0, far).await.expect_err("chunk 2 GB in");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");

    // 2,000 push streams that send a header and then nothing, on one
    // connection (the shard allows 64 at a time): its memory stays flat and
    // other clients are still served. This does not show the stream limit
    // bounding buffered data: streams carrying 1 MiB each did not reach the
    // shard's memory either (tried), so that bound is untested here.
    let flood = DataClient::connect(format!("http://{}", spec.shards[0])).await.expect("connect");
    let (started_tx, mut started_rx) = tokio::sync::mpsc::channel::<()>(4096);
    let mut open = Vec::new();
    for _ in 0..2000 {
        let mut client = flood.clone();
        let started = started_tx.clone();
        open.push(tokio::spawn(async move {
            let first = pb::PushChunk {
                header: Some(header("big", 0, 1 << 20)),
                offset: 0,
                data: Default::default(),
            };
            let stream = futures::stream::once(async move {
                let _ = started.send(()).await;
                first
            })
            .chain(futures::stream::pending());
            let _ = client.push(stream).await;
        }));
    }
    use futures::StreamExt;
    for _ in 0..64 {
        tokio::time::timeout(Duration::from_secs(30), started_rx.recv()).await.expect("streams start");
    }
    let status = w.status().await.expect("another client is still served during the flood");
    assert_eq!(status.len(), 1);
    let during = rss(pid);
    for t in &open {
        t.abort();
    }
    let grew = during.saturating_sub(before);
    eprintln!("ps-server RSS: {} MiB before, {} MiB during the flood", before >> 20, during >> 20);
    assert!(grew < 64 << 20, "RSS grew by {} MiB", grew >> 20);
}

/// Pushes of `PER_STREAM` bytes (of a 64 MiB part) that never finish, on
/// `STREAMS` streams of each of `CONNECTIONS` connections: the push budget
/// and the connection cap bound what the shard holds, while without them
/// all of it would be held (1.5 GiB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floods_of_unfinished_pushes_carrying_data_stay_within_the_budget() {
    const CONNECTIONS: usize = 4;
    const STREAMS: usize = 8;
    const PER_STREAM: u64 = 48 << 20;
    const BUDGET: u64 = 128 << 20;
    const MAX_CONNECTIONS: usize = 6;
    let (servers, spec) = spawn_cluster(
        1,
        1 << 30,
        &[
            "--workers",
            "1",
            "--policy",
            "async",
            "--max-connections",
            &MAX_CONNECTIONS.to_string(),
            "--max-push-bytes-in-flight",
            &BUDGET.to_string(),
        ],
    );
    let pid = servers[0].pid();
    let mut w = Worker::connect(WorkerConfig::new(spec.clone(), 0)).await.expect("connect");
    let part: u64 = 16 << 20; // elements: 64 MiB
    w.declare(&TensorDecl::new("big", &[part as usize])).await.expect("declare a 64 MiB tensor");
    let before = rss(pid);

    let addr = format!("http://{}", spec.shards[0]);
    let mut clients = Vec::new();
    for _ in 0..CONNECTIONS {
        clients.push(DataClient::connect(addr.clone()).await.expect("connect"));
    }
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let chunk = bytes::Bytes::from(vec![0u8; 1 << 20]);
    let mut open = Vec::new();
    for client in &clients {
        for _ in 0..STREAMS {
            let mut client = client.clone();
            let (sent, chunk) = (std::sync::Arc::clone(&sent), chunk.clone());
            open.push(tokio::spawn(async move {
                let first =
                    pb::PushChunk { header: Some(header("big", 0, part)), offset: 0, data: chunk.clone() };
                let rest = (1..PER_STREAM >> 20).map(move |i| pb::PushChunk {
                    header: None,
                    offset: i << 20,
                    data: chunk.clone(),
                });
                let counted = futures::stream::iter(std::iter::once(first).chain(rest)).map(move |c| {
                    sent.fetch_add(c.data.len() as u64, std::sync::atomic::Ordering::Relaxed);
                    c
                });
                let _ = client.push(counted.chain(futures::stream::pending())).await;
            }));
        }
    }
    use futures::StreamExt;
    // Wait (bounded) until the senders are held back: nothing sent for 1 s.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let (mut last, mut still) = (0, 0);
    while still < 10 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = sent.load(std::sync::atomic::Ordering::Relaxed);
        still = if now == last { still + 1 } else { 0 };
        last = now;
    }
    let during = rss(pid);
    let attempted = (CONNECTIONS * STREAMS) as u64 * PER_STREAM;

    // Connections past the cap are closed at once: one slot is left (the
    // worker and the flood hold 5 of 6), so of 3 more (kept open) 2 are refused.
    let mut refused = 0;
    let mut extras = Vec::new();
    for _ in 0..3 {
        if let Ok(mut extra) = ParameterServerClient::connect(addr.clone()).await
            && extra.status(pb::StatusRequest::default()).await.is_ok()
        {
            extras.push(extra);
            continue;
        }
        refused += 1;
    }
    let status = w.status().await.expect("a client connected before the flood is still served");
    assert_eq!(status.len(), 1);
    for t in &open {
        t.abort();
    }
    let grew = during.saturating_sub(before);
    // The budget plus a connection window per connection, and a quarter on
    // top for the transport's and allocator's own buffers (measured here:
    // 390-470 MiB of a 512 MiB raw bound, with 5 of the 6 connections open).
    let bound = (BUDGET + MAX_CONNECTIONS as u64 * 64 * (1 << 20)) * 5 / 4;
    eprintln!(
        "ps-server RSS {} -> {} MiB; clients got {} of {} MiB out; bound {} MiB; {refused} of 3 extra connections refused",
        before >> 20,
        during >> 20,
        last >> 20,
        attempted >> 20,
        bound >> 20
    );
    assert!(last < attempted, "the shard took all {} MiB the flood offered", attempted >> 20);
    assert!(grew < bound, "RSS grew by {} MiB, above the bound of {} MiB", grew >> 20, bound >> 20);
    assert_eq!(refused, 2, "connections refused of 3 past 5 open with a cap of {MAX_CONNECTIONS}");
}
