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
//! - [`client`] — [`Worker`], the sharded, retrying push/pull client.
//! - [`tensor`] — [`TensorDecl`], what to declare.
//! - [`retry`] — [`RetryPolicy`], backoff with jitter for transient failures.
//! - [`error`] — [`WorkerError`].
//! - [`auth`] — [`AuthToken`] and [`ClientTls`], how a worker proves itself to the shards.
//! - [`metrics`]: Prometheus metrics of a worker.

pub mod auth;
pub mod client;
mod data_path;
pub mod error;
pub mod metrics;
pub mod retry;
pub mod tensor;

pub use auth::{AuthToken, ClientTls};
pub use client::{CheckpointDone, GradientData, Pulled, Worker, WorkerConfig};
pub use error::{Restart, WorkerError};
pub use ps_proto::{ClusterSpec, OptimizerConfig, Policy, WireDtype};
pub use retry::RetryPolicy;
pub use tensor::TensorDecl;
