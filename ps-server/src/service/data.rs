//! The data service's handlers: `Push`, `Pull` and `PushPull` read from
//! and written to HTTP/2 frames directly. A push is one call into the shard
//! ([`Shard::push_with`](crate::shard::Shard::push_with)), which accepts its
//! header and range; the chunks are then reassembled and checked here (chunk
//! sequence, non-finite values) before the shard applies them. A pull reply
//! is encoded chunk by chunk from the shard's snapshot.

use std::collections::VecDeque;
use std::time::Instant;

use bytes::Bytes;
use ndarray::ArcArray1;
use ps_proto::chunk::Reassembly;
use ps_proto::frame::{self, EncodingBody};
use ps_proto::pb;
use ps_proto::rope::Segments;
use ps_proto::wire::{self, WireDtype};
use tonic::Status;
use tracing::Instrument;

use super::Service;
use super::messages::{
    PushFrames, Rejected, grpc_reply, grpc_response, ok_trailers, refused, served, unary_request,
};
use crate::budget::Reserved;
use crate::error::{PsError, shown};
use crate::metrics::FirstRpc;
use crate::readers::ReadLease;
use crate::shard::{PushHead, PushTarget};
use crate::tensor::{Gradient, PushOutcome};

pub(super) fn dtype(raw: i32) -> Result<WireDtype, PsError> {
    WireDtype::from_i32(raw)
        .ok_or_else(|| PsError::InvalidArgument(format!("unknown wire dtype value {raw}")))
}

/// A pull's answer before framing: its header and the snapshot it encodes.
pub(super) struct PullReply {
    pub(super) header: pb::PullHeader,
    pub(super) values: ArcArray1<f32>,
    /// Counts the reply as reading `values` until all of it is sent.
    pub(super) lease: ReadLease,
    pub(super) dtype: WireDtype,
}

/// A pull reply's values and its lease, which ends with the last frame
/// (f32) or the encoding body (f16, bf16) that shares them.
pub(super) struct LeasedValues {
    pub(super) values: ArcArray1<f32>,
    pub(super) _lease: ReadLease,
}

impl AsRef<[f32]> for LeasedValues {
    fn as_ref(&self) -> &[f32] {
        crate::array::as_slice(&self.values)
    }
}

/// Where the chunks of a push end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Ends {
    /// With the request stream: a `Push` or `PushPull`, whose later chunks
    /// carry no header.
    AtStreamEnd,
    /// At the next chunk with a header, or the stream's end: one push of a `Step`.
    AtNextHeader,
}

/// How long a push stream may go without a chunk before it is dropped.
pub const PUSH_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

impl Service {
    /// Applies one push; returns the reply and the push's header.
    pub(super) async fn push_inner(
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
        let head = push_head(&header);
        let first = (first.offset, first_data);
        let received = |target| self.receive(target, &header, dtype, first, &mut stream, Ends::AtStreamEnd);
        let outcome = self.shard.push_with(head, received).await?;
        let grad_bytes = header.len * dtype.size() as u64;
        let reply = pb::PushReply {
            applied: outcome == PushOutcome::Counted,
            dropped: outcome == PushOutcome::Dropped,
        };
        Ok(((reply, header), grad_bytes))
    }

    /// Applies the push whose header chunk `first` is, reading its other
    /// chunks from `stream` up to the next header chunk (a step's next
    /// push), which is put back. Returns the push's payload bytes and
    /// what became of it.
    pub(super) async fn push_one_of_several(
        &self,
        (first, first_data): (pb::PushChunk, Segments),
        header: &pb::PushHeader,
        stream: &mut PushFrames,
    ) -> Result<(u64, PushOutcome), Rejected> {
        let dtype = dtype(header.dtype)?;
        let head = push_head(header);
        let first = (first.offset, first_data);
        let received = |target| self.receive(target, header, dtype, first, stream, Ends::AtNextHeader);
        let outcome = self.shard.push_with(head, received).await?;
        Ok((header.len * dtype.size() as u64, outcome))
    }

