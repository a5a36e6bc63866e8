//! The worker's side of the data path: `Push` and `Pull` sent as raw gRPC
//! over the shard's channel, so tensor bytes go out as their own HTTP/2
//! frames and are decoded straight from the frames they arrive in
//! (see [`ps_proto::frame`]).

use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use http_body::Body as _;
use ps_proto::frame::Deframer;
use ps_proto::rope::Segments;
use tonic::Status;
use tonic::body::Body;
use tonic::codegen::Service as _;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::auth::AddToken;

/// A shard's channel with the bearer token added to every request.
pub(crate) type DataChannel = InterceptedService<Channel, AddToken>;

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

/// A reply being read: its messages as they arrive, then its status.
pub(crate) struct Reply {
    body: Body,
    deframer: Deframer,
    done: bool,
}

/// Sends `body` as the request of the RPC at `path` (deadline `deadline`)
/// and returns the reply once its headers are in. A reply that is only a
/// status (the server refused the request) is returned as that status.
pub(crate) async fn call(
    mut channel: DataChannel,
    path: &'static str,
    body: Body,
    deadline: Duration,
    max_message: usize,
) -> Result<Reply, Status> {
    let timeout = http::HeaderValue::try_from(grpc_timeout(deadline))
        .map_err(|e| Status::internal(format!("grpc-timeout header: {e}")))?;
    let request = http::Request::builder()
        .method(http::Method::POST)
        .uri(path)
        .header(http::header::CONTENT_TYPE, "application/grpc")
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
        return Ok(Reply { body: Body::empty(), deframer: Deframer::new(max_message), done: true });
    }
    Ok(Reply { body: Body::new(response.into_body()), deframer: Deframer::new(max_message), done: false })
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
}

/// Like [`call`], with a body of the frames `feed` sends into the channel
/// it is given, made while earlier ones are sent. Returns once the reply's
/// headers are in; a feed still running then (the server answered before
/// reading everything) is dropped.
pub(crate) async fn call_fed<F, Fut>(
    channel: DataChannel,
    path: &'static str,
    deadline: Duration,
    max_message: usize,
    feed: F,
) -> Result<Reply, Status>
where
    F: FnOnce(tokio::sync::mpsc::Sender<Bytes>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let (tx, frames) = tokio::sync::mpsc::channel(FEED_DEPTH);
    let call = std::pin::pin!(call(channel, path, Body::new(FedBody { frames }), deadline, max_message));
    let feed = std::pin::pin!(feed(tx));
    match futures::future::select(call, feed).await {
        futures::future::Either::Left((reply, _unfinished_feed)) => reply,
        futures::future::Either::Right(((), call)) => call.await,
    }
}

impl Reply {
    /// The next message, `None` once the reply ended with an OK status; the
    /// reply's status if it is not OK.
    pub(crate) async fn message(&mut self) -> Result<Option<Segments>, Status> {
        loop {
            let malformed = |e| Status::internal(format!("malformed reply: {e}"));
            if let Some(msg) = self.deframer.next_message().map_err(malformed)? {
                return Ok(Some(msg));
            }
            if self.done {
                self.deframer.finish().map_err(malformed)?;
                return Ok(None);
            }
            let frame = std::future::poll_fn(|cx| Pin::new(&mut self.body).poll_frame(cx)).await;
            match frame {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => self.deframer.push(data),
                    Err(frame) => {
                        let status = frame
                            .trailers_ref()
                            .and_then(Status::from_header_map)
                            .unwrap_or_else(|| Status::internal("the reply's trailers carry no grpc-status"));
                        if status.code() != tonic::Code::Ok {
                            return Err(status);
                        }
                        self.done = true;
                    }
                },
                Some(Err(status)) => return Err(status),
                None => {
                    self.done = true;
                    return Err(Status::internal("the reply ended without a grpc-status"));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_use_the_finest_unit_that_fits_eight_digits() {
        assert_eq!(grpc_timeout(Duration::from_secs(30)), "30000000u");
        assert_eq!(grpc_timeout(Duration::from_secs(600)), "600000m");
        assert_eq!(grpc_timeout(Duration::from_secs(200_000)), "200000S");
    }
}
