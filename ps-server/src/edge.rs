//! The shard's edge: what the gRPC transport answers before (or instead of)
//! a handler, given the codes of DESIGN §5 and a reason the metrics count,
//! as the handlers' own refusals are.
//!
//! - A request tonic cannot read (the control RPCs' generated handlers
//!   decode their messages themselves): a malformed message is
//!   `INVALID_ARGUMENT` (tonic says `INTERNAL`), one above the message limit
//!   `RESOURCE_EXHAUSTED` (tonic says `OUT_OF_RANGE`), a compressed one
//!   `UNIMPLEMENTED`, saying that compression is not supported.
//! - A client deadline (`grpc-timeout`) that passes while the shard is still
//!   working on the request (a pull or barrier waiting for other workers) is
//!   `DEADLINE_EXCEEDED`. tonic's own timeout answers `CANCELLED` instead; the
//!   deadline here is set before tonic's and polled first, so it always wins.
//!
//! The layer sits inside the metrics layer ([`crate::metrics::RpcMetricsLayer`]),
//! which records what it answers.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;
use tonic::{Code, Status};

use crate::metrics::Refused;

/// The tower layer of [`Edge`].
#[derive(Clone, Copy, Debug, Default)]
pub struct EdgeLayer;

impl<S> tower::Layer<S> for EdgeLayer {
    type Service = Edge<S>;

    fn layer(&self, inner: S) -> Edge<S> {
        Edge { inner }
    }
}

/// A service whose transport refusals and missed deadlines get the shard's
/// codes and reasons (see the module doc).
#[derive(Clone, Debug)]
pub struct Edge<S> {
    inner: S,
}

type Answered<R, E> = Pin<Box<dyn Future<Output = Result<R, E>> + Send>>;

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for Edge<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    type Future = Answered<Self::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let method = method_name(req.uri().path());
        // Taken now, before tonic's own timer starts (it starts after this
        // call returns), so this deadline is never the later one.
        let deadline = req.headers().get("grpc-timeout").and_then(parse_grpc_timeout).map(|after| {
            let now = Instant::now();
            (now.checked_add(after).unwrap_or(now + Duration::from_secs(86_400 * 365)), after)
        });
        let reply = self.inner.call(req);
        Box::pin(async move {
            let reply = match deadline {
                None => reply.await?,
                Some((at, after)) => match tokio::time::timeout_at(at, reply).await {
                    Ok(reply) => reply?,
                    Err(_) => return Ok(missed_deadline(&method, after).into_http()),
                },
            };
            Ok(translated(reply, &method))
        })
    }
}

/// The method of a gRPC request path (`/ps.v1.Data/Pull` gives `Pull`).
fn method_name(path: &str) -> String {
    path.rsplit('/').next().unwrap_or_default().to_string()
}

/// The refusal of a request whose client deadline, `after` from its arrival, passed.
fn missed_deadline(method: &str, after: Duration) -> Status {
    refused(
        Status::deadline_exceeded(format!(
            "{method}: the client's deadline ({} ms after the request arrived) passed before the shard could answer",
            after.as_millis()
        )),
        "deadline",
    )
}

/// `status` with `reason` attached for the metrics layer.
fn refused(mut status: Status, reason: &'static str) -> Status {
    status.set_source(Arc::new(Refused(reason)));
    status
}

/// `reply`, or, if it is a refusal made by tonic rather than a handler (it
/// has no [`Refused`] reason), the refusal the shard gives for it.
fn translated<B: Default>(reply: http::Response<B>, method: &str) -> http::Response<B> {
    let Some(status) = reply.extensions().get::<Status>() else { return reply };
    let by_handler = std::error::Error::source(status).is_some_and(|s| s.downcast_ref::<Refused>().is_some());
    if by_handler {
        return reply;
    }
    match transport_refusal(status, method) {
        Some(status) => status.into_http(),
        None => reply,
    }
}

/// The shard's status for a refusal tonic made while reading a request of
/// `method`; `None` for one that is not about the request's content.
fn transport_refusal(status: &Status, method: &str) -> Option<Status> {
    let message = status.message();
    let compressed = message.contains("compress");
    Some(match status.code() {
        Code::Unimplemented | Code::Internal if compressed => refused(
            Status::unimplemented(format!(
                "{method} request: compression is not supported by this shard; send messages uncompressed ({message})"
            )),
            "compressed",
        ),
        Code::Internal => refused(
            Status::invalid_argument(format!("{method} request: malformed message: {message}")),
            "malformed",
        ),
        Code::OutOfRange => refused(
            Status::resource_exhausted(format!(
                "{method} request exceeds the shard's message limit (--max-message-bytes): {message}"
            )),
            "too_large",
        ),
        _ => return None,
    })
}

/// The duration of a `grpc-timeout` header value: at most 8 digits and a
/// unit (`H`, `M`, `S`, `m`, `u`, `n`); `None` if it is not one.
fn parse_grpc_timeout(value: &http::HeaderValue) -> Option<Duration> {
    let value = value.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timeout(v: &str) -> Option<Duration> {
        parse_grpc_timeout(&http::HeaderValue::from_str(v).expect("header value"))
    }

    #[test]
    fn grpc_timeouts_parse_as_the_protocol_has_them() {
        assert_eq!(timeout("200m"), Some(Duration::from_millis(200)));
        assert_eq!(timeout("3S"), Some(Duration::from_secs(3)));
        assert_eq!(timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(timeout("99999999n"), Some(Duration::from_nanos(99_999_999)));
        assert_eq!(timeout("123456789m"), None, "more than 8 digits");
        assert_eq!(timeout("m"), None);
        assert_eq!(timeout("10x"), None);
        assert_eq!(timeout(""), None);
    }

    #[test]
    fn transport_refusals_get_the_shards_codes() {
        let decode = Status::internal("failed to decode Protobuf message: invalid wire type");
        let s = transport_refusal(&decode, "Declare").expect("translated");
        assert_eq!(s.code(), Code::InvalidArgument);
        assert!(s.message().starts_with("Declare request: malformed message"), "{}", s.message());
        let big = Status::out_of_range("Error, decoded message length too large");
        assert_eq!(transport_refusal(&big, "Join").map(|s| s.code()), Some(Code::ResourceExhausted));
        let gzip = Status::unimplemented("Content is compressed with `gzip` which isn't supported");
        let s = transport_refusal(&gzip, "Status").expect("translated");
        assert_eq!(s.code(), Code::Unimplemented);
        assert!(s.message().contains("compression is not supported"), "{}", s.message());
        assert!(transport_refusal(&Status::unauthenticated("no token"), "Join").is_none());
    }
}
