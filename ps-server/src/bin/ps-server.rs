//! `ps-server`: runs one parameter-server shard. Arguments and signals only;
//! everything else lives in the library.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use ps_proto::{ClusterSpec, OptimizerKind};
use ps_server::logging::{self, LogFormat};
use ps_server::{Aggregation, PolicyName, ShardConfig};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Run one shard of a parameter server.
///
/// A cluster is S shards (one `ps-server` each) and W workers. Every shard
/// must be started with the same shard list (or count), worker count and
/// policy; each gets its own --shard-id. Workers connect to all shards.
///
/// Example, a 2-shard cluster for 4 workers with bounded staleness 3:
///
///   ps-server --listen 127.0.0.1:7070 --shard-id 0 --shards 127.0.0.1:7070,127.0.0.1:7071 --workers 4 --policy ssp --staleness 3
///
///   ps-server --listen 127.0.0.1:7071 --shard-id 1 --shards 127.0.0.1:7070,127.0.0.1:7071 --workers 4 --policy ssp --staleness 3
///
/// Checkpoints: start every shard with the same --checkpoint-dir (a shared
/// directory); workers request checkpoints (ps-worker --checkpoint-every K)
/// or an operator does (`ps-worker checkpoint --shards ...`). Restart every
/// shard with --restore DIR to resume from the newest complete checkpoint,
/// with the same or another shard count. `ps-server inspect DIR` verifies
/// and describes one.
///
/// On start it prints one line, `ps-server shard I/S listening on ADDR`, to
/// stdout (after `ps-server shard I/S restored ...` when restoring); logs go
/// to stderr (filter with RUST_LOG, e.g. RUST_LOG=debug).
#[derive(Debug, Parser)]
#[command(version, verbatim_doc_comment, args_conflicts_with_subcommands = true)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,

    /// Address to serve gRPC on; port 0 picks a free port (printed at start).
    #[arg(long, default_value = "127.0.0.1:7070")]
    listen: SocketAddr,

    /// This shard's id, 0..S.
    #[arg(long)]
    shard_id: Option<u32>,

    /// Comma-separated addresses of all shards, in shard-id order (sets S).
    #[arg(long, value_delimiter = ',', conflicts_with_all = ["cluster", "num_shards"])]
    shards: Option<Vec<String>>,

    /// TOML cluster spec: `shards = ["host:port", ...]` and optionally `split_threshold = N`.
    #[arg(long, conflicts_with = "num_shards")]
    cluster: Option<PathBuf>,

    /// Number of shards S, when no shard list is given.
    #[arg(long)]
    num_shards: Option<u32>,

    /// Number of workers W; worker ids are 0..W, all expected from the start.
    /// Required (here or as num_workers in --config).
    #[arg(long)]
    workers: Option<u32>,

    /// Allow workers to join the running job up to this many in all (elastic
    /// scale-out): ids W..M may join at any time, at the current clock, and
    /// hold nothing back until they do. Default: W (no scale-out).
    #[arg(long)]
    max_workers: Option<u32>,

    /// Default synchronisation policy: sync (strong), ssp (bounded staleness) or async (eventual).
    #[arg(long, value_enum)]
    policy: Option<PolicyName>,

    /// Staleness bound s for --policy ssp (only): pull(c) waits until every
    /// worker has clock >= c - s [default: 2].
    #[arg(long)]
    staleness: Option<u32>,

    /// Backup workers b for --policy sync (only): a round closes on the
    /// first W - b workers' gradients computed from its values; the others'
    /// are dropped and their workers go on. At most W - 1 [default: 0].
    #[arg(long)]
    backup_workers: Option<u32>,

    /// Staleness scaling for --policy ssp or async (only): none, or inverse,
    /// which multiplies a push's gradient by 1/max(1, tau) before the
    /// optimizer, tau being the updates applied to the tensor part since
    /// the pusher last read it [default: none].
    #[arg(long)]
    staleness_scaling: Option<ps_proto::Scaling>,

    /// How gradients of different workers combine.
    #[arg(long, value_enum)]
    aggregation: Option<Aggregation>,

    /// Default server-side optimizer: sgd, adam or adagrad.
    #[arg(long)]
    optimizer: Option<OptimizerKind>,

    /// Learning rate [default: 0.3 for sgd, 0.001 for adam, 0.01 for adagrad].
    /// The shards' optimizer is the job's: ps-worker declares every tensor
    /// with it.
    #[arg(long)]
    lr: Option<f32>,

    /// SGD momentum, in [0, 1) [default: 0]. Under ssp and async, staleness
    /// already acts as momentum (every push is one update from a stale
    /// read), so momentum there needs a lower --lr; the shard says so.
    #[arg(long)]
    momentum: Option<f32>,

    /// L2 weight decay (sgd, adam) [default: 0].
    #[arg(long)]
    weight_decay: Option<f32>,

    /// Tensors with at least this many elements are split over all shards.
    #[arg(long)]
    split_threshold: Option<u64>,

    /// A worker silent for this many seconds with no request in flight is lost
    /// (see --on-worker-loss; by default it is evicted: barriers stop waiting for
    /// it, and it may join again). Default: never.
    #[arg(long)]
    worker_timeout: Option<f64>,

    /// Before its first request (after the shard starts, restores or
    /// rewinds), a worker is lost only after --worker-timeout plus this many
    /// seconds, so workers still starting are not evicted [default: 60].
    #[arg(long)]
    join_grace: Option<f64>,

    /// Largest tensor part this shard accepts, in bytes of f32 [default: 16 GiB];
    /// larger declarations get RESOURCE_EXHAUSTED.
    #[arg(long, value_parser = ps_proto::byte_size::parse)]
    max_tensor_bytes: Option<u64>,

    /// Concurrent requests per client connection [default: 256]; more wait on the client side.
    #[arg(long)]
    max_concurrent_streams: Option<u32>,

    /// Open client connections [default: 1024]; more are closed at once and
    /// their clients retry. Each connection can hold up to 64 MiB of unread data.
    #[arg(long)]
    max_connections: Option<usize>,

    /// Bytes of pushed gradients (decoded f32) received at once over all pushes [default: 64 MiB];
    /// further pushes wait, and flow control holds their senders back (a part
    /// larger than this is received alone). With --max-connections this
    /// bounds the memory clients can make the shard hold: model + optimizer
    /// state + this + waiting pushes x 2 MiB (at most connections x 64 MiB).
    #[arg(long, value_parser = ps_proto::byte_size::parse)]
    max_push_bytes_in_flight: Option<u64>,

    /// Sync parts larger than this many bytes (of f32) also take each push in
    /// pieces of this size, one request per piece, so a push being received
    /// holds a piece-sized buffer rather than a part-sized one; workers learn
    /// the size when they declare [default: 16 MiB / --workers, within 2-8 MiB,
    /// so the pieces in flight stay near 16 MiB]. 0: whole pushes only.
    #[arg(long, value_parser = ps_proto::byte_size::parse)]
    sync_piece_bytes: Option<u64>,

    /// What to do about a worker silent for --worker-timeout: evict it (the others
    /// go on), wait for it (logged, and counted in ps_server_silent_workers), or
    /// fail (stop the job: every request gets ABORTED naming the worker).
    #[arg(long, value_enum, requires = "worker_timeout")]
    on_worker_loss: Option<ps_server::WorkerLoss>,

    /// Largest gRPC message accepted, in bytes; larger push chunks get RESOURCE_EXHAUSTED.
    #[arg(long, value_parser = ps_proto::byte_size::parse)]
    max_message_bytes: Option<u64>,

    /// Directory for checkpoints (one subdirectory each), shared by every shard of the cluster.
    #[arg(long)]
    checkpoint_dir: Option<PathBuf>,

    /// Complete checkpoints to keep in --checkpoint-dir; older ones are deleted [default: 3].
    #[arg(long)]
    keep_checkpoints: Option<usize>,

    /// Checkpoints pending (requested, not yet written) at once; more get
    /// RESOURCE_EXHAUSTED. In ssp and async each may hold a copy of the
    /// tensors it waits for (counted in ps_server_held_bytes) [default: 4].
    #[arg(long)]
    max_pending_checkpoints: Option<usize>,

    /// Restore from a checkpoint before serving: PATH is either a checkpoint
    /// root (the newest complete checkpoint whose checksums verify is used;
    /// invalid ones are skipped and reported) or one checkpoint directory
    /// (exactly that one; any problem is an error). Workers resume at its clock.
    #[arg(long, value_name = "PATH")]
    restore: Option<PathBuf>,

    /// Restore even when the checkpoint was written by a job with other
    /// settings (policy, staleness, workers or aggregation); without it
    /// such a restore is refused, naming the differences. (Tensors keep
    /// the optimizer they were declared with; the shard logs when that is
    /// not its --optimizer.)
    #[arg(long, requires = "restore")]
    allow_changed_settings: bool,

    /// File holding the cluster's bearer token: every request must carry it
    /// (`authorization: Bearer <token>`), or gets UNAUTHENTICATED.
    #[arg(long)]
    auth_token_file: Option<PathBuf>,

    /// Serve TLS with this PEM certificate chain (with --tls-key).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,

    /// Require client certificates signed by this PEM CA (mutual TLS).
    #[arg(long, requires = "tls_cert")]
    tls_ca: Option<PathBuf>,

    /// TOML file with any of the shard settings (see README); flags override it.
    #[arg(long)]
    config: Option<PathBuf>,

    /// Address of the HTTP endpoint serving /metrics (Prometheus) and /healthz; `off` disables it.
    #[arg(long, default_value = "127.0.0.1:0")]
    metrics_listen: String,

    /// Log format on stderr.
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,

    /// Threads serving requests. With 1, every request of the shard runs on
    /// one thread: no cross-thread wake-ups and no buffer freed on another
    /// thread than it was allocated on, which measured lower latency, higher
    /// throughput and lower memory on 2 cores. An optimizer update of a part
    /// of 4M+ elements uses every core whatever this is. Raise it when many
    /// workers push to one shard on a machine with cores to spare (or run
    /// more shards).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    threads: u16,
}

