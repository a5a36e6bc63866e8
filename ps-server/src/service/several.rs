//! The data service's handlers for several tensor parts in one request:
//! `Step` (one worker's pushes of a clock, then its pulls of the next) and
//! `PullMany`. Their replies stream each part as soon as its policy
//! releases it, so a part held back by one tensor's rule never delays
//! another's; each part's header names its tensor.
//!
//! A step's pushes are applied one by one in request order, each as a
//! `Push` would be, and each pushed part is pulled as soon as its push is
//! applied, so the reply flows back while later pushes still arrive. The
//! first refusal ends the request with its status (alone, at the first
//! push; at the end of the reply's stream, later) and leaves the pushes
//! before it applied (their version vectors show it, and a retry of the
//! whole request finds them duplicates).

use std::collections::{HashSet, VecDeque};
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt};
use ps_proto::frame;
use ps_proto::pb;
use ps_proto::wire::{self, WireDtype};
use tokio::sync::mpsc;

use super::Service;
use super::data::{LeasedValues, PullReply, dtype};
use super::messages::{PushFrames, Rejected, grpc_response, ok_trailers, refused, served, unary_request};
use crate::error::{PsError, shown};
use crate::tensor::PushOutcome;

/// Frames of a several-part reply queued before its sender waits for the
/// transport.
const REPLY_DEPTH: usize = 8;

/// What a `Step`'s pushes so far had in common, and their payload bytes.
#[derive(Default)]
struct StepPushes {
    /// The worker and clock of its first push: every push must have them.
    of: Option<(u32, u64)>,
    /// Tensors pushed so far: each at most once.
    seen: HashSet<String>,
    bytes: u64,
}

/// What the task that pulls the parts hands the reply body.
enum Out {
    Frame(Bytes),
    /// The status, once every part is sent or one failed.
    End(http::HeaderMap),
}

/// A reply body fed frame by frame by the task that pulls its parts. The
/// small frames ready when the transport asks for more are packed into
/// one ([`frame::Packer`]), so a burst of small parts is one write.
struct PartsBody {
    frames: mpsc::Receiver<Out>,
    packer: frame::Packer,
    /// Frames ready to go out, in order.
    ready: VecDeque<http_body::Frame<Bytes>>,
    /// The feeding task ended the reply: once `ready` is out, so is the body.
    ended: bool,
}

impl PartsBody {
    fn new(frames: mpsc::Receiver<Out>) -> Self {
        Self { frames, packer: frame::Packer::default(), ready: VecDeque::new(), ended: false }
    }

    /// Takes what the feeding task has sent so far into `ready`, packing
    /// small frames, until a frame is ready to go out or nothing more is.
    fn take_sent(&mut self, cx: &mut Context<'_>) {
        while self.ready.is_empty() && !self.ended {
            match self.frames.poll_recv(cx) {
                Poll::Ready(Some(Out::Frame(data))) => {
                    self.ready.extend(self.packer.push(data).map(http_body::Frame::data));
                }
                Poll::Ready(end) => {
                    let trailers = match end {
                        Some(Out::End(trailers)) => trailers,
                        _ => status_trailers(tonic::Status::internal(
                            "the shard stopped sending this reply's parts",
                        )),
                    };
                    self.ready.extend(self.packer.flush().map(http_body::Frame::data));
                    self.ready.push_back(http_body::Frame::trailers(trailers));
                    self.ended = true;
                }
                Poll::Pending => {
                    self.ready.extend(self.packer.flush().map(http_body::Frame::data));
                    return;
                }
            }
        }
    }
}

impl http_body::Body for PartsBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        self.take_sent(cx);
        match self.ready.pop_front() {
            Some(frame) => Poll::Ready(Some(Ok(frame))),
            None if self.ended => Poll::Ready(None),
            None => Poll::Pending,
        }
    }
}

/// `status` as the trailers of a reply.
fn status_trailers(status: tonic::Status) -> http::HeaderMap {
    let mut headers = status.into_http::<()>().into_parts().0.headers;
    headers.remove(http::header::CONTENT_TYPE);
    headers
}

impl Service {
    /// Serves one `Step`. Its first push is applied before the reply
    /// starts, so a request refused there gets its status alone; then a
    /// task applies the other pushes in order while it pulls each pushed
    /// part at the next clock and streams it as soon as it is released, so
    /// the parts of a large step flow back while the rest still arrive.
    pub(crate) async fn step_frames(&self, body: tonic::body::Body) -> http::Response<tonic::body::Body> {
        let mut stream = PushFrames::new(body, self.shard.config().max_message_bytes);
        let mut step = StepPushes::default();
        let first = match self.unless_stopped(self.next_push(&mut stream, &mut step)).await {
            Ok(Some(first)) => first,
            Ok(None) => {
                return refused(PsError::InvalidArgument("step request has no pushes".into()).into());
            }
            Err(r) => return refused(r),
        };
        let (tx, frames) = mpsc::channel(REPLY_DEPTH);
        let service = self.clone();
        tokio::spawn(async move { service.finish_step(stream, step, first, tx).await });
        served(grpc_response(tonic::body::Body::new(PartsBody::new(frames))), 0)
    }

