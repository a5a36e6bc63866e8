//! How a worker talks to the cluster: [`WorkerConfig`].

use std::sync::Arc;
use std::time::Duration;

use ps_proto::{ClusterSpec, WireDtype, chunk};

use crate::auth::{AuthToken, ClientTls};
use crate::metrics::WorkerMetrics;
use crate::retry::RetryPolicy;

/// How a worker talks to the cluster.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// The shards.
    pub cluster: ClusterSpec,
    /// This worker's id, `0..W`.
    pub worker: u32,
    /// Deadline of requests that never wait on other workers (push, declare, join).
    pub rpc_timeout: Duration,
    /// Deadline of requests that may wait on other workers (pull, barrier).
    pub wait_timeout: Duration,
    /// Retries of transient failures.
    pub retry: RetryPolicy,
    /// Largest payload bytes per push chunk. A part goes in chunks of about
    /// an eighth of its bytes, at least 512 KiB (unless this is smaller)
    /// and at most this ([`chunk::chunk_bytes_for`]).
    pub chunk_bytes: usize,
    /// Encoding of pushed gradients and pulled values.
    pub wire_dtype: WireDtype,
    /// Largest gRPC message this worker sends or accepts.
    pub max_message_bytes: usize,
    /// Where to record retries and errors (and, in the training loop, steps).
    pub metrics: Option<Arc<WorkerMetrics>>,
    /// Prefix of every tensor name on the shards (`"run1"` makes `w` travel
    /// as `run1/w`), so several jobs can share one cluster. Empty: none.
    pub namespace: String,
    /// Bearer token of a cluster started with `--auth-token-file`.
    pub auth_token: Option<AuthToken>,
    /// TLS to the shards (started with `--tls-cert`); none: plaintext.
    pub tls: Option<ClientTls>,
}

impl WorkerConfig {
    /// Defaults for worker `worker` of `cluster`: 30 s RPC deadline, 10 min
    /// wait deadline, 6 attempts, f32 on the wire in chunks of at most
    /// 1 MiB ([`chunk::DEFAULT_CHUNK_BYTES`]), 16 MiB messages; no
    /// namespace, token, TLS or metrics.
    pub fn new(cluster: ClusterSpec, worker: u32) -> Self {
        Self {
            cluster,
            worker,
            rpc_timeout: Duration::from_secs(30),
            wait_timeout: Duration::from_secs(600),
            retry: RetryPolicy::default(),
            chunk_bytes: chunk::DEFAULT_CHUNK_BYTES,
            wire_dtype: WireDtype::F32,
            max_message_bytes: 16 << 20,
            namespace: String::new(),
            metrics: None,
            auth_token: None,
            tls: None,
        }
    }
}
