//! The shard connections, and the one way every request to a shard is
//! made: with a deadline, again while it fails transiently (as the
//! [`RetryPolicy`] allows), and, when it fails for good, as a
//! [`WorkerError`] naming the operation, the shard and the tensor.
//!
//! [`Shards::retrying`] is that one way. [`Shards::call`] makes one control
//! RPC through it, [`Shards::broadcast`] the same control RPC to every
//! shard at once; the data path's requests are [`Attempt`]s of their own.

use std::future::Future;
use std::time::Duration;

use futures::future::try_join_all;
use ps_proto::pb::parameter_server_client::ParameterServerClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::auth::AddToken;
use crate::config::WorkerConfig;
use crate::data_path::DataChannel;
use crate::error::{Restart, WorkerError};
use crate::retry::RetryPolicy;
use crate::waiting::{Waiting, chain};

/// A shard's gRPC client, sending the bearer token with every request.
pub(crate) type Client = ParameterServerClient<InterceptedService<Channel, AddToken>>;

/// Every shard's connections, and the settings they were made with.
#[derive(Clone, Debug)]
pub(crate) struct Shards {
    cfg: WorkerConfig,
    /// Per shard, the client of the control RPCs (join, declare, checkpoint, ...).
    control: Vec<Client>,
    /// Per shard, the channel `Push`, `Pull` and `PushPull` travel on (the data path).
    data: Vec<DataChannel>,
}

/// Why one attempt of a request failed.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The shard's or the transport's status: tried again if it is transient.
    Status(tonic::Status),
    /// The reply broke the protocol: never tried again.
    Protocol(String),
}

impl From<tonic::Status> for Failure {
    fn from(status: tonic::Status) -> Self {
        Failure::Status(status)
    }
}

/// One attempt of a request, which [`Shards::retrying`] makes again while
/// it fails transiently. Any `FnMut(Duration) -> impl Future` is one.
pub(crate) trait Attempt {
    /// What a successful attempt returns.
    type Output;

    /// Makes the attempt; `deadline` is the one sent to the shard.
    fn run(&mut self, deadline: Duration) -> impl Future<Output = Result<Self::Output, Failure>> + Send;
}

