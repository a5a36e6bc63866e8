//! The parameter-server worker library: connect to a cluster, declare
//! tensors, and run training steps of `pull` → compute → `push`.
//!
//! ```no_run
//! # async fn demo(cluster: ps_worker::ClusterSpec) -> Result<(), ps_worker::WorkerError> {
//! use std::collections::BTreeMap;
//! use ps_worker::{TensorDecl, Worker, WorkerConfig};
//!
//! let mut worker = Worker::connect(WorkerConfig::new(cluster, 0)).await?;
//! worker.declare(&TensorDecl::new("w", &[10]).normal(0.0, 0.1, 7)).await?;
//! let mut params = worker.pull().await?;             // waits as the policy requires
//! while worker.clock() < 100 {
//!     let grad = &params.values["w"] * 0.5;            // your model's gradient here
//!     // push at clock c, read clock c + 1: one round trip per part
//!     params = worker.step(&BTreeMap::from([("w".to_string(), grad)])).await?;
//! }
//! worker.leave().await?;
//! # Ok(()) }
//! ```
//!
//! # Layout
//! Each module has one job; a module knows only those below it in this list.
//! - `worker` — [`Worker`], the façade: one short method per operation, the
//!   clock, and the step with its recovery.
//! - `membership` — join, recovery after a shard restart, leave, barrier.
//! - `job` — the job as the shards describe it at a join: the checks that
//!   they agree on its settings and hold the same history.
//! - `checkpoint` — request a checkpoint, its status per shard, wait for it
//!   ([`CheckpointDone`], [`CheckpointStatus`]).
//! - `push` — push and push_pull: gradients split into parts and pieces
//!   ([`GradientData`]).
//! - `several` — a step and a pull of every tensor in one request per
//!   shard (`Step`, `PullMany`), each part decoded into its tensor as the
//!   shard releases it.
//! - `pull` — pull of one tensor: one request per part, each reply checked
//!   chunk by chunk and decoded into the tensor ([`Pulled`]).
//! - `held` — what a worker logs while a shard holds its step, pull or
//!   barrier back, naming the workers the shard waits for.
//! - `status` — what each shard reports of itself ([`ShardStatus`]), and
//!   whom a pull or a barrier at a given clock waits for.
//! - `declared` — the declared tensors: shape, parts, pieces, name on the shards.
//! - `data_path` — `Push`/`Pull`/`PushPull` requests of the data service
//!   as raw gRPC on a shard's channel, and their replies' messages.
//! - `connection` — the shard connections, the one retrying call every
//!   request goes through, and the broadcast of one request to every shard.
//! - `config` — [`WorkerConfig`], how a worker talks to the cluster.
//! - [`tensor`] — [`TensorDecl`], what to declare.
//! - [`retry`] — [`RetryPolicy`], backoff with jitter for transient failures.
//! - `waiting` — what a worker logs while it retries a shard.
//! - `probe` — whether a shard expects TLS, asked when a plaintext connection fails.
//! - [`error`] — [`WorkerError`].
//! - [`auth`] — [`AuthToken`] and [`ClientTls`], how a worker proves itself to the shards.
//! - [`metrics`] — Prometheus metrics of a worker.
//!
//! # Features
//! - `testing` — for tests of the server; not a stable API. Adds to
//!   [`Worker`] requests at any clock and as any worker (`pull_at`,
//!   `push_at`, `pull_tensor`, `push_tensor`) and raw push streams
//!   (`raw_push`).

pub mod auth;
mod checkpoint;
mod config;
mod connection;
mod data_path;
mod declared;
pub mod error;
mod held;
mod job;
mod membership;
pub mod metrics;
mod probe;
mod pull;
mod push;
pub mod retry;
mod several;
mod status;
pub mod tensor;
mod waiting;
mod worker;

pub use auth::{AuthToken, ClientTls};
pub use checkpoint::{CheckpointDone, CheckpointFailure, CheckpointState, CheckpointStatus, CheckpointWatch};
pub use config::WorkerConfig;
pub use error::{Restart, WorkerError};
pub use ps_proto::{ClusterSpec, OptimizerConfig, Policy, WireDtype};
pub use pull::Pulled;
pub use push::GradientData;
pub use retry::RetryPolicy;
pub use status::{ShardStatus, TensorStatus};
pub use tensor::TensorDecl;
pub use worker::{MAX_STEP_RECOVERIES, Worker};
