//! The gRPC handlers: thin glue that decodes a request, asks the shard, and
//! encodes the answer. Every error leaves through `From<PsError> for Status`,
//! its reason attached for the metrics layer ([`crate::metrics::RpcMetricsLayer`]),
//! which times and counts every RPC; handlers do neither.
//!
//! This file holds the control RPCs of `ParameterServer` (join, leave,
//! declare, barrier, status, checkpoints); `data.rs` the frame-level
//! handlers of the data service (`Push`, `Pull`, `PushPull`); `several.rs`
//! those of several parts in one request (`Step`, `PullMany`);
//! `messages.rs` reading and writing gRPC messages on HTTP/2 bodies.

use std::sync::Arc;

use ps_proto::pb::parameter_server_server::ParameterServer;
use ps_proto::{WaitAt, pb};
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::budget::PushBudget;
use crate::convert;
use crate::error::PsError;
use crate::metrics::Served;
use crate::shard::Shard;

mod data;
mod messages;
mod several;

pub use data::PUSH_IDLE_TIMEOUT;
use messages::Rejected;

/// The gRPC handlers of one shard: the `ParameterServer` service, and the
/// frame-level handlers of the data service that
/// [`DataPath`](crate::data_path::DataPath) routes to.
#[derive(Clone, Debug)]
pub struct Service {
    shard: Arc<Shard>,
    push_budget: PushBudget,
}

impl Service {
    /// A service answering for `shard`.
    pub fn new(shard: Arc<Shard>) -> Self {
        let push_budget = PushBudget::new(shard.config().max_push_bytes_in_flight);
        Self { shard, push_budget }
    }
}

impl Service {
    /// Runs `inner` unless the job has stopped (then `ABORTED`).
    async fn unless_stopped<T>(
        &self,
        inner: impl std::future::Future<Output = Result<T, Rejected>>,
    ) -> Result<T, Rejected> {
        self.shard.check_running()?;
        inner.await
    }

    async fn join_inner(&self, req: Request<pb::JoinRequest>) -> Result<pb::JoinReply, Rejected> {
        let req = req.into_inner();
        let worker = req.worker;
        let _lease = self.shard.lease(worker);
        let joined = self.shard.join(worker, req.skip_to)?;
        let cfg = self.shard.config();
        let policy = cfg.default_policy().to_pb();
        Ok(pb::JoinReply {
            clock: joined.clock,
            read_floor: joined.floor,
            shard: cfg.shard_id,
            num_shards: cfg.num_shards,
            num_workers: cfg.num_workers,
            session: self.shard.session(),
            job: Some(pb::JobSettings {
                default_policy: policy.kind as i32,
                default_staleness: policy.staleness,
                default_backup_workers: policy.backup_workers,
                default_staleness_scaling: policy.scaling as i32,
                default_optimizer: Some(cfg.optimizer.to_pb()),
                split_threshold: cfg.split_threshold,
                initial_workers: cfg.initial_workers.unwrap_or(cfg.num_workers),
            }),
            origin: self.shard.origin().map(|o| pb::CheckpointOrigin {
                checkpoint: o.checkpoint,
                clock: o.clock,
                cause: o.cause,
            }),
            has_tensors: !self.shard.status(None).is_empty(),
        })
    }

    async fn leave_inner(&self, req: Request<pb::LeaveRequest>) -> Result<pb::LeaveReply, Rejected> {
        let worker = req.into_inner().worker;
        let _lease = self.shard.lease(worker);
        self.shard.leave(worker)?;
        Ok(pb::LeaveReply {})
    }

    async fn declare_inner(&self, req: Request<pb::DeclareRequest>) -> Result<pb::DeclareReply, Rejected> {
        let spec = req
            .into_inner()
            .spec
            .ok_or_else(|| PsError::InvalidArgument("declare request has no tensor spec".into()))?;
        let decl = convert::declaration(spec, self.shard.config().staleness)?;
        let d = self.shard.declare(decl)?;
        let reply =
            pb::DeclareReply { offset: d.offset, len: d.len, created: d.created, piece_len: d.piece_len };
        Ok(reply)
    }

