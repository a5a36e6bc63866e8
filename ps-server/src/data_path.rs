//! The shard's gRPC router: `Push`, `Pull` and `PushPull` go to the data path, where
//! tensor bytes are read from and written to HTTP/2 frames directly
//! (see [`ps_proto::frame`]); every other RPC goes to the generated service.
//! On the wire both are the same `ps.v1.ParameterServer` service, so any
//! gRPC client works with either.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use ps_proto::frame::{PULL_PATH, PUSH_PATH, PUSH_PULL_PATH};
use ps_proto::pb::parameter_server_server::{ParameterServerServer, SERVICE_NAME};
use tonic::body::Body;
use tonic::codegen::Service as TowerService;
use tonic::server::NamedService;

use crate::service::Service;

/// The `ps.v1.ParameterServer` service of one shard, with `Push`, `Pull`
/// and `PushPull` on the data path. Cloning shares the shard.
#[derive(Clone, Debug)]
pub struct DataPath {
    service: Service,
    generated: ParameterServerServer<Service>,
}

impl DataPath {
    /// Routes to `service`; messages of the generated RPCs are limited to
    /// `max_message` bytes (the data path reads the limit from the shard).
    pub fn new(service: Service, max_message: usize) -> Self {
        let generated = ParameterServerServer::new(service.clone())
            .max_decoding_message_size(max_message)
            .max_encoding_message_size(max_message);
        Self { service, generated }
    }
}

impl NamedService for DataPath {
    const NAME: &'static str = SERVICE_NAME;
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
            _ => Box::pin(self.generated.call(req)),
        }
    }
}