    /// Applies the next push of a `Step` and returns the pull that answers
    /// it; `None` at the end of the request.
    async fn next_push(
        &self,
        stream: &mut PushFrames,
        step: &mut StepPushes,
    ) -> Result<Option<(pb::PullRequest, bool)>, Rejected> {
        let Some((mut first, data)) = stream.next().await? else { return Ok(None) };
        let header = first.header.take().ok_or_else(|| {
            PsError::InvalidArgument(
                "step request: a push's first chunk has no header (each push starts with its header)".into(),
            )
        })?;
        match step.of {
            Some((worker, clock)) if (worker, clock) != (header.worker, header.clock) => {
                return Err(Rejected::from(PsError::InvalidArgument(format!(
                    "step request of worker {worker} at clock {clock}: tensor {} is pushed as worker {} at clock {}; one request carries one worker's step",
                    shown(&header.tensor),
                    header.worker,
                    header.clock
                )))
                .of_tensor(&header.tensor));
            }
            _ => step.of = Some((header.worker, header.clock)),
        }
        if !step.seen.insert(header.tensor.clone()) {
            return Err(Rejected::from(PsError::InvalidArgument(format!(
                "step request of worker {} at clock {}: tensor {} is pushed twice",
                header.worker,
                header.clock,
                shown(&header.tensor)
            )))
            .of_tensor(&header.tensor));
        }
        let (bytes, outcome) = self
            .push_one_of_several((first, data), &header, stream)
            .await
            .map_err(|r| r.of_tensor(&header.tensor))?;
        step.bytes += bytes;
        let pull = pb::PullRequest {
            worker: Some(header.worker),
            clock: header.clock.saturating_add(1),
            tensor: header.tensor,
            dtype: header.dtype,
        };
        Ok(Some((pull, outcome == PushOutcome::Dropped)))
    }

    /// The rest of a `Step` after its first push: the other pushes, in
    /// order, while the pulls of those applied stream back through `tx`.
    async fn finish_step(
        self,
        mut stream: PushFrames,
        mut step: StepPushes,
        first: (pb::PullRequest, bool),
        tx: mpsc::Sender<Out>,
    ) {
        let (pulls_tx, pulls) = mpsc::unbounded_channel();
        let _ = pulls_tx.send(Ok(first));
        let pushes = async {
            loop {
                match self.unless_stopped(self.next_push(&mut stream, &mut step)).await {
                    // Once the client is gone its pulls are not wanted, but
                    // every push it sent is still applied.
                    Ok(Some(pull)) => {
                        let _ = pulls_tx.send(Ok(pull));
                    }
                    Ok(None) => break,
                    Err(r) => {
                        self.shard.metrics().refused_in_reply(r.reason);
                        let _ = pulls_tx.send(Err(r));
                        break;
                    }
                }
            }
            drop(pulls_tx);
        };
        let (parts, pull_bytes) = futures::join!(pushes, self.stream_parts(pulls, &tx)).1;
        self.shard.metrics().step_served(parts, step.bytes + pull_bytes);
    }

    /// Serves one `PullMany`: the reply streams each part as it is released.
    pub(crate) async fn pull_many_frames(
        &self,
        body: tonic::body::Body,
    ) -> http::Response<tonic::body::Body> {
        let limit = self.shard.config().max_message_bytes;
        let pulls = self
            .unless_stopped(async {
                let req = unary_request::<pb::PullManyRequest>(body, "pull_many request", limit).await?;
                pull_many_requests(req)
            })
            .await;
        match pulls {
            Ok(pulls) => {
                self.shard.metrics().pull_many_served(pulls.len());
                let bytes = self.payload_bytes(&pulls);
                served(self.parts_reply(pulls), bytes)
            }
            Err(r) => refused(r),
        }
    }

    /// Payload bytes the replies to `pulls` carry (of the parts that exist).
    fn payload_bytes(&self, pulls: &[pb::PullRequest]) -> u64 {
        pulls
            .iter()
            .filter_map(|p| {
                let cell = self.shard.tensor(&p.tensor).ok()?;
                Some(cell.meta().len * dtype(p.dtype).ok()?.size() as u64)
            })
            .sum()
    }