    /// Declares each spec in order, as [`declare_inner`](Self::declare_inner)
    /// would; the first refusal ends the request (earlier ones stay declared).
    async fn declare_many_inner(
        &self,
        req: Request<pb::DeclareManyRequest>,
    ) -> Result<pb::DeclareManyReply, Rejected> {
        let staleness = self.shard.config().staleness;
        let mut parts = Vec::new();
        for spec in req.into_inner().specs {
            let d = self.shard.declare(convert::declaration(spec, staleness)?)?;
            parts.push(pb::DeclareReply {
                offset: d.offset,
                len: d.len,
                created: d.created,
                piece_len: d.piece_len,
            });
        }
        Ok(pb::DeclareManyReply { parts })
    }

    async fn barrier_inner(&self, req: Request<pb::BarrierRequest>) -> Result<pb::BarrierReply, Rejected> {
        let req = req.into_inner();
        let _lease = self.shard.lease(req.worker);
        let span = tracing::debug_span!("barrier", worker = req.worker, clock = req.clock);
        self.shard.barrier(req.worker, req.clock).instrument(span).await?;
        Ok(pb::BarrierReply {})
    }

    async fn status_inner(&self, req: Request<pb::StatusRequest>) -> Result<pb::StatusReply, Rejected> {
        let cfg = self.shard.config();
        let default = cfg.default_policy().to_pb();
        let origin = self.shard.origin();
        let tensors = self
            .shard
            .status(WaitAt::of_status_request(req.get_ref()).map_err(PsError::InvalidArgument)?)
            .into_iter()
            .map(|t| {
                let policy = t.meta.policy.to_pb();
                pb::TensorStatus {
                    name: t.meta.name,
                    shape: t.meta.shape,
                    offset: t.meta.offset,
                    len: t.meta.len,
                    policy: policy.kind as i32,
                    staleness: policy.staleness,
                    versions: t.versions,
                    applied_clock: t.applied_clock,
                    backup_workers: policy.backup_workers,
                    staleness_scaling: policy.scaling as i32,
                    holding_back: t.holding_back,
                }
            })
            .collect();
        Ok(pb::StatusReply {
            shard: cfg.shard_id,
            num_shards: cfg.num_shards,
            num_workers: cfg.num_workers,
            default_policy: default.kind as i32,
            default_staleness: default.staleness,
            default_backup_workers: default.backup_workers,
            default_staleness_scaling: default.scaling as i32,
            live_workers: self.shard.live_workers(),
            unheard_workers: self.shard.unheard_workers(),
            checkpoints: cfg.checkpoint_dir.is_some(),
            tensors,
            session: self.shard.session(),
            restored_clock: origin.as_ref().map(|o| o.clock),
            restored_from: origin.map(|o| o.checkpoint).unwrap_or_default(),
        })
    }
}

impl Service {
    async fn checkpoint_inner(
        &self,
        req: Request<pb::CheckpointRequest>,
    ) -> Result<pb::CheckpointReply, Rejected> {
        let req = req.into_inner();
        let _span = tracing::info_span!("checkpoint", clock = req.clock, session = req.session).entered();
        let cut = self.shard.checkpoint(req.clock, req.session, req.worker)?;
        let dir = self.shard.config().checkpoint_dir.as_ref().map(|d| d.join(&cut.name));
        let dir = dir.map(|d| d.display().to_string()).unwrap_or_default();
        Ok(pb::CheckpointReply { name: cut.name, dir })
    }

