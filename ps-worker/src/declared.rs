//! The tensors this worker declared, as it sees them: shape, the parts the
//! placement gives them, the pieces a push to each part goes in, and the
//! name they have on the shards.

use std::collections::BTreeMap;

use futures::future::try_join_all;
use ps_proto::pb;
use ps_proto::placement::{self, Part};

use crate::connection::Shards;
use crate::error::WorkerError;
use crate::tensor::TensorDecl;

/// A declared tensor as this worker sees it.
#[derive(Clone, Debug)]
pub(crate) struct TensorInfo {
    /// The name the user declared it by.
    pub(crate) name: String,
    /// The name it has on the shards (with the worker's namespace).
    pub(crate) wire_name: String,
    pub(crate) shape: Vec<usize>,
    pub(crate) parts: Vec<Part>,
    /// Per part, the pieces a push to it goes in (the part itself unless
    /// its shard takes sync pushes in pieces).
    pub(crate) pieces: Vec<Vec<Part>>,
}

impl TensorInfo {
    /// The pieces of a push to `part`.
    pub(crate) fn pieces_of(&self, part: Part) -> &[Part] {
        let i = self.parts.iter().position(|p| *p == part);
        i.and_then(|i| self.pieces.get(i)).map_or(&[], Vec::as_slice)
    }
}

/// The declared tensors, by the name the user declared them by.
#[derive(Clone, Debug, Default)]
pub(crate) struct Declared {
    tensors: BTreeMap<String, TensorInfo>,
}

impl Declared {
    /// The declared tensors in name order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &TensorInfo> {
        self.tensors.values()
    }

    /// The tensor declared as `name`.
    pub(crate) fn get(&self, name: &str) -> Result<&TensorInfo, WorkerError> {
        self.tensors.get(name).ok_or_else(|| WorkerError::UnknownTensor { tensor: name.into() })
    }

    /// The tensor declared as `name`, if a gradient or value of `shape` fits it.
    pub(crate) fn checked(&self, name: &str, shape: &[usize]) -> Result<&TensorInfo, WorkerError> {
        let info = self.get(name)?;
        if shape != info.shape.as_slice() {
            return Err(WorkerError::ShapeMismatch {
                tensor: name.into(),
                expected: info.shape.clone(),
                got: shape.to_vec(),
            });
        }
        Ok(info)
    }

    /// The shapes of the declared tensors.
    pub(crate) fn shapes(&self) -> BTreeMap<String, Vec<usize>> {
        self.tensors.iter().map(|(n, t)| (n.clone(), t.shape.clone())).collect()
    }

    /// Declares `decl` on the shards that hold its parts, and records it.
    /// Every worker may declare the same tensor; the first declaration
    /// creates it, later ones must agree on the shape (else `ALREADY_EXISTS`).
    pub(crate) async fn declare(&mut self, shards: &Shards, decl: &TensorDecl) -> Result<(), WorkerError> {
        let shape = decl.shape();
        let len = shape.iter().product::<usize>() as u64;
        let cfg = shards.config();
        let name = wire_name(&cfg.namespace, decl.name());
        let parts = placement::place(&name, len, cfg.cluster.num_shards(), cfg.cluster.split_threshold);
        let request =
            pb::DeclareRequest { spec: Some(pb::TensorSpec { name: name.clone(), ..decl.spec().clone() }) };
        let piece_lens = try_join_all(parts.iter().map(|part| {
            let (part, name) = (*part, &name);
            shards.call("declare", part.shard, Some(decl.name()), false, &request, move |mut c, r| async move {
                let reply = c.declare(r).await?;
                let r = reply.get_ref();
                if (r.offset, r.len) != (part.offset, part.len) {
                    return Err(tonic::Status::failed_precondition(format!(
                        "tensor {name:?}: shard {} holds elements {}..{} but this worker's placement says {}..{}; \
                         the shards and the worker disagree on the cluster spec",
                        part.shard,
                        r.offset,
                        r.offset + r.len,
                        part.offset,
                        part.offset + part.len
                    )));
                }
                Ok(reply)
            })
        }))
        .await?;
        let pieces = parts
            .iter()
            .zip(piece_lens)
            .map(|(part, reply)| placement::pieces(*part, reply.piece_len))
            .collect();
        let info = TensorInfo { name: decl.name().to_string(), wire_name: name, shape, parts, pieces };
        self.tensors.insert(decl.name().to_string(), info);
        Ok(())
    }
}

