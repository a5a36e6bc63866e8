//! A bare gRPC client over HTTP/2 (h2): it sends whatever bytes and headers
//! a test gives it, and, unlike tonic's client, neither checks messages nor
//! enforces a `grpc-timeout` itself, so a test sees the shard's own answer.

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use tonic::Code;

/// The outcome of one call: the gRPC status and the reply's data bytes.
#[derive(Debug)]
pub(crate) struct RawReply {
    pub(crate) code: Code,
    pub(crate) message: String,
    pub(crate) data: Bytes,
}

/// One gRPC message frame: the compressed flag, the length, then `body`.
pub(crate) fn frame(compressed: bool, body: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + body.len());
    b.put_u8(u8::from(compressed));
    b.put_u32(u32::try_from(body.len()).expect("message under 4 GiB"));
    b.put_slice(body);
    b.freeze()
}

/// The message of a protobuf value, framed.
pub(crate) fn message<M: prost::Message>(m: &M) -> Bytes {
    frame(false, &m.encode_to_vec())
}

/// `grpc-message` decoded from its percent-encoding.
fn percent_decoded(v: &str) -> String {
    let bytes = v.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        if bytes[i] == b'%'
            && let Some(Ok(b)) = hex.map(|h| u8::from_str_radix(h, 16))
        {
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn status_of(headers: &http::HeaderMap) -> Option<(Code, String)> {
    let code = headers.get("grpc-status")?.to_str().ok()?.parse::<i32>().ok()?;
    let message = headers.get("grpc-message").and_then(|m| m.to_str().ok()).map(percent_decoded);
    Some((Code::from_i32(code), message.unwrap_or_default()))
}

/// Calls `path` (e.g. `/ps.v1.ParameterServer/Join`) on the shard at `addr`
/// with `body` (framed messages) and the extra `headers`, on a connection
/// of its own. Bounded by 60 s so a broken shard fails the test instead of
/// hanging it.
pub(crate) async fn call(addr: &str, path: &str, headers: &[(&str, &str)], body: Bytes) -> RawReply {
    tokio::time::timeout(Duration::from_secs(60), call_unbounded(addr, path, headers, body))
        .await
        .unwrap_or_else(|_| panic!("{path}: no answer within 60 s"))
}

async fn call_unbounded(addr: &str, path: &str, headers: &[(&str, &str)], body: Bytes) -> RawReply {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (client, connection) = h2::client::handshake(tcp).await.expect("HTTP/2 handshake");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut client = client.ready().await.expect("ready");
    let mut req = http::Request::post(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(()).expect("request");
    let (reply, mut send) = client.send_request(req, false).expect("send request");
    // The body goes out as flow control lets it; a shard may answer (and
    // reset the stream) before it has read it all.
    let sending = tokio::spawn(async move {
        let mut rest = body;
        while !rest.is_empty() {
            send.reserve_capacity(rest.len());
            let Some(Ok(n)) = std::future::poll_fn(|cx| send.poll_capacity(cx)).await else { return };
            let _ = send.send_data(rest.split_to(n.min(rest.len())), false);
        }
        let _ = send.send_data(Bytes::new(), true);
    });
    let reply = reply.await.expect("response headers");
    if let Some((code, message)) = status_of(reply.headers()) {
        sending.abort();
        return RawReply { code, message, data: Bytes::new() };
    }
    let mut body = reply.into_body();
    let mut data = BytesMut::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.expect("reply data");
        let _ = body.flow_control().release_capacity(chunk.len());
        data.extend_from_slice(&chunk);
    }
    let trailers = body.trailers().await.expect("trailers").unwrap_or_default();
    sending.abort();
    let (code, message) = status_of(&trailers).expect("grpc-status in the trailers");
    RawReply { code, message, data: data.freeze() }
}
