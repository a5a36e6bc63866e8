//! A fault-injecting TCP proxy for tests: forwards 127.0.0.1 connections to
//! a shard and, on command, drops responses (by cutting the connection as a
//! server-to-client read arrives, after the request was delivered), or
//! partitions its clients (cuts every connection and refuses new ones).

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::SeedableRng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Debug)]
struct Faults {
    /// Chance, in millionths, that a server-to-client read is dropped with its connection.
    drop_per_million: AtomicU32,
    partitioned: AtomicBool,
    /// Bumped to cut every open connection.
    cut: watch::Sender<u64>,
    rng: Mutex<ChaCha8Rng>,
    dropped: AtomicU64,
    connections: AtomicU64,
}

impl Faults {
    fn drop_now(&self) -> bool {
        let p = self.drop_per_million.load(Ordering::Relaxed);
        p > 0 && self.rng.lock().expect("rng").random_range(0..1_000_000) < p
    }
}

/// A running proxy; stops when dropped.
#[derive(Debug)]
pub(crate) struct Proxy {
    /// The address clients connect to.
    pub addr: String,
    faults: Arc<Faults>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        self.faults.cut.send_modify(|e| *e += 1);
    }
}

impl Proxy {
    /// Starts forwarding a new port of 127.0.0.1 to `target`, with faults drawn from `seed`.
    pub(crate) async fn start(target: &str, seed: u64) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr").to_string();
        let faults = Arc::new(Faults {
            drop_per_million: AtomicU32::new(0),
            partitioned: AtomicBool::new(false),
            cut: watch::Sender::new(0),
            rng: Mutex::new(ChaCha8Rng::seed_from_u64(seed)),
            dropped: AtomicU64::new(0),
            connections: AtomicU64::new(0),
        });
        let target = target.to_string();
        let f = Arc::clone(&faults);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if f.partitioned.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                f.connections.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(forward(client, target.clone(), Arc::clone(&f)));
            }
        });
        Proxy { addr, faults, task }
    }

    /// Drops this fraction of server-to-client reads, cutting their connection.
    pub(crate) fn drop_responses(&self, fraction: f64) {
        self.faults.drop_per_million.store((fraction * 1e6) as u32, Ordering::SeqCst);
    }

    /// Cuts every connection and refuses new ones (`true`), or heals (`false`).
    pub(crate) fn partition(&self, on: bool) {
        self.faults.partitioned.store(on, Ordering::SeqCst);
        if on {
            self.faults.cut.send_modify(|e| *e += 1);
        }
    }

    /// Responses dropped so far.
    pub(crate) fn dropped(&self) -> u64 {
        self.faults.dropped.load(Ordering::Relaxed)
    }

    /// Connections accepted so far.
    pub(crate) fn connections(&self) -> u64 {
        self.faults.connections.load(Ordering::Relaxed)
    }
}

async fn forward(client: TcpStream, target: String, faults: Arc<Faults>) {
    let Ok(server) = TcpStream::connect(&target).await else { return };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let mut cut = faults.cut.subscribe();
    let upstream = async {
        let mut buf = vec![0u8; 256 << 10];
        loop {
            let n = cr.read(&mut buf).await.unwrap_or(0);
            if n == 0 || sw.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    let downstream = async {
        let mut buf = vec![0u8; 256 << 10];
        loop {
            let n = sr.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                return;
            }
            if faults.drop_now() {
                faults.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
            if cw.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    // Whichever ends first closes both directions.
    tokio::select! {
        _ = upstream => {},
        _ = downstream => {},
        _ = cut.changed() => {},
    }
}