impl<F, Fut, T> Attempt for F
where
    F: FnMut(Duration) -> Fut,
    Fut: Future<Output = Result<T, Failure>> + Send,
{
    type Output = T;

    fn run(&mut self, deadline: Duration) -> impl Future<Output = Result<T, Failure>> + Send {
        self(deadline)
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
    if let Some(restart) = Restart::from_status(&status) {
        return WorkerError::ShardRestarted { op, shard, restart, message: status.message().to_string() };
    }
    // A request of several parts names none; its refusal names the part.
    let tensor = tensor.map(str::to_string).or_else(|| ps_proto::frame::refused_tensor(&status));
    WorkerError::Rpc { op, shard, tensor, attempts, status }
}

/// How long a plaintext connection waits to learn whether the shard
/// expects TLS; a plaintext shard answers at once.
const PROBE_WITHIN: Duration = Duration::from_secs(2);

impl Shards {
    /// Connects to every shard of `cfg.cluster`, retrying while shards start.
    pub(crate) async fn connect(cfg: WorkerConfig) -> Result<Self, WorkerError> {
        let mut control = Vec::new();
        let mut data = Vec::new();
        for (id, addr) in cfg.cluster.shards.iter().enumerate() {
            let (client, channel) = Self::connect_shard(&cfg, id as u32, addr).await?;
            control.push(client);
            data.push(channel);
        }
        Ok(Self { cfg, control, data })
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
        let mut waiting = Waiting::new(cfg.worker, shard, addr, "connect", cfg.retry.give_up_after);
        let channel = loop {
            match endpoint.connect().await {
                Ok(c) => break c,
                Err(e) if !cfg.retry.allows_another(attempt, waiting.failing_for()) => {
                    return Err(WorkerError::Connect { shard, addr: addr.into(), source: e });
                }
                Err(e) => {
                    waiting.failed(&chain(&e));
                    tokio::time::sleep(cfg.retry.backoff(attempt)).await;
                    attempt += 1;
                }
            }
        };
        waiting.done();
        if cfg.tls.is_none() && crate::probe::expects_tls(addr, PROBE_WITHIN.min(cfg.rpc_timeout)).await {
            return Err(WorkerError::ExpectsTls { shard, addr: addr.into() });
        }
        let channel = InterceptedService::new(channel, AddToken::new(cfg.auth_token.as_ref()));
        let client = ParameterServerClient::new(channel.clone())
            .max_decoding_message_size(cfg.max_message_bytes)
            .max_encoding_message_size(cfg.max_message_bytes);
        Ok((client, channel))
    }

    /// The settings the connections were made with.
    pub(crate) fn config(&self) -> &WorkerConfig {
        &self.cfg
    }

    /// Number of shards.
    pub(crate) fn count(&self) -> u32 {
        self.control.len() as u32
    }

    /// The data-path channel to `shard`.
    pub(crate) fn data(&self, shard: u32) -> DataChannel {
        self.data[shard as usize].clone()
    }

    /// The deadline of a request, by whether it may wait on other workers.
    pub(crate) fn deadline(&self, waits_on_others: bool) -> Duration {
        if waits_on_others { self.cfg.wait_timeout } else { self.cfg.rpc_timeout }
    }

    /// Makes `attempt` against `shard` until it succeeds, fails for good
    /// (a status that is not transient, a broken reply, no reply within
    /// its deadline) or the retry policy gives up. Retries and final
    /// errors are recorded in the worker's metrics under `op`.
    pub(crate) async fn retrying<A: Attempt>(
        &self,
        op: &'static str,
        shard: u32,
        tensor: Option<&str>,
        waits_on_others: bool,
        mut attempt: A,
    ) -> Result<A::Output, WorkerError> {
        let deadline = self.deadline(waits_on_others);
        let timeout = || WorkerError::Timeout { op, shard, tensor: tensor.map(Into::into), after: deadline };
        let mut attempts = 1;
        let addr = self.cfg.cluster.shards.get(shard as usize).map_or("?", String::as_str);
        let mut waiting = Waiting::new(self.cfg.worker, shard, addr, op, self.cfg.retry.give_up_after);
        loop {
            let status =
                match tokio::time::timeout(deadline + Duration::from_secs(1), attempt.run(deadline)).await {
                    Ok(Ok(v)) => {
                        waiting.done();
                        return Ok(v);
                    }
                    Ok(Err(Failure::Protocol(detail))) => {
                        return Err(WorkerError::Protocol {
                            shard,
                            tensor: tensor.unwrap_or_default().into(),
                            detail,
                        });
                    }
                    // The deadline sent in `grpc-timeout` expired on the server
                    // (tonic reports that as CANCELLED "Timeout expired").
                    Ok(Err(Failure::Status(status))) if is_server_timeout(&status) => {
                        tonic::Status::deadline_exceeded(format!(
                            "the deadline of {deadline:?} expired on the server"
                        ))
                    }
                    Ok(Err(Failure::Status(status))) => classify(status),
                    Err(_) => return Err(timeout()),
                };
            if !self.cfg.retry.allows_another(attempts, waiting.failing_for())
                || !RetryPolicy::is_transient(status.code(), waits_on_others)
            {
                if let Some(m) = &self.cfg.metrics {
                    m.error(op, status.code());
                }
                if status.code() == tonic::Code::DeadlineExceeded {
                    return Err(timeout());
                }
                return Err(rpc_err(op, shard, tensor, attempts, status));
            }
            if let Some(m) = &self.cfg.metrics {
                m.retry(op);
            }
            waiting.failed(&format!("{:?}: {}", status.code(), status.message()));
            tokio::time::sleep(self.cfg.retry.backoff(attempts)).await;
            attempts += 1;
        }
    }

    /// Sends `request` to `shard` with `send` (one of the control RPCs),
    /// retrying as [`retrying`](Self::retrying) does; returns the reply.
    /// `send` may refuse a reply by returning a status of its own.
    pub(crate) async fn call<Req, T, F, Fut>(
        &self,
        op: &'static str,
        shard: u32,
        tensor: Option<&str>,
        waits_on_others: bool,
        request: &Req,
        send: F,
    ) -> Result<T, WorkerError>
    where
        Req: Clone,
        T: Send,
        F: Fn(Client, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>> + Send,
    {
        let client = &self.control[shard as usize];
        let attempt = |deadline: Duration| {
            let mut req = tonic::Request::new(request.clone());
            req.set_timeout(deadline);
            let reply = send(client.clone(), req);
            async move { Ok::<_, Failure>(reply.await?.into_inner()) }
        };
        self.retrying(op, shard, tensor, waits_on_others, attempt).await
    }

    /// Sends the same `request` to every shard at once with `send`, each
    /// retried as [`retrying`](Self::retrying) does; returns the replies in
    /// shard order, or the first error.
    pub(crate) async fn broadcast<Req, T, F, Fut>(
        &self,
        op: &'static str,
        waits_on_others: bool,
        request: Req,
        send: F,
    ) -> Result<Vec<T>, WorkerError>
    where
        Req: Clone,
        T: Send,
        F: Fn(Client, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>> + Send,
    {
        let (request, send) = (&request, &send);
        try_join_all(
            (0..self.count()).map(|shard| self.call(op, shard, None, waits_on_others, request, send)),
        )
        .await
    }
}
