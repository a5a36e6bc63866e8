//! Whether a shard expects TLS: asked once when a worker connects without
//! it, since a TLS shard's answer to plaintext is only a closed stream.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The HTTP/2 connection preface a plaintext gRPC client opens with,
/// followed by an empty SETTINGS frame.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

/// A TLS record header of an alert (content type 21, version 3.x): what a
/// TLS server sends back before closing when it reads the preface.
fn is_tls_alert(header: &[u8]) -> bool {
    matches!(header, [0x15, 0x03, minor, ..] if *minor <= 0x04)
}

/// True if the server at `addr` answers an HTTP/2 preface with a TLS alert,
/// within `within`. Any other answer, a silent close or no answer in time
/// is false: the probe only ever adds a hint, it never refuses a shard.
pub(crate) async fn expects_tls(addr: &str, within: Duration) -> bool {
    let addr = addr.split_once("://").map_or(addr, |(_, rest)| rest);
    let probe = async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        stream.write_all(PREFACE).await.ok()?;
        let mut header = [0u8; 3];
        stream.read_exact(&mut header).await.ok()?;
        Some(is_tls_alert(&header))
    };
    matches!(tokio::time::timeout(within, probe).await, Ok(Some(true)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_a_tls_alert_from_an_http2_settings_frame() {
        assert!(is_tls_alert(&[0x15, 0x03, 0x03]));
        assert!(is_tls_alert(&[0x15, 0x03, 0x01]));
        // A plaintext HTTP/2 server opens with SETTINGS: a 3-byte length first.
        assert!(!is_tls_alert(&[0x00, 0x00, 0x12]));
        assert!(!is_tls_alert(&[0x16, 0x03, 0x03]));
        assert!(!is_tls_alert(&[0x15]));
    }

    #[tokio::test]
    async fn a_plaintext_listener_that_closes_is_not_tls() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let closes = tokio::spawn(async move { drop(listener.accept().await) });
        assert!(!expects_tls(&addr, Duration::from_secs(5)).await);
        closes.await.expect("listener task");
    }
}
