//! The gRPC service: thin glue that decodes a request, asks the shard, and
//! encodes the answer. Every error leaves through `From<PsError> for Status`.
//!
//! This file holds the control RPCs (join, leave, declare, barrier, status,
//! checkpoints); `data.rs` the frame-level `Push`, `Pull` and `PushPull`;
//! `messages.rs` reading and writing gRPC messages on HTTP/2 bodies.

use std::sync::Arc;
use std::time::Instant;

use ps_proto::pb;
use ps_proto::pb::parameter_server_server::ParameterServer;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::budget::PushBudget;
use crate::convert;
use crate::error::PsError;
use crate::metrics::Rpc;
use crate::shard::Shard;

mod data;
mod messages;

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
    /// Records a finished request in the metrics and hands out its result.
    /// Runs `inner` unless the job has stopped (then `ABORTED`), and records the outcome.
    async fn serve<T>(
        &self,
        rpc: Rpc,
        inner: impl std::future::Future<Output = Result<(T, u64), Rejected>>,
    ) -> Result<T, Status> {
        let started = Instant::now();
        let result = match self.shard.check_running() {
            Ok(()) => inner.await,
            Err(e) => Err(e.into()),
        };
        self.finish(rpc, started, result)
    }

    fn finish<T>(&self, rpc: Rpc, started: Instant, result: Result<(T, u64), Rejected>) -> Result<T, Status> {
        let metrics = self.shard.metrics();
        match result {
            Ok((value, bytes)) => {
                metrics.request(rpc, started.elapsed(), bytes, Ok(()));
                Ok(value)
            }
            Err(r) => {
                metrics.request(rpc, started.elapsed(), 0, Err((r.status.code(), r.reason)));
                Err(r.status)
            }
        }
    }

    async fn join_inner(
        &self,
        req: Request<pb::JoinRequest>,
    ) -> Result<(Response<pb::JoinReply>, u64), Rejected> {
        let worker = req.into_inner().worker;
        let _lease = self.shard.lease(worker);
        let clock = self.shard.join(worker)?;
        let cfg = self.shard.config();
        Ok((
            Response::new(pb::JoinReply {
                clock,
                shard: cfg.shard_id,
                num_shards: cfg.num_shards,
                num_workers: cfg.num_workers,
                session: self.shard.session(),
            }),
            0,
        ))
    }

    async fn leave_inner(
        &self,
        req: Request<pb::LeaveRequest>,
    ) -> Result<(Response<pb::LeaveReply>, u64), Rejected> {
        let worker = req.into_inner().worker;
        let _lease = self.shard.lease(worker);
        self.shard.leave(worker)?;
        Ok((Response::new(pb::LeaveReply {}), 0))
    }

    async fn declare_inner(
        &self,
        req: Request<pb::DeclareRequest>,
    ) -> Result<(Response<pb::DeclareReply>, u64), Rejected> {
        let spec = req
            .into_inner()
            .spec
            .ok_or_else(|| PsError::InvalidArgument("declare request has no tensor spec".into()))?;
        let decl = convert::declaration(spec, self.shard.config().staleness)?;
        let d = self.shard.declare(decl)?;
        let reply =
            pb::DeclareReply { offset: d.offset, len: d.len, created: d.created, piece_len: d.piece_len };
        Ok((Response::new(reply), 0))
    }

    async fn barrier_inner(
        &self,
        req: Request<pb::BarrierRequest>,
    ) -> Result<(Response<pb::BarrierReply>, u64), Rejected> {
        let req = req.into_inner();
        let _lease = self.shard.lease(req.worker);
        let span = tracing::debug_span!("barrier", worker = req.worker, clock = req.clock);
        self.shard.barrier(req.worker, req.clock).instrument(span).await?;
        Ok((Response::new(pb::BarrierReply {}), 0))
    }

    async fn status_inner(
        &self,
        _req: Request<pb::StatusRequest>,
    ) -> Result<(Response<pb::StatusReply>, u64), Rejected> {
        let cfg = self.shard.config();
        let origin = self.shard.origin();
        let tensors = self
            .shard
            .status()
            .into_iter()
            .map(|t| {
                let (policy, staleness) = t.meta.policy.to_pb();
                pb::TensorStatus {
                    name: t.meta.name,
                    shape: t.meta.shape,
                    offset: t.meta.offset,
                    len: t.meta.len,
                    policy: policy as i32,
                    staleness,
                    versions: t.versions,
                    applied_clock: t.applied_clock,
                }
            })
            .collect();
        Ok((
            Response::new(pb::StatusReply {
                shard: cfg.shard_id,
                num_shards: cfg.num_shards,
                num_workers: cfg.num_workers,
                default_policy: cfg.default_policy().to_pb().0 as i32,
                default_staleness: cfg.default_policy().to_pb().1,
                live_workers: self.shard.live_workers(),
                tensors,
                session: self.shard.session(),
                restored_clock: origin.as_ref().map(|o| o.clock),
                restored_from: origin.map(|o| o.checkpoint).unwrap_or_default(),
            }),
            0,
        ))
    }
}

