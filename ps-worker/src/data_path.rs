//! The worker's side of the data path: `Push`, `Pull` and `PushPull` sent
//! as raw gRPC over the shard's channel, so tensor bytes go out as their
//! own HTTP/2 frames and are decoded straight from the frames they arrive
//! in (see [`ps_proto::frame`]). [`Outgoing`] is what a request sends,
//! [`Reply`] the reply being read.

use std::collections::VecDeque;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use ps_proto::frame::{FramesBody, GRPC_CONTENT_TYPE, MessageReader, ReadError};
use ps_proto::rope::Segments;
use ps_proto::{chunk, frame, pb};
use tonic::Status;
use tonic::body::Body;
use tonic::codegen::Service as _;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::auth::AddToken;
use crate::config::WorkerConfig;

/// A shard's channel with the bearer token added to every request.
pub(crate) type DataChannel = InterceptedService<Channel, AddToken>;

/// What a data-path request sends.
pub(crate) enum Outgoing<'a> {
    /// One whole message (a pull request).
    Message(Bytes),
    /// A push of `values`, encoded chunk by chunk while earlier chunks are
    /// on their way, so encoding overlaps sending.
    Push { header: pb::PushHeader, values: &'a [f32] },
    /// A push whose f32 wire bytes are already in memory the request may
    /// keep (a shared gradient): sent from there, without a copy.
    Shared { header: pb::PushHeader, data: Bytes },
    /// Several pushes one after the other in one request (a `Step`), each
    /// sent as its own variant would send it alone.
    Several(Vec<Outgoing<'a>>),
}

impl<'a> Outgoing<'a> {
    /// Sends this as the request of the RPC at `path`, encoded and chunked
    /// as `cfg` says, and returns the reply once its headers are in. A
    /// request the shard answers while it is still being sent (a `Step`'s
    /// reply streams while later pushes arrive) goes on being sent while
    /// the reply is read.
    pub(crate) async fn send<'s>(
        &'s self,
        channel: DataChannel,
        path: &'static str,
        deadline: Duration,
        cfg: &'s WorkerConfig,
    ) -> Result<Reply<'s>, Status> {
        let max_message = cfg.max_message_bytes;
        match self {
            Outgoing::Message(msg) => {
                let body = FramesBody::new(VecDeque::from([msg.clone()]), None);
                call(channel, path, Body::new(body), deadline, max_message).await
            }
            Outgoing::Push { header, values } => {
                let feed = |tx| feed_push(tx, header, values, cfg);
                call_fed(channel, path, deadline, max_message, feed).await
            }
            Outgoing::Shared { header, data } => {
                let body = Body::new(FramesBody::new(shared_frames(header, data, cfg), None));
                call(channel, path, body, deadline, max_message).await
            }
            Outgoing::Several(pushes) => {
                let feed = |tx| feed_several(tx, pushes, cfg);
                call_fed(channel, path, deadline, max_message, feed).await
            }
        }
    }
}

/// The frames of a push of shared f32 wire bytes `data`.
fn shared_frames(header: &pb::PushHeader, data: &Bytes, cfg: &WorkerConfig) -> VecDeque<Bytes> {
    let mut header = Some(header.clone());
    let fields = |offset| pb::PushChunk { header: header.take(), offset, data: Bytes::new() };
    let chunk_bytes = chunk::chunk_bytes_for(data.len(), cfg.chunk_bytes);
    frame::data_frames(data, chunk_bytes, 4, fields)
}

/// Feeds `pushes` into `tx` one after the other, the frames of small
/// pushes packed together ([`frame::Packer`]); stops early if the request
/// is gone.
async fn feed_several(tx: tokio::sync::mpsc::Sender<Bytes>, pushes: &[Outgoing<'_>], cfg: &WorkerConfig) {
    let mut packer = frame::Packer::default();
    for push in pushes {
        let small = match push {
            Outgoing::Push { values, .. } => {
                values.len() * cfg.wire_dtype.size() < frame::pack::PACKED_FRAME_BYTES
            }
            Outgoing::Shared { data, .. } => data.len() < frame::pack::PACKED_FRAME_BYTES,
            // Only pushes are sent together.
            Outgoing::Message(_) | Outgoing::Several(_) => continue,
        };
        let sent = if small {
            let ready: Vec<Bytes> = push_frames_of(push, cfg).flat_map(|f| packer.push(f)).collect();
            send_all(&tx, ready).await
        } else {
            send_all(&tx, packer.flush()).await && send_all(&tx, push_frames_of(push, cfg)).await
        };
        if !sent || tx.is_closed() {
            return;
        }
    }
    send_all(&tx, packer.flush()).await;
}

/// The frames of a push, encoded as they are iterated.
fn push_frames_of<'p>(
    push: &'p Outgoing<'_>,
    cfg: &'p WorkerConfig,
) -> Box<dyn Iterator<Item = Bytes> + Send + 'p> {
    match push {
        Outgoing::Push { header, values } => Box::new(push_frames(header, values, cfg)),
        Outgoing::Shared { header, data } => Box::new(shared_frames(header, data, cfg).into_iter()),
        Outgoing::Message(_) | Outgoing::Several(_) => Box::new(std::iter::empty()),
    }
}