    /// Reads the gradient of an accepted push into one f32 buffer, once the
    /// shard's push budget has room for it: its first chunk `first` (offset
    /// and data) is in, the rest of its chunks come from `stream`. Checks
    /// the chunk sequence and, unless the part allows them, refuses
    /// non-finite values. Returns the gradient and its share of the budget,
    /// to be held until it is applied.
    async fn receive(
        &self,
        target: PushTarget,
        header: &pb::PushHeader,
        dtype: WireDtype,
        first: (u64, Segments),
        stream: &mut PushFrames,
        ends: Ends,
    ) -> Result<(Gradient, Reserved), Rejected> {
        let meta = target.meta();
        // Read nothing more until the decoded gradient (f32, whatever the
        // wire dtype) fits the shard's budget: that buffer is what the push holds.
        let reserved = self
            .push_budget
            .reserve(header.len * 4)
            .await
            .ok_or(PsError::ShuttingDown { shard: self.shard.config().shard_id })?;
        let chunk_err = |source| PsError::Chunk { tensor: meta.name.clone(), worker: header.worker, source };
        let mut payload = match target.piece() {
            Some(_) => {
                let buffer = self.shard.piece_buffers().take(meta.piece_len as usize);
                Reassembly::with_buffer(header.len, dtype, buffer)
            }
            None => Reassembly::new(header.len, dtype),
        };
        payload.push_segments(first.0, &first.1).map_err(chunk_err)?;
        // A push that stops sending gives its share of the budget back.
        let idle = |_| Rejected {
            status: Status::deadline_exceeded(format!(
                "tensor {}, worker {}: no push chunk for {PUSH_IDLE_TIMEOUT:?}",
                shown(&meta.name),
                header.worker
            )),
            reason: "idle",
        };
        while let Some((chunk, data)) =
            tokio::time::timeout(PUSH_IDLE_TIMEOUT, stream.next()).await.map_err(idle)??
        {
            if chunk.header.is_some() && ends == Ends::AtNextHeader {
                stream.put_back((chunk, data));
                break;
            }
            if chunk.header.is_some() {
                return Err(PsError::InvalidArgument(format!(
                    "tensor {}, worker {}: a push chunk after the first carries a header",
                    shown(&meta.name),
                    header.worker
                ))
                .into());
            }
            payload.push_segments(chunk.offset, &data).map_err(chunk_err)?;
        }
        let non_finite = payload.first_non_finite();
        let grad = Gradient { values: payload.finish().map_err(chunk_err)? };
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
        Ok((grad, reserved))
    }

    pub(super) async fn pull_inner(&self, req: pb::PullRequest) -> Result<(PullReply, u64), Rejected> {
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
            rounds: snapshot.rounds,
            dropped: false,
            tensor: String::new(),
        };
        Ok((PullReply { header, values: snapshot.values, lease, dtype }, payload_bytes))
    }
}

impl Service {
    /// Serves one `Push` from its HTTP/2 request body; never fails the
    /// connection: every error becomes the reply's status.
    pub(crate) async fn push_frames(&self, body: tonic::body::Body) -> http::Response<tonic::body::Body> {
        let stream = PushFrames::new(body, self.shard.config().max_message_bytes);
        match self.unless_stopped(self.push_inner(stream)).await {
            Ok(((reply, _), bytes)) => served(grpc_reply(VecDeque::from([frame::message(&reply)])), bytes),
            Err(r) => refused(r),
        }
    }

    /// Serves one `Pull`: its payload goes out as its own frames (see
    /// [`pull_reply`](Self::pull_reply)).
    pub(crate) async fn pull_frames(&self, body: tonic::body::Body) -> http::Response<tonic::body::Body> {
        let limit = self.shard.config().max_message_bytes;
        let pulled = self
            .unless_stopped(async {
                let req = unary_request::<pb::PullRequest>(body, "pull request", limit).await?;
                self.pull_inner(req).await
            })
            .await;
        match pulled {
            Ok((reply, bytes)) => served(self.pull_reply(reply), bytes),
            Err(r) => refused(r),
        }
    }

    /// Serves one `PushPull`: the push, then, if it succeeded, the pull of
    /// the same part at the next clock, as [`pull_frames`](Self::pull_frames)
    /// would serve it. Recorded as one push and one pull ([`FirstRpc`]).
    pub(crate) async fn push_pull_frames(
        &self,
        body: tonic::body::Body,
    ) -> http::Response<tonic::body::Body> {
        let stream = PushFrames::new(body, self.shard.config().max_message_bytes);
        let (header, push_bytes) = match self.unless_stopped(self.push_inner(stream)).await {
            Ok(((_, header), bytes)) => (header, bytes),
            Err(r) => return refused(r),
        };
        let pushed = FirstRpc { payload_bytes: push_bytes, ended: Instant::now() };
        let req = pb::PullRequest {
            worker: Some(header.worker),
            clock: header.clock.saturating_add(1),
            tensor: header.tensor,
            dtype: header.dtype,
        };
        let mut reply = match self.unless_stopped(self.pull_inner(req)).await {
            Ok((reply, bytes)) => served(self.pull_reply(reply), bytes),
            Err(r) => refused(r),
        };
        reply.extensions_mut().insert(pushed);
        reply
    }

    /// A pull's reply: chunks whose data are their own frames. f32 data is
    /// the snapshot's own memory; f16 and bf16 are encoded chunk by chunk as
    /// the transport takes them.
    ///
    /// The reply's lease ends when the last of its frames is dropped (f32)
    /// or its body is (f16, bf16): once the transport has written it all.
    pub(super) fn pull_reply(
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
            let fields = move |offset| pb::PullChunk { header: header.take(), offset, data: Bytes::new() };
            let values = LeasedValues { values, _lease: lease };
            let body = EncodingBody::new(values, dtype, chunk_bytes, fields, Some(ok_trailers()));
            grpc_response(tonic::body::Body::new(body))
        }
    }
}

/// What the shard needs of a push's header to apply it.
fn push_head(header: &pb::PushHeader) -> PushHead<'_> {
    PushHead {
        tensor: &header.tensor,
        worker: header.worker,
        clock: header.clock,
        offset: header.offset,
        len: header.len,
    }
}
