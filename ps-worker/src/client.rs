//! The worker client: one handle to every shard of a cluster, with a clock.
//!
//! A training step is `pull()` → compute → `push(grads)`; `push` advances the
//! clock. Every call fans out to the shards holding the tensors' parts
//! concurrently, retries transient failures, and reassembles whole tensors.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use futures::future::try_join_all;
use ndarray::{ArcArray, ArrayD, ArrayViewD, IxDyn};
use prost::Message as _;
use ps_proto::frame::FramesBody;
use ps_proto::pb::parameter_server_client::ParameterServerClient;
use ps_proto::placement::{self, Part};
use ps_proto::wire::WireDtype;
use ps_proto::{ClusterSpec, chunk, frame, pb, rope};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::auth::{AddToken, AuthToken, ClientTls};
use crate::data_path::{self, DataChannel};

use crate::error::WorkerError;
use crate::retry::RetryPolicy;
use crate::tensor::TensorDecl;

/// A shard's gRPC client, sending the bearer token with every request.
type Client = ParameterServerClient<InterceptedService<Channel, AddToken>>;

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
    /// Largest payload bytes per push chunk; a part is sent in chunks of
    /// about an eighth of it, at least 512 KiB unless this is smaller
    /// ([`chunk::chunk_bytes_for`]).
    pub chunk_bytes: usize,
    /// Encoding of pushed gradients and pulled values.
    pub wire_dtype: WireDtype,
    /// Largest gRPC message this worker sends or accepts.
    pub max_message_bytes: usize,
    /// Where to record retries and errors (and, in the training loop, steps).
    pub metrics: Option<std::sync::Arc<crate::metrics::WorkerMetrics>>,
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
    /// wait deadline, 6 attempts, 4 MiB f32 chunks.
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

/// A declared tensor as this worker sees it.
#[derive(Clone, Debug)]
struct TensorInfo {
    shape: Vec<usize>,
    parts: Vec<Part>,
    /// Per part, the pieces a push to it goes in (the part itself unless
    /// its shard takes sync pushes in pieces).
    pieces: Vec<Vec<Part>>,
}

impl TensorInfo {
    /// The pieces of a push to `part`.
    fn pieces_of(&self, part: Part) -> &[Part] {
        let i = self.parts.iter().position(|p| *p == part);
        i.and_then(|i| self.pieces.get(i)).map_or(&[], Vec::as_slice)
    }
}

/// The result of a pull: whole tensors and, per tensor, the version vector
/// (per worker, the highest clock applied to the value in every part).
#[derive(Clone, Debug, Default)]
pub struct Pulled {
    /// Values by tensor name.
    pub values: BTreeMap<String, ArrayD<f32>>,
    /// Version vectors by tensor name.
    pub versions: BTreeMap<String, Vec<i64>>,
    /// The longest time any part waited on a shard for the policy's release rule.
    pub waited: Duration,
}

impl Pulled {
    /// Whole tensors as `(name, values, versions, waited)`.
    fn from_tensors(tensors: Vec<(String, ArrayD<f32>, Vec<i64>, Duration)>) -> Self {
        let mut pulled = Pulled::default();
        for (name, values, versions, waited) in tensors {
            pulled.values.insert(name.clone(), values);
            pulled.versions.insert(name, versions);
            pulled.waited = pulled.waited.max(waited);
        }
        pulled
    }
}

/// Shard restarts one [`Worker::step`] rides out before it returns the restart as an error.
pub const MAX_STEP_RECOVERIES: u32 = 16;

/// A worker connected to every shard of a cluster.
#[derive(Clone, Debug)]
pub struct Worker {
    cfg: WorkerConfig,
    shards: Vec<Client>,
    /// Per shard, the channel `Push` and `Pull` travel on (the data path).
    data: Vec<DataChannel>,
    tensors: BTreeMap<String, TensorInfo>,
    clock: u64,
    num_workers: u32,
    /// Shard 0's session, which names checkpoints; learnt at join.
    session: Option<u64>,
    /// Whether this handle joined (an observer takes no part in the clocks).
    joined: bool,
}

/// A checkpoint whose every shard file and manifest are durable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointDone {
    /// Directory name of the checkpoint.
    pub name: String,
    /// Its path (as shard 0 sees it).
    pub dir: String,
    /// Its clock: it holds the updates of clocks `< clock`.
    pub clock: u64,
    /// Bytes of all shard files.
    pub bytes: u64,
}

/// What a data-path request sends.
enum Outgoing<'a> {
    /// One whole message (a pull request).
    Message(Bytes),
    /// A push of `values`, encoded chunk by chunk while earlier chunks are
    /// on their way, so encoding overlaps sending.
    Push { header: pb::PushHeader, values: &'a [f32] },
    /// A push whose f32 wire bytes are already in memory the request may
    /// keep (a shared gradient): sent from there, without a copy.
    Shared { header: pb::PushHeader, data: Bytes },
}

/// Where a pulled part's elements go.
enum PartBuffer<'a> {
    /// The part's slice of a buffer holding every part of the tensor.
    Slice(&'a mut [f32]),
    /// The tensor's own buffer, when this is its only part: the elements
    /// are decoded onto its end, so it is never zeroed first.
    Whole(&'a mut Vec<f32>),
}

/// A gradient [`Worker::push_pull`] can send. An [`ArrayD`] is borrowed
/// and encoded onto the wire chunk by chunk; an [`ArcArray`] in standard
/// layout is shared with the request instead, so with the f32 wire dtype
/// its bytes go out without being copied in user space (the caller's own
/// handle stays valid: writing through it copies it first, as for any
/// shared `ArcArray`).
pub trait GradientData {
    /// The gradient's elements.
    fn values(&self) -> ArrayViewD<'_, f32>;
    /// The elements in logical order as little-endian f32 bytes that share
    /// the gradient's memory, when it can be shared; `None` means copy.
    fn shared_f32_bytes(&self) -> Option<Bytes>;
}

impl GradientData for ArrayD<f32> {
    fn values(&self) -> ArrayViewD<'_, f32> {
        self.view()
    }

    fn shared_f32_bytes(&self) -> Option<Bytes> {
        None
    }
}

