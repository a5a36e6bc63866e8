//! Prometheus metrics of a shard: names, buckets, the recorder, and the
//! HTTP endpoint that serves them. The per-RPC metrics ([`RpcMetrics`]) and
//! the tower layer that records them ([`RpcMetricsLayer`]) are in `rpc.rs`.
//!
//! Every metric is registered once, when the shard starts; the per-RPC
//! children on the success path are resolved then too, so recording a
//! request allocates nothing. All metrics carry `shard` and `policy` (the
//! shard's default, e.g. `ssp(3)`) labels.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

use crate::sync::Policy;

mod rpc;

use ps_proto::exposition::LateGauge;
pub use rpc::{FirstRpc, RecordRpcs, Refused, Rpc, RpcMetrics, RpcMetricsLayer, Served};

/// Every reason a request is refused for, as `ps_server_rejected_requests_total`
/// labels it ([`PsError::reason`](crate::PsError::reason), and the refusals
/// of the service, the edge and the connection limit): each series exists,
/// at 0, from the start, so a rate over it is 0 rather than no data.
pub const REJECTION_REASONS: &[&str] = &[
    "unknown_tensor",
    "shape_conflict",
    "declare_conflict",
    "not_joined",
    "unknown_checkpoint",
    "wrong_range",
    "not_placed_here",
    "non_finite",
    "invalid_argument",
    "malformed_chunks",
    "too_large",
    "clock",
    "worker",
    "evicted",
    "shutting_down",
    "checkpoint_too_late",
    "no_checkpoint_dir",
    "checkpoint",
    "job_failed",
    "restarted",
    "malformed",
    "compressed",
    "deadline",
    "idle",
    "transport",
    "unauthenticated",
    "too_many_connections",
];

/// Latency buckets: 50 µs to ~100 s.
fn latency_buckets() -> Vec<f64> {
    prometheus::exponential_buckets(50e-6, 2.5, 16).unwrap_or_default()
}

/// Buckets of a count of tensor parts in one request: 1 to 1024.
fn parts_buckets() -> Vec<f64> {
    prometheus::exponential_buckets(1.0, 2.0, 11).unwrap_or_default()
}

/// The metrics of one shard.
#[derive(Debug)]
pub struct ShardMetrics {
    enabled: bool,
    registry: Registry,
    rpcs: Arc<RpcMetrics>,
    push_apply: Histogram,
    round_apply: Histogram,
    step_parts: Histogram,
    pull_many_parts: Histogram,
    /// Per worker id, its clock gauge, resolved at start.
    worker_clocks: Vec<IntGauge>,
    /// The values behind `worker_clocks`, to compute the minimum under one lock.
    worker_clock_values: Mutex<Vec<i64>>,
    min_clock: IntGauge,
    staleness: Histogram,
    blocked_pull: Histogram,
    blocked_barrier: Histogram,
    pulls_waiting: IntGauge,
    live_workers: IntGauge,
    joins: IntCounter,
    leaves: IntCounter,
    evictions: IntCounter,
    rewinds: IntCounter,
    silent_workers: IntGauge,
    /// Per worker id, seconds pulls waited on it (resolved at start).
    waited_on: Vec<IntCounter>,
    rejected: IntCounterVec,
    duplicates: IntCounter,
    dropped: IntCounter,
    push_staleness: Histogram,
    update_waits: IntCounter,
    update_copies: IntCounter,
    tensors: IntGauge,
    held: IntGaugeVec,
    checkpoint: CheckpointMetrics,
}

/// Checkpoint metrics of a shard; cheap to clone, so the background writer
/// records into the same series.
#[derive(Clone, Debug)]
pub struct CheckpointMetrics {
    enabled: bool,
    pending: IntGauge,
    write_seconds: Histogram,
    /// The last checkpoint's bytes, time and clock: absent before the first.
    bytes: LateGauge,
    bytes_total: IntCounter,
    last_success: LateGauge,
    last_clock: LateGauge,
    failures: IntCounter,
    shadows: IntGauge,
}

