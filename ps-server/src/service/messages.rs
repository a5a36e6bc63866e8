//! Reading and writing gRPC messages on the HTTP/2 bodies of the shard's
//! frame-level handlers: requests are read by [`ps_proto::frame::MessageReader`]
//! (cut without copying, bounded in size); here every refusal becomes a
//! precise status with a reason for the metrics.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use ps_proto::frame::{FrameError, FramesBody, GRPC_CONTENT_TYPE, MessageReader, ReadError};
use ps_proto::pb;
use ps_proto::rope::Segments;
use tonic::Status;

use crate::error::PsError;
use crate::metrics::{Refused, Served};

/// A refused request: the status the client gets and the reason metrics count.
#[derive(Debug)]
pub(super) struct Rejected {
    pub(super) status: Status,
    pub(super) reason: &'static str,
}

/// Longest tensor name a refusal of one part names in its metadata
/// ([`ps_proto::frame::REFUSED_TENSOR`]), in bytes; the message names it
/// whatever its length, cut.
const MAX_NAMED_TENSOR_BYTES: usize = 1024;

impl Rejected {
    /// This refusal, naming `tensor` as the part refused, so that a client
    /// of a request of several parts knows which one.
    pub(super) fn of_tensor(mut self, tensor: &str) -> Self {
        self.status = ps_proto::frame::naming_refused_tensor(self.status, tensor, MAX_NAMED_TENSOR_BYTES);
        self
    }
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

impl From<Rejected> for Status {
    /// The status the client gets, with the reason as its source, where
    /// the metrics layer finds it ([`Refused`]).
    fn from(r: Rejected) -> Self {
        let mut status = bounded(r.status);
        status.set_source(Arc::new(Refused(r.reason)));
        status
    }
}

/// Longest refusal message sent, in bytes: names are already cut
/// ([`crate::error::shown`]); this bounds whatever else a client can make a
/// message echo (a shape of a million dimensions), so that it always fits
/// in the reply's metadata.
pub(super) const MAX_MESSAGE_BYTES: usize = 2048;

/// `status` with its message cut to [`MAX_MESSAGE_BYTES`] (on a character
/// boundary, with the bytes left out said).
fn bounded(status: Status) -> Status {
    let message = status.message();
    if message.len() <= MAX_MESSAGE_BYTES {
        return status;
    }
    let cut = (0..=MAX_MESSAGE_BYTES).rev().find(|&i| message.is_char_boundary(i)).unwrap_or(0);
    let short = format!("{}… ({} more bytes)", &message[..cut], message.len() - cut);
    Status::with_metadata(status.code(), short, status.metadata().clone())
}

/// The gRPC messages of a request body, cut from its frames without
/// copying; `what` names them in refusals.
pub(super) struct RequestMessages {
    reader: MessageReader<tonic::body::Body>,
    what: &'static str,
}

impl RequestMessages {
    /// The messages of `body`, each at most `limit` bytes.
    pub(super) fn new(body: tonic::body::Body, what: &'static str, limit: usize) -> Self {
        Self { reader: MessageReader::new(body, limit), what }
    }

    /// The status a request that cannot be read gets: a message above the
    /// limit is `ResourceExhausted`, a compressed one `Unimplemented`, a
    /// malformed stream `InvalidArgument`, a failed body its own status.
    fn refused(&self, e: ReadError<Status>) -> Rejected {
        let what = self.what;
        let e = match e {
            ReadError::Frame(e) => e,
            ReadError::Body(status) => return status.into(),
        };
        match e {
            FrameError::TooLarge { .. } => Rejected {
                status: Status::resource_exhausted(format!(
                    "{what} exceeds the message limit of {} bytes: {e}",
                    self.reader.limit()
                )),
                reason: "too_large",
            },
            FrameError::Compressed => Rejected {
                status: Status::unimplemented(format!(
                    "{what}: compression is not supported by this shard; send messages uncompressed ({e})"
                )),
                reason: "compressed",
            },
            FrameError::Truncated { .. } | FrameError::Malformed(_) => {
                Rejected { status: Status::invalid_argument(format!("{what}: {e}")), reason: "malformed" }
            }
        }
    }
}

/// The chunks of one push, or of a step's pushes one after the other: each
/// chunk's data stays in the frames it arrived in until it is decoded into
/// the part's buffer.
pub(crate) struct PushFrames {
    messages: RequestMessages,
    /// A chunk read ahead: the header chunk of a step's next push.
    put_back: Option<(pb::PushChunk, Segments)>,
}

impl PushFrames {
    /// The chunks of `body`, each at most `limit` bytes.
    pub(crate) fn new(body: tonic::body::Body, limit: usize) -> Self {
        Self { messages: RequestMessages::new(body, "push chunk", limit), put_back: None }
    }

    /// The next chunk (its fields, with `data` empty, and its data), `None`
    /// at the end of the stream.
    pub(super) async fn next(&mut self) -> Result<Option<(pb::PushChunk, Segments)>, Rejected> {
        if let Some(chunk) = self.put_back.take() {
            return Ok(Some(chunk));
        }
        let next = self.messages.reader.next_data().await;
        next.map_err(|e| self.messages.refused(e))
    }

    /// Makes `chunk` the next one [`next`](Self::next) returns.
    pub(super) fn put_back(&mut self, chunk: (pb::PushChunk, Segments)) {
        self.put_back = Some(chunk);
    }
}

/// The one message of a unary request body.
pub(super) async fn unary_request<M: prost::Message + Default>(
    body: tonic::body::Body,
    what: &'static str,
    limit: usize,
) -> Result<M, Rejected> {
    let mut messages = RequestMessages::new(body, what, limit);
    match messages.reader.next_decoded().await {
        Ok(Some(msg)) => Ok(msg),
        Ok(None) => Err(Rejected {
            status: Status::invalid_argument(format!("{what}: the request has no message")),
            reason: "malformed",
        }),
        Err(e) => Err(messages.refused(e)),
    }
}

/// The trailers of a successful call.
pub(super) fn ok_trailers() -> http::HeaderMap {
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    trailers
}

/// The reply to a refused request: its status alone, with its reason for
/// the metrics layer.
pub(super) fn refused(r: Rejected) -> http::Response<tonic::body::Body> {
    Status::from(r).into_http()
}

/// Marks `reply` as served, moving `payload_bytes` of tensor payload (for
/// the metrics layer).
pub(super) fn served(
    mut reply: http::Response<tonic::body::Body>,
    payload_bytes: u64,
) -> http::Response<tonic::body::Body> {
    reply.extensions_mut().insert(Served { payload_bytes });
    reply
}

/// A gRPC reply of `frames` and an OK status.
pub(super) fn grpc_reply(frames: VecDeque<Bytes>) -> http::Response<tonic::body::Body> {
    grpc_response(tonic::body::Body::new(FramesBody::new(frames, Some(ok_trailers()))))
}

/// A gRPC reply with `body` (messages, then trailers).
pub(super) fn grpc_response(body: tonic::body::Body) -> http::Response<tonic::body::Body> {
    let mut reply = http::Response::new(body);
    reply.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static(GRPC_CONTENT_TYPE));
    reply
}
