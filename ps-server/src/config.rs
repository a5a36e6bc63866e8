//! Configuration of one shard.

use serde::{Deserialize, Serialize};

use crate::optim::OptimizerConfig;
use crate::sync::Policy;
use ps_proto::Scaling;

/// How a sync round combines the workers' gradients (mean: divided by the
/// workers that contributed to the round); in ssp and async, how each push
/// is scaled (mean: by 1 / W, the job's worker count, so W pushes of one
/// clock move the parameters as far as one sync round, and a worker leaving
/// does not enlarge the others' steps).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Aggregation {
    /// Average over the contributing workers.
    #[default]
    Mean,
    /// Sum over the contributing workers.
    Sum,
}

/// What a shard does about a live worker silent for longer than the worker timeout.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum WorkerLoss {
    /// Evict it: it leaves, and sync and ssp go on with the others (sync
    /// means divide by the workers that contributed).
    #[default]
    Evict,
    /// Keep waiting for it; the wait is logged and shown by
    /// `ps_server_silent_workers`.
    Wait,
    /// Stop the job: every request then fails with `ABORTED`, naming the worker.
    Fail,
}

/// Policy names as written in flags and config files.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum PolicyName {
    /// Strong consistency: lockstep, one aggregated update per clock.
    #[default]
    Sync,
    /// Bounded staleness (stale synchronous parallel) with `--staleness`.
    Ssp,
    /// Eventual consistency: every push applied on arrival, pulls never wait.
    Async,
}

impl PolicyName {
    /// The policy with `staleness` as the bound for ssp (unscaled).
    pub fn with_staleness(self, staleness: u32) -> Policy {
        self.with_options(staleness, 0, Scaling::None)
    }

    /// The policy with its options: `staleness` for ssp, `backup` workers
    /// for sync, `scaling` for ssp and async (each ignored elsewhere).
    pub fn with_options(self, staleness: u32, backup: u32, scaling: Scaling) -> Policy {
        match self {
            PolicyName::Sync => Policy::Sync { backup },
            PolicyName::Ssp => Policy::Ssp { staleness, scaling },
            PolicyName::Async => Policy::Async { scaling },
        }
    }
}

