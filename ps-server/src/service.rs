//! The gRPC service: thin glue that decodes a request, asks the shard, and
//! encodes the answer. Every error leaves through `From<PsError> for Status`.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures::Stream;
use prost::Message as _;
use ps_proto::chunk::Reassembly;
use ps_proto::frame::{self, Deframer, EncodingBody, FrameError, FramesBody};
use ps_proto::pb;
use ps_proto::pb::parameter_server_server::ParameterServer;
use ps_proto::placement::{self, Part};
use ps_proto::rope::Segments;
use ps_proto::wire::{self, WireDtype};
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use crate::budget::PushBudget;
use crate::convert;
use crate::error::PsError;
use crate::metrics::Rpc;
use crate::readers::ReadLease;
use crate::shard::Shard;
use crate::tensor::Gradient;

/// The `ParameterServer` gRPC service over one shard.
#[derive(Clone, Debug)]
pub struct Service {
    shard: Arc<Shard>,
    push_budget: PushBudget,
}

impl Service {
    /// A service answering for `shard`.
    pub fn new(shard: Arc<Shard>) -> Self {
        let push_budget = PushBudget::new(shard.config().max_push_bytes_in_flight);
        Self { shard, push_budget }
    }
}

fn dtype(raw: i32) -> Result<WireDtype, PsError> {
    WireDtype::from_i32(raw)
        .ok_or_else(|| PsError::InvalidArgument(format!("unknown wire dtype value {raw}")))
}

/// A refused request: the status the client gets and the reason metrics count.
#[derive(Debug)]
struct Rejected {
    status: Status,
    reason: &'static str,
}

impl From<PsError> for Rejected {
    fn from(e: PsError) -> Self {
        Self { reason: e.reason(), status: e.into() }
    }
}

impl From<Status> for Rejected {
    fn from(status: Status) -> Self {
        Self { status, reason: "transport" }
    }
}

/// The gRPC messages of a request body, cut from its frames without
/// copying; `what` names them in refusals.
struct RequestMessages {
    body: tonic::body::Body,
    deframer: Deframer,
    what: &'static str,
    limit: usize,
}

impl RequestMessages {
    /// The messages of `body`, each at most `limit` bytes.
    fn new(body: tonic::body::Body, what: &'static str, limit: usize) -> Self {
        Self { body, deframer: Deframer::new(limit), what, limit }
    }

    /// The next message, `None` at the end of the body. A message above the
    /// limit is `ResourceExhausted`; a malformed stream `InvalidArgument`.
    async fn next(&mut self) -> Result<Option<Segments>, Rejected> {
        loop {
            if let Some(msg) = self.deframer.next_message().map_err(|e| self.refused(e))? {
                return Ok(Some(msg));
            }
            match next_frame(&mut self.body).await {
                Some(Ok(data)) => self.deframer.push(data),
                Some(Err(status)) => return Err(status.into()),
                None => {
                    self.deframer.finish().map_err(|e| self.refused(e))?;
                    return Ok(None);
                }
            }
        }
    }

    /// The status a malformed request stream gets.
    fn refused(&self, e: FrameError) -> Rejected {
        let what = self.what;
        match e {
            FrameError::TooLarge { .. } => Rejected {
                status: Status::resource_exhausted(format!(
                    "{what} exceeds the message limit of {} bytes: {e}",
                    self.limit
                )),
                reason: "too_large",
            },
            FrameError::Compressed => {
                Rejected { status: Status::unimplemented(format!("{what}: {e}")), reason: "compressed" }
            }
            FrameError::Truncated { .. } | FrameError::Malformed(_) => {
                Rejected { status: Status::invalid_argument(format!("{what}: {e}")), reason: "malformed" }
            }
        }
    }
}

/// The chunks of one push: each chunk's data stays in the frames it arrived
/// in until it is decoded into the part's buffer.
pub(crate) struct PushFrames(RequestMessages);

impl PushFrames {
    /// The chunks of `body`, each at most `limit` bytes.
    pub(crate) fn new(body: tonic::body::Body, limit: usize) -> Self {
        Self(RequestMessages::new(body, "push chunk", limit))
    }