    /// A reply that streams the part of each of `pulls` once it is
    /// released, then an OK status; or, at the first pull refused, that
    /// pull's status (the parts sent before it are whole).
    fn parts_reply(&self, pulls: Vec<pb::PullRequest>) -> http::Response<tonic::body::Body> {
        let (tx, frames) = mpsc::channel(REPLY_DEPTH);
        let service = self.clone();
        tokio::spawn(async move {
            let (pulls_tx, requests) = mpsc::unbounded_channel();
            for pull in pulls {
                let _ = pulls_tx.send(Ok((pull, false)));
            }
            drop(pulls_tx);
            service.stream_parts(requests, &tx).await;
        });
        grpc_response(tonic::body::Body::new(PartsBody::new(frames)))
    }

    /// Pulls each part `requests` names as it comes (with whether the
    /// step's push of it was dropped), sends each into `tx` once released,
    /// and ends the reply: with an OK status once
    /// `requests` closes and every part is sent, or with the first refusal
    /// (of a pull, or one `requests` passes on). Stops as soon as the
    /// client is gone, so its pulls wait for no one any longer. Returns the
    /// parts sent and their payload bytes.
    async fn stream_parts(
        &self,
        mut requests: mpsc::UnboundedReceiver<Result<(pb::PullRequest, bool), Rejected>>,
        tx: &mpsc::Sender<Out>,
    ) -> (usize, u64) {
        let mut pending = FuturesUnordered::new();
        let (mut sent, mut bytes, mut open) = (0, 0, true);
        let end = |status: tonic::Status| Out::End(status_trailers(status));
        // A client that is gone (its reply dropped) waits for nothing:
        // dropping the pending pulls cancels their waits.
        let gone = tx.closed();
        tokio::pin!(gone);
        loop {
            tokio::select! {
                () = &mut gone, if open || !pending.is_empty() => return (sent, bytes),
                request = requests.recv(), if open => match request {
                    Some(Ok((req, dropped))) => pending.push(async move {
                        let tensor = req.tensor.clone();
                        let pulled = self.unless_stopped(self.pull_inner(req)).await;
                        (tensor.clone(), dropped, pulled.map_err(|r| r.of_tensor(&tensor)))
                    }),
                    Some(Err(r)) => {
                        let _ = tx.send(end(r.into())).await;
                        return (sent, bytes);
                    }
                    None => open = false,
                },
                Some((tensor, dropped, pulled)) = pending.next(), if !pending.is_empty() => {
                    let (mut reply, payload) = match pulled {
                        Ok(pulled) => pulled,
                        Err(r) => {
                            let _ = tx.send(end(r.into())).await;
                            return (sent, bytes);
                        }
                    };
                    reply.header.tensor = tensor;
                    reply.header.dropped = dropped;
                    for data in self.part_frames(reply) {
                        if tx.send(Out::Frame(data)).await.is_err() {
                            return (sent, bytes); // the client is gone
                        }
                    }
                    sent += 1;
                    bytes += payload;
                }
                else => break,
            }
        }
        let _ = tx.send(Out::End(ok_trailers())).await;
        (sent, bytes)
    }

    /// One pulled part as reply frames: its chunks, the first with its
    /// header. f32 data shares the snapshot (its lease ends with the last
    /// frame); f16 and bf16 are encoded here.
    fn part_frames(
        &self,
        PullReply { header, values, lease, dtype }: PullReply,
    ) -> Box<dyn Iterator<Item = Bytes> + Send> {
        let chunk_bytes =
            ps_proto::chunk::chunk_bytes_for(values.len() * dtype.size(), self.shard.config().chunk_bytes);
        let mut header = Some(header);
        let fields = move |offset| pb::PullChunk { header: header.take(), offset, data: Bytes::new() };
        let values = LeasedValues { values, _lease: lease };
        if dtype == WireDtype::F32 {
            let payload = wire::shared_f32_bytes(values);
            return Box::new(frame::data_frames(&payload, chunk_bytes, dtype.size(), fields).into_iter());
        }
        // Encoded a chunk at a time, as the reply's channel takes them, so
        // that a large part is never held encoded whole.
        let chunks =
            frame::encoded_chunks(values, dtype, chunk_bytes, fields).flat_map(|(head, data)| [head, data]);
        Box::new(chunks.filter(|b| !b.is_empty()))
    }
}

/// The pulls of a `PullMany`: at least one, each tensor at most once.
fn pull_many_requests(req: pb::PullManyRequest) -> Result<Vec<pb::PullRequest>, Rejected> {
    if req.tensors.is_empty() {
        return Err(PsError::InvalidArgument("pull_many request names no tensor".into()).into());
    }
    let mut seen = HashSet::new();
    let mut pulls = Vec::with_capacity(req.tensors.len());
    for tensor in req.tensors {
        if !seen.insert(tensor.clone()) {
            return Err(PsError::InvalidArgument(format!(
                "pull_many request names tensor {} twice",
                shown(&tensor)
            ))
            .into());
        }
        pulls.push(pb::PullRequest { worker: req.worker, clock: req.clock, tensor, dtype: req.dtype });
    }
    Ok(pulls)
}