/// Everything one shard needs to know. Every shard of a cluster must agree
/// on `num_shards`, `split_threshold` and `num_workers`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShardConfig {
    /// This shard's id, `0..num_shards`.
    pub shard_id: u32,
    /// Shards in the cluster.
    pub num_shards: u32,
    /// Tensors with at least this many elements are split over all shards.
    pub split_threshold: u64,
    /// Worker ids are `0..num_workers`; those below `initial_workers` start live.
    pub num_workers: u32,
    /// Worker ids `0..initial_workers` are live from the start; the others
    /// (up to `num_workers`) may join a running job later (elastic
    /// scale-out) and hold nothing back until they do. `None`: all start live.
    pub initial_workers: Option<u32>,
    /// Default policy of tensors that do not choose one.
    pub policy: PolicyName,
    /// Default staleness bound for ssp tensors.
    pub staleness: u32,
    /// Default backup workers b for sync tensors: a round closes on the
    /// first `W - b` gradients.
    pub backup_workers: u32,
    /// Default staleness scaling for ssp and async tensors.
    pub staleness_scaling: Scaling,
    /// Mean or sum of the workers' gradients.
    pub aggregation: Aggregation,
    /// Default optimizer of tensors that do not choose one.
    pub optimizer: OptimizerConfig,
    /// Largest gRPC message accepted (one chunk plus headers).
    pub max_message_bytes: usize,
    /// Largest payload bytes per chunk in pull replies; a part is sent in
    /// chunks of about an eighth of it, at least 512 KiB unless this is
    /// smaller (`ps_proto::chunk::chunk_bytes_for`).
    pub chunk_bytes: usize,
    /// Largest tensor part this shard accepts, in bytes of f32.
    pub max_tensor_bytes: u64,
    /// Concurrent requests (HTTP/2 streams) per connection; more wait on the client.
    pub max_concurrent_streams: u32,
    /// Open client connections; more are closed at once (the client retries).
    /// Each can hold up to one HTTP/2 connection window (64 MiB) of unread data.
    pub max_connections: usize,
    /// Bytes of pushed gradients being received at once, over all pushes,
    /// counted decoded (4 per element, whatever the wire dtype); a push
    /// waits (reading nothing, so flow control holds its sender back) until
    /// its part's bytes fit. A part larger than this runs alone.
    pub max_push_bytes_in_flight: u64,
    /// Sync parts larger than this many bytes (of f32) also take a push in
    /// pieces of this size, one request each (0: whole pushes only). While
    /// a piece is received the shard holds a piece-sized buffer, not a
    /// part-sized one, next to the parameters and the round's sum. `None`:
    /// [`AUTO_PIECES_BYTES`] over the number of workers, within
    /// [`MIN_PIECE_BYTES`]..=[`MAX_PIECE_BYTES`] (see
    /// [`sync_piece_bytes`](Self::sync_piece_bytes)).
    pub sync_piece_bytes: Option<u64>,
    /// Record Prometheus metrics (off only to measure what they cost).
    pub metrics: bool,
    /// Evict a live worker silent for this many milliseconds with no request
    /// in flight (0: never). Every request renews the worker's lease.
    pub worker_timeout_ms: u64,
    /// What to do about a worker silent for longer than `worker_timeout_ms`.
    pub on_worker_loss: WorkerLoss,
    /// Before a worker's first request in this life of the shard (start,
    /// restore or rewind), it is allowed `worker_timeout_ms` plus this many
    /// milliseconds, so workers still starting are not lost.
    pub join_grace_ms: u64,
    /// Directory under which checkpoints are written (one subdirectory
    /// each); checkpoints are refused when absent.
    pub checkpoint_dir: Option<std::path::PathBuf>,
    /// Complete checkpoints kept under `checkpoint_dir`; older ones are deleted.
    pub keep_checkpoints: usize,
    /// Checkpoints registered and not yet written or failed at once; more
    /// are refused (each may keep a copy of the parts it waits for).
    pub max_pending_checkpoints: usize,
    /// File holding the bearer token every request must carry; none: no check.
    pub auth_token_file: Option<std::path::PathBuf>,
    /// PEM certificate chain to serve TLS with (with `tls_key`); none: plaintext.
    pub tls_cert: Option<std::path::PathBuf>,
    /// PEM private key of `tls_cert`.
    pub tls_key: Option<std::path::PathBuf>,
    /// PEM CA certificate: when set, clients must present a certificate it signed (mutual TLS).
    pub tls_client_ca: Option<std::path::PathBuf>,
}

/// Bytes of pieces that the workers' pushes have in flight at once, which
/// the default piece size ([`ShardConfig::sync_piece_bytes`]) keeps to.
pub const AUTO_PIECES_BYTES: u64 = 16 << 20;
/// Smallest default piece: below it, the requests cost more than they save.
pub const MIN_PIECE_BYTES: u64 = 2 << 20;
/// Largest default piece.
pub const MAX_PIECE_BYTES: u64 = 8 << 20;

impl Default for ShardConfig {
    fn default() -> Self {
        Self {
            shard_id: 0,
            num_shards: 1,
            split_threshold: ps_proto::cluster::DEFAULT_SPLIT_THRESHOLD,
            num_workers: 1,
            initial_workers: None,
            policy: PolicyName::Sync,
            staleness: 2,
            backup_workers: 0,
            staleness_scaling: Scaling::None,
            aggregation: Aggregation::Mean,
            optimizer: OptimizerConfig::default(),
            max_message_bytes: 16 << 20,
            chunk_bytes: ps_proto::chunk::DEFAULT_CHUNK_BYTES,
            max_tensor_bytes: 16 << 30,
            max_concurrent_streams: 256,
            max_connections: 1024,
            max_push_bytes_in_flight: 64 << 20,
            sync_piece_bytes: None,
            metrics: true,
            worker_timeout_ms: 0,
            on_worker_loss: WorkerLoss::Evict,
            join_grace_ms: crate::membership::DEFAULT_JOIN_GRACE.as_millis() as u64,
            checkpoint_dir: None,
            keep_checkpoints: 3,
            max_pending_checkpoints: 4,
            auth_token_file: None,
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
        }
    }
}