    /// The next chunk (its fields, with `data` empty, and its data), `None`
    /// at the end of the stream.
    async fn next(&mut self) -> Result<Option<(pb::PushChunk, Segments)>, Rejected> {
        let Some(msg) = self.0.next().await? else { return Ok(None) };
        let (fields, data) = frame::split_data(msg).map_err(|e| self.0.refused(e))?;
        let chunk = pb::PushChunk::decode(&fields[..]).map_err(|e| self.0.refused(e.into()))?;
        Ok(Some((chunk, data)))
    }
}

/// The next data frame of `body` (trailers are skipped), `None` at its end.
async fn next_frame(body: &mut tonic::body::Body) -> Option<Result<Bytes, Status>> {
    use http_body::Body as _;
    loop {
        let frame = std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await?;
        match frame {
            Ok(frame) => match frame.into_data() {
                Ok(data) => return Some(Ok(data)),
                Err(_trailers) => continue,
            },
            Err(status) => return Some(Err(status)),
        }
    }
}

/// The one message of a unary request body.
async fn unary_request<M: prost::Message + Default>(
    body: tonic::body::Body,
    what: &'static str,
    limit: usize,
) -> Result<M, Rejected> {
    let mut messages = RequestMessages::new(body, what, limit);
    match messages.next().await? {
        Some(msg) => M::decode(msg).map_err(|e| messages.refused(e.into())),
        None => Err(Rejected {
            status: Status::invalid_argument(format!("{what}: the request has no message")),
            reason: "malformed",
        }),
    }
}

/// The trailers of a successful call.
fn ok_trailers() -> http::HeaderMap {
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    trailers
}

/// A gRPC reply of `frames` and an OK status.
fn grpc_reply(frames: VecDeque<Bytes>) -> http::Response<tonic::body::Body> {
    grpc_response(tonic::body::Body::new(FramesBody::new(frames, Some(ok_trailers()))))
}

/// A gRPC reply with `body` (messages, then trailers).
fn grpc_response(body: tonic::body::Body) -> http::Response<tonic::body::Body> {
    let mut reply = http::Response::new(body);
    reply
        .headers_mut()
        .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/grpc"));
    reply
}

/// A pull's answer before framing: its header and the snapshot it encodes.
struct PullReply {
    header: pb::PullHeader,
    values: Arc<Vec<f32>>,
    /// Counts the reply as reading `values` until all of it is sent.
    lease: ReadLease,
    dtype: WireDtype,
}

/// A pull reply's values and its lease, which ends with the last frame
/// that shares them.
struct LeasedValues {
    values: Arc<Vec<f32>>,
    _lease: ReadLease,
}

impl AsRef<[f32]> for LeasedValues {
    fn as_ref(&self) -> &[f32] {
        &self.values
    }
}

/// How long a push stream may go without a chunk before it is dropped.
pub const PUSH_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The generated `Pull` and `PushPull` stream type; never produced, as
/// [`DataPath`](crate::data_path::DataPath) serves both.
type PullStream = Pin<Box<dyn Stream<Item = Result<pb::PullChunk, Status>> + Send>>;

impl Service {
    /// Records a finished request in the metrics and hands out its result.
    /// Runs `inner` unless the job has stopped (then `ABORTED`), and records the outcome.
    async fn serve<T>(
        &self,
        rpc: Rpc,
        inner: impl std::future::Future<Output = Result<(T, u64), Rejected>>,
    ) -> Result<T, Status> {
        let started = Instant::now();
        let result = match self.shard.check_running() {
            Ok(()) => inner.await,
            Err(e) => Err(e.into()),
        };
        self.finish(rpc, started, result)
    }

    fn finish<T>(&self, rpc: Rpc, started: Instant, result: Result<(T, u64), Rejected>) -> Result<T, Status> {
        let metrics = self.shard.metrics();
        match result {
            Ok((value, bytes)) => {
                metrics.request(rpc, started.elapsed(), bytes, Ok(()));
                Ok(value)
            }
            Err(r) => {
                metrics.request(rpc, started.elapsed(), 0, Err((r.status.code(), r.reason)));
                Err(r.status)
            }
        }
    }