impl GradientData for ArcArray<f32, IxDyn> {
    fn values(&self) -> ArrayViewD<'_, f32> {
        self.view()
    }

    #[cfg(target_endian = "little")]
    fn shared_f32_bytes(&self) -> Option<Bytes> {
        /// A standard-layout gradient, seen as its slice.
        struct Standard(ArcArray<f32, IxDyn>);
        impl AsRef<[f32]> for Standard {
            fn as_ref(&self) -> &[f32] {
                self.0.as_slice().unwrap_or_default()
            }
        }
        self.is_standard_layout().then(|| ps_proto::wire::shared_f32_bytes(Standard(self.clone())))
    }

    #[cfg(not(target_endian = "little"))]
    fn shared_f32_bytes(&self) -> Option<Bytes> {
        None
    }
}

/// The operation a data-path path is named by in errors and metrics.
fn op_of(path: &str) -> &'static str {
    match path {
        frame::PUSH_PATH => "push",
        frame::PUSH_PULL_PATH => "push_pull",
        _ => "pull",
    }
}

/// Whether `status` says the deadline sent in `grpc-timeout` expired on the
/// server (tonic reports that as `CANCELLED` "Timeout expired").
fn is_server_timeout(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::Cancelled && status.message() == "Timeout expired"
}

/// A connection that broke mid-request (reset, broken pipe: tonic reports
/// `UNKNOWN` "transport error" or "h2 protocol error") as the transient
/// failure it is: `UNAVAILABLE`. Such statuses are made by the client from a
/// local error, so they carry a cause; an `UNKNOWN` sent by a server does not.
fn classify(status: tonic::Status) -> tonic::Status {
    use std::error::Error;
    if status.code() != tonic::Code::Unknown || status.source().is_none() {
        return status;
    }
    let mut detail = String::new();
    let mut cause = status.source();
    while let Some(e) = cause {
        detail = e.to_string();
        cause = e.source();
    }
    tonic::Status::unavailable(format!("connection lost: {}: {detail}", status.message()))
}

fn rpc_err(
    op: &'static str,
    shard: u32,
    tensor: Option<&str>,
    attempts: u32,
    status: tonic::Status,
) -> WorkerError {
    if let Some(restart) = crate::error::Restart::from_status(&status) {
        return WorkerError::ShardRestarted { op, shard, restart, message: status.message().to_string() };
    }
    WorkerError::Rpc { op, shard, tensor: tensor.map(str::to_string), attempts, status }
}

impl Worker {
    /// Connects to every shard (retrying while shards start) and joins the
    /// job; the worker's clock is where the shards say it resumes (0 for a
    /// fresh job).
    pub async fn connect(cfg: WorkerConfig) -> Result<Self, WorkerError> {
        if cfg.cluster.shards.is_empty() {
            return Err(WorkerError::Cluster("the cluster spec lists no shards".into()));
        }
        let mut worker = Self::observer(cfg).await?;
        worker.join().await?;
        Ok(worker)
    }

    /// Connects to every shard without joining: the handle can declare and
    /// [`observe`](Self::observe) tensors but takes no part in the clocks.
    pub async fn observer(cfg: WorkerConfig) -> Result<Self, WorkerError> {
        let mut shards = Vec::new();
        let mut data = Vec::new();
        for (id, addr) in cfg.cluster.shards.iter().enumerate() {
            let (client, channel) = Self::connect_shard(&cfg, id as u32, addr).await?;
            shards.push(client);
            data.push(channel);
        }
        Ok(Self {
            cfg,
            shards,
            data,
            tensors: BTreeMap::new(),
            clock: 0,
            num_workers: 0,
            session: None,
            joined: false,
        })
    }

    async fn connect_shard(
        cfg: &WorkerConfig,
        shard: u32,
        addr: &str,
    ) -> Result<(Client, DataChannel), WorkerError> {
        let scheme = if cfg.tls.is_some() { "https" } else { "http" };
        let uri = if addr.contains("://") { addr.to_string() } else { format!("{scheme}://{addr}") };
        let invalid = |e: &dyn std::fmt::Display| WorkerError::InvalidAddress {
            shard,
            addr: addr.into(),
            reason: e.to_string(),
        };
        let mut endpoint = Endpoint::from_shared(uri).map_err(|e| invalid(&e))?;
        if let Some(tls) = &cfg.tls {
            endpoint = endpoint.tls_config(tls.config()).map_err(|e| invalid(&e))?;
        }
        let endpoint = endpoint
            .tcp_nodelay(true)
            .connect_timeout(cfg.rpc_timeout)
            .initial_stream_window_size(16 << 20)
            .initial_connection_window_size(64 << 20)
            .max_frame_size(1 << 20);
        let mut attempt = 1;
        let channel = loop {
            match endpoint.connect().await {
                Ok(c) => break c,
                Err(e) if attempt >= cfg.retry.max_attempts => {
                    return Err(WorkerError::Connect { shard, addr: addr.into(), source: e });
                }
                Err(e) => {
                    tracing::debug!(shard, addr, attempt, "connect failed, retrying: {e}");
                    tokio::time::sleep(cfg.retry.backoff(attempt)).await;
                    attempt += 1;
                }
            }
        };
        let channel = InterceptedService::new(channel, AddToken::new(cfg.auth_token.as_ref()));
        let client = ParameterServerClient::new(channel.clone())
            .max_decoding_message_size(cfg.max_message_bytes)
            .max_encoding_message_size(cfg.max_message_bytes);
        Ok((client, channel))
    }

