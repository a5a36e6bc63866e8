//! Pushing: a gradient per tensor, split into the parts and pieces the
//! shards take, one request per piece; and `push_pull`, whose request per
//! part carries the push and whose reply is the part pulled after it.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use futures::future::try_join_all;
use ndarray::{ArcArray, ArrayD, ArrayViewD, IxDyn};
use prost::Message as _;
use ps_proto::placement::Part;
use ps_proto::{frame, pb};

use crate::connection::{Failure, Shards};
use crate::data_path::Outgoing;
use crate::declared::{Declared, TensorInfo};
use crate::error::WorkerError;

/// A gradient [`Worker::push_pull`](crate::Worker::push_pull) can send. An
/// [`ArrayD`] is borrowed and encoded onto the wire chunk by chunk; an
/// [`ArcArray`] in standard layout is shared with the request instead, so
/// with the f32 wire dtype its bytes go out without being copied in user
/// space (the caller's own handle stays valid: writing through it copies
/// it first, as for any shared `ArcArray`).
pub trait GradientData {
    /// The gradient's elements.
    fn values(&self) -> ArrayViewD<'_, f32>;
    /// The elements in logical order as little-endian f32 bytes that share
    /// the gradient's memory, when it can be shared; `None` means copy.
    fn shared_f32_bytes(&self) -> Option<Bytes>;
}

impl GradientData for ArrayD<f32> {
    fn values(&self) -> ArrayViewD<'_, f32> {
        self.view()
    }

    fn shared_f32_bytes(&self) -> Option<Bytes> {
        None
    }
}

impl GradientData for ArcArray<f32, IxDyn> {
    fn values(&self) -> ArrayViewD<'_, f32> {
        self.view()
    }

    #[cfg(target_endian = "little")]
    fn shared_f32_bytes(&self) -> Option<Bytes> {
        /// A standard-layout gradient, seen as its slice.
        struct Standard(ArcArray<f32, IxDyn>);
        impl AsRef<[f32]> for Standard {
            fn as_ref(&self) -> &[f32] {
                self.0.as_slice().unwrap_or_default()
            }
        }
        self.is_standard_layout().then(|| ps_proto::wire::shared_f32_bytes(Standard(self.clone())))
    }

    #[cfg(not(target_endian = "little"))]
    fn shared_f32_bytes(&self) -> Option<Bytes> {
        None
    }
}

/// Checks that `grads` holds exactly one gradient of the right shape per declared tensor.
pub(crate) fn check_gradients(
    tensors: &Declared,
    clock: u64,
    grads: &BTreeMap<String, impl GradientData>,
) -> Result<(), WorkerError> {
    for tensor in tensors.iter() {
        let name = &tensor.name;
        let g =
            grads.get(name).ok_or_else(|| WorkerError::MissingGradient { tensor: name.clone(), clock })?;
        tensors.checked(name, g.values().shape())?;
    }
    for name in grads.keys() {
        tensors.get(name)?;
    }
    Ok(())
}

/// Pushes one gradient per declared tensor for `clock`. A push the shards
/// already applied is acknowledged and ignored.
pub(crate) async fn push(
    shards: &Shards,
    tensors: &Declared,
    clock: u64,
    grads: &BTreeMap<String, ArrayD<f32>>,
) -> Result<(), WorkerError> {
    check_gradients(tensors, clock, grads)?;
    try_join_all(tensors.iter().map(|t| push_tensor(shards, t, clock, &grads[&t.name]))).await?;
    Ok(())
}

/// Pushes the gradient of one tensor for `clock` (all its parts); `grad`
/// has the tensor's shape.
pub(crate) async fn push_tensor(
    shards: &Shards,
    tensor: &TensorInfo,
    clock: u64,
    grad: &ArrayD<f32>,
) -> Result<(), WorkerError> {
    let flat = contiguous(&grad.view());
    let pieces = tensor.pieces.iter().flatten().map(|piece| {
        let range = piece.offset as usize..(piece.offset + piece.len) as usize;
        let header = push_header(shards, tensor, *piece, clock);
        (*piece, Outgoing::Push { header, values: &flat[range] })
    });
    push_pieces(shards, tensor, pieces).await
}

/// The header of a push to `part`.
pub(crate) fn push_header(shards: &Shards, tensor: &TensorInfo, part: Part, clock: u64) -> pb::PushHeader {
    let cfg = shards.config();
    pb::PushHeader {
        worker: cfg.worker,
        clock,
        tensor: tensor.wire_name.clone(),
        offset: part.offset,
        len: part.len,
        dtype: pb::WireDtype::from(cfg.wire_dtype) as i32,
    }
}

/// Pushes each `(piece, request)`: pieces of different parts at once,
/// those of one part one after the other (with two at a time, 8 workers
/// got less throughput and their shard used more memory).
pub(crate) async fn push_pieces<'a>(
    shards: &Shards,
    tensor: &TensorInfo,
    pieces: impl IntoIterator<Item = (Part, Outgoing<'a>)>,
) -> Result<(), WorkerError> {
    let mut by_shard: BTreeMap<u32, Vec<(Part, Outgoing<'a>)>> = BTreeMap::new();
    for (piece, outgoing) in pieces {
        by_shard.entry(piece.shard).or_default().push((piece, outgoing));
    }
    try_join_all(by_shard.into_values().map(|pieces| push_shard_pieces(shards, tensor, pieces))).await?;
    Ok(())
}

/// Pushes `pieces` (all on one shard) one after the other.
async fn push_shard_pieces(
    shards: &Shards,
    tensor: &TensorInfo,
    pieces: Vec<(Part, Outgoing<'_>)>,
) -> Result<(), WorkerError> {
    for (piece, outgoing) in pieces {
        push_part(shards, tensor, piece, outgoing).await?;
    }
    Ok(())
}

/// Sends `outgoing`, the push of one part or piece `part` (retried as a whole).
async fn push_part(
    shards: &Shards,
    tensor: &TensorInfo,
    part: Part,
    outgoing: Outgoing<'_>,
) -> Result<bool, WorkerError> {
    let outgoing = &outgoing;
    let cfg = shards.config();
    let attempt = |deadline: Duration| async move {
        let channel = shards.data(part.shard);
        let mut reply = outgoing.send(channel, frame::PUSH_PATH, deadline, cfg).await?;
        let msg = reply.message().await?.ok_or_else(|| tonic::Status::internal("empty push reply"))?;
        let reply_fields = pb::PushReply::decode(msg)
            .map_err(|e| tonic::Status::internal(format!("malformed push reply: {e}")))?;
        if reply_fields.dropped {
            tracing::debug!(
                tensor = %tensor.name,
                shard = part.shard,
                "push dropped: its round closed before it arrived (backup workers); going on"
            );
        }
        let applied = reply_fields.applied;
        if reply.message().await?.is_some() {
            return Err(tonic::Status::internal("a push reply with more than one message").into());
        }
        Ok::<_, Failure>(applied)
    };
    shards.retrying("push", part.shard, Some(&tensor.name), false, attempt).await
}

/// `grad`'s elements in logical order, borrowed when they already are.
pub(crate) fn contiguous<'a>(grad: &ArrayViewD<'a, f32>) -> Cow<'a, [f32]> {
    grad.to_slice().map(Cow::Borrowed).unwrap_or_else(|| grad.iter().copied().collect())
}
