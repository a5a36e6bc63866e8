//! Pulling: one data-path request per part of a tensor, whose reply is
//! checked chunk by chunk against its header and decoded straight into the
//! tensor's buffer; the parts' version vectors merge into the tensor's.
//!
//! The reply's chunk sequence is checked by [`ps_proto::chunk::ChunkSequence`],
//! the same checker the shard's [`ps_proto::chunk::Reassembly`] uses, while
//! the decoding stays here: `Reassembly` decodes into a buffer of its own
//! and scans every chunk for NaN and infinity, which a pull needs neither of.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::future::try_join_all;
use ndarray::{ArrayD, IxDyn};
use prost::Message as _;
use ps_proto::chunk::ChunkSequence;
use ps_proto::placement::Part;
use ps_proto::{frame, pb, rope};

use crate::connection::{Attempt, Failure, Shards};
use crate::data_path::Outgoing;
use crate::declared::TensorInfo;
use crate::error::WorkerError;

/// The result of a pull: whole tensors and, per tensor, the version vector
/// (per worker, the highest clock applied to the value in every part).
#[derive(Clone, Debug, Default)]
pub struct Pulled {
    /// Values by tensor name.
    pub values: BTreeMap<String, ArrayD<f32>>,
    /// Version vectors by tensor name.
    pub versions: BTreeMap<String, Vec<i64>>,
    /// The longest time any part waited on a shard for the policy's release rule.
    pub waited: Duration,
    /// Sync tensors read by a step or a several-tensor pull: the rounds
    /// applied to the value (the least over its parts). Equal to the
    /// clock, unless the tensor has backup workers.
    pub rounds: BTreeMap<String, u64>,
    /// Sync tensors with backup workers whose push in this step was
    /// dropped on some part: its round closed before it arrived. Not an
    /// error: the worker's clock moves on.
    pub dropped: std::collections::BTreeSet<String>,
}

impl Pulled {
    /// Whole tensors as `(name, values, versions, waited)`.
    pub(crate) fn from_tensors(tensors: Vec<(String, ArrayD<f32>, Vec<i64>, Duration)>) -> Self {
        let mut pulled = Pulled::default();
        for (name, values, versions, waited) in tensors {
            pulled.values.insert(name.clone(), values);
            pulled.versions.insert(name, versions);
            pulled.waited = pulled.waited.max(waited);
        }
        pulled
    }
}

/// Pulls one tensor at `clock` as `worker`; `None` reads as an observer
/// (never waits, takes no part in the clocks).
pub(crate) async fn pull_tensor(
    shards: &Shards,
    tensor: &TensorInfo,
    clock: u64,
    worker: Option<u32>,
) -> Result<(ArrayD<f32>, Vec<i64>, Duration), WorkerError> {
    let dtype = pb::WireDtype::from(shards.config().wire_dtype) as i32;
    pulled_tensor(shards, tensor, |_part| {
        let req = pb::PullRequest { worker, clock, tensor: tensor.wire_name.clone(), dtype };
        (frame::PULL_PATH, worker.is_some(), Outgoing::Message(frame::message(&req)))
    })
    .await
}

/// Where a pulled part's elements go.
pub(crate) enum PartBuffer<'a> {
    /// The part's slice of a buffer holding every part of the tensor.
    Slice(&'a mut [f32]),
    /// The tensor's own buffer, when this is its only part: the elements
    /// are decoded onto its end, so it is never zeroed first.
    Whole(&'a mut Vec<f32>),
}

/// Sends one data-path request per part of `tensor` (what `request` says:
/// path, whether it may wait on other workers, its frames per attempt)
/// whose replies are the pulled parts, and puts the tensor together.
async fn pulled_tensor<'a>(
    shards: &Shards,
    tensor: &TensorInfo,
    mut request: impl FnMut(Part) -> (&'static str, bool, Outgoing<'a>),
) -> Result<(ArrayD<f32>, Vec<i64>, Duration), WorkerError> {
    let name = tensor.name.as_str();
    let len = tensor.shape.iter().product::<usize>();
    let mut values = Vec::new();
    let (part_versions, waits): (Vec<_>, Vec<_>) = if let [part] = tensor.parts.as_slice() {
        // One part: decoded straight onto the end of the tensor's buffer.
        let (path, waits, outgoing) = request(*part);
        let dst = PartBuffer::Whole(&mut values);
        vec![pulled_part(shards, name, *part, path, waits, outgoing, dst).await?].into_iter().unzip()
    } else {
        // Several parts arrive at once, each into its own slice.
        values = vec![0f32; len];
        let mut rest: &mut [f32] = &mut values;
        let mut pulls = Vec::new();
        for part in &tensor.parts {
            let (dst, tail) = std::mem::take(&mut rest).split_at_mut(part.len as usize);
            rest = tail;
            let (path, waits, outgoing) = request(*part);
            pulls.push(pulled_part(shards, name, *part, path, waits, outgoing, PartBuffer::Slice(dst)));
        }
        try_join_all(pulls).await?.into_iter().unzip()
    };
    let versions = merge_versions(&part_versions);
    let waited = waits.into_iter().max().unwrap_or_default();
    let array = ArrayD::from_shape_vec(IxDyn(&tensor.shape), values).map_err(|e| WorkerError::Protocol {
        shard: 0,
        tensor: name.into(),
        detail: e.to_string(),
    })?;
    Ok((array, versions, waited))
}