    async fn rewind_inner(&self, req: Request<pb::RewindRequest>) -> Result<pb::RewindReply, Rejected> {
        let req = req.into_inner();
        let shard = Arc::clone(&self.shard);
        // Loading reads and verifies files: keep it off the async workers.
        let rewound =
            tokio::task::spawn_blocking(move || shard.rewind(&req.checkpoint, req.cause, req.worker))
                .await
                .map_err(|e| Status::internal(format!("rewind task failed: {e}")))??;
        Ok(pb::RewindReply { clock: rewound.clock, session: rewound.session, rewound: rewound.rewound })
    }

    async fn checkpoint_status_inner(
        &self,
        req: Request<pb::CheckpointStatusRequest>,
    ) -> Result<pb::CheckpointStatusReply, Rejected> {
        use crate::checkpoint::registry::CutState;
        let req = req.into_inner();
        let status = self.shard.checkpoint_status(&req.name, req.wait).await?;
        let mut reply = pb::CheckpointStatusReply {
            dir: status.dir.display().to_string(),
            complete: status.complete,
            clock: status.cut.clock,
            ..Default::default()
        };
        let state = match status.state {
            CutState::Capturing { captured, expected } => {
                reply.captured = captured as u32;
                reply.expected = expected as u32;
                pb::CheckpointState::Capturing
            }
            CutState::Writing => pb::CheckpointState::Writing,
            CutState::Written { bytes } => {
                reply.bytes = bytes;
                pb::CheckpointState::Written
            }
            CutState::Failed(error) => {
                reply.error = error;
                pb::CheckpointState::Failed
            }
        };
        reply.state = state as i32;
        Ok(reply)
    }
}

/// A control RPC's answer as tonic sends it: a success marked [`Served`]
/// (no payload) and a refusal with its reason, for the metrics layer.
fn answer<T>(result: Result<T, Rejected>) -> Result<Response<T>, Status> {
    let mut reply = Response::new(result?);
    reply.extensions_mut().insert(Served::default());
    Ok(reply)
}

#[tonic::async_trait]
impl ParameterServer for Service {
    async fn checkpoint(
        &self,
        req: Request<pb::CheckpointRequest>,
    ) -> Result<Response<pb::CheckpointReply>, Status> {
        answer(self.unless_stopped(self.checkpoint_inner(req)).await)
    }

    async fn checkpoint_status(
        &self,
        req: Request<pb::CheckpointStatusRequest>,
    ) -> Result<Response<pb::CheckpointStatusReply>, Status> {
        answer(self.unless_stopped(self.checkpoint_status_inner(req)).await)
    }

    async fn rewind(&self, req: Request<pb::RewindRequest>) -> Result<Response<pb::RewindReply>, Status> {
        answer(self.unless_stopped(self.rewind_inner(req)).await)
    }

    async fn join(&self, req: Request<pb::JoinRequest>) -> Result<Response<pb::JoinReply>, Status> {
        answer(self.unless_stopped(self.join_inner(req)).await)
    }

    async fn leave(&self, req: Request<pb::LeaveRequest>) -> Result<Response<pb::LeaveReply>, Status> {
        answer(self.unless_stopped(self.leave_inner(req)).await)
    }

    async fn declare(&self, req: Request<pb::DeclareRequest>) -> Result<Response<pb::DeclareReply>, Status> {
        answer(self.unless_stopped(self.declare_inner(req)).await)
    }

    async fn declare_many(
        &self,
        req: Request<pb::DeclareManyRequest>,
    ) -> Result<Response<pb::DeclareManyReply>, Status> {
        answer(self.unless_stopped(self.declare_many_inner(req)).await)
    }

    async fn barrier(&self, req: Request<pb::BarrierRequest>) -> Result<Response<pb::BarrierReply>, Status> {
        answer(self.unless_stopped(self.barrier_inner(req)).await)
    }

    /// Answers even after the job has stopped.
    async fn status(&self, req: Request<pb::StatusRequest>) -> Result<Response<pb::StatusReply>, Status> {
        answer(self.status_inner(req).await)
    }
}
