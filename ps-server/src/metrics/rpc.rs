//! Per-RPC metrics, recorded by a tower layer around every service of the
//! shard, so handlers neither time nor count themselves: requests by RPC
//! and gRPC code, latency from request to reply, payload bytes, and
//! refusals by reason.
//!
//! A reply says how it went. A handler's success carries [`Served`] (its
//! payload bytes) in the response extensions; a refusal's `Status` has a
//! [`Refused`] source naming its reason (tonic puts the `Status` of an
//! error reply in the extensions). A reply with neither was not made by a
//! handler (a request tonic could not decode, an unknown method, a missing
//! token) and is not recorded here. A `PushPull` is recorded as a push and
//! then a pull: a reply whose push succeeded carries [`FirstRpc`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry};
use ps_proto::frame::{PULL_MANY_PATH, PULL_PATH, PUSH_PATH, PUSH_PULL_PATH, STEP_PATH};
use ps_proto::pb::parameter_server_server::SERVICE_NAME;

use super::{code_name, latency_buckets, register};

/// The RPCs of the shard, as metric label values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rpc {
    /// `Join`.
    Join,
    /// `Leave`.
    Leave,
    /// `Declare`.
    Declare,
    /// `DeclareMany`.
    DeclareMany,
    /// `Push`.
    Push,
    /// `Pull`.
    Pull,
    /// `Step`: a step's pushes and pulls of several parts.
    Step,
    /// `PullMany`: pulls of several parts.
    PullMany,
    /// `Barrier`.
    Barrier,
    /// `Status`.
    Status,
    /// `Checkpoint`.
    Checkpoint,
    /// `CheckpointStatus`.
    CheckpointStatus,
    /// `Rewind`.
    Rewind,
}

impl Rpc {
    const ALL: [Rpc; 13] = [
        Rpc::Join,
        Rpc::Leave,
        Rpc::Declare,
        Rpc::DeclareMany,
        Rpc::Push,
        Rpc::Pull,
        Rpc::Step,
        Rpc::PullMany,
        Rpc::Barrier,
        Rpc::Status,
        Rpc::Checkpoint,
        Rpc::CheckpointStatus,
        Rpc::Rewind,
    ];

    /// The label value.
    pub const fn name(self) -> &'static str {
        match self {
            Rpc::Join => "join",
            Rpc::Leave => "leave",
            Rpc::Declare => "declare",
            Rpc::DeclareMany => "declare_many",
            Rpc::Push => "push",
            Rpc::Pull => "pull",
            Rpc::Step => "step",
            Rpc::PullMany => "pull_many",
            Rpc::Barrier => "barrier",
            Rpc::Status => "status",
            Rpc::Checkpoint => "checkpoint",
            Rpc::CheckpointStatus => "checkpoint_status",
            Rpc::Rewind => "rewind",
        }
    }

    /// The method's name in the `ParameterServer` service (`None` for
    /// those of the data service).
    const fn control_method(self) -> Option<&'static str> {
        Some(match self {
            Rpc::Join => "Join",
            Rpc::Leave => "Leave",
            Rpc::Declare => "Declare",
            Rpc::DeclareMany => "DeclareMany",
            Rpc::Barrier => "Barrier",
            Rpc::Status => "Status",
            Rpc::Checkpoint => "Checkpoint",
            Rpc::CheckpointStatus => "CheckpointStatus",
            Rpc::Rewind => "Rewind",
            Rpc::Push | Rpc::Pull | Rpc::Step | Rpc::PullMany => return None,
        })
    }

    /// The RPCs a request to `path` is recorded as, in order: one, or for
    /// `PushPull` a push then a pull; none for a path the shard does not serve.
    pub fn recorded_as(path: &str) -> &'static [Rpc] {
        match path {
            PUSH_PATH => &[Rpc::Push],
            PULL_PATH => &[Rpc::Pull],
            PUSH_PULL_PATH => &[Rpc::Push, Rpc::Pull],
            STEP_PATH => &[Rpc::Step],
            PULL_MANY_PATH => &[Rpc::PullMany],
            _ => {
                let method = path
                    .strip_prefix('/')
                    .and_then(|p| p.strip_prefix(SERVICE_NAME))
                    .and_then(|p| p.strip_prefix('/'));
                let found =
                    Rpc::ALL.iter().position(|rpc| rpc.control_method().is_some_and(|m| Some(m) == method));
                found.map_or(&[], |i| std::slice::from_ref(&Rpc::ALL[i]))
            }
        }
    }
}

