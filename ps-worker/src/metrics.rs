//! Prometheus metrics of a worker: step time by phase, loss, accuracy, and
//! retries and errors by operation.
//!
//! Registered once per worker; every series carries the `worker` label and,
//! once it is known, `policy`: the caller may give it at creation, and a
//! join sets it to the job's default policy as the shards report it (the
//! workers of the CLI learn it only then). Every counter's known series
//! exist at 0 from the start; loss and accuracy are absent until measured.
//! Per-step recording resolves no labels.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use prometheus::core::{Collector, Desc};
use prometheus::proto::{LabelPair, MetricFamily};
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};
use ps_proto::exposition::{LateGauge, code_name};

/// The operations a worker sends, as the `op` label names them.
pub const OPS: [&str; 11] = [
    "join",
    "leave",
    "declare",
    "push",
    "pull",
    "step",
    "barrier",
    "status",
    "checkpoint",
    "checkpoint_status",
    "rewind",
];

/// The codes an operation fails for good with that DESIGN §5 lists: each
/// `(op, code)` series of `ps_worker_errors_total` exists from the start.
const FINAL_CODES: [tonic::Code; 9] = [
    tonic::Code::InvalidArgument,
    tonic::Code::NotFound,
    tonic::Code::AlreadyExists,
    tonic::Code::FailedPrecondition,
    tonic::Code::ResourceExhausted,
    tonic::Code::Unauthenticated,
    tonic::Code::DeadlineExceeded,
    tonic::Code::Unavailable,
    tonic::Code::Aborted,
];

/// The metrics of one worker.
#[derive(Debug)]
pub struct WorkerMetrics {
    registry: Registry,
    policy: Arc<RwLock<Option<String>>>,
    pull: Histogram,
    compute: Histogram,
    push: Histogram,
    blocked: Histogram,
    steps: IntCounter,
    given_up: IntCounter,
    clock: IntGauge,
    loss: LateGauge,
    accuracy: LateGauge,
    retries: IntCounterVec,
    errors: IntCounterVec,
}

fn register<T: prometheus::core::Collector + Clone + 'static>(registry: &Registry, metric: T) -> T {
    // Names are fixed and distinct: registration can only fail on a programming error.
    registry.register(Box::new(metric.clone())).expect("metric names are unique");
    metric
}

impl WorkerMetrics {
    /// Registers the metrics of worker `worker`, labelled with `policy` if
    /// given (else from the first join on).
    pub fn new(worker: u32, policy: Option<&str>) -> Self {
        let labels = HashMap::from([("worker".to_string(), worker.to_string())]);
        let series = Registry::new_custom(None, Some(labels)).expect("valid labels");
        let r = &series;
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
        let retries = register(
            r,
            IntCounterVec::new(
                Opts::new("ps_worker_retries_total", "Requests retried after a transient failure"),
                &["op"],
            )
            .expect("valid metric"),
        );
        let errors = register(
            r,
            IntCounterVec::new(
                Opts::new("ps_worker_errors_total", "Requests that failed for good, by gRPC code"),
                &["op", "code"],
            )
            .expect("valid metric"),
        );
        for op in OPS {
            retries.with_label_values(&[op]);
            for code in FINAL_CODES {
                errors.with_label_values(&[op, code_name(code)]);
            }
        }
        let late = |name: &str, help: &str| LateGauge::register(r, name, help).expect("valid metric");
        let policy = Arc::new(RwLock::new(policy.map(str::to_string)));
        let registry = Registry::new();
        let labelled =
            WithPolicy { series: series.clone(), policy: Arc::clone(&policy), desc: policy_desc() };
        registry.register(Box::new(labelled)).expect("one collector");
        Self {
            pull: phase("pull"),
            compute: phase("compute"),
            push: phase("push"),
            blocked: phase("blocked"),
            steps: register(
                r,
                IntCounter::new("ps_worker_steps_total", "Training steps completed").expect("valid"),
            ),
            given_up: register(
                r,
                IntCounter::new(
                    "ps_worker_clocks_given_up_total",
                    "Clocks this worker gave up at a join because they could no longer be read exactly \
                     (a step that reached some shards but not all before it stopped)",
                )
                .expect("valid"),
            ),
            clock: register(
                r,
                IntGauge::new("ps_worker_clock", "The worker's clock: steps completed").expect("valid"),
            ),
            loss: late(
                "ps_worker_train_loss",
                "Training loss of the last step's minibatch (absent before the first step)",
            ),
            accuracy: late(
                "ps_worker_test_accuracy",
                "Test accuracy of the last evaluation (absent before the first)",
            ),
            retries,
            errors,
            registry,
            policy,
        }
    }

