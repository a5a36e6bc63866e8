//! Serving a shard on a TCP listener, with the transport tuned for large
//! tensors, until a shutdown future resolves.

use std::future::Future;
use std::sync::Arc;

use ps_proto::pb::parameter_server_server::ParameterServerServer;
use tokio::net::TcpListener;
use tonic::service::InterceptorLayer;
use tonic::transport::server::TcpIncoming;

use crate::config::ShardConfig;
use crate::data_path::DataPath;
use crate::edge::EdgeLayer;
use crate::metrics::RpcMetricsLayer;
use crate::service::Service;
use crate::shard::Shard;

/// HTTP/2 frame size: h2 hands over whole frames only, so 16 KiB frames cost
/// per-frame overhead and 16 MiB frames delay delivery; ~1 MiB is the sweet spot.
pub const MAX_FRAME_BYTES: u32 = 1 << 20;
/// Per-stream flow-control window: what a request can have sent that the
/// shard has not read yet. Two frames keep a stream moving (data is read as
/// it arrives, so the window reopens continuously; 2 and 16 MiB measured
/// the same throughput here), and a push waiting for the push budget parks
/// at most this much in the shard.
pub const STREAM_WINDOW_BYTES: u32 = 2 << 20;
/// Per-connection flow-control window: several chunks of several streams in flight.
pub const CONNECTION_WINDOW_BYTES: u32 = 64 << 20;

/// Errors that stop a shard from serving.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The configuration is inconsistent.
    #[error("invalid shard configuration: {0}")]
    Config(String),
    /// The transport failed.
    #[error("transport error: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Serves one shard on `listener` until `shutdown` resolves, then stops
/// accepting, fails waiting pulls and barriers with `Unavailable`, and
/// returns once in-flight requests are done.
pub async fn serve(
    listener: TcpListener,
    config: ShardConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    config.validate().map_err(ServeError::Config)?;
    serve_shard(listener, Arc::new(Shard::new(config)), shutdown).await
}

/// Like [`serve`], for a shard the caller keeps a handle to (for its metrics).
///
/// TCP_NODELAY is set on every accepted connection (tonic's own
/// `tcp_nodelay` option does not apply to a listener passed in), so small
/// replies are not held back by Nagle's algorithm.
pub async fn serve_shard(
    listener: TcpListener,
    shard: Arc<Shard>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let max_message = shard.config().max_message_bytes;
    let token = match &shard.config().auth_token_file {
        Some(path) => Some(ps_proto::AuthToken::from_file(path).map_err(ServeError::Config)?),
        None => None,
    };
    let service = Service::new(Arc::clone(&shard));
    let control = ParameterServerServer::new(service.clone())
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(max_message);
    let data = DataPath::new(service);
    let auth = InterceptorLayer::new(crate::auth::TokenCheck::new(token.as_ref(), Arc::clone(&shard)));
    let metrics = RpcMetricsLayer::new(Arc::clone(shard.metrics().rpcs()));
    if shard.config().worker_timeout_ms > 0 {
        tokio::spawn(evict_silent_workers(Arc::downgrade(&shard)));
    }
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let counter = Arc::clone(&shard);
    let incoming = crate::connections::limit(incoming, shard.config().max_connections, move || {
        counter.metrics().connection_refused()
    });
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) =
        crate::tls::server_tls(shard.config()).map_err(|e| ServeError::Config(e.to_string()))?
    {
        builder = builder.tls_config(tls)?;
    }
    builder
        .max_concurrent_streams(Some(shard.config().max_concurrent_streams.max(1)))
        .max_frame_size(MAX_FRAME_BYTES)
        .initial_stream_window_size(STREAM_WINDOW_BYTES)
        .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
        // The token check first: a request it refuses is not an RPC the shard served.
        .layer(auth)
        .layer(metrics)
        // Inside the metrics layer, so what it answers is recorded.
        .layer(EdgeLayer)
        .add_service(control)
        .add_service(data)
        .serve_with_incoming_shutdown(incoming, async move {
            shutdown.await;
            shard.close();
        })
        .await?;
    Ok(())
}

/// Checks leases four times per worker timeout and handles overdue workers,
/// until the shard closes or is dropped.
async fn evict_silent_workers(shard: std::sync::Weak<Shard>) {
    let period = match shard.upgrade() {
        Some(s) => std::time::Duration::from_millis((s.config().worker_timeout_ms / 4).max(10)),
        None => return,
    };
    loop {
        tokio::time::sleep(period).await;
        let Some(shard) = shard.upgrade() else { return };
        if shard.is_closing() {
            return;
        }
        shard.handle_silent_workers();
    }
}
