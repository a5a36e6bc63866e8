//! Prometheus metrics of a worker: step time by phase, loss, accuracy, and
//! retries and errors by operation.
//!
//! Registered once per worker; every metric carries the `worker` label (and
//! `policy`, when the caller gives one). Per-step recording resolves no labels.

use std::collections::HashMap;
use std::time::Duration;

use prometheus::{
    Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

/// The metrics of one worker.
#[derive(Debug)]
pub struct WorkerMetrics {
    registry: Registry,
    pull: Histogram,
    compute: Histogram,
    push: Histogram,
    blocked: Histogram,
    steps: IntCounter,
    clock: IntGauge,
    loss: Gauge,
    accuracy: Gauge,
    retries: IntCounterVec,
    errors: IntCounterVec,
}

fn register<T: prometheus::core::Collector + Clone + 'static>(registry: &Registry, metric: T) -> T {
    // Names are fixed and distinct: registration can only fail on a programming error.
    registry.register(Box::new(metric.clone())).expect("metric names are unique");
    metric
}

impl WorkerMetrics {
    /// Registers the metrics of worker `worker`, labelled with `policy` if given.
    pub fn new(worker: u32, policy: Option<&str>) -> Self {
        let mut labels = HashMap::from([("worker".to_string(), worker.to_string())]);
        if let Some(p) = policy {
            labels.insert("policy".to_string(), p.to_string());
        }
        let registry = Registry::new_custom(None, Some(labels)).expect("valid labels");
        let r = &registry;
        let buckets = prometheus::exponential_buckets(50e-6, 2.5, 16).unwrap_or_default();
        let phases = register(
            r,
            HistogramVec::new(
                HistogramOpts::new(
                    "ps_worker_step_phase_seconds",
                    "Time of each phase of a training step: pull (including blocked), compute, push, and blocked (the part of pull spent waiting for the policy)",
                )
                .buckets(buckets),
                &["phase"],
            )
            .expect("valid metric"),
        );
        let phase = |p: &str| phases.with_label_values(&[p]);
        Self {
            pull: phase("pull"),
            compute: phase("compute"),
            push: phase("push"),
            blocked: phase("blocked"),
            steps: register(
                r,
                IntCounter::new("ps_worker_steps_total", "Training steps completed").expect("valid"),
            ),
            clock: register(
                r,
                IntGauge::new("ps_worker_clock", "The worker's clock: steps completed").expect("valid"),
            ),
            loss: register(
                r,
                Gauge::new("ps_worker_train_loss", "Training loss of the last step's minibatch")
                    .expect("valid"),
            ),
            accuracy: register(
                r,
                Gauge::new(
                    "ps_worker_test_accuracy",
                    "Test accuracy of the last evaluation (NaN before one)",
                )
                .expect("valid"),
            ),
            retries: register(
                r,
                IntCounterVec::new(
                    Opts::new("ps_worker_retries_total", "Requests retried after a transient failure"),
                    &["op"],
                )
                .expect("valid metric"),
            ),
            errors: register(
                r,
                IntCounterVec::new(
                    Opts::new("ps_worker_errors_total", "Requests that failed for good, by gRPC code"),
                    &["op", "code"],
                )
                .expect("valid metric"),
            ),
            registry,
        }
    }

    /// The registry holding these metrics.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Records one finished step.
    pub fn step(
        &self,
        clock: u64,
        loss: f32,
        pull: Duration,
        compute: Duration,
        push: Duration,
        blocked: Duration,
    ) {
        self.pull.observe(pull.as_secs_f64());
        self.compute.observe(compute.as_secs_f64());
        self.push.observe(push.as_secs_f64());
        self.blocked.observe(blocked.as_secs_f64());
        self.steps.inc();
        self.clock.set(clock as i64 + 1);
        self.loss.set(f64::from(loss));
    }

    /// Records an evaluation's test accuracy.
    pub fn accuracy(&self, accuracy: f32) {
        self.accuracy.set(f64::from(accuracy));
    }

    /// Records a retry of `op`.
    pub fn retry(&self, op: &str) {
        self.retries.with_label_values(&[op]).inc();
    }

    /// Records a final failure of `op`.
    pub fn error(&self, op: &str, code: tonic::Code) {
        self.errors.with_label_values(&[op, ps_proto::exposition::code_name(code)]).inc();
    }
}