    /// The registry holding these metrics.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Labels every series with `policy` (e.g. `ssp(3)`) from now on.
    pub fn set_policy(&self, policy: &str) {
        *self.policy.write().unwrap_or_else(|p| p.into_inner()) = Some(policy.to_string());
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

    /// Records a clock given up at a join.
    pub fn gave_up_clock(&self) {
        self.given_up.inc();
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
        self.errors.with_label_values(&[op, code_name(code)]).inc();
    }
}

fn policy_desc() -> Desc {
    Desc::new(
        "ps_worker_metrics".to_string(),
        "A worker's metrics, labelled with its policy".to_string(),
        Vec::new(),
        HashMap::new(),
    )
    .expect("valid descriptor")
}

/// The worker's series with a `policy` label added at each scrape, so the
/// label can be learnt after the series were registered.
struct WithPolicy {
    series: Registry,
    policy: Arc<RwLock<Option<String>>>,
    desc: Desc,
}

impl Collector for WithPolicy {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.desc]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut families = self.series.gather();
        let policy = self.policy.read().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(policy) = policy {
            for family in &mut families {
                for metric in family.mut_metric() {
                    let mut label = LabelPair::default();
                    label.set_name("policy".to_string());
                    label.set_value(policy.clone());
                    let mut labels = metric.take_label();
                    labels.push(label);
                    metric.set_label(labels);
                }
            }
        }
        families
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scrape(m: &WorkerMetrics) -> String {
        ps_proto::exposition::encode(std::slice::from_ref(m.registry()))
    }

    #[test]
    fn counters_exist_at_zero_and_measurements_are_absent_until_made() {
        let m = WorkerMetrics::new(3, None);
        let text = scrape(&m);
        assert!(text.contains(r#"ps_worker_retries_total{op="push",worker="3"} 0"#), "{text}");
        assert!(
            text.contains(r#"ps_worker_errors_total{code="unavailable",op="pull",worker="3"} 0"#),
            "{text}"
        );
        assert!(text.contains(r#"ps_worker_clocks_given_up_total{worker="3"} 0"#), "{text}");
        assert!(!text.contains("ps_worker_test_accuracy"), "{text}");
        assert!(!text.contains("ps_worker_train_loss"), "{text}");
        assert!(!text.contains("policy="), "no policy before it is known: {text}");
        m.accuracy(0.5);
        m.step(0, 2.0, Duration::ZERO, Duration::ZERO, Duration::ZERO, Duration::ZERO);
        let text = scrape(&m);
        assert!(text.contains(r#"ps_worker_test_accuracy{worker="3"} 0.5"#), "{text}");
        assert!(text.contains(r#"ps_worker_train_loss{worker="3"} 2"#), "{text}");
    }

    #[test]
    fn the_policy_labels_every_series_once_known() {
        let m = WorkerMetrics::new(0, None);
        m.set_policy("ssp(3)");
        let text = scrape(&m);
        let samples: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert!(!samples.is_empty());
        for line in samples {
            assert!(line.contains(r#"policy="ssp(3)""#), "{line}");
        }
        let given = WorkerMetrics::new(1, Some("sync"));
        assert!(
            scrape(&given).contains(r#"ps_worker_clock{worker="1",policy="sync"} 0"#),
            "{}",
            scrape(&given)
        );
    }
}