impl ShardConfig {
    /// Whether worker `worker` is live when the shard starts (or is restored).
    pub fn starts_live(&self, worker: u32) -> bool {
        worker < self.initial_workers.unwrap_or(self.num_workers)
    }

    /// How the job that wrote `manifest` differs from this shard's
    /// settings, one entry per setting, naming the flag, the checkpoint's
    /// value and this shard's (empty: the same job). Optimizers are not
    /// compared: each tensor keeps the one it was declared with (see
    /// [`optimizer_note`](Self::optimizer_note)).
    pub fn differences_from(&self, manifest: &crate::checkpoint::format::Manifest) -> Vec<String> {
        let mut differences = Vec::new();
        let (theirs, ours) = (manifest.policy, self.default_policy());
        if theirs != ours {
            let flag = if theirs.kind() != ours.kind() {
                "--policy"
            } else if theirs.backup_workers() != ours.backup_workers() {
                "--backup-workers"
            } else if theirs.scaling() != ours.scaling() {
                "--staleness-scaling"
            } else {
                "--staleness"
            };
            differences.push(format!("{flag} {theirs} (this shard: {ours})"));
        }
        if manifest.num_workers != self.num_workers {
            differences
                .push(format!("--workers {} (this shard: {})", manifest.num_workers, self.num_workers));
        }
        if manifest.aggregation != self.aggregation {
            differences.push(format!(
                "--aggregation {:?} (this shard: {:?})",
                manifest.aggregation, self.aggregation
            ));
        }
        differences
    }

    /// A note when tensors of `manifest` use another optimizer than this
    /// shard's default: they keep theirs (it is part of their state), and
    /// the default applies only to tensors declared later.
    pub fn optimizer_note(&self, manifest: &crate::checkpoint::format::Manifest) -> Option<String> {
        let other: Vec<String> = manifest
            .tensors
            .iter()
            .filter(|t| t.optimizer != self.optimizer)
            .map(|t| format!("{} ({})", t.name, t.optimizer))
            .collect();
        (!other.is_empty()).then(|| {
            format!(
                "restored tensors keep the optimizer they were declared with, not this shard's {}: {}",
                self.optimizer,
                other.join(", ")
            )
        })
    }

    /// A warning when the default optimizer has momentum under a policy
    /// with staleness: there every push is one update computed from a
    /// stale read, and staleness itself acts like momentum, so the two add
    /// up (the README's cluster example trained to 0.42-0.72 instead of
    /// 0.86 with momentum 0.9 under ssp(3)).
    pub fn momentum_warning(&self) -> Option<String> {
        let momentum = match self.optimizer {
            OptimizerConfig::Sgd { momentum, .. } if momentum > 0.0 => momentum,
            _ => return None,
        };
        (self.policy != PolicyName::Sync).then(|| {
            format!(
                "momentum {momentum} under policy {}: staleness already acts like momentum, so this \
                 trains worse than sync does with it; use --momentum 0 (the default), or lower --lr",
                self.default_policy()
            )
        })
    }

    /// The default policy as the sync core sees it.
    pub fn default_policy(&self) -> Policy {
        self.policy.with_options(self.staleness, self.backup_workers, self.staleness_scaling)
    }

    /// This config with `policy` as the cluster default: its name and, for
    /// ssp, its staleness.
    pub fn with_default_policy(self, policy: Policy) -> Self {
        let (name, staleness) = match policy {
            Policy::Sync { .. } => (PolicyName::Sync, self.staleness),
            Policy::Ssp { staleness, .. } => (PolicyName::Ssp, staleness),
            Policy::Async { .. } => (PolicyName::Async, self.staleness),
        };
        let (backup_workers, staleness_scaling) = (policy.backup_workers(), policy.scaling());
        Self { policy: name, staleness, backup_workers, staleness_scaling, ..self }
    }