    async fn join_inner(
        &self,
        req: Request<pb::JoinRequest>,
    ) -> Result<(Response<pb::JoinReply>, u64), Rejected> {
        let worker = req.into_inner().worker;
        let _lease = self.shard.lease(worker);
        let clock = self.shard.join(worker)?;
        let cfg = self.shard.config();
        Ok((
            Response::new(pb::JoinReply {
                clock,
                shard: cfg.shard_id,
                num_shards: cfg.num_shards,
                num_workers: cfg.num_workers,
                session: self.shard.session(),
            }),
            0,
        ))
    }

    async fn leave_inner(
        &self,
        req: Request<pb::LeaveRequest>,
    ) -> Result<(Response<pb::LeaveReply>, u64), Rejected> {
        let worker = req.into_inner().worker;
        let _lease = self.shard.lease(worker);
        self.shard.leave(worker)?;
        Ok((Response::new(pb::LeaveReply {}), 0))
    }

    async fn declare_inner(
        &self,
        req: Request<pb::DeclareRequest>,
    ) -> Result<(Response<pb::DeclareReply>, u64), Rejected> {
        let spec = req
            .into_inner()
            .spec
            .ok_or_else(|| PsError::InvalidArgument("declare request has no tensor spec".into()))?;
        let decl = convert::declaration(spec, self.shard.config().staleness)?;
        let d = self.shard.declare(decl)?;
        let reply =
            pb::DeclareReply { offset: d.offset, len: d.len, created: d.created, piece_len: d.piece_len };
        Ok((Response::new(reply), 0))
    }

    /// Applies one push; returns the reply and the push's header.
    async fn push_inner(
        &self,
        mut stream: PushFrames,
    ) -> Result<((pb::PushReply, pb::PushHeader), u64), Rejected> {
        let (first, first_data) = stream
            .next()
            .await?
            .ok_or_else(|| PsError::InvalidArgument("push stream has no chunks".into()))?;
        let header = first
            .header
            .ok_or_else(|| PsError::InvalidArgument("the first push chunk has no header".into()))?;
        let dtype = dtype(header.dtype)?;
        let cell = self.shard.tensor(&header.tensor)?;
        let meta = cell.meta();
        let whole = Part { shard: self.shard.config().shard_id, offset: meta.offset, len: meta.len };
        let piece = if (header.offset, header.len) == (meta.offset, meta.len) {
            None
        } else {
            let index = placement::piece_index(whole, meta.piece_len, header.offset, header.len);
            Some(index.ok_or_else(|| PsError::WrongRange {
                tensor: meta.name.clone(),
                shard: self.shard.config().shard_id,
                expected_offset: meta.offset,
                expected_end: meta.offset + meta.len,
                piece_len: meta.piece_len,
                got_offset: header.offset,
                got_end: header.offset.saturating_add(header.len),
            })?)
        };
        let _lease = self.shard.lease(header.worker);
        self.shard.check_worker(header.worker)?;
        // Read nothing more until the decoded gradient (f32, whatever the
        // wire dtype) fits the shard's budget: that buffer is what the push holds.
        let _reserved = self
            .push_budget
            .reserve(header.len * 4)
            .await
            .ok_or(PsError::ShuttingDown { shard: self.shard.config().shard_id })?;
        let chunk_err = |source| PsError::Chunk { tensor: meta.name.clone(), worker: header.worker, source };
        let mut payload = match piece {
            Some(_) => {
                let buffer = self.shard.piece_buffers().take(meta.piece_len as usize);
                Reassembly::with_buffer(header.len, dtype, buffer)
            }
            None => Reassembly::new(header.len, dtype),
        };
        payload.push_segments(first.offset, &first_data).map_err(chunk_err)?;
        // A push that stops sending gives its share of the budget back.
        let idle = |_| Rejected {
            status: Status::deadline_exceeded(format!(
                "tensor {:?}, worker {}: no push chunk for {PUSH_IDLE_TIMEOUT:?}",
                meta.name, header.worker
            )),
            reason: "idle",
        };
        while let Some((chunk, data)) =
            tokio::time::timeout(PUSH_IDLE_TIMEOUT, stream.next()).await.map_err(idle)??
        {
            if chunk.header.is_some() {
                return Err(PsError::InvalidArgument(format!(
                    "tensor {:?}, worker {}: a push chunk after the first carries a header",
                    meta.name, header.worker
                ))
                .into());
            }
            payload.push_segments(chunk.offset, &data).map_err(chunk_err)?;
        }
        let non_finite = payload.first_non_finite();
        let grad = Gradient { values: payload.finish().map_err(chunk_err)? };
        let grad_bytes = header.len * dtype.size() as u64;
        if !meta.allow_non_finite
            && let Some((index, value)) = non_finite
        {
            return Err(PsError::NonFinite {
                tensor: meta.name.clone(),
                worker: header.worker,
                clock: header.clock,
                index: header.offset + index as u64,
                value,
            }
            .into());
        }
        let span =
            tracing::debug_span!("push", tensor = %meta.name, worker = header.worker, clock = header.clock);
        let applied =
            self.shard.push(&cell, header.worker, header.clock, piece, grad).instrument(span).await?;
        Ok(((pb::PushReply { applied }, header), grad_bytes))
    }