impl CheckpointMetrics {
    /// Copies kept for pending checkpoints grew (or, negative, shrank) by
    /// `bytes`: counted in `ps_server_held_bytes{kind="checkpoint_shadows"}`.
    pub fn shadow_bytes_changed(&self, bytes: i64) {
        if self.enabled && bytes != 0 {
            self.shadows.add(bytes);
        }
    }

    /// A checkpoint was registered and waits for its clock.
    pub fn registered(&self) {
        if self.enabled {
            self.pending.inc();
        }
    }

    /// A checkpoint's shard file is durable: it took `elapsed` from capture
    /// to fsync and holds `bytes`.
    pub fn written(&self, clock: u64, elapsed: Duration, bytes: u64) {
        if !self.enabled {
            return;
        }
        self.pending.dec();
        self.write_seconds.observe(elapsed.as_secs_f64());
        self.bytes.set(bytes as f64);
        self.bytes_total.inc_by(bytes);
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        self.last_success.set(now.as_secs_f64());
        self.last_clock.set(clock as f64);
    }

    /// A checkpoint could not be taken or written.
    pub fn failed(&self, was_pending: bool) {
        if !self.enabled {
            return;
        }
        if was_pending {
            self.pending.dec();
        }
        self.failures.inc();
    }
}

fn register<T: prometheus::core::Collector + Clone + 'static>(registry: &Registry, metric: T) -> T {
    // Names are fixed and distinct: registration can only fail on a programming error.
    registry.register(Box::new(metric.clone())).expect("metric names are unique");
    metric
}