impl Declared {
    /// Declares every one of `decls` as [`declare`](Self::declare) would,
    /// with one request per shard that holds a part of any of them
    /// (`DeclareMany`), and records them. A refusal names its tensor; the
    /// tensors declared before it on that shard stay declared there.
    pub(crate) async fn declare_all(
        &mut self,
        shards: &Shards,
        decls: &[TensorDecl],
    ) -> Result<(), WorkerError> {
        let cfg = shards.config();
        // Per shard: the specs to send, and for each which (tensor, part) it is.
        type ShardDecls = (Vec<pb::TensorSpec>, Vec<(usize, usize)>);
        let mut by_shard: BTreeMap<u32, ShardDecls> = BTreeMap::new();
        let mut placed = Vec::with_capacity(decls.len());
        for (d, decl) in decls.iter().enumerate() {
            let shape = decl.shape();
            let len = shape.iter().product::<usize>() as u64;
            let name = wire_name(&cfg.namespace, decl.name());
            let parts = placement::place(&name, len, cfg.cluster.num_shards(), cfg.cluster.split_threshold);
            for (p, part) in parts.iter().enumerate() {
                let (specs, index) = by_shard.entry(part.shard).or_default();
                specs.push(pb::TensorSpec { name: name.clone(), ..decl.spec().clone() });
                index.push((d, p));
            }
            placed.push((name, shape, parts));
        }
        let replies = try_join_all(by_shard.into_iter().map(|(shard, (specs, index))| {
            let request = pb::DeclareManyRequest { specs };
            async move {
                let reply = shards
                    .call("declare", shard, None, false, &request, |mut c, r| async move {
                        c.declare_many(r).await
                    })
                    .await?;
                Ok::<_, WorkerError>((shard, index, reply.parts))
            }
        }))
        .await?;
        let mut piece_lens: Vec<Vec<u64>> = placed.iter().map(|(_, _, parts)| vec![0; parts.len()]).collect();
        for (shard, index, parts) in replies {
            if parts.len() != index.len() {
                return Err(WorkerError::Protocol {
                    shard,
                    tensor: String::new(),
                    detail: format!("declared {} tensors, got {} replies", index.len(), parts.len()),
                });
            }
            for ((d, p), reply) in index.into_iter().zip(parts) {
                let (name, _, expected) = &placed[d];
                let part = expected[p];
                if (reply.offset, reply.len) != (part.offset, part.len) {
                    return Err(WorkerError::Cluster(format!(
                        "tensor {name:?}: shard {shard} holds elements {}..{} but this worker's placement says {}..{}; \
                         the shards and the worker disagree on the cluster spec",
                        reply.offset,
                        reply.offset + reply.len,
                        part.offset,
                        part.offset + part.len
                    )));
                }
                piece_lens[d][p] = reply.piece_len;
            }
        }
        for ((decl, (wire_name, shape, parts)), lens) in decls.iter().zip(placed).zip(piece_lens) {
            let pieces = parts.iter().zip(lens).map(|(part, len)| placement::pieces(*part, len)).collect();
            let info = TensorInfo { name: decl.name().to_string(), wire_name, shape, parts, pieces };
            self.tensors.insert(decl.name().to_string(), info);
        }
        Ok(())
    }
}

/// The name a tensor has on the shards: `name`, after `namespace/` if there is one.
fn wire_name(namespace: &str, name: &str) -> String {
    if namespace.is_empty() { name.to_string() } else { format!("{namespace}/{name}") }
}