    async fn pull_inner(&self, req: pb::PullRequest) -> Result<(PullReply, u64), Rejected> {
        let dtype = dtype(req.dtype)?;
        let _lease = req.worker.and_then(|w| self.shard.lease(w));
        // The part first, then the check: a rewind in between is then refused.
        let cell = self.shard.tensor(&req.tensor)?;
        if let Some(worker) = req.worker {
            self.shard.check_worker(worker)?;
        }
        let span =
            tracing::debug_span!("pull", tensor = %req.tensor, worker = ?req.worker, clock = req.clock);
        let (snapshot, lease) = self.shard.pull(&cell, req.worker, req.clock).instrument(span).await?;
        let (offset, len) = (cell.meta().offset, cell.meta().len);
        let payload_bytes = len * dtype.size() as u64;
        let header = pb::PullHeader {
            offset,
            len,
            dtype: pb::WireDtype::from(dtype) as i32,
            versions: snapshot.versions,
            total_bytes: payload_bytes,
            waited_us: snapshot.waited.as_micros().min(u128::from(u64::MAX)) as u64,
        };
        Ok((PullReply { header, values: snapshot.values, lease, dtype }, payload_bytes))
    }

    async fn barrier_inner(
        &self,
        req: Request<pb::BarrierRequest>,
    ) -> Result<(Response<pb::BarrierReply>, u64), Rejected> {
        let req = req.into_inner();
        let _lease = self.shard.lease(req.worker);
        let span = tracing::debug_span!("barrier", worker = req.worker, clock = req.clock);
        self.shard.barrier(req.worker, req.clock).instrument(span).await?;
        Ok((Response::new(pb::BarrierReply {}), 0))
    }

    async fn status_inner(
        &self,
        _req: Request<pb::StatusRequest>,
    ) -> Result<(Response<pb::StatusReply>, u64), Rejected> {
        let cfg = self.shard.config();
        let origin = self.shard.origin();
        let tensors = self
            .shard
            .status()
            .into_iter()
            .map(|t| {
                let (policy, staleness) = convert::policy_to_pb(t.meta.policy);
                pb::TensorStatus {
                    name: t.meta.name,
                    shape: t.meta.shape,
                    offset: t.meta.offset,
                    len: t.meta.len,
                    policy: policy as i32,
                    staleness,
                    versions: t.versions,
                    applied_clock: t.applied_clock,
                }
            })
            .collect();
        Ok((
            Response::new(pb::StatusReply {
                shard: cfg.shard_id,
                num_shards: cfg.num_shards,
                num_workers: cfg.num_workers,
                default_policy: convert::policy_to_pb(cfg.default_policy()).0 as i32,
                live_workers: self.shard.live_workers(),
                tensors,
                session: self.shard.session(),
                restored_clock: origin.as_ref().map(|o| o.clock),
                restored_from: origin.map(|o| o.checkpoint).unwrap_or_default(),
            }),
            0,
        ))
    }
}