impl ShardMetrics {
    /// Registers every metric of shard `shard` for `num_workers` workers.
    /// When not `enabled`, the metrics exist but nothing is recorded (to
    /// measure what recording costs).
    pub fn new(shard: u32, num_workers: u32, policy: Policy, enabled: bool) -> Self {
        let labels = HashMap::from([
            ("shard".to_string(), shard.to_string()),
            ("policy".to_string(), policy.to_string()),
        ]);
        let registry = Registry::new_custom(None, Some(labels)).expect("valid shard label");
        let r = &registry;
        let rejected = register(
            r,
            IntCounterVec::new(
                Opts::new("ps_server_rejected_requests_total", "Refused requests by reason"),
                &["reason"],
            )
            .expect("valid metric"),
        );
        for reason in REJECTION_REASONS {
            rejected.with_label_values(&[reason]);
        }
        let rpcs = Arc::new(RpcMetrics::new(r, rejected.clone(), enabled));
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            register(
                r,
                Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets)).expect("valid metric"),
            )
        };
        let counter =
            |name: &str, help: &str| register(r, IntCounter::new(name, help).expect("valid metric"));
        let gauge = |name: &str, help: &str| register(r, IntGauge::new(name, help).expect("valid metric"));
        let late = |name: &str, help: &str| LateGauge::register(r, name, help).expect("valid metric");
        let worker_clock = register(
            r,
            IntGaugeVec::new(
                Opts::new(
                    "ps_server_worker_clock",
                    "Clocks each worker has pushed to this shard (highest over tensors)",
                ),
                &["worker"],
            )
            .expect("valid metric"),
        );
        // Resolving a child creates it at 0, so every worker's clock is exported from the start.
        let worker_clocks: Vec<IntGauge> =
            (0..num_workers).map(|w| worker_clock.with_label_values(&[&w.to_string()])).collect();
        let info = register(
            r,
            IntGaugeVec::new(
                Opts::new("ps_server_info", "Default policy kind and staleness bound of the shard (value 1)"),
                &["kind", "staleness"],
            )
            .expect("valid metric"),
        );
        let (name, bound) = match policy {
            Policy::Ssp { staleness, .. } => ("ssp", staleness.to_string()),
            _ => (policy.kind(), String::new()),
        };
        info.with_label_values(&[name, &bound]).set(1);
        let held = register(
            r,
            IntGaugeVec::new(
                Opts::new(
                    "ps_server_held_bytes",
                    "Bytes held: parameters, optimizer state, sync aggregation buffers (at full size; a sync part holds its buffer only while a round is open), sync gradients that arrived before their turn in the round's ordered sum, and copies kept for pending checkpoints",
                ),
                &["kind"],
            )
            .expect("valid metric"),
        );
        for kind in ["parameters", "optimizer_state", "buffers", "held_gradients", "checkpoint_shadows"] {
            held.with_label_values(&[kind]).set(0);
        }
        let waited_on = register(
            r,
            IntCounterVec::new(
                Opts::new(
                    "ps_server_waited_on_worker_seconds_total",
                    "Seconds pulls waited for this worker to push, counted every 5 s of a wait \
                     (rate > 0: the job is waiting for this worker)",
                ),
                &["worker"],
            )
            .expect("valid metric"),
        );
        let waited_on = (0..num_workers).map(|w| waited_on.with_label_values(&[&w.to_string()])).collect();
        let live_workers = gauge("ps_server_live_workers", "Workers currently live");
        live_workers.set(i64::from(num_workers));
        Self {
            enabled,
            rpcs,
            push_apply: histogram(
                "ps_server_push_apply_seconds",
                "Time a push holds its tensor to apply or accumulate its gradient",
                latency_buckets(),
            ),
            round_apply: histogram(
                "ps_server_round_apply_seconds",
                "Time of pushes that completed a sync round, including applying the aggregate",
                latency_buckets(),
            ),
            step_parts: histogram(
                "ps_server_step_parts",
                "Tensor parts per Step request (a step's pushes and pulls on this shard)",
                parts_buckets(),
            ),
            pull_many_parts: histogram(
                "ps_server_pull_many_parts",
                "Tensor parts per PullMany request",
                parts_buckets(),
            ),
            worker_clocks,
            worker_clock_values: Mutex::new(vec![0; num_workers as usize]),
            min_clock: gauge("ps_server_min_clock", "Smallest clock among live workers on this shard"),
            staleness: histogram(
                "ps_server_pull_staleness_clocks",
                "Clocks of updates missing from a worker's pull: max over live workers of clock - 1 - version",
                vec![0.0, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 50.0, 100.0, 1000.0],
            ),
            blocked_pull: histogram(
                "ps_server_pull_blocked_seconds",
                "Time a pull waited for the policy's release rule",
                latency_buckets(),
            ),
            blocked_barrier: histogram(
                "ps_server_barrier_wait_seconds",
                "Time a barrier waited for the other workers",
                latency_buckets(),
            ),
            pulls_waiting: gauge(
                "ps_server_pulls_waiting",
                "Pulls waiting for the policy's release rule now",
            ),
            live_workers,
            joins: counter("ps_server_joins_total", "Worker joins and rejoins"),
            leaves: counter("ps_server_leaves_total", "Workers that left (including evictions)"),
            evictions: counter("ps_server_evictions_total", "Workers evicted for silence (--worker-timeout)"),
            rewinds: counter(
                "ps_server_rewinds_total",
                "Times this shard went back to a checkpoint because another shard restarted from it",
            ),
            silent_workers: gauge(
                "ps_server_silent_workers",
                "Live workers silent past --worker-timeout that the shard waits for (--on-worker-loss wait)",
            ),
            waited_on,
            rejected,
            duplicates: counter(
                "ps_server_duplicate_pushes_total",
                "Pushes acknowledged without effect because they were already applied (client retries)",
            ),
            dropped: counter(
                "ps_server_dropped_pushes_total",
                "Sync pushes with backup workers dropped because their round closed first",
            ),
            push_staleness: histogram(
                "ps_server_push_staleness_updates",
                "ssp and async pushes: updates applied to the part between the pusher's last read and the push (tau)",
                vec![0.0, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 50.0, 100.0, 1000.0],
            ),
            update_waits: counter(
                "ps_server_update_waits_total",
                "Updates that waited for pull replies still being sent from the values they change",
            ),
            update_copies: counter(
                "ps_server_update_copies_total",
                "Updates that copied a part's values because a pull reply still being sent or a checkpoint capture held them",
            ),
            tensors: gauge("ps_server_tensors", "Tensor parts held"),
            held: held.clone(),
            checkpoint: CheckpointMetrics {
                enabled,
                shadows: held.with_label_values(&["checkpoint_shadows"]),
                pending: gauge(
                    "ps_server_checkpoints_pending",
                    "Checkpoints registered on this shard whose file is not yet durable",
                ),
                write_seconds: histogram(
                    "ps_server_checkpoint_write_seconds",
                    "Time from capturing a checkpoint in memory to its shard file being durable",
                    prometheus::exponential_buckets(1e-3, 2.5, 14).unwrap_or_default(),
                ),
                bytes: late(
                    "ps_server_checkpoint_bytes",
                    "Bytes of this shard's last checkpoint file (absent before the first)",
                ),
                bytes_total: counter("ps_server_checkpoint_bytes_total", "Bytes of checkpoint files written"),
                last_success: late(
                    "ps_server_checkpoint_last_success_timestamp_seconds",
                    "Unix time at which this shard's last checkpoint file became durable (absent before the first)",
                ),
                last_clock: late(
                    "ps_server_checkpoint_last_clock",
                    "Clock of this shard's last durable checkpoint (absent before the first)",
                ),
                failures: counter(
                    "ps_server_checkpoint_failures_total",
                    "Checkpoints this shard could not take or write (the job goes on)",
                ),
            },
            registry,
        }
    }

    /// The checkpoint metrics.
    pub fn checkpoint(&self) -> &CheckpointMetrics {
        &self.checkpoint
    }

    /// The registry holding these metrics.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The per-RPC metrics, which [`RpcMetricsLayer`] records into.
    pub fn rpcs(&self) -> &Arc<RpcMetrics> {
        &self.rpcs
    }

    /// Records an applied push of `worker` for `clock` that held its tensor for `elapsed`.
    pub fn push_applied(
        &self,
        worker: u32,
        clock: u64,
        elapsed: Duration,
        completed_round: bool,
        live: &[bool],
    ) {
        if !self.enabled {
            return;
        }
        self.push_apply.observe(elapsed.as_secs_f64());
        if completed_round {
            self.round_apply.observe(elapsed.as_secs_f64());
        }
        let mut clocks = self.worker_clock_values.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = clocks.get_mut(worker as usize)
            && *c < clock as i64 + 1
        {
            *c = clock as i64 + 1;
            self.worker_clocks[worker as usize].set(*c);
        }
        let min = clocks.iter().zip(live).filter(|(_, l)| **l).map(|(c, _)| *c).min().unwrap_or(0);
        self.min_clock.set(min);
    }

    /// Records an update that waited for pull replies reading the values.
    pub fn update_waited(&self) {
        if !self.enabled {
            return;
        }
        self.update_waits.inc();
    }

    /// Records `copies` updates that copied the values they changed.
    pub fn update_copied(&self, copies: u64) {
        if !self.enabled || copies == 0 {
            return;
        }
        self.update_copies.inc_by(copies);
    }

    /// Records a sync push dropped because its round closed first (backup workers).
    pub fn dropped_push(&self) {
        if !self.enabled {
            return;
        }
        self.dropped.inc();
    }

    /// Records an ssp or async push's staleness τ.
    pub fn push_staleness(&self, tau: u64) {
        if !self.enabled {
            return;
        }
        self.push_staleness.observe(tau as f64);
    }

    /// Records a push that was a retry of one already applied.
    pub fn duplicate_push(&self) {
        if !self.enabled {
            return;
        }
        self.duplicates.inc();
    }

    /// Records a Step request of `parts` tensor parts, that moved
    /// `payload_bytes` after its reply's headers were sent.
    pub fn step_served(&self, parts: usize, payload_bytes: u64) {
        if self.enabled {
            self.step_parts.observe(parts as f64);
            self.rpcs.add_payload(rpc::Rpc::Step, payload_bytes);
        }
    }

    /// Records a request refused for `reason` after its reply had begun
    /// (a `Step`'s later push): its status ends the reply's stream.
    pub fn refused_in_reply(&self, reason: &str) {
        if self.enabled {
            self.rejected.with_label_values(&[reason]).inc();
        }
    }

    /// Records a PullMany request of `parts` tensor parts.
    pub fn pull_many_served(&self, parts: usize) {
        if self.enabled {
            self.pull_many_parts.observe(parts as f64);
        }
    }

    /// Records a worker's pull: how stale it was and how long it waited.
    pub fn pulled(&self, staleness: Option<u64>, waited: Duration) {
        if !self.enabled {
            return;
        }
        if let Some(s) = staleness {
            self.staleness.observe(s as f64);
        }
        self.blocked_pull.observe(waited.as_secs_f64());
    }

    /// Counts a pull as waiting until the returned guard is dropped.
    pub fn pull_waiting(&self) -> WaitingGuard {
        let gauge = self.pulls_waiting.clone();
        if self.enabled {
            gauge.inc();
        }
        WaitingGuard { gauge, enabled: self.enabled }
    }

    /// Records a barrier's wait.
    pub fn barrier_waited(&self, waited: Duration) {
        if !self.enabled {
            return;
        }
        self.blocked_barrier.observe(waited.as_secs_f64());
    }

    /// Records a join or a leave, with the live count after it.
    pub fn membership(&self, joined: bool, live: usize) {
        if !self.enabled {
            return;
        }
        if joined {
            self.joins.inc()
        } else {
            self.leaves.inc()
        }
        self.live_workers.set(live as i64);
    }

    /// Records a request refused for a missing or wrong bearer token.
    pub fn unauthenticated(&self) {
        if self.enabled {
            self.rejected.with_label_values(&["unauthenticated"]).inc();
        }
    }

    /// Records a connection closed on arrival because --max-connections were open.
    pub fn connection_refused(&self) {
        if self.enabled {
            self.rejected.with_label_values(&["too_many_connections"]).inc();
        }
    }

    /// Records that pulls have waited `seconds` more for each of `workers` to push.
    pub fn waited_on(&self, workers: &[u32], seconds: u64) {
        if self.enabled {
            for w in workers {
                if let Some(c) = self.waited_on.get(*w as usize) {
                    c.inc_by(seconds);
                }
            }
        }
    }

    /// Records how many live workers are silent past the timeout.
    pub fn silent_workers(&self, n: usize) {
        if self.enabled {
            self.silent_workers.set(n as i64);
        }
    }

    /// Records an eviction.
    pub fn evicted(&self) {
        if !self.enabled {
            return;
        }
        self.evictions.inc();
    }

    /// Sets the number of live workers (at start, when not all ids start live).
    pub fn set_live_workers(&self, live: usize) {
        if self.enabled {
            self.live_workers.set(live as i64);
        }
    }

    /// Records a rewind to a checkpoint, after which `live` workers are live.
    pub fn rewound(&self, live: usize) {
        if !self.enabled {
            return;
        }
        self.rewinds.inc();
        self.live_workers.set(live as i64);
    }

    /// The sync gradients held for their turn in a round's ordered sum grew
    /// (or, negative, shrank) by `bytes`: counted in
    /// `ps_server_held_bytes{kind="held_gradients"}`.
    pub fn held_gradients_changed(&self, bytes: i64) {
        if self.enabled && bytes != 0 {
            self.held.with_label_values(&["held_gradients"]).add(bytes);
        }
    }

    /// Records that a tensor part holding these bytes was dropped (by a rewind).
    pub fn tensor_removed(&self, parameters: usize, optimizer_state: usize, buffers: usize) {
        self.tensor_held(-1, [parameters, optimizer_state, buffers]);
    }

    /// Records a new tensor part and what it holds.
    pub fn tensor_created(&self, parameters: usize, optimizer_state: usize, buffers: usize) {
        self.tensor_held(1, [parameters, optimizer_state, buffers]);
    }

    /// Adds (`sign` 1) or removes (-1) one part and its bytes by kind.
    fn tensor_held(&self, sign: i64, bytes: [usize; 3]) {
        if !self.enabled {
            return;
        }
        self.tensors.add(sign);
        for (kind, bytes) in ["parameters", "optimizer_state", "buffers"].into_iter().zip(bytes) {
            self.held.with_label_values(&[kind]).add(sign * bytes as i64);
        }
    }
}

/// Keeps one pull counted in `ps_server_pulls_waiting` while it lives.
#[derive(Debug)]
pub struct WaitingGuard {
    gauge: IntGauge,
    enabled: bool,
}

impl Drop for WaitingGuard {
    fn drop(&mut self) {
        if self.enabled {
            self.gauge.dec();
        }
    }
}

pub use ps_proto::exposition::{code_name, encode, serve};
