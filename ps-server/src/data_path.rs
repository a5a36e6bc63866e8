//! The shard's side of the data service (`ps.v1.Data`: `Push`, `Pull`,
//! `PushPull`, `Step`, `PullMany`), written by hand: tensor bytes are read from and written to
//! HTTP/2 frames directly (see [`ps_proto::frame`]). On the wire it is plain
//! gRPC, so the generated client (`ps_proto::pb::data_client`) works with it.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use ps_proto::frame::{DATA_SERVICE, PULL_MANY_PATH, PULL_PATH, PUSH_PATH, PUSH_PULL_PATH, STEP_PATH};
use tonic::body::Body;
use tonic::codegen::Service as TowerService;
use tonic::server::NamedService;

use crate::service::Service;

/// The `ps.v1.Data` service of one shard. Cloning shares the shard.
#[derive(Clone, Debug)]
pub struct DataPath {
    service: Service,
}

impl DataPath {
    /// Serves the data RPCs of `service`'s shard.
    pub fn new(service: Service) -> Self {
        Self { service }
    }
}

impl NamedService for DataPath {
    const NAME: &'static str = DATA_SERVICE;
}

type Reply = Pin<Box<dyn Future<Output = Result<http::Response<Body>, Infallible>> + Send>>;

impl TowerService<http::Request<Body>> for DataPath {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Reply;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Reply {
        let service = self.service.clone();
        match req.uri().path() {
            PUSH_PATH => Box::pin(async move { Ok(service.push_frames(req.into_body()).await) }),
            PULL_PATH => Box::pin(async move { Ok(service.pull_frames(req.into_body()).await) }),
            PUSH_PULL_PATH => Box::pin(async move { Ok(service.push_pull_frames(req.into_body()).await) }),
            STEP_PATH => Box::pin(async move { Ok(service.step_frames(req.into_body()).await) }),
            PULL_MANY_PATH => Box::pin(async move { Ok(service.pull_many_frames(req.into_body()).await) }),
            path => {
                let status = tonic::Status::unimplemented(format!("{DATA_SERVICE} has no method at {path}"));
                Box::pin(std::future::ready(Ok(status.into_http())))
            }
        }
    }
}