/// The codes of DESIGN §5 (and `OK`): every RPC's series of
/// `ps_server_requests_total` with these exists, at 0, from the start.
const ANSWERED_CODES: [tonic::Code; 9] = [
    tonic::Code::Ok,
    tonic::Code::InvalidArgument,
    tonic::Code::NotFound,
    tonic::Code::AlreadyExists,
    tonic::Code::FailedPrecondition,
    tonic::Code::ResourceExhausted,
    tonic::Code::DeadlineExceeded,
    tonic::Code::Unavailable,
    tonic::Code::Aborted,
];

/// In a successful reply's extensions: the handler served the request,
/// moving this many tensor payload bytes.
#[derive(Clone, Copy, Debug, Default)]
pub struct Served {
    /// Tensor payload bytes received (push) or sent (pull).
    pub payload_bytes: u64,
}

/// The source of a refusal's `Status`: the reason the refusal is counted
/// under (a short, bounded label).
#[derive(Clone, Copy, Debug, thiserror::Error)]
#[error("refused: {0}")]
pub struct Refused(pub &'static str);

/// In the extensions of a reply recorded as two RPCs (`PushPull`: a push,
/// then a pull): the first succeeded, moving `payload_bytes`, and ended at
/// `ended`; the second is recorded from then on.
#[derive(Clone, Copy, Debug)]
pub struct FirstRpc {
    /// The first RPC's payload bytes.
    pub payload_bytes: u64,
    /// When the first RPC ended.
    pub ended: Instant,
}

/// Children of one RPC's metrics, resolved at start.
#[derive(Clone, Debug)]
struct RpcHandles {
    ok: IntCounter,
    bytes: IntCounter,
    latency: Histogram,
}

/// The per-RPC metrics of one shard. Every child on the success path is
/// resolved at start, so recording a success allocates nothing.
#[derive(Debug)]
pub struct RpcMetrics {
    enabled: bool,
    requests: IntCounterVec,
    rejected: IntCounterVec,
    rpcs: [RpcHandles; 13],
}

impl RpcMetrics {
    /// Registers the per-RPC series in `registry`; refusals are also
    /// counted in `rejected`, by reason. When not `enabled`, nothing is recorded.
    pub(super) fn new(registry: &Registry, rejected: IntCounterVec, enabled: bool) -> Self {
        let requests = register(
            registry,
            IntCounterVec::new(
                Opts::new("ps_server_requests_total", "Requests by RPC and gRPC status code"),
                &["rpc", "code"],
            )
            .expect("valid metric"),
        );
        let bytes = register(
            registry,
            IntCounterVec::new(
                Opts::new(
                    "ps_server_payload_bytes_total",
                    "Tensor payload bytes received (push) or sent (pull)",
                ),
                &["rpc"],
            )
            .expect("valid metric"),
        );
        let latency = register(
            registry,
            HistogramVec::new(
                HistogramOpts::new("ps_server_rpc_duration_seconds", "Time from request to reply, by RPC")
                    .buckets(latency_buckets()),
                &["rpc"],
            )
            .expect("valid metric"),
        );
        for rpc in Rpc::ALL {
            for code in ANSWERED_CODES {
                requests.with_label_values(&[rpc.name(), code_name(code)]);
            }
        }
        let rpcs = Rpc::ALL.map(|rpc| RpcHandles {
            ok: requests.with_label_values(&[rpc.name(), "ok"]),
            bytes: bytes.with_label_values(&[rpc.name()]),
            latency: latency.with_label_values(&[rpc.name()]),
        });
        Self { enabled, requests, rejected, rpcs }
    }

    /// Records a finished request: its latency, payload bytes, and outcome,
    /// `Err` holding the code and reason of a refusal.
    pub fn record(
        &self,
        rpc: Rpc,
        elapsed: Duration,
        payload_bytes: u64,
        outcome: Result<(), (tonic::Code, &str)>,
    ) {
        if !self.enabled {
            return;
        }
        // `rpcs` is built from `Rpc::ALL`, which lists the variants in declaration order.
        let h = &self.rpcs[rpc as usize];
        h.latency.observe(elapsed.as_secs_f64());
        h.bytes.inc_by(payload_bytes);
        match outcome {
            Ok(()) => h.ok.inc(),
            Err((code, reason)) => {
                self.requests.with_label_values(&[rpc.name(), code_name(code)]).inc();
                self.rejected.with_label_values(&[reason]).inc();
            }
        }
    }

    /// Adds `payload_bytes` to `rpc`'s payload, for a reply that moves
    /// bytes after its headers were recorded (a `Step` streams its parts).
    pub fn add_payload(&self, rpc: Rpc, payload_bytes: u64) {
        if self.enabled {
            self.rpcs[rpc as usize].bytes.inc_by(payload_bytes);
        }
    }

    /// Records `reply`, the answer to a request to `rpcs` (see
    /// [`Rpc::recorded_as`]) that arrived at `started`.
    fn record_reply<B>(&self, rpcs: &[Rpc], started: Instant, reply: &http::Response<B>) {
        let ended = Instant::now();
        let mut rpcs = rpcs.iter().copied();
        let mut from = started;
        if let (Some(first), true) = (reply.extensions().get::<FirstRpc>(), rpcs.len() > 1)
            && let Some(rpc) = rpcs.next()
        {
            let elapsed = first.ended.saturating_duration_since(from);
            self.record(rpc, elapsed, first.payload_bytes, Ok(()));
            from = first.ended;
        }
        let Some(rpc) = rpcs.next() else { return };
        let elapsed = ended.saturating_duration_since(from);
        if let Some(served) = reply.extensions().get::<Served>() {
            self.record(rpc, elapsed, served.payload_bytes, Ok(()));
        } else if let Some(status) = reply.extensions().get::<tonic::Status>()
            && let Some(Refused(reason)) =
                std::error::Error::source(status).and_then(|s| s.downcast_ref::<Refused>())
        {
            self.record(rpc, elapsed, 0, Err((status.code(), reason)));
        }
    }
}

/// The tower layer that records every RPC of a shard in its [`RpcMetrics`].
#[derive(Clone, Debug)]
pub struct RpcMetricsLayer {
    metrics: Arc<RpcMetrics>,
}

impl RpcMetricsLayer {
    /// Records into `metrics`.
    pub fn new(metrics: Arc<RpcMetrics>) -> Self {
        Self { metrics }
    }
}

impl<S> tower::Layer<S> for RpcMetricsLayer {
    type Service = RecordRpcs<S>;

    fn layer(&self, inner: S) -> RecordRpcs<S> {
        RecordRpcs { inner, metrics: Arc::clone(&self.metrics) }
    }
}

/// A service whose requests are recorded in the shard's [`RpcMetrics`] when
/// their reply is ready (see the module doc for what is recorded).
#[derive(Clone, Debug)]
pub struct RecordRpcs<S> {
    inner: S,
    metrics: Arc<RpcMetrics>,
}

type Recorded<R, E> = Pin<Box<dyn Future<Output = Result<R, E>> + Send>>;

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for RecordRpcs<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Send + 'static,
{
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    type Future = Recorded<Self::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let rpcs = Rpc::recorded_as(req.uri().path());
        let started = Instant::now();
        let reply = self.inner.call(req);
        if rpcs.is_empty() || !self.metrics.enabled {
            return Box::pin(reply);
        }
        let metrics = Arc::clone(&self.metrics);
        Box::pin(async move {
            let reply = reply.await?;
            metrics.record_reply(rpcs, started, &reply);
            Ok(reply)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rpc_handles_are_indexed_by_variant() {
        for (i, rpc) in Rpc::ALL.iter().enumerate() {
            assert_eq!(*rpc as usize, i, "{rpc:?}");
        }
    }

    #[test]
    fn paths_are_recorded_as_their_rpcs() {
        assert_eq!(Rpc::recorded_as("/ps.v1.ParameterServer/CheckpointStatus"), &[Rpc::CheckpointStatus]);
        assert_eq!(Rpc::recorded_as("/ps.v1.ParameterServer/Join"), &[Rpc::Join]);
        assert_eq!(Rpc::recorded_as(PUSH_PATH), &[Rpc::Push]);
        assert_eq!(Rpc::recorded_as(PUSH_PULL_PATH), &[Rpc::Push, Rpc::Pull]);
        assert!(Rpc::recorded_as("/ps.v1.ParameterServer/Push").is_empty());
        assert!(Rpc::recorded_as("/ps.v1.ParameterServer/Nope").is_empty());
        assert!(Rpc::recorded_as("/other.Service/Join").is_empty());
    }
}