/// The frames of a push of `values`, each chunk encoded when the iterator
/// reaches it: its head, then its data (none for an empty push).
fn push_frames<'p>(
    header: &pb::PushHeader,
    values: &'p [f32],
    cfg: &WorkerConfig,
) -> impl Iterator<Item = Bytes> + Send + 'p {
    let mut header = Some(header.clone());
    let fields = move |offset| pb::PushChunk { header: header.take(), offset, data: Bytes::new() };
    let chunk_bytes = chunk::chunk_bytes_for(values.len() * cfg.wire_dtype.size(), cfg.chunk_bytes);
    frame::encoded_chunks(values, cfg.wire_dtype, chunk_bytes, fields)
        .flat_map(|(head, data)| [head, data])
        .filter(|b| !b.is_empty())
}

/// Sends `frames` into `tx`; false if the request is gone.
async fn send_all(tx: &tokio::sync::mpsc::Sender<Bytes>, frames: impl IntoIterator<Item = Bytes>) -> bool {
    for frame in frames {
        if tx.send(frame).await.is_err() {
            return false;
        }
    }
    true
}

/// Encodes a push of `values` chunk by chunk into `tx` (each chunk's
/// head, then its data), waiting whenever the channel is full; stops
/// early if the request is gone.
async fn feed_push(
    tx: tokio::sync::mpsc::Sender<Bytes>,
    header: &pb::PushHeader,
    values: &[f32],
    cfg: &WorkerConfig,
) {
    send_all(&tx, push_frames(header, values, cfg)).await;
}

/// The `grpc-timeout` value of `deadline`: the finest unit that fits the
/// protocol's 8 digits.
fn grpc_timeout(deadline: Duration) -> String {
    const MAX: u128 = 99_999_999;
    let units: [(u128, char); 4] = [
        (deadline.as_micros(), 'u'),
        (deadline.as_millis(), 'm'),
        (u128::from(deadline.as_secs()), 'S'),
        (u128::from(deadline.as_secs() / 60), 'M'),
    ];
    let (value, unit) = units.into_iter().find(|(v, _)| *v <= MAX).unwrap_or((MAX, 'H'));
    format!("{value}{unit}")
}

/// The rest of a request body still being made while its reply is read.
type Feed<'s> = Pin<Box<dyn std::future::Future<Output = ()> + Send + 's>>;

/// A reply being read: its messages as they arrive, then its status.
pub(crate) struct Reply<'s> {
    messages: MessageReader<Body>,
    /// The status came with the headers (an OK reply without messages):
    /// the body carries no trailers to check.
    status_in_headers: bool,
    /// The request's frames still being made, fed while messages are read.
    feed: Option<Feed<'s>>,
}

/// Sends `body` as the request of the RPC at `path` (deadline `deadline`)
/// and returns the reply once its headers are in. A reply that is only a
/// status (the server refused the request) is returned as that status.
async fn call(
    mut channel: DataChannel,
    path: &'static str,
    body: Body,
    deadline: Duration,
    max_message: usize,
) -> Result<Reply<'static>, Status> {
    let timeout = http::HeaderValue::try_from(grpc_timeout(deadline))
        .map_err(|e| Status::internal(format!("grpc-timeout header: {e}")))?;
    let request = http::Request::builder()
        .method(http::Method::POST)
        .uri(path)
        .header(http::header::CONTENT_TYPE, GRPC_CONTENT_TYPE)
        .header(http::header::TE, "trailers")
        .header("grpc-timeout", timeout)
        .body(body)
        .map_err(|e| Status::internal(format!("building the {path} request: {e}")))?;
    let transport = |e: tonic::transport::Error| Status::from_error(Box::new(e));
    std::future::poll_fn(|cx| channel.poll_ready(cx)).await.map_err(transport)?;
    let response = channel.call(request).await.map_err(transport)?;
    if let Some(status) = Status::from_header_map(response.headers()) {
        if status.code() != tonic::Code::Ok {
            return Err(status);
        }
        return Ok(Reply {
            messages: MessageReader::new(Body::empty(), max_message),
            status_in_headers: true,
            feed: None,
        });
    }
    let messages = MessageReader::new(Body::new(response.into_body()), max_message);
    Ok(Reply { messages, status_in_headers: false, feed: None })
}

