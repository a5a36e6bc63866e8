//! The Prometheus text exposition shared by shards and workers, and the
//! HTTP endpoint (`/metrics`, `/healthz`) that serves it.

use std::collections::BTreeMap;
use std::future::Future;

use prometheus::{Registry, TextEncoder};

/// The snake_case name of a gRPC code, as a label value.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "ok",
        Cancelled => "cancelled",
        Unknown => "unknown",
        InvalidArgument => "invalid_argument",
        DeadlineExceeded => "deadline_exceeded",
        NotFound => "not_found",
        AlreadyExists => "already_exists",
        PermissionDenied => "permission_denied",
        ResourceExhausted => "resource_exhausted",
        FailedPrecondition => "failed_precondition",
        Aborted => "aborted",
        OutOfRange => "out_of_range",
        Unimplemented => "unimplemented",
        Internal => "internal",
        Unavailable => "unavailable",
        DataLoss => "data_loss",
        Unauthenticated => "unauthenticated",
    }
}

/// The Prometheus text exposition of several registries as one: families of
/// the same name (e.g. one per shard of an embedded cluster) are merged, so
/// each name has one HELP and TYPE line.
pub fn encode(registries: &[Registry]) -> String {
    let mut families: BTreeMap<String, prometheus::proto::MetricFamily> = BTreeMap::new();
    for family in registries.iter().flat_map(Registry::gather) {
        match families.get_mut(family.name()) {
            Some(existing) => existing.mut_metric().extend(family.get_metric().iter().cloned()),
            None => {
                families.insert(family.name().to_string(), family);
            }
        }
    }
    let families: Vec<_> = families.into_values().collect();
    TextEncoder::new().encode_to_string(&families).unwrap_or_else(|e| format!("# encoding failed: {e}\n"))
}

/// Serves `/metrics` (the registries `registries()` returns at each scrape,
/// merged) and `/healthz` over HTTP on
/// `listener` until `shutdown` resolves. Parameters are never exposed.
pub async fn serve(
    listener: tokio::net::TcpListener,
    registries: impl Fn() -> Vec<Registry> + Send + Sync + 'static,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::routing::get;
    let registries = std::sync::Arc::new(registries);
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let registries = std::sync::Arc::clone(&registries);
                async move {
                    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], encode(&registries()))
                }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }));
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}
