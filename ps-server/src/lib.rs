//! A parameter-server shard: holds parts of named f32 tensors, aggregates
//! workers' gradients under a sync, bounded-staleness or async policy, applies
//! a server-side optimizer, and serves it all over gRPC.
//!
//! # Layout
//! - [`sync`]: the pure clock core — release rules, rounds, exactly-once (no I/O).
//! - [`array`]: the shard's f32 arrays — ndarray, shared copy-on-write, always contiguous.
//! - [`optim`]: SGD, Adam and AdaGrad update kernels.
//! - [`init`]: seeded initializers independent of sharding.
//! - [`meta`]: what a tensor part is, fixed at declaration.
//! - [`tensor`]: one tensor part — values, optimizer state, clocks, aggregation buffer (a sync round summed in worker-id order).
//! - [`shard`]: the parts of one shard, the live set, waiting pulls and barriers.
//! - [`buffers`]: buffers of pushed pieces, kept for the next piece.
//! - [`readers`]: pull replies still reading a part, which updates wait for instead of copying it.
//! - [`membership`]: who takes part — live, evicted, joined, requests in flight, silence; decides evictions.
//! - [`service`]: the gRPC glue; [`convert`]: protocol ↔ shard types.
//! - [`data_path`]: the data service (`Push`, `Pull`, `PushPull`), served straight from and to HTTP/2 frames.
//! - [`auth`]: bearer-token check of every RPC; [`tls`]: the TLS files, checked before serving.
//! - [`edge`]: the transport's own refusals and missed client deadlines, given the shard's codes.
//! - [`checkpoint`]: consistent checkpoints — capture at a clock, safetensors files, manifest, restore.
//! - [`error`]: `PsError` and its mapping to gRPC status codes.
//! - [`config`]: shard configuration; [`server`]: serving a shard on a listener.
//! - [`metrics`]: Prometheus metrics of a shard, the tower layer recording every RPC, and the `/metrics` endpoint.
//! - [`logging`]: the binaries' logs (stderr, `RUST_LOG`, text or JSON).
//! - [`local`]: an embedded cluster of shards on 127.0.0.1 for examples and tests.
//! - [`process`]: `ps-server` child processes for tests, benchmarks and tools.

pub mod array;
pub mod auth;
pub mod budget;
pub mod buffers;
pub mod checkpoint;
pub mod config;
pub mod connections;
pub mod convert;
pub mod data_path;
pub mod edge;
pub mod error;
pub mod incarnation;
pub mod init;
pub mod local;
pub mod logging;
pub mod membership;
pub mod meta;
pub mod metrics;
pub mod optim;
pub mod process;
pub mod readers;
pub mod server;
pub mod service;
pub mod shard;
pub mod sync;
pub mod tensor;
pub mod tls;

pub use config::{Aggregation, PolicyName, ShardConfig, WorkerLoss};
pub use error::PsError;
pub use local::LocalCluster;
pub use optim::OptimizerConfig;
pub use server::serve;
pub use sync::Policy;