/// Frames a fed request body holds before the feeder waits.
const FEED_DEPTH: usize = 4;

/// A request body whose frames arrive through a channel as they are made.
struct FedBody {
    frames: tokio::sync::mpsc::Receiver<Bytes>,
}

impl http_body::Body for FedBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        self.frames.poll_recv(cx).map(|frame| frame.map(|data| Ok(http_body::Frame::data(data))))
    }

    /// True once the feed has ended and its last frame is taken: the
    /// transport then marks that frame as the request's end instead of
    /// sending an empty frame to end it later, so the shard learns of the
    /// end (and can send its status) without another write and wake-up.
    fn is_end_stream(&self) -> bool {
        self.frames.is_closed() && self.frames.is_empty()
    }
}

/// Like [`call`], with a body of the frames `feed` sends into the channel
/// it is given, made while earlier ones are sent. Returns once the reply's
/// headers are in; a feed still running then goes on while the reply is
/// read (a refusal's reply has no messages, so it ends with the reply).
async fn call_fed<'s, F, Fut>(
    channel: DataChannel,
    path: &'static str,
    deadline: Duration,
    max_message: usize,
    feed: F,
) -> Result<Reply<'s>, Status>
where
    F: FnOnce(tokio::sync::mpsc::Sender<Bytes>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 's,
{
    let (tx, frames) = tokio::sync::mpsc::channel(FEED_DEPTH);
    let call = std::pin::pin!(call(channel, path, Body::new(FedBody { frames }), deadline, max_message));
    let feed: Feed<'s> = Box::pin(feed(tx));
    match futures::future::select(call, feed).await {
        futures::future::Either::Left((reply, unfinished)) => {
            reply.map(|reply| Reply { feed: Some(unfinished), ..reply })
        }
        futures::future::Either::Right(((), call)) => call.await,
    }
}

impl Reply<'_> {
    /// The next message, `None` once the reply ended with an OK status; the
    /// reply's status if it is not OK, which comes before any complaint
    /// about the messages that preceded it. The request's frames still
    /// being made are fed meanwhile.
    pub(crate) async fn message(&mut self) -> Result<Option<Segments>, Status> {
        let next = match self.feed.as_mut() {
            None => self.messages.next().await,
            Some(feed) => {
                let next = std::pin::pin!(self.messages.next());
                match futures::future::select(next, feed).await {
                    futures::future::Either::Left((next, _)) => next,
                    futures::future::Either::Right(((), next)) => {
                        let next = next.await;
                        self.feed = None;
                        next
                    }
                }
            }
        };
        if self.messages.is_ended() && !self.status_in_headers {
            let status = self
                .messages
                .trailers()
                .map(|t| {
                    Status::from_header_map(t)
                        .unwrap_or_else(|| Status::internal("the reply's trailers carry no grpc-status"))
                })
                .unwrap_or_else(|| Status::internal("the reply ended without a grpc-status"));
            if status.code() != tonic::Code::Ok {
                return Err(status);
            }
        }
        next.map_err(|e| match e {
            ReadError::Frame(e) => Status::internal(format!("malformed reply: {e}")),
            ReadError::Body(status) => status,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The next data frame of `body`, if one is ready.
    fn take(body: &mut FedBody) -> Option<Bytes> {
        use http_body::Body as _;
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match Pin::new(body).poll_frame(&mut cx) {
            std::task::Poll::Ready(Some(Ok(frame))) => frame.into_data().ok(),
            _ => None,
        }
    }

    /// A fed body ends with its last frame once the feed is done, so that
    /// frame carries the request's end; while the feed may still send, it
    /// does not end.
    #[test]
    fn a_fed_body_ends_with_its_last_frame_once_the_feed_is_done() {
        use http_body::Body as _;
        let (tx, frames) = tokio::sync::mpsc::channel(FEED_DEPTH);
        let mut body = FedBody { frames };
        tx.try_send(Bytes::from_static(b"first")).expect("room for a frame");
        tx.try_send(Bytes::from_static(b"last")).expect("room for a frame");
        assert_eq!(take(&mut body).as_deref(), Some(&b"first"[..]));
        assert!(!body.is_end_stream(), "the feed may still send");
        drop(tx);
        assert!(!body.is_end_stream(), "a frame is still to be taken");
        assert_eq!(take(&mut body).as_deref(), Some(&b"last"[..]));
        assert!(body.is_end_stream(), "the feed is done and its last frame taken");
    }

    #[test]
    fn timeouts_use_the_finest_unit_that_fits_eight_digits() {
        assert_eq!(grpc_timeout(Duration::from_secs(30)), "30000000u");
        assert_eq!(grpc_timeout(Duration::from_secs(600)), "600000m");
        assert_eq!(grpc_timeout(Duration::from_secs(200_000)), "200000S");
    }
}