/// Sends a request of the data path at `path` whose reply is a pulled
/// part, retrying transient failures, and decodes the part into `dst`.
async fn pulled_part(
    shards: &Shards,
    name: &str,
    part: Part,
    path: &'static str,
    waits: bool,
    outgoing: Outgoing<'_>,
    mut dst: PartBuffer<'_>,
) -> Result<(Vec<i64>, Duration), WorkerError> {
    let read = ReadPart { shards, part, path, outgoing: &outgoing, dst: &mut dst };
    shards.retrying("pull", part.shard, Some(name), waits, read).await
}

/// One attempt at a pulled part: send the request, read the reply into `dst`.
struct ReadPart<'a, 'b> {
    shards: &'a Shards,
    part: Part,
    path: &'static str,
    outgoing: &'a Outgoing<'b>,
    dst: &'a mut PartBuffer<'b>,
}

impl Attempt for ReadPart<'_, '_> {
    type Output = (Vec<i64>, Duration);

    async fn run(&mut self, deadline: Duration) -> Result<(Vec<i64>, Duration), Failure> {
        let part = self.part;
        if let PartBuffer::Whole(values) = self.dst {
            // A retry starts the part over.
            values.clear();
            values.reserve_exact(part.len as usize);
        }
        let protocol = Failure::Protocol;
        let cfg = self.shards.config();
        let channel = self.shards.data(part.shard);
        let mut reply = self.outgoing.send(channel, self.path, deadline, cfg).await?;
        let dtype = cfg.wire_dtype;
        let mut chunks = ChunkSequence::new(part.len, dtype.size());
        let mut versions = None;
        while let Some(msg) = reply.message().await? {
            let (chunk, data) = reply_chunk(msg)?;
            if let Some(h) = chunk.header {
                if versions.is_some() {
                    return Err(protocol("a second header in the reply".into()));
                }
                let total = chunks.total();
                if (h.offset, h.len, h.total_bytes) != (part.offset, part.len, total) {
                    return Err(protocol(format!(
                        "expected elements {}..{} ({total} bytes), got {}..{} ({} bytes)",
                        part.offset,
                        part.offset + part.len,
                        h.offset,
                        h.offset + h.len,
                        h.total_bytes
                    )));
                }
                versions = Some((h.versions, Duration::from_micros(h.waited_us)));
            } else if versions.is_none() {
                return Err(protocol("the first chunk of the reply has no header".into()));
            }
            let elements =
                chunks.accept(chunk.offset, data.len() as u64).map_err(|e| protocol(e.to_string()))?;
            match &mut *self.dst {
                PartBuffer::Whole(values) => rope::decode_segments_append(values, &data, dtype),
                PartBuffer::Slice(slice) => rope::decode_segments_into(&mut slice[elements], &data, dtype),
            }
        }
        chunks.finish().map_err(|e| protocol(e.to_string()))?;
        versions.ok_or_else(|| protocol("empty reply".into()))
    }
}

/// Combines the version vectors of a tensor's parts: per worker, the minimum,
/// i.e. the clocks applied to every part.
pub(crate) fn merge_versions(parts: &[Vec<i64>]) -> Vec<i64> {
    let width = parts.iter().map(Vec::len).max().unwrap_or(0);
    (0..width).map(|w| parts.iter().map(|p| p.get(w).copied().unwrap_or(-1)).min().unwrap_or(-1)).collect()
}

/// A message of a pull's reply: its `PullChunk` fields and its data.
pub(crate) fn reply_chunk(msg: rope::Segments) -> Result<(pb::PullChunk, rope::Segments), Failure> {
    let malformed = |e: &dyn std::fmt::Display| Failure::Protocol(format!("malformed reply chunk: {e}"));
    let (fields, data) = frame::split_data(msg).map_err(|e| malformed(&e))?;
    let chunk = pb::PullChunk::decode(&fields[..]).map_err(|e| malformed(&e))?;
    Ok((chunk, data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_versions_take_the_minimum() {
        assert_eq!(merge_versions(&[vec![3, 5, -1], vec![4, 2, 0]]), vec![3, 2, -1]);
        assert_eq!(merge_versions(&[]), Vec::<i64>::new());
    }
}