impl Service {
    /// Serves one `Push` from its HTTP/2 request body; never fails the
    /// connection: every error becomes the reply's status.
    pub(crate) async fn push_frames(&self, body: tonic::body::Body) -> http::Response<tonic::body::Body> {
        let stream = PushFrames::new(body, self.shard.config().max_message_bytes);
        match self.serve(Rpc::Push, self.push_inner(stream)).await {
            Ok((reply, _)) => grpc_reply(VecDeque::from([frame::message(&reply)])),
            Err(status) => status.into_http(),
        }
    }

    /// Serves one `Pull`: its payload goes out as its own frames (see
    /// [`pull_reply`](Self::pull_reply)).
    pub(crate) async fn pull_frames(&self, body: tonic::body::Body) -> http::Response<tonic::body::Body> {
        let limit = self.shard.config().max_message_bytes;
        let pulled = self
            .serve(Rpc::Pull, async {
                let req = unary_request::<pb::PullRequest>(body, "pull request", limit).await?;
                self.pull_inner(req).await
            })
            .await;
        match pulled {
            Ok(reply) => self.pull_reply(reply),
            Err(status) => status.into_http(),
        }
    }

    /// Serves one `PushPull`: the push, then, if it succeeded, the pull of
    /// the same part at the next clock, as [`pull_frames`](Self::pull_frames)
    /// would serve it. Recorded as one push and one pull.
    pub(crate) async fn push_pull_frames(
        &self,
        body: tonic::body::Body,
    ) -> http::Response<tonic::body::Body> {
        let stream = PushFrames::new(body, self.shard.config().max_message_bytes);
        let header = match self.serve(Rpc::Push, self.push_inner(stream)).await {
            Ok((_, header)) => header,
            Err(status) => return status.into_http(),
        };
        let req = pb::PullRequest {
            worker: Some(header.worker),
            clock: header.clock.saturating_add(1),
            tensor: header.tensor,
            dtype: header.dtype,
        };
        match self.serve(Rpc::Pull, self.pull_inner(req)).await {
            Ok(reply) => self.pull_reply(reply),
            Err(status) => status.into_http(),
        }
    }

    /// A pull's reply: chunks whose data are their own frames. f32 data is
    /// the snapshot's own memory; f16 and bf16 are encoded chunk by chunk as
    /// the transport takes them.
    ///
    /// The reply's lease ends when the last of its frames is dropped (f32)
    /// or its body is (f16, bf16): once the transport has written it all.
    fn pull_reply(
        &self,
        PullReply { header, values, lease, dtype }: PullReply,
    ) -> http::Response<tonic::body::Body> {
        let chunk_bytes =
            ps_proto::chunk::chunk_bytes_for(values.len() * dtype.size(), self.shard.config().chunk_bytes);
        let mut header = Some(header);
        if dtype == WireDtype::F32 {
            let fields = move |offset| pb::PullChunk { header: header.take(), offset, data: Bytes::new() };
            let payload = wire::shared_f32_bytes(LeasedValues { values, _lease: lease });
            grpc_reply(frame::data_frames(&payload, chunk_bytes, dtype.size(), fields))
        } else {
            let fields = move |offset| {
                let _reading = &lease;
                pb::PullChunk { header: header.take(), offset, data: Bytes::new() }
            };
            let body = EncodingBody::new(values, dtype, chunk_bytes, fields, Some(ok_trailers()));
            grpc_response(tonic::body::Body::new(body))
        }
    }

    async fn checkpoint_inner(
        &self,
        req: Request<pb::CheckpointRequest>,
    ) -> Result<(Response<pb::CheckpointReply>, u64), Rejected> {
        let req = req.into_inner();
        let _span = tracing::info_span!("checkpoint", clock = req.clock, session = req.session).entered();
        let cut = self.shard.checkpoint(req.clock, req.session, req.worker)?;
        let dir = self.shard.config().checkpoint_dir.as_ref().map(|d| d.join(&cut.name));
        let dir = dir.map(|d| d.display().to_string()).unwrap_or_default();
        Ok((Response::new(pb::CheckpointReply { name: cut.name, dir }), 0))
    }

