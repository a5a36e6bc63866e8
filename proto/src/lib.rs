//! Shared vocabulary of the parameter server: the gRPC protocol, the cluster
//! spec, tensor placement and the wire encoding of tensor payloads.
//!
//! # Layout
//! - [`pb`]: code generated from `proto/ps.proto` and `proto/data.proto` (messages, clients, server trait).
//! - [`auth`]: the bearer token workers send and shards check.
//! - [`byte_size`]: byte counts as written on a command line (`4M`).
//! - [`cluster`]: the cluster spec every process agrees on.
//! - [`optimizer`]: the optimizer a tensor is declared with, its defaults and forms.
//! - [`restart`]: how a shard tells a worker it came back from a checkpoint.
//! - [`wait_at`]: the wait a `Status` request asks the shard to name the workers of.
//! - [`policy`]: a tensor's synchronisation policy, its text and protocol forms.
//! - [`placement`]: which shard holds which element range of a tensor; a pure
//!   function of the cluster spec, so servers and workers compute it identically.
//! - [`wire`]: little-endian f32/f16/bf16 payload encoding and decoding.
//! - [`chunk`]: splitting payloads into chunks and checking a chunk sequence.
//! - [`rope`]: bytes held as the pieces they arrived in, and f32 decoding from them.
//! - [`frame`]: gRPC framing and HTTP bodies that send and read tensor bytes as their own frames.
//! - [`exposition`]: Prometheus text exposition and the `/metrics` endpoint.

pub mod auth;
pub mod byte_size;
pub mod chunk;
pub mod cluster;
pub mod exposition;
pub mod frame;
pub mod optimizer;
pub mod placement;
pub mod policy;
pub mod restart;
pub mod rope;
pub mod wait_at;
pub mod wire;

/// Generated protocol types (package `ps.v1`): the messages, the
/// `ParameterServer` client and server, and the `Data` client
/// ([`data_client`](pb::data_client)); shards serve `Data` by hand (see [`frame`]).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("ps.v1");
    include!(concat!(env!("OUT_DIR"), "/data/ps.v1.rs"));
}

pub use auth::AuthToken;
pub use cluster::ClusterSpec;
pub use optimizer::{OptimizerConfig, OptimizerKind};
pub use placement::{Part, place};
pub use policy::{Policy, PolicyFields, Scaling};
pub use restart::{RESTART_CAUSE, RESTART_CHECKPOINT, Restart};
pub use wait_at::WaitAt;
pub use wire::WireDtype;
