//! The data service's handlers for several tensor parts in one request:
//! `Step` (one worker's pushes of a clock, then its pulls of the next) and
//! `PullMany`. Their replies stream each part as soon as its policy
//! releases it, so a part held back by one tensor's rule never delays
//! another's; each part's header names its tensor.
//!
//! A step's pushes are applied one by one in request order, each as a
//! `Push` would be; the first refusal ends the request with its status and
//! leaves the pushes before it applied (their version vectors show it, and
//! a retry of the whole request finds them duplicates).

use std::collections::HashSet;
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

/// Frames of a several-part reply queued before its sender waits for the
/// transport.
const REPLY_DEPTH: usize = 8;

/// What the task that pulls the parts hands the reply body.
enum Out {
    Frame(Bytes),
    /// The status, once every part is sent or one failed.
    End(http::HeaderMap),
}

/// A reply body fed frame by frame by the task that pulls its parts.
struct PartsBody {
    frames: mpsc::Receiver<Out>,
    ended: bool,
}

impl http_body::Body for PartsBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        let frame = match std::task::ready!(self.frames.poll_recv(cx)) {
            Some(Out::Frame(data)) => http_body::Frame::data(data),
            Some(Out::End(trailers)) => {
                self.ended = true;
                http_body::Frame::trailers(trailers)
            }
            None => {
                self.ended = true;
                let status = tonic::Status::internal("the shard stopped sending this reply's parts");
                http_body::Frame::trailers(status_trailers(status))
            }
        };
        Poll::Ready(Some(Ok(frame)))
    }
}

/// `status` as the trailers of a reply.
fn status_trailers(status: tonic::Status) -> http::HeaderMap {
    let mut headers = status.into_http::<()>().into_parts().0.headers;
    headers.remove(http::header::CONTENT_TYPE);
    headers
}

impl Service {
    /// Serves one `Step`: its pushes, then (if every one was applied) the
    /// reply streaming its parts pulled at the next clock.
    pub(crate) async fn step_frames(&self, body: tonic::body::Body) -> http::Response<tonic::body::Body> {
        let mut stream = PushFrames::new(body, self.shard.config().max_message_bytes);
        let (pulls, push_bytes) = match self.unless_stopped(self.step_pushes(&mut stream)).await {
            Ok(pushed) => pushed,
            Err(r) => return refused(r),
        };
        self.shard.metrics().step_served(pulls.len());
        let pull_bytes = self.payload_bytes(&pulls);
        served(self.parts_reply(pulls), push_bytes + pull_bytes)
    }

    /// Applies the pushes of a `Step`, in order, and returns the pulls
    /// that answer it with the pushes' payload bytes.
    async fn step_pushes(&self, stream: &mut PushFrames) -> Result<(Vec<pb::PullRequest>, u64), Rejected> {
        let mut pulls: Vec<pb::PullRequest> = Vec::new();
        let mut seen = HashSet::new();
        let mut bytes = 0;
        while let Some((mut first, data)) = stream.next().await? {
            let header = first.header.take().ok_or_else(|| {
                PsError::InvalidArgument(
                    "step request: a push's first chunk has no header (each push starts with its header)"
                        .into(),
                )
            })?;
            if let Some(p) = pulls.first()
                && (p.worker, p.clock) != (Some(header.worker), header.clock + 1)
            {
                return Err(PsError::InvalidArgument(format!(
                    "step request of worker {:?} at clock {}: tensor {} is pushed as worker {} at clock {}; one request carries one worker's step",
                    p.worker,
                    p.clock - 1,
                    shown(&header.tensor),
                    header.worker,
                    header.clock
                ))
                .into());
            }
            if !seen.insert(header.tensor.clone()) {
                return Err(PsError::InvalidArgument(format!(
                    "step request of worker {} at clock {}: tensor {} is pushed twice",
                    header.worker,
                    header.clock,
                    shown(&header.tensor)
                ))
                .into());
            }
            bytes += self.push_one_of_several((first, data), &header, stream).await?;
            pulls.push(pb::PullRequest {
                worker: Some(header.worker),
                clock: header.clock.saturating_add(1),
                tensor: header.tensor,
                dtype: header.dtype,
            });
        }
        if pulls.is_empty() {
            return Err(PsError::InvalidArgument("step request has no pushes".into()).into());
        }
        Ok((pulls, bytes))
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
        tokio::spawn(async move { service.send_parts(pulls, tx).await });
        grpc_response(tonic::body::Body::new(PartsBody { frames, ended: false }))
    }

    async fn send_parts(self, pulls: Vec<pb::PullRequest>, tx: mpsc::Sender<Out>) {
        let mut pending: FuturesUnordered<_> = pulls
            .into_iter()
            .map(|req| async {
                let tensor = req.tensor.clone();
                (tensor, self.unless_stopped(self.pull_inner(req)).await)
            })
            .collect();
        while let Some((tensor, pulled)) = pending.next().await {
            let mut reply = match pulled {
                Ok((reply, _)) => reply,
                Err(r) => {
                    let _ = tx.send(Out::End(status_trailers(r.into()))).await;
                    return;
                }
            };
            reply.header.tensor = tensor;
            for data in self.part_frames(reply) {
                if tx.send(Out::Frame(data)).await.is_err() {
                    return; // the client is gone
                }
            }
        }
        let _ = tx.send(Out::End(ok_trailers())).await;
    }

    /// One pulled part as reply frames: its chunks, the first with its
    /// header. f32 data shares the snapshot (its lease ends with the last
    /// frame); f16 and bf16 are encoded here.
    fn part_frames(&self, PullReply { header, values, lease, dtype }: PullReply) -> Vec<Bytes> {
        let chunk_bytes =
            ps_proto::chunk::chunk_bytes_for(values.len() * dtype.size(), self.shard.config().chunk_bytes);
        let mut header = Some(header);
        let fields = move |offset| pb::PullChunk { header: header.take(), offset, data: Bytes::new() };
        let values = LeasedValues { values, _lease: lease };
        if dtype == WireDtype::F32 {
            let payload = wire::shared_f32_bytes(values);
            frame::data_frames(&payload, chunk_bytes, dtype.size(), fields).into()
        } else {
            frame::encoded_chunks(values.as_ref(), dtype, chunk_bytes, fields)
                .flat_map(|(head, data)| [head, data])
                .filter(|b| !b.is_empty())
                .collect()
        }
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