    async fn rewind_inner(
        &self,
        req: Request<pb::RewindRequest>,
    ) -> Result<(Response<pb::RewindReply>, u64), Rejected> {
        let req = req.into_inner();
        let shard = Arc::clone(&self.shard);
        // Loading reads and verifies files: keep it off the async workers.
        let rewound =
            tokio::task::spawn_blocking(move || shard.rewind(&req.checkpoint, req.cause, req.worker))
                .await
                .map_err(|e| Status::internal(format!("rewind task failed: {e}")))??;
        Ok((
            Response::new(pb::RewindReply {
                clock: rewound.clock,
                session: rewound.session,
                rewound: rewound.rewound,
            }),
            0,
        ))
    }

    async fn checkpoint_status_inner(
        &self,
        req: Request<pb::CheckpointStatusRequest>,
    ) -> Result<(Response<pb::CheckpointStatusReply>, u64), Rejected> {
        use crate::checkpoint::registry::CutState;
        let req = req.into_inner();
        let status = self.shard.checkpoint_status(&req.name, req.wait).await?;
        let mut reply = pb::CheckpointStatusReply {
            dir: status.dir.display().to_string(),
            complete: status.complete,
            clock: status.cut.clock,
            ..Default::default()
        };
        let state = match status.state {
            CutState::Capturing { captured, expected } => {
                reply.captured = captured as u32;
                reply.expected = expected as u32;
                pb::CheckpointState::Capturing
            }
            CutState::Writing => pb::CheckpointState::Writing,
            CutState::Written { bytes } => {
                reply.bytes = bytes;
                pb::CheckpointState::Written
            }
            CutState::Failed(error) => {
                reply.error = error;
                pb::CheckpointState::Failed
            }
        };
        reply.state = state as i32;
        Ok((Response::new(reply), 0))
    }
}

#[tonic::async_trait]
impl ParameterServer for Service {
    async fn checkpoint(
        &self,
        req: Request<pb::CheckpointRequest>,
    ) -> Result<Response<pb::CheckpointReply>, Status> {
        self.serve(Rpc::Checkpoint, self.checkpoint_inner(req)).await
    }

    async fn checkpoint_status(
        &self,
        req: Request<pb::CheckpointStatusRequest>,
    ) -> Result<Response<pb::CheckpointStatusReply>, Status> {
        self.serve(Rpc::CheckpointStatus, self.checkpoint_status_inner(req)).await
    }

    async fn rewind(&self, req: Request<pb::RewindRequest>) -> Result<Response<pb::RewindReply>, Status> {
        self.serve(Rpc::Rewind, self.rewind_inner(req)).await
    }

    async fn join(&self, req: Request<pb::JoinRequest>) -> Result<Response<pb::JoinReply>, Status> {
        self.serve(Rpc::Join, self.join_inner(req)).await
    }

    async fn leave(&self, req: Request<pb::LeaveRequest>) -> Result<Response<pb::LeaveReply>, Status> {
        self.serve(Rpc::Leave, self.leave_inner(req)).await
    }

    async fn declare(&self, req: Request<pb::DeclareRequest>) -> Result<Response<pb::DeclareReply>, Status> {
        self.serve(Rpc::Declare, self.declare_inner(req)).await
    }

    async fn push(&self, _req: Request<Streaming<pb::PushChunk>>) -> Result<Response<pb::PushReply>, Status> {
        Err(Status::unimplemented("Push is served by the data path (ps_server::data_path::DataPath)"))
    }

    type PullStream = PullStream;

    async fn pull(&self, _req: Request<pb::PullRequest>) -> Result<Response<PullStream>, Status> {
        Err(Status::unimplemented("Pull is served by the data path (ps_server::data_path::DataPath)"))
    }

    type PushPullStream = PullStream;

    async fn push_pull(
        &self,
        _req: Request<Streaming<pb::PushChunk>>,
    ) -> Result<Response<PullStream>, Status> {
        Err(Status::unimplemented("PushPull is served by the data path (ps_server::data_path::DataPath)"))
    }

    async fn barrier(&self, req: Request<pb::BarrierRequest>) -> Result<Response<pb::BarrierReply>, Status> {
        self.serve(Rpc::Barrier, self.barrier_inner(req)).await
    }

    async fn status(&self, req: Request<pb::StatusRequest>) -> Result<Response<pb::StatusReply>, Status> {
        let started = Instant::now();
        self.finish(Rpc::Status, started, self.status_inner(req).await)
    }
}