impl Service {
    async fn checkpoint_inner(
        &self,
        req: Request<pb::CheckpointRequest>,
    ) -> Result<(Response<pb::CheckpointReply>, u64), Rejected> {
        let req = req.into_inner();
        let _span = tracing::info_span!("checkpoint", clock = req.clock, session = req.session).entered();
        let cut = self.shard.checkpoint(req.clock, req.session, req.worker)?;
        let dir = self.shard.config().checkpoint_dir.as_ref().map(|d| d.join(&cut.name));
        let dir = dir.map(|d| d.display().to_string()).unwrap_or_default();
        Ok((Response::new(pb::CheckpointReply { name: cut.name, dir }), 0))
    }

    async fn rewind_inner(
        &self,
        req: Request<pb::RewindRequest>,
    ) -> Result<(Response<pb::RewindReply>, u64), Rejected> {
        let req = req.into_inner();
        let shard = Arc::clone(&self.shard);
        // Loading reads and verifies files: keep it off the async workers.
        let rewound =
            tokio::task::spawn_blocking(move || shard.rewind(&req.checkpoint, req.cause, req.worker))
                .await
                .map_err(|e| Status::internal(format!("rewind task failed: {e}")))??;
        Ok((
            Response::new(pb::RewindReply {
                clock: rewound.clock,
                session: rewound.session,
                rewound: rewound.rewound,
            }),
            0,
        ))
    }

    async fn checkpoint_status_inner(
        &self,
        req: Request<pb::CheckpointStatusRequest>,
    ) -> Result<(Response<pb::CheckpointStatusReply>, u64), Rejected> {
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
        Ok((Response::new(reply), 0))
    }
}

#[tonic::async_trait]
impl ParameterServer for Service {
    async fn checkpoint(
        &self,
        req: Request<pb::CheckpointRequest>,
    ) -> Result<Response<pb::CheckpointReply>, Status> {
        self.serve(Rpc::Checkpoint, self.checkpoint_inner(req)).await
    }

    async fn checkpoint_status(
        &self,
        req: Request<pb::CheckpointStatusRequest>,
    ) -> Result<Response<pb::CheckpointStatusReply>, Status> {
        self.serve(Rpc::CheckpointStatus, self.checkpoint_status_inner(req)).await
    }

    async fn rewind(&self, req: Request<pb::RewindRequest>) -> Result<Response<pb::RewindReply>, Status> {
        self.serve(Rpc::Rewind, self.rewind_inner(req)).await
    }

    async fn join(&self, req: Request<pb::JoinRequest>) -> Result<Response<pb::JoinReply>, Status> {
        self.serve(Rpc::Join, self.join_inner(req)).await
    }

    async fn leave(&self, req: Request<pb::LeaveRequest>) -> Result<Response<pb::LeaveReply>, Status> {
        self.serve(Rpc::Leave, self.leave_inner(req)).await
    }

    async fn declare(&self, req: Request<pb::DeclareRequest>) -> Result<Response<pb::DeclareReply>, Status> {
        self.serve(Rpc::Declare, self.declare_inner(req)).await
    }

    async fn barrier(&self, req: Request<pb::BarrierRequest>) -> Result<Response<pb::BarrierReply>, Status> {
        self.serve(Rpc::Barrier, self.barrier_inner(req)).await
    }

    async fn status(&self, req: Request<pb::StatusRequest>) -> Result<Response<pb::StatusReply>, Status> {
        let started = Instant::now();
        self.finish(Rpc::Status, started, self.status_inner(req).await)
    }
}
