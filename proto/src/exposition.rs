//! The Prometheus text exposition shared by shards and workers, and the
//! HTTP endpoint (`/metrics`, `/healthz`) that serves it.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::OnceLock;

use prometheus::{Gauge, GaugeVec, Opts, Registry, TextEncoder};

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

/// A gauge that is absent from the exposition until its first value: a
/// timestamp or measurement that does not exist yet (the last checkpoint
/// before any, the accuracy before the first evaluation) has no sample,
/// rather than a 0 a dashboard would read as 1970 or as 0 %.
#[derive(Clone, Debug)]
pub struct LateGauge {
    family: GaugeVec,
    /// The family's one series, created by the first [`set`](Self::set).
    series: std::sync::Arc<OnceLock<Gauge>>,
}

impl LateGauge {
    /// An unset gauge `name`, registered in `registry`.
    pub fn register(registry: &Registry, name: &str, help: &str) -> prometheus::Result<Self> {
        let family = GaugeVec::new(Opts::new(name, help), &[])?;
        registry.register(Box::new(family.clone()))?;
        Ok(Self { family, series: std::sync::Arc::default() })
    }

    /// Sets the value, creating the series the first time.
    pub fn set(&self, value: f64) {
        self.series.get_or_init(|| self.family.with_label_values::<&str>(&[])).set(value);
    }

    /// The value, `None` before the first [`set`](Self::set).
    pub fn get(&self) -> Option<f64> {
        self.series.get().map(Gauge::get)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_late_gauge_is_absent_until_set() {
        let registry = Registry::new();
        let g = LateGauge::register(&registry, "last_time_seconds", "help").expect("register");
        assert!(!encode(std::slice::from_ref(&registry)).contains("last_time_seconds"));
        assert_eq!(g.get(), None);
        g.set(1.5);
        assert!(encode(std::slice::from_ref(&registry)).contains("last_time_seconds 1.5"));
        assert_eq!(g.get(), Some(1.5));
    }
}