    /// The size of the pieces sync pushes go in (0: whole pushes only):
    /// the configured one, or by default [`AUTO_PIECES_BYTES`] over the
    /// number of workers, within [`MIN_PIECE_BYTES`]..=[`MAX_PIECE_BYTES`].
    /// Each worker sends one piece of a part at a time, so by default the
    /// pieces being received stay within about 16 MiB however many workers
    /// push, while fewer workers get larger pieces, hence fewer requests.
    pub fn sync_piece_bytes(&self) -> u64 {
        self.sync_piece_bytes.unwrap_or_else(|| {
            (AUTO_PIECES_BYTES / u64::from(self.num_workers.max(1))).clamp(MIN_PIECE_BYTES, MAX_PIECE_BYTES)
        })
    }

    /// Elements per piece a push to a part of `len` elements under `policy`
    /// may cover instead of the whole part: 0 (whole pushes only) unless the
    /// part is sync without backup workers (their rounds close without
    /// some pushes, so a push must count whole or not at all), longer than a piece ([`sync_piece_bytes`](Self::sync_piece_bytes)),
    /// and its rounds sum several workers' pushes (with one worker the push
    /// is the round's sum, so there is no buffer to save).
    pub fn piece_len(&self, policy: Policy, len: u64) -> u64 {
        let bytes = self.sync_piece_bytes();
        let piece = (bytes / 4).max(1);
        let pieced = policy == Policy::SYNC && self.num_workers > 1 && bytes > 0 && len > piece;
        if pieced { piece } else { 0 }
    }

    /// How many pushed pieces fit the push budget at once (at least 1).
    pub fn pieces_received_at_once(&self) -> usize {
        usize::try_from(self.max_push_bytes_in_flight / self.sync_piece_bytes().max(1))
            .unwrap_or(usize::MAX)
            .max(1)
    }

    /// Checks internal consistency; the message says which field is wrong.
    pub fn validate(&self) -> Result<(), String> {
        if self.num_shards == 0 {
            return Err("num_shards must be at least 1".into());
        }
        if self.shard_id >= self.num_shards {
            return Err(format!("shard_id {} is out of range for {} shards", self.shard_id, self.num_shards));
        }
        if self.num_workers == 0 {
            return Err("num_workers must be at least 1".into());
        }
        if let Some(initial) = self.initial_workers
            && initial > self.num_workers
        {
            return Err(format!(
                "initial_workers {initial} exceeds num_workers {} (the largest worker count)",
                self.num_workers
            ));
        }
        if self.backup_workers > 0 && self.policy != PolicyName::Sync {
            return Err(format!(
                "backup_workers {} applies only to policy sync, and the policy is {}: drop it or use sync",
                self.backup_workers,
                self.policy.with_staleness(self.staleness)
            ));
        }
        let workers = self.initial_workers.unwrap_or(self.num_workers);
        if self.backup_workers > 0 && self.backup_workers >= workers {
            return Err(format!(
                "backup_workers {} leaves no worker to close a round with {workers} workers: use at most {}",
                self.backup_workers,
                workers.saturating_sub(1)
            ));
        }
        if self.staleness_scaling != Scaling::None && self.policy == PolicyName::Sync {
            return Err(format!(
                "staleness_scaling {} applies only to policies ssp and async (sync reads are never stale): \
                 drop it or use ssp or async",
                self.staleness_scaling
            ));
        }
        if self.chunk_bytes == 0 || self.chunk_bytes + 4096 > self.max_message_bytes {
            return Err(format!(
                "chunk_bytes {} must be positive and at least 4 KiB below max_message_bytes {}",
                self.chunk_bytes, self.max_message_bytes
            ));
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err("tls_cert and tls_key go together".into());
        }
        if self.tls_client_ca.is_some() && self.tls_cert.is_none() {
            return Err("tls_client_ca (mutual TLS) needs tls_cert and tls_key".into());
        }
        if self.max_connections == 0 || self.max_push_bytes_in_flight == 0 {
            return Err("max_connections and max_push_bytes_in_flight must be at least 1".into());
        }
        if self.keep_checkpoints == 0 || self.max_pending_checkpoints == 0 {
            return Err("keep_checkpoints and max_pending_checkpoints must be at least 1".into());
        }
        self.optimizer.validate()
    }
}