    /// This worker's id.
    pub fn id(&self) -> u32 {
        self.cfg.worker
    }

    /// The clock the next pull and push use: clocks completed so far.
    pub fn clock(&self) -> u64 {
        self.clock
    }

    /// The metrics this worker records into, if any.
    pub fn metrics(&self) -> Option<&crate::metrics::WorkerMetrics> {
        self.cfg.metrics.as_deref()
    }

    /// Number of workers in the job, as the shards report it.
    pub fn num_workers(&self) -> u32 {
        self.num_workers
    }

    /// The cluster this worker talks to.
    pub fn cluster(&self) -> &ClusterSpec {
        &self.cfg.cluster
    }

    /// The shapes of the declared tensors.
    pub fn shapes(&self) -> BTreeMap<String, Vec<usize>> {
        self.tensors.iter().map(|(n, t)| (n.clone(), t.shape.clone())).collect()
    }

    /// Runs `call` against `shard`'s gRPC client with the retry policy and a deadline.
    async fn call<T, F, Fut>(
        &self,
        op: &'static str,
        shard: u32,
        tensor: Option<&str>,
        waits_on_others: bool,
        call: F,
    ) -> Result<T, WorkerError>
    where
        F: FnMut(Client, Duration) -> Fut,
        Fut: Future<Output = Result<T, tonic::Status>>,
    {
        self.retrying(op, shard, tensor, waits_on_others, || self.shards[shard as usize].clone(), call).await
    }

    /// Runs `call` with a fresh `connection()` per attempt, the retry policy and a deadline.
    async fn retrying<C, T, F, Fut>(
        &self,
        op: &'static str,
        shard: u32,
        tensor: Option<&str>,
        waits_on_others: bool,
        connection: impl Fn() -> C,
        mut call: F,
    ) -> Result<T, WorkerError>
    where
        F: FnMut(C, Duration) -> Fut,
        Fut: Future<Output = Result<T, tonic::Status>>,
    {
        let deadline = if waits_on_others { self.cfg.wait_timeout } else { self.cfg.rpc_timeout };
        let mut attempt = 1;
        loop {
            let status =
                match tokio::time::timeout(deadline + Duration::from_secs(1), call(connection(), deadline))
                    .await
                {
                    Ok(Ok(v)) => return Ok(v),
                    // The deadline sent in `grpc-timeout` expired on the server
                    // (tonic reports that as CANCELLED "Timeout expired").
                    Ok(Err(status)) if is_server_timeout(&status) => tonic::Status::deadline_exceeded(
                        format!("the deadline of {deadline:?} expired on the server"),
                    ),
                    Ok(Err(status)) => classify(status),
                    Err(_) => {
                        return Err(WorkerError::Timeout {
                            op,
                            shard,
                            tensor: tensor.map(Into::into),
                            after: deadline,
                        });
                    }
                };
            if attempt >= self.cfg.retry.max_attempts
                || !RetryPolicy::is_transient(status.code(), waits_on_others)
            {
                if let Some(m) = &self.cfg.metrics {
                    m.error(op, status.code());
                }
                if status.code() == tonic::Code::DeadlineExceeded {
                    return Err(WorkerError::Timeout {
                        op,
                        shard,
                        tensor: tensor.map(Into::into),
                        after: deadline,
                    });
                }
                return Err(rpc_err(op, shard, tensor, attempt, status));
            }
            if let Some(m) = &self.cfg.metrics {
                m.retry(op);
            }
            tracing::debug!(op, shard, attempt, code = ?status.code(), "transient failure, retrying");
            tokio::time::sleep(self.cfg.retry.backoff(attempt)).await;
            attempt += 1;
        }
    }

