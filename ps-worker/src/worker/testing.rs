//! Hatches for the server's tests (feature `testing`): requests at any
//! clock, as any worker, and raw push streams. Not a stable API.

use std::collections::BTreeMap;

use ndarray::ArrayD;
use ps_proto::pb;

use super::Worker;
use crate::error::WorkerError;
use crate::{pull, push};

impl Worker {
    /// Pulls every declared tensor for `clock` as this worker, whatever its clock.
    pub async fn pull_at(&self, clock: u64) -> Result<pull::Pulled, WorkerError> {
        crate::several::pull(&self.shards, &self.tensors, clock).await
    }

    /// Pulls one tensor for `clock` (this worker's clock if `None`) as
    /// `worker`; `worker: None` reads as an observer.
    pub async fn pull_tensor(
        &self,
        name: &str,
        clock: Option<u64>,
        worker: Option<u32>,
    ) -> Result<(ArrayD<f32>, Vec<i64>), WorkerError> {
        let tensor = self.tensors.get(name)?;
        let clock = clock.unwrap_or(self.clock);
        let (values, versions, _) = pull::pull_tensor(&self.shards, tensor, clock, worker).await?;
        Ok((values, versions))
    }

    /// Pushes gradients for `clock` without touching this worker's clock.
    /// A push the shards already applied is acknowledged and ignored.
    pub async fn push_at(
        &self,
        clock: u64,
        grads: &BTreeMap<String, ArrayD<f32>>,
    ) -> Result<(), WorkerError> {
        push::push(&self.shards, &self.tensors, clock, grads).await
    }

    /// Pushes the gradient of one tensor for `clock` (all its parts),
    /// without touching this worker's clock.
    pub async fn push_tensor(&self, name: &str, clock: u64, grad: &ArrayD<f32>) -> Result<(), WorkerError> {
        let tensor = self.tensors.checked(name, grad.shape())?;
        push::push_tensor(&self.shards, tensor, clock, grad).await
    }

    /// Sends a raw push stream to one shard (for tests of malformed input).
    pub async fn raw_push(
        &self,
        shard: u32,
        chunks: Vec<pb::PushChunk>,
    ) -> Result<pb::PushReply, tonic::Status> {
        let max_message = self.shards.config().max_message_bytes;
        let mut c = pb::data_client::DataClient::new(self.shards.data(shard))
            .max_decoding_message_size(max_message)
            .max_encoding_message_size(max_message);
        Ok(c.push(futures::stream::iter(chunks)).await?.into_inner())
    }
}