/// Operator commands on a checkpoint on disk (`ps-worker checkpoint` requests one from a running cluster).
#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Verify a checkpoint (every file against its checksum) and describe it.
    ///
    /// PATH is a checkpoint directory or a root holding several (the one
    /// --restore would pick is shown). Exits non-zero if none is valid.
    Inspect {
        /// A checkpoint directory or a checkpoint root.
        path: PathBuf,
    },
}

fn read_toml<T: serde::de::DeserializeOwned>(path: &PathBuf) -> Result<T, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    toml::from_str(&text).map_err(|e| format!("invalid TOML in {}: {e}", path.display()))
}

fn shard_config(args: &Args) -> Result<ShardConfig, String> {
    let mut cfg: ShardConfig = match &args.config {
        Some(path) => read_toml(path)?,
        None => ShardConfig::default(),
    };
    let workers_in_file = match &args.config {
        Some(path) => read_toml::<toml::Table>(path)?.contains_key("num_workers"),
        None => false,
    };
    if args.workers.is_none() && !workers_in_file {
        return Err("give --workers W, the number of workers in the job (or num_workers in --config)".into());
    }
    let spec: Option<ClusterSpec> = match (&args.shards, &args.cluster) {
        (Some(list), _) => Some(ClusterSpec::new(list.clone())),
        (None, Some(path)) => Some(read_toml(path)?),
        (None, None) => None,
    };
    if let Some(spec) = &spec {
        spec.validate()?;
        cfg.num_shards = spec.num_shards();
        cfg.split_threshold = spec.split_threshold;
    }
    if let Some(n) = args.num_shards {
        cfg.num_shards = n;
    }
    if let Some(id) = args.shard_id {
        cfg.shard_id = id;
    }
    if let Some(t) = args.split_threshold {
        cfg.split_threshold = t;
    }
    if let Some(w) = args.workers {
        cfg.num_workers = w;
    }
    if let Some(m) = args.max_workers {
        if m < cfg.num_workers {
            return Err(format!("--max-workers {m} is below --workers {}", cfg.num_workers));
        }
        cfg.initial_workers = Some(cfg.num_workers);
        cfg.num_workers = m;
    }
    if let Some(p) = args.policy {
        cfg.policy = p;
    }
    if let Some(s) = args.staleness {
        if cfg.policy != PolicyName::Ssp {
            return Err(format!(
                "--staleness {s} applies only to --policy ssp, and the policy is {}: drop --staleness or add --policy ssp",
                cfg.policy.with_staleness(0)
            ));
        }
        cfg.staleness = s;
    }
    if let Some(b) = args.backup_workers {
        if cfg.policy != PolicyName::Sync {
            return Err(format!(
                "--backup-workers {b} applies only to --policy sync, and the policy is {}: drop --backup-workers or use --policy sync",
                cfg.policy.with_staleness(cfg.staleness)
            ));
        }
        cfg.backup_workers = b;
    }
    if let Some(s) = args.staleness_scaling {
        if cfg.policy == PolicyName::Sync && s != ps_proto::Scaling::None {
            return Err(format!(
                "--staleness-scaling {s} applies only to --policy ssp or async (sync reads are never stale): drop it or change --policy"
            ));
        }
        cfg.staleness_scaling = s;
    }
    if let Some(a) = args.aggregation {
        cfg.aggregation = a;
    }
    if let Some(t) = args.worker_timeout {
        if !(t.is_finite() && t > 0.0) {
            return Err(format!("--worker-timeout must be a positive number of seconds, got {t}"));
        }
        cfg.worker_timeout_ms = (t * 1000.0).ceil() as u64;
    }
    if let Some(g) = args.join_grace {
        if args.worker_timeout.is_none() && cfg.worker_timeout_ms == 0 {
            return Err(format!(
                "--join-grace {g} applies only with --worker-timeout: without one no worker is ever lost"
            ));
        }
        if !(g.is_finite() && g >= 0.0) {
            return Err(format!("--join-grace must be a number of seconds >= 0, got {g}"));
        }
        cfg.join_grace_ms = (g * 1000.0).ceil() as u64;
    }
    if let Some(m) = args.max_message_bytes {
        cfg.max_message_bytes = usize::try_from(m)
            .map_err(|_| format!("--max-message-bytes {m} is more than this machine can address"))?;
    }
    if let Some(m) = args.max_tensor_bytes {
        cfg.max_tensor_bytes = m;
    }
    if let Some(m) = args.max_concurrent_streams {
        cfg.max_concurrent_streams = m;
    }
    if let Some(m) = args.max_connections {
        cfg.max_connections = m;
    }
    if let Some(m) = args.max_push_bytes_in_flight {
        cfg.max_push_bytes_in_flight = m;
    }
    if let Some(b) = args.sync_piece_bytes {
        cfg.sync_piece_bytes = Some(b);
    }
    if let Some(l) = args.on_worker_loss {
        cfg.on_worker_loss = l;
    }
    if let Some(d) = &args.checkpoint_dir {
        cfg.checkpoint_dir = Some(d.clone());
    }
    if let Some(k) = args.keep_checkpoints {
        cfg.keep_checkpoints = k;
    }
    if let Some(m) = args.max_pending_checkpoints {
        cfg.max_pending_checkpoints = m;
    }
    if let Some(f) = &args.auth_token_file {
        cfg.auth_token_file = Some(f.clone());
    }
    if args.tls_cert.is_some() {
        cfg.tls_cert = args.tls_cert.clone();
        cfg.tls_key = args.tls_key.clone();
    }
    if args.tls_ca.is_some() {
        cfg.tls_client_ca = args.tls_ca.clone();
    }
    if let Some(f) = &cfg.auth_token_file {
        ps_proto::AuthToken::from_file(f)?;
    }
    if args.optimizer.is_some() || args.lr.is_some() {
        cfg.optimizer = args.optimizer.unwrap_or(OptimizerKind::Sgd).with_defaults(args.lr);
    }
    if let Some(m) = args.momentum {
        if cfg.optimizer.kind() != OptimizerKind::Sgd {
            return Err(format!(
                "--momentum applies only to sgd, and the optimizer is {}: drop --momentum or use --optimizer sgd",
                cfg.optimizer.name()
            ));
        }
        cfg.optimizer = cfg.optimizer.with_momentum(m);
    }
    if let Some(d) = args.weight_decay {
        cfg.optimizer = cfg.optimizer.with_weight_decay(d);
    }
    if let (Some(spec), Some(entry)) =
        (&spec, spec.as_ref().and_then(|s| s.shards.get(cfg.shard_id as usize)))
    {
        check_listen_matches(args.listen, cfg.shard_id, entry, spec.num_shards())?;
    }
    if let Some(b) = cfg.sync_piece_bytes.filter(|b| (1..MIN_SYNC_PIECE_BYTES).contains(b)) {
        return Err(format!(
            "--sync-piece-bytes {b} would send a large sync push as one request per {b} bytes: \
             give at least 64K, or 0 for whole pushes"
        ));
    }
    cfg.validate()?;
    Ok(cfg)
}