    fn request<T>(msg: T, deadline: Duration) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        req.set_timeout(deadline);
        req
    }

    /// Joins (or rejoins) every shard; returns the clock to resume at.
    pub async fn join(&mut self) -> Result<u64, WorkerError> {
        let worker = self.cfg.worker;
        let n = self.shards.len() as u32;
        let replies = try_join_all((0..n).map(|shard| {
            self.call("join", shard, None, false, move |mut c, d| async move {
                Ok(c.join(Self::request(pb::JoinRequest { worker }, d)).await?.into_inner())
            })
        }))
        .await?;
        for (shard, r) in replies.iter().enumerate() {
            if r.num_shards != n || r.shard != shard as u32 {
                return Err(WorkerError::Cluster(format!(
                    "the cluster spec lists {n} shards, but the shard at position {shard} says it is shard {} of {}",
                    r.shard, r.num_shards
                )));
            }
            if worker >= r.num_workers {
                return Err(WorkerError::Cluster(format!(
                    "worker id {worker} is out of range: the job has workers 0..{}",
                    r.num_workers
                )));
            }
        }
        self.clock = replies.iter().map(|r| r.clock).min().unwrap_or(0);
        self.num_workers = replies.first().map_or(0, |r| r.num_workers);
        self.session = replies.first().map(|r| r.session);
        self.joined = true;
        Ok(self.clock)
    }

    /// Catches up with a shard restart: rewinds every shard to the
    /// checkpoint the restarted one came back from (shards that already
    /// did, or are the restarted one, change nothing), then joins again.
    /// Returns the clock to resume at, the checkpoint's. Updates of later
    /// clocks are gone from every shard, so pushing them again applies each
    /// exactly once.
    pub async fn recover(&mut self, restart: &crate::error::Restart) -> Result<u64, WorkerError> {
        let worker = self.cfg.worker;
        let n = self.shards.len() as u32;
        let replies = try_join_all((0..n).map(|shard| {
            let checkpoint = restart.checkpoint.clone();
            let cause = restart.cause;
            self.call("rewind", shard, None, false, move |mut c, d| {
                let checkpoint = checkpoint.clone();
                async move {
                    Ok(c.rewind(Self::request(pb::RewindRequest { checkpoint, cause, worker }, d))
                        .await?
                        .into_inner())
                }
            })
        }))
        .await?;
        let rewound = replies.iter().filter(|r| r.rewound).count();
        let clock = self.join().await?;
        tracing::warn!(
            worker,
            checkpoint = %restart.checkpoint,
            clock,
            shards_rewound_now = rewound,
            "a shard restarted from a checkpoint; every shard is back there and this worker resumes"
        );
        Ok(clock)
    }

    /// Leaves the job: barriers stop waiting for this worker.
    pub async fn leave(&self) -> Result<(), WorkerError> {
        let worker = self.cfg.worker;
        try_join_all((0..self.shards.len() as u32).map(|shard| {
            self.call("leave", shard, None, false, move |mut c, d| async move {
                Ok(c.leave(Self::request(pb::LeaveRequest { worker }, d)).await?.into_inner())
            })
        }))
        .await?;
        Ok(())
    }

    /// Declares a tensor on the shards that hold its parts. Every worker may
    /// declare the same tensor; the first declaration creates it, later ones
    /// must agree on the shape (else `ALREADY_EXISTS`).
    pub async fn declare(&mut self, decl: &TensorDecl) -> Result<(), WorkerError> {
        let shape = decl.shape();
        let len = shape.iter().product::<usize>() as u64;
        let cluster = &self.cfg.cluster;
        let name = self.wire_name(decl.name());
        let parts = placement::place(&name, len, cluster.num_shards(), cluster.split_threshold);
        let spec = pb::TensorSpec { name: name.clone(), ..decl.spec().clone() };
        let piece_lens = try_join_all(parts.iter().map(|part| {
            let spec = spec.clone();
            let name = name.clone();
            let part = *part;
            self.call("declare", part.shard, Some(decl.name()), false, move |mut c, d| {
                let spec = spec.clone();
                let name = name.clone();
                async move {
                    let r = c.declare(Self::request(pb::DeclareRequest { spec: Some(spec) }, d)).await?.into_inner();
                    if (r.offset, r.len) != (part.offset, part.len) {
                        return Err(tonic::Status::failed_precondition(format!(
                            "tensor {name:?}: shard {} holds elements {}..{} but this worker's placement says {}..{}; \
                             the shards and the worker disagree on the cluster spec",
                            part.shard,
                            r.offset,
                            r.offset + r.len,
                            part.offset,
                            part.offset + part.len
                        )));
                    }
                    Ok(r.piece_len)
                }
            })
        }))
        .await?;
        let pieces = parts.iter().zip(piece_lens).map(|(part, len)| placement::pieces(*part, len)).collect();
        self.tensors.insert(decl.name().to_string(), TensorInfo { shape, parts, pieces });
        Ok(())
    }

    fn info(&self, name: &str) -> Result<&TensorInfo, WorkerError> {
        self.tensors.get(name).ok_or_else(|| WorkerError::UnknownTensor { tensor: name.into() })
    }

    /// The name a tensor has on the shards.
    fn wire_name(&self, name: &str) -> String {
        if self.cfg.namespace.is_empty() {
            name.to_string()
        } else {
            format!("{}/{name}", self.cfg.namespace)
        }
    }

    /// The tensor's info, if `grad` has its shape.
    fn checked_info(&self, name: &str, shape: &[usize]) -> Result<&TensorInfo, WorkerError> {
        let info = self.info(name)?;
        if shape != info.shape.as_slice() {
            return Err(WorkerError::ShapeMismatch {
                tensor: name.into(),
                expected: info.shape.clone(),
                got: shape.to_vec(),
            });
        }
        Ok(info)
    }

    /// Pulls every declared tensor at this worker's clock (waiting as the
    /// policy requires).
    pub async fn pull(&self) -> Result<Pulled, WorkerError> {
        self.pull_at(self.clock).await
    }

    /// Pulls every declared tensor for `clock`.
    pub async fn pull_at(&self, clock: u64) -> Result<Pulled, WorkerError> {
        let results = try_join_all(self.tensors.keys().map(|name| async move {
            let (v, vv, waited) = self.pull_tensor_timed(name, Some(clock), Some(self.cfg.worker)).await?;
            Ok::<_, WorkerError>((name.clone(), v, vv, waited))
        }))
        .await?;
        Ok(Pulled::from_tensors(results))
    }

    /// Reads one tensor as an observer: never waits and takes no part in the
    /// clocks (for evaluation, monitoring and tests).
    pub async fn observe(&self, name: &str) -> Result<(ArrayD<f32>, Vec<i64>), WorkerError> {
        self.pull_tensor(name, None, None).await
    }

    /// Pulls one tensor; `worker: None` reads as an observer.
    pub async fn pull_tensor(
        &self,
        name: &str,
        clock: Option<u64>,
        worker: Option<u32>,
    ) -> Result<(ArrayD<f32>, Vec<i64>), WorkerError> {
        let (values, versions, _) = self.pull_tensor_timed(name, clock, worker).await?;
        Ok((values, versions))
    }

    async fn pull_tensor_timed(
        &self,
        name: &str,
        clock: Option<u64>,
        worker: Option<u32>,
    ) -> Result<(ArrayD<f32>, Vec<i64>, Duration), WorkerError> {
        let info = self.info(name)?;
        let dtype = pb::WireDtype::from(self.cfg.wire_dtype) as i32;
        let clock = clock.unwrap_or(self.clock);
        let tensor = self.wire_name(name);
        self.pulled_tensor(name, info, |_part| {
            let req = pb::PullRequest { worker, clock, tensor: tensor.clone(), dtype };
            (frame::PULL_PATH, worker.is_some(), Outgoing::Message(frame::message(&req)))
        })
        .await
    }

    /// Sends one data-path request per part of `name` (what `request` says:
    /// path, whether it may wait on other workers, its frames per attempt)
    /// whose replies are the pulled parts, and puts the tensor together.
    async fn pulled_tensor<'a>(
        &self,
        name: &str,
        info: &TensorInfo,
        mut request: impl FnMut(Part) -> (&'static str, bool, Outgoing<'a>),
    ) -> Result<(ArrayD<f32>, Vec<i64>, Duration), WorkerError> {
        let len = info.shape.iter().product::<usize>();
        let mut values = Vec::new();
        let (part_versions, waits): (Vec<_>, Vec<_>) = if let [part] = info.parts.as_slice() {
            // One part: decoded straight onto the end of the tensor's buffer.
            let (path, waits, outgoing) = request(*part);
            let dst = PartBuffer::Whole(&mut values);
            vec![self.pulled_part(name, *part, path, waits, outgoing, dst).await?].into_iter().unzip()
        } else {
            // Several parts arrive at once, each into its own slice.
            values = vec![0f32; len];
            let mut rest: &mut [f32] = &mut values;
            let mut pulls = Vec::new();
            for part in &info.parts {
                let (dst, tail) = std::mem::take(&mut rest).split_at_mut(part.len as usize);
                rest = tail;
                let (path, waits, outgoing) = request(*part);
                pulls.push(self.pulled_part(name, *part, path, waits, outgoing, PartBuffer::Slice(dst)));
            }
            try_join_all(pulls).await?.into_iter().unzip()
        };
        let versions = merge_versions(&part_versions);
        let waited = waits.into_iter().max().unwrap_or_default();
        let array = ArrayD::from_shape_vec(IxDyn(&info.shape), values)
            .map_err(|e| WorkerError::Protocol { shard: 0, tensor: name.into(), detail: e.to_string() })?;
        Ok((array, versions, waited))
    }

    /// Sends a request of the data path at `path` whose reply is a pulled
    /// part, retrying transient failures, and decodes the part into `dst`.
    async fn pulled_part(
        &self,
        name: &str,
        part: Part,
        path: &'static str,
        waits: bool,
        outgoing: Outgoing<'_>,
        mut dst: PartBuffer<'_>,
    ) -> Result<(Vec<i64>, Duration), WorkerError> {
        let op = op_of(path);
        let mut attempt = 1;
        loop {
            let result = self.pulled_part_once(name, part, path, waits, &outgoing, &mut dst).await;
            match result {
                Ok(v) => return Ok(v),
                Err(WorkerError::Rpc { status, .. })
                    if attempt < self.cfg.retry.max_attempts
                        && RetryPolicy::is_transient(status.code(), waits) =>
                {
                    if let Some(m) = &self.cfg.metrics {
                        m.retry(op);
                    }
                    tokio::time::sleep(self.cfg.retry.backoff(attempt)).await;
                    attempt += 1;
                }
                Err(WorkerError::Rpc { op, shard, tensor, status, .. }) => {
                    if let Some(m) = &self.cfg.metrics {
                        m.error(op, status.code());
                    }
                    return Err(WorkerError::Rpc { op, shard, tensor, attempts: attempt, status });
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn pulled_part_once(
        &self,
        name: &str,
        part: Part,
        path: &'static str,
        waits: bool,
        outgoing: &Outgoing<'_>,
        dst: &mut PartBuffer<'_>,
    ) -> Result<(Vec<i64>, Duration), WorkerError> {
        if let PartBuffer::Whole(values) = dst {
            // A retry starts the part over.
            values.clear();
            values.reserve_exact(part.len as usize);
        }
        let op = op_of(path);
        let deadline = if waits { self.cfg.wait_timeout } else { self.cfg.rpc_timeout };
        let shard = part.shard;
        let timeout = || WorkerError::Timeout { op, shard, tensor: Some(name.into()), after: deadline };
        let rpc = |status: tonic::Status| {
            if is_server_timeout(&status) {
                timeout()
            } else {
                rpc_err(op, shard, Some(name), 1, classify(status))
            }
        };
        let protocol = |detail: String| WorkerError::Protocol { shard, tensor: name.into(), detail };
        let channel = self.data[shard as usize].clone();
        let body = async {
            let mut reply = self.send(channel, path, outgoing, deadline).await.map_err(rpc)?;
            let dtype = self.cfg.wire_dtype;
            let size = dtype.size() as u64;
            let total = part.len * size;
            let mut versions = None;
            let mut received = 0u64;
            while let Some(msg) = reply.message().await.map_err(rpc)? {
                let (fields, data) =
                    frame::split_data(msg).map_err(|e| protocol(format!("malformed reply chunk: {e}")))?;
                let chunk = pb::PullChunk::decode(&fields[..])
                    .map_err(|e| protocol(format!("malformed reply chunk: {e}")))?;
                if let Some(h) = chunk.header {
                    if versions.is_some() {
                        return Err(protocol("a second header in the reply".into()));
                    }
                    if (h.offset, h.len, h.total_bytes) != (part.offset, part.len, total) {
                        return Err(protocol(format!(
                            "expected elements {}..{} ({total} bytes), got {}..{} ({} bytes)",
                            part.offset,
                            part.offset + part.len,
                            h.offset,
                            h.offset + h.len,
                            h.total_bytes
                        )));
                    }
                    versions = Some((h.versions, Duration::from_micros(h.waited_us)));
                } else if versions.is_none() {
                    return Err(protocol("the first chunk of the reply has no header".into()));
                }
                let n = data.len() as u64;
                if chunk.offset != received || received + n > total || !n.is_multiple_of(size) {
                    return Err(protocol(format!(
                        "chunk at byte {} with {n} bytes does not continue byte {received} of {total}",
                        chunk.offset
                    )));
                }
                match dst {
                    PartBuffer::Whole(values) => rope::decode_segments_append(values, &data, dtype),
                    PartBuffer::Slice(slice) => {
                        let start = (received / size) as usize;
                        let end = start + (n / size) as usize;
                        rope::decode_segments_into(&mut slice[start..end], &data, dtype);
                    }
                }
                received += n;
            }
            if received != total {
                return Err(protocol(format!("reply ended after {received} of {total} bytes")));
            }
            versions.ok_or_else(|| protocol("empty reply".into()))
        };
        tokio::time::timeout(deadline + Duration::from_secs(1), body).await.map_err(|_| timeout())?
    }

    /// One training step's communication in one round trip per part: pushes
    /// one gradient per declared tensor at this worker's clock, advances the
    /// clock, and returns every tensor pulled at the new clock, exactly as
    /// [`push`](Self::push) then [`pull`](Self::pull) would (the pull sees
    /// the push; it waits as the policy requires).
    ///
    /// Gradients may be [`ArrayD`]s or, to send f32 gradients without a
    /// copy, [`ArcArray`]s (see [`GradientData`]).
    pub async fn push_pull<G: GradientData>(
        &mut self,
        grads: &BTreeMap<String, G>,
    ) -> Result<Pulled, WorkerError> {
        let clock = self.clock;
        self.check_gradients(clock, grads)?;
        let this = &*self;
        let results = try_join_all(this.tensors.keys().map(|name| async move {
            let (v, vv, waited) = this.push_pull_tensor(name, clock, &grads[name]).await?;
            Ok::<_, WorkerError>((name.clone(), v, vv, waited))
        }))
        .await?;
        self.clock += 1;
        Ok(Pulled::from_tensors(results))
    }

    /// One training step, the fast path: pushes `grads` (one gradient per
    /// declared tensor) at this worker's clock, advances the clock, and
    /// returns every tensor at the new clock, read in the same round trip
    /// per part as the push ([`push_pull`](Self::push_pull)). A user's loop
    /// is `let mut params = worker.pull().await?;` then, per step,
    /// `params = worker.step(&grads).await?;`.
    ///
    /// Recovery is inside. When a shard came back from a checkpoint, every
    /// shard is rewound to it ([`recover`](Self::recover)), `grads` are
    /// dropped (they were computed from values the checkpoint undid), and
    /// the values at the checkpoint's clock are returned:
    /// [`clock`](Self::clock) then names the step that comes next. Every
    /// other error is returned as it is; after [`MAX_STEP_RECOVERIES`]
    /// restarts within one call, so is the restart.
    pub async fn step<G: GradientData>(
        &mut self,
        grads: &BTreeMap<String, G>,
    ) -> Result<Pulled, WorkerError> {
        let mut result = self.push_pull(grads).await;
        for _ in 0..MAX_STEP_RECOVERIES {
            match result {
                Err(WorkerError::ShardRestarted { restart, .. }) => {
                    self.recover(&restart).await?;
                    result = self.pull().await;
                }
                other => return other,
            }
        }
        result
    }

    async fn push_pull_tensor(
        &self,
        name: &str,
        clock: u64,
        grad: &impl GradientData,
    ) -> Result<(ArrayD<f32>, Vec<i64>, Duration), WorkerError> {
        let view = grad.values();
        let info = self.checked_info(name, view.shape())?;
        let shared = match self.cfg.wire_dtype {
            WireDtype::F32 => grad.shared_f32_bytes(),
            WireDtype::F16 | WireDtype::Bf16 => None,
        };
        let flat = contiguous(&view);
        let outgoing = |piece: Part| {
            let range = piece.offset as usize..(piece.offset + piece.len) as usize;
            let header = self.push_header(name, piece, clock);
            match &shared {
                Some(bytes) => Outgoing::Shared { header, data: bytes.slice(range.start * 4..range.end * 4) },
                None => Outgoing::Push { header, values: &flat[range] },
            }
        };
        // A part whose push goes in pieces gets all but its last piece first;
        // the PushPull carries the last, so the pull follows the whole push.
        let early = info.pieces.iter().flat_map(|p| &p[..p.len().saturating_sub(1)]);
        self.push_pieces(name, early.map(|piece| (*piece, outgoing(*piece)))).await?;
        self.pulled_tensor(name, info, |part| {
            let last = info.pieces_of(part).last().copied().unwrap_or(part);
            (frame::PUSH_PULL_PATH, true, outgoing(last))
        })
        .await
    }

    /// The header of a push to `part`.
    fn push_header(&self, name: &str, part: Part, clock: u64) -> pb::PushHeader {
        pb::PushHeader {
            worker: self.cfg.worker,
            clock,
            tensor: self.wire_name(name),
            offset: part.offset,
            len: part.len,
            dtype: pb::WireDtype::from(self.cfg.wire_dtype) as i32,
        }
    }

    /// Sends `outgoing` as the request of the RPC at `path`.
    async fn send(
        &self,
        channel: DataChannel,
        path: &'static str,
        outgoing: &Outgoing<'_>,
        deadline: Duration,
    ) -> Result<data_path::Reply, tonic::Status> {
        let max_message = self.cfg.max_message_bytes;
        match outgoing {
            Outgoing::Message(msg) => {
                let body = FramesBody::new(VecDeque::from([msg.clone()]), None);
                data_path::call(channel, path, tonic::body::Body::new(body), deadline, max_message).await
            }
            Outgoing::Push { header, values } => {
                let feed = |tx| self.feed_push(tx, header, values);
                data_path::call_fed(channel, path, deadline, max_message, feed).await
            }
            Outgoing::Shared { header, data } => {
                let mut header = Some(header.clone());
                let fields = |offset| pb::PushChunk { header: header.take(), offset, data: Bytes::new() };
                let chunk_bytes = chunk::chunk_bytes_for(data.len(), self.cfg.chunk_bytes);
                let frames = frame::data_frames(data, chunk_bytes, 4, fields);
                let body = tonic::body::Body::new(FramesBody::new(frames, None));
                data_path::call(channel, path, body, deadline, max_message).await
            }
        }
    }

    /// Encodes a push of `values` chunk by chunk into `tx` (each chunk's
    /// head, then its data), waiting whenever the channel is full; stops
    /// early if the request is gone.
    async fn feed_push(&self, tx: tokio::sync::mpsc::Sender<Bytes>, header: &pb::PushHeader, values: &[f32]) {
        let dtype = self.cfg.wire_dtype;
        let mut header = Some(header.clone());
        let fields = |offset| pb::PushChunk { header: header.take(), offset, data: Bytes::new() };
        let chunk_bytes = chunk::chunk_bytes_for(values.len() * dtype.size(), self.cfg.chunk_bytes);
        for (head, data) in frame::encoded_chunks(values, dtype, chunk_bytes, fields) {
            if tx.send(head).await.is_err() || (!data.is_empty() && tx.send(data).await.is_err()) {
                return;
            }
        }
    }

    /// Pushes one gradient per declared tensor at this worker's clock, then
    /// advances the clock. Every gradient must have its tensor's shape.
    pub async fn push(&mut self, grads: &BTreeMap<String, ArrayD<f32>>) -> Result<(), WorkerError> {
        self.push_at(self.clock, grads).await?;
        self.clock += 1;
        Ok(())
    }

    /// Pushes gradients for `clock` without touching this worker's clock
    /// (for resending, tests and custom loops). A push the shards already
    /// applied is acknowledged and ignored.
    pub async fn push_at(
        &self,
        clock: u64,
        grads: &BTreeMap<String, ArrayD<f32>>,
    ) -> Result<(), WorkerError> {
        self.check_gradients(clock, grads)?;
        try_join_all(self.tensors.keys().map(|name| self.push_tensor(name, clock, &grads[name]))).await?;
        Ok(())
    }

    /// Checks that `grads` holds exactly one gradient of the right shape per declared tensor.
    fn check_gradients(
        &self,
        clock: u64,
        grads: &BTreeMap<String, impl GradientData>,
    ) -> Result<(), WorkerError> {
        for name in self.tensors.keys() {
            let g = grads
                .get(name)
                .ok_or_else(|| WorkerError::MissingGradient { tensor: name.clone(), clock })?;
            self.checked_info(name, g.values().shape())?;
        }
        for name in grads.keys() {
            self.info(name)?;
        }
        Ok(())
    }

    /// Pushes the gradient of one tensor for `clock` (all its parts), without
    /// touching this worker's clock. Tensors with different policies can so
    /// advance independently.
    pub async fn push_tensor(&self, name: &str, clock: u64, grad: &ArrayD<f32>) -> Result<(), WorkerError> {
        let info = self.checked_info(name, grad.shape())?;
        let flat = contiguous(&grad.view());
        let pieces = info.pieces.iter().flatten().map(|piece| {
            let range = piece.offset as usize..(piece.offset + piece.len) as usize;
            let header = self.push_header(name, *piece, clock);
            (*piece, Outgoing::Push { header, values: &flat[range] })
        });
        self.push_pieces(name, pieces).await
    }

    /// Pushes each `(piece, request)`: pieces of different parts at once,
    /// those of one part one after the other (with two at a time, 8 workers
    /// got less throughput and their shard used more memory).
    async fn push_pieces<'a>(
        &self,
        name: &str,
        pieces: impl IntoIterator<Item = (Part, Outgoing<'a>)>,
    ) -> Result<(), WorkerError> {
        let mut by_shard: BTreeMap<u32, Vec<(Part, Outgoing<'a>)>> = BTreeMap::new();
        for (piece, outgoing) in pieces {
            by_shard.entry(piece.shard).or_default().push((piece, outgoing));
        }
        try_join_all(by_shard.into_values().map(|pieces| self.push_shard_pieces(name, pieces))).await?;
        Ok(())
    }

    /// Pushes `pieces` (all on one shard) one after the other.
    async fn push_shard_pieces(
        &self,
        name: &str,
        pieces: Vec<(Part, Outgoing<'_>)>,
    ) -> Result<(), WorkerError> {
        for (piece, outgoing) in pieces {
            self.push_part(name, piece, outgoing).await?;
        }
        Ok(())
    }

    /// Sends `outgoing`, the push of one part or piece `part` (retried as a whole).
    async fn push_part(&self, name: &str, part: Part, outgoing: Outgoing<'_>) -> Result<bool, WorkerError> {
        let outgoing = &outgoing;
        let channel = || self.data[part.shard as usize].clone();
        self.retrying("push", part.shard, Some(name), false, channel, |c, d| async move {
            let mut reply = self.send(c, frame::PUSH_PATH, outgoing, d).await?;
            let msg = reply.message().await?.ok_or_else(|| tonic::Status::internal("empty push reply"))?;
            let applied = pb::PushReply::decode(msg)
                .map_err(|e| tonic::Status::internal(format!("malformed push reply: {e}")))?
                .applied;
            if reply.message().await?.is_some() {
                return Err(tonic::Status::internal("a push reply with more than one message"));
            }
            Ok(applied)
        })
        .await
    }

    /// Waits until every live worker has completed `clock` clocks on every shard.
    pub async fn barrier(&self, clock: u64) -> Result<(), WorkerError> {
        let worker = self.cfg.worker;
        try_join_all((0..self.shards.len() as u32).map(|shard| {
            self.call("barrier", shard, None, true, move |mut c, d| async move {
                Ok(c.barrier(Self::request(pb::BarrierRequest { worker, clock }, d)).await?.into_inner())
            })
        }))
        .await?;
        Ok(())
    }

    /// Requests the consistent checkpoint at `clock` on every shard and
    /// returns its name. It will hold exactly the updates of clocks `< clock`
    /// of every worker; each shard captures its parts in memory when they
    /// reach `clock` and writes them in the background, so this returns at
    /// once. Every worker of a job may (and, in ssp and async, should)
    /// request it before pushing `clock`; requests for the same clock name
    /// the same checkpoint. Fails with `FAILED_PRECONDITION` when some update
    /// of clock `>= clock` is already applied, or when a shard has no
    /// checkpoint directory.
    pub async fn checkpoint(&mut self, clock: u64) -> Result<String, WorkerError> {
        let session = match self.session {
            Some(s) => s,
            None => {
                let s = self.status_of(0).await?.session;
                self.session = Some(s);
                s
            }
        };
        // Shards refuse a joined worker that missed a restart (its session is stale).
        let worker = self.joined.then_some(self.cfg.worker);
        let replies = try_join_all((0..self.shards.len() as u32).map(|shard| {
            self.call("checkpoint", shard, None, false, move |mut c, d| async move {
                Ok(c.checkpoint(Self::request(pb::CheckpointRequest { clock, session, worker }, d))
                    .await?
                    .into_inner())
            })
        }))
        .await?;
        Ok(replies.into_iter().next().map(|r| r.name).unwrap_or_default())
    }

    /// The state of checkpoint `name` on every shard; with `wait`, once each
    /// shard's file is durable or its write failed.
    pub async fn checkpoint_status(
        &self,
        name: &str,
        wait: bool,
    ) -> Result<Vec<pb::CheckpointStatusReply>, WorkerError> {
        try_join_all((0..self.shards.len() as u32).map(|shard| {
            let name = name.to_string();
            self.call("checkpoint_status", shard, None, wait, move |mut c, d| {
                let name = name.clone();
                async move {
                    let req = pb::CheckpointStatusRequest { name, wait };
                    Ok(c.checkpoint_status(Self::request(req, d)).await?.into_inner())
                }
            })
        }))
        .await
    }

    /// Waits until checkpoint `name` is complete: every shard's file durable
    /// and the manifest written. Fails, naming the shard and the cause, if a
    /// shard could not write its share.
    pub async fn wait_checkpoint(&self, name: &str) -> Result<CheckpointDone, WorkerError> {
        let replies = self.checkpoint_status(name, true).await?;
        for (shard, r) in replies.iter().enumerate() {
            if r.state() != pb::CheckpointState::Written {
                return Err(WorkerError::Checkpoint {
                    name: name.into(),
                    shard: shard as u32,
                    error: if r.error.is_empty() {
                        format!("state {:?}", r.state())
                    } else {
                        r.error.clone()
                    },
                });
            }
        }
        // The last shard to write its share writes the manifest before it reports.
        let replies = self.checkpoint_status(name, false).await?;
        let first = replies.first().cloned().unwrap_or_default();
        if !replies.iter().any(|r| r.complete) {
            return Err(WorkerError::Checkpoint {
                name: name.into(),
                shard: 0,
                error: format!("every shard file is written but {}/manifest.json is missing", first.dir),
            });
        }
        Ok(CheckpointDone {
            name: name.into(),
            dir: first.dir,
            clock: first.clock,
            bytes: replies.iter().map(|r| r.bytes).sum(),
        })
    }

    async fn status_of(&self, shard: u32) -> Result<pb::StatusReply, WorkerError> {
        self.call("status", shard, None, false, move |mut c, d| async move {
            Ok(c.status(Self::request(pb::StatusRequest {}, d)).await?.into_inner())
        })
        .await
    }

    /// The status of every shard.
    pub async fn status(&self) -> Result<Vec<pb::StatusReply>, WorkerError> {
        try_join_all((0..self.shards.len() as u32).map(|shard| {
            self.call("status", shard, None, false, move |mut c, d| async move {
                Ok(c.status(Self::request(pb::StatusRequest {}, d)).await?.into_inner())
            })
        }))
        .await
    }

    /// Sends a raw push stream to one shard (for tests of malformed input).
    pub async fn raw_push(
        &self,
        shard: u32,
        chunks: Vec<pb::PushChunk>,
    ) -> Result<pb::PushReply, tonic::Status> {
        let mut c = self.shards[shard as usize].clone();
        Ok(c.push(futures::stream::iter(chunks)).await?.into_inner())
    }
}

/// `grad`'s elements in logical order, borrowed when they already are.
fn contiguous<'a>(grad: &ArrayViewD<'a, f32>) -> std::borrow::Cow<'a, [f32]> {
    grad.to_slice().map(std::borrow::Cow::Borrowed).unwrap_or_else(|| grad.iter().copied().collect())
}

/// Combines the version vectors of a tensor's parts: per worker, the minimum,
/// i.e. the clocks applied to every part.
pub fn merge_versions(parts: &[Vec<i64>]) -> Vec<i64> {
    let width = parts.iter().map(Vec::len).max().unwrap_or(0);
    (0..width).map(|w| parts.iter().map(|p| p.get(w).copied().unwrap_or(-1)).min().unwrap_or(-1)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_versions_take_the_minimum() {
        assert_eq!(merge_versions(&[vec![3, 5, -1], vec![4, 2, 0]]), vec![3, 2, -1]);
        assert_eq!(merge_versions(&[]), Vec::<i64>::new());
    }
}
