//! Reading and writing gRPC messages on the HTTP/2 bodies of the shard's
//! frame-level handlers: request messages cut without copying, bounded in
//! size, every refusal a precise status with a reason for the metrics.

use std::collections::VecDeque;
use std::pin::Pin;

use bytes::Bytes;
use prost::Message as _;
use ps_proto::frame::{self, Deframer, FrameError, FramesBody};
use ps_proto::pb;
use ps_proto::rope::Segments;
use tonic::Status;

use crate::error::PsError;

/// A refused request: the status the client gets and the reason metrics count.
#[derive(Debug)]
pub(super) struct Rejected {
    pub(super) status: Status,
    pub(super) reason: &'static str,
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
pub(super) struct RequestMessages {
    body: tonic::body::Body,
    deframer: Deframer,
    what: &'static str,
    limit: usize,
}

impl RequestMessages {
    /// The messages of `body`, each at most `limit` bytes.
    pub(super) fn new(body: tonic::body::Body, what: &'static str, limit: usize) -> Self {
        Self { body, deframer: Deframer::new(limit), what, limit }
    }

    /// The next message, `None` at the end of the body. A message above the
    /// limit is `ResourceExhausted`; a malformed stream `InvalidArgument`.
    pub(super) async fn next(&mut self) -> Result<Option<Segments>, Rejected> {
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
    pub(super) async fn next(&mut self) -> Result<Option<(pb::PushChunk, Segments)>, Rejected> {
        let Some(msg) = self.0.next().await? else { return Ok(None) };
        let (fields, data) = frame::split_data(msg).map_err(|e| self.0.refused(e))?;
        let chunk = pb::PushChunk::decode(&fields[..]).map_err(|e| self.0.refused(e.into()))?;
        Ok(Some((chunk, data)))
    }
}

/// The next data frame of `body` (trailers are skipped), `None` at its end.
pub(super) async fn next_frame(body: &mut tonic::body::Body) -> Option<Result<Bytes, Status>> {
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
pub(super) async fn unary_request<M: prost::Message + Default>(
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
pub(super) fn ok_trailers() -> http::HeaderMap {
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    trailers
}

/// A gRPC reply of `frames` and an OK status.
pub(super) fn grpc_reply(frames: VecDeque<Bytes>) -> http::Response<tonic::body::Body> {
    grpc_response(tonic::body::Body::new(FramesBody::new(frames, Some(ok_trailers()))))
}

/// A gRPC reply with `body` (messages, then trailers).
pub(super) fn grpc_response(body: tonic::body::Body) -> http::Response<tonic::body::Body> {
    let mut reply = http::Response::new(body);
    reply
        .headers_mut()
        .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/grpc"));
    reply
}