/// The smallest piece size the binary accepts: smaller pieces turn one push
/// into thousands of requests. (Tests of the library use smaller ones to
/// piece small tensors.)
const MIN_SYNC_PIECE_BYTES: u64 = 64 << 10;

/// Refuses a `--listen` port that differs from this shard's entry in the
/// shard list: workers would look for the shard at the entry. (The host may
/// differ, as when listening on 0.0.0.0 behind a name; port 0 asks for any
/// free port, printed at start, for whoever passes it on.)
fn check_listen_matches(listen: SocketAddr, id: u32, entry: &str, shards: u32) -> Result<(), String> {
    let port = entry.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok());
    if listen.port() == 0 || port == Some(listen.port()) {
        return Ok(());
    }
    Err(format!(
        "--listen {listen} but the shard list gives shard {id} of {shards} the address {entry}: \
         listen on port {} or fix the list",
        port.map_or_else(|| "?".to_string(), |p| p.to_string())
    ))
}

/// Prints a line to stdout for whoever started the shard; a closed stdout
/// (the parent stopped reading) is not a reason to stop serving.
fn announce(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout(), "{line}");
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("cannot listen for SIGTERM: {e}");
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// `ps-server inspect`: verifies and describes a checkpoint.
fn inspect_command(path: &std::path::Path) -> Result<(), String> {
    let loaded = ps_server::checkpoint::find_checkpoint(path).map_err(|e| e.to_string())?;
    let m = &loaded.manifest;
    for s in &loaded.skipped {
        announce(&format!("skipped {s}"));
    }
    announce(&format!("checkpoint {} (verified)", loaded.dir.display()));
    announce(&format!(
        "clock {} (holds the updates of clocks < {}), policy {}, {} workers, {} shards, split threshold {}, format {}",
        m.clock, m.clock, m.policy, m.num_workers, m.cluster.num_shards, m.cluster.split_threshold, m.format
    ));
    for f in &m.files {
        announce(&format!("file {} {} bytes sha256 {}", f.name, f.bytes, f.sha256));
    }
    for t in &m.tensors {
        let parts: Vec<String> =
            t.parts.iter().map(|p| format!("{}[{}..{}]", p.file, p.offset, p.offset + p.len)).collect();
        let slots = t.parts.first().map(|p| p.slots.keys().cloned().collect::<Vec<_>>()).unwrap_or_default();
        announce(&format!(
            "tensor {} shape {:?} policy {} optimizer {} state {:?} steps {}: {}",
            t.name,
            t.shape,
            t.policy,
            t.optimizer.name(),
            slots,
            t.parts.first().map_or(0, |p| p.optimizer_steps),
            parts.join(" ")
        ));
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    logging::init(args.log_format, "info");
    if let Some(command) = args.command {
        let result = match command {
            Command::Inspect { path } => inspect_command(&path),
        };
        return match result {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("ps-server: {e}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    let config = match shard_config(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ps-server: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    // Before anything is announced: a shard that cannot serve TLS must not say it listens.
    if let Err(e) = ps_server::tls::server_tls(&config) {
        eprintln!("ps-server: {e}");
        return std::process::ExitCode::from(2);
    }
    let runtime = match args.threads {
        1 => tokio::runtime::Builder::new_current_thread().enable_all().build(),
        n => tokio::runtime::Builder::new_multi_thread().worker_threads(n.into()).enable_all().build(),
    };
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ps-server: cannot start the Tokio runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    if let Some(root) = &config.checkpoint_dir
        && let Err(e) = ps_server::checkpoint::retention::prepare_root(root)
    {
        eprintln!("ps-server: --checkpoint-dir: {e}");
        return std::process::ExitCode::from(2);
    }
    let result = runtime.block_on(async {
        let shard = match &args.restore {
            None => ps_server::shard::Shard::new(config.clone()),
            Some(path) => {
                let loaded = ps_server::checkpoint::find_checkpoint(path)
                    .map_err(|e| format!("cannot restore from {}: {e}", path.display()))?;
                let differences = config.differences_from(&loaded.manifest);
                if !differences.is_empty() {
                    let what = differences.join(", ");
                    if !args.allow_changed_settings {
                        return Err(format!(
                            "{} was written by a job with {what}: start the shard with the job's settings, \
                             or add --allow-changed-settings to restore onto these",
                            loaded.dir.display()
                        ));
                    }
                    tracing::warn!("restoring {} onto other settings: {what}", loaded.dir.display());
                }
                if let Some(note) = config.optimizer_note(&loaded.manifest) {
                    tracing::warn!("{note}");
                }
                let shard = ps_server::shard::Shard::restore(config.clone(), &loaded)
                    .map_err(|e| format!("cannot restore from {}: {e}", loaded.dir.display()))?;
                announce(&format!(
                    "ps-server shard {}/{} restored {} at clock {} ({} tensors)",
                    config.shard_id,
                    config.num_shards,
                    loaded.dir.display(),
                    loaded.manifest.clock,
                    loaded.manifest.tensors.len()
                ));
                shard
            }
        };
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        announce(&format!("ps-server shard {}/{} listening on {addr}", config.shard_id, config.num_shards));
        let shard = std::sync::Arc::new(shard);
        let (stop_metrics, metrics_stopped) = tokio::sync::oneshot::channel::<()>();
        if args.metrics_listen != "off" {
            let metrics = tokio::net::TcpListener::bind(&args.metrics_listen)
                .await
                .map_err(|e| format!("cannot listen for metrics on {}: {e}", args.metrics_listen))?;
            let metrics_addr = metrics.local_addr().map_err(|e| e.to_string())?;
            announce(&format!(
                "ps-server shard {} metrics on http://{metrics_addr}/metrics",
                config.shard_id
            ));
            let registry = shard.metrics().registry().clone();
            tokio::spawn(async move {
                let stopped = async {
                    let _ = metrics_stopped.await;
                };
                if let Err(e) =
                    ps_server::metrics::serve(metrics, move || vec![registry.clone()], stopped).await
                {
                    tracing::error!("metrics endpoint failed: {e}");
                }
            });
        }
        tracing::info!(
            shard = config.shard_id,
            shards = config.num_shards,
            workers = config.num_workers,
            policy = %config.default_policy(),
            optimizer = %config.optimizer,
            "serving"
        );
        if let Some(warning) = config.momentum_warning() {
            tracing::warn!("{warning}");
        }
        let served = ps_server::server::serve_shard(listener, shard, shutdown_signal()).await;
        let _ = stop_metrics.send(());
        served.map_err(|e| e.to_string())
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ps-server: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
