//! A step and a pull in one request per shard, whatever the number of
//! tensors: every part a shard holds goes in one `Step` (the pushes of
//! clock c, whose reply streams the parts pulled at c + 1) or one
//! `PullMany`. The shard sends each part as soon as its policy releases
//! it; each is checked chunk by chunk and decoded straight into its
//! tensor's buffer. A part whose push goes in pieces sends all but its last
//! piece first, by `Push`, as a `PushPull` would.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use futures::future::try_join_all;
use ndarray::{ArrayD, IxDyn};
use ps_proto::chunk::ChunkSequence;
use ps_proto::placement::Part;
use ps_proto::wire::WireDtype;
use ps_proto::{WaitAt, frame, pb, rope};

use crate::connection::{Attempt, Failure, Shards};
use crate::data_path::Outgoing;
use crate::declared::{Declared, TensorInfo};
use crate::error::WorkerError;
use crate::held::Held;
use crate::pull::{PartBuffer, Pulled, merge_versions, reply_chunk};
use crate::push::{GradientData, check_gradients, contiguous, push_header, push_pieces};

/// One part of a several-part request: its tensor (an index into the
/// tensors the request is for), and where its pulled elements go.
struct Entry<'a> {
    tensor: usize,
    wire_name: &'a str,
    part: Part,
    dst: PartBuffer<'a>,
}

/// What a pulled part's header reports: its version vector, its wait on
/// the shard, its sync rounds, and whether the step's push of it was dropped.
#[derive(Clone, Debug)]
struct PartPulled {
    versions: Vec<i64>,
    waited: Duration,
    rounds: u64,
    dropped: bool,
}

/// Pushes one gradient per declared tensor at `clock` and returns every
/// tensor pulled at `clock + 1`: one `Step` request per shard. The pulled
/// values go in the arrays of `reuse` where their sizes fit (see
/// [`buffers`]).
pub(crate) async fn step<G: GradientData>(
    shards: &Shards,
    tensors: &Declared,
    clock: u64,
    grads: &BTreeMap<String, G>,
    reuse: Option<&mut Pulled>,
) -> Result<Pulled, WorkerError> {
    check_gradients(tensors, clock, grads)?;
    let infos: Vec<&TensorInfo> = tensors.iter().collect();
    let views: Vec<_> = infos.iter().map(|t| grads[&t.name].values()).collect();
    let shared: Vec<_> = match shards.config().wire_dtype {
        WireDtype::F32 => infos.iter().map(|t| grads[&t.name].shared_f32_bytes()).collect(),
        WireDtype::F16 | WireDtype::Bf16 => vec![None; infos.len()],
    };
    let flats: Vec<_> = views
        .iter()
        .zip(&shared)
        .map(|(v, s)| if s.is_some() { None } else { Some(contiguous(v)) })
        .collect();
    let outgoing = &|i: usize, piece: Part| {
        let range = piece.offset as usize..(piece.offset + piece.len) as usize;
        let header = push_header(shards, infos[i], piece, clock);
        match (&shared[i], &flats[i]) {
            (Some(bytes), _) => {
                Outgoing::Shared { header, data: bytes.slice(range.start * 4..range.end * 4) }
            }
            (None, Some(flat)) => Outgoing::Push { header, values: &flat[range] },
            (None, None) => Outgoing::Push { header, values: &[] },
        }
    };
    // Pieces before the last of each part, so the step's push completes it.
    try_join_all(infos.iter().enumerate().map(|(i, info)| {
        let early = info.pieces.iter().flat_map(|p| &p[..p.len().saturating_sub(1)]);
        push_pieces(shards, info, early.map(move |piece| (*piece, outgoing(i, *piece))))
    }))
    .await?;
    let mut buffers = buffers(&infos, reuse);
    let mut requests: BTreeMap<u32, (Vec<Outgoing<'_>>, Vec<Entry<'_>>)> = BTreeMap::new();
    for (i, (info, buffer)) in infos.iter().zip(buffers.iter_mut()).enumerate() {
        for (part, dst) in part_buffers(info, buffer) {
            let last = info.pieces_of(part).last().copied().unwrap_or(part);
            let (pushes, entries) = requests.entry(part.shard).or_default();
            pushes.push(outgoing(i, last));
            entries.push(Entry { tensor: i, wire_name: &info.wire_name, part, dst });
        }
    }
    let infos = &infos;
    let sent = requests.into_iter().map(|(shard, (pushes, entries))| async move {
        let request = ShardRequest::new(shards, shard, frame::STEP_PATH, Outgoing::Several(pushes), entries);
        let held = Held { shards, shard, op: "step", clock, wait: WaitAt::Pull(clock + 1), tensors: infos };
        held.awaiting(shards.retrying("step", shard, None, true, request)).await
    });
    let pulled = try_join_all(sent).await?;
    assemble(infos, buffers, pulled)
}

/// Pulls every declared tensor at `clock` as this worker (waiting as the
/// policy requires): one `PullMany` request per shard.
pub(crate) async fn pull(shards: &Shards, tensors: &Declared, clock: u64) -> Result<Pulled, WorkerError> {
    let infos: Vec<&TensorInfo> = tensors.iter().collect();
    let mut buffers = buffers(&infos, None);
    let mut requests: BTreeMap<u32, Vec<Entry<'_>>> = BTreeMap::new();
    for (i, (info, buffer)) in infos.iter().zip(buffers.iter_mut()).enumerate() {
        for (part, dst) in part_buffers(info, buffer) {
            requests.entry(part.shard).or_default().push(Entry {
                tensor: i,
                wire_name: &info.wire_name,
                part,
                dst,
            });
        }
    }
    let cfg = shards.config();
    let dtype = pb::WireDtype::from(cfg.wire_dtype) as i32;
    let infos = &infos;
    let sent = requests.into_iter().map(|(shard, entries)| {
        let tensors = entries.iter().map(|e| e.wire_name.to_string()).collect();
        let req = pb::PullManyRequest { worker: Some(cfg.worker), clock, tensors, dtype };
        let outgoing = Outgoing::Message(frame::message(&req));
        let request = ShardRequest::new(shards, shard, frame::PULL_MANY_PATH, outgoing, entries);
        let held = Held { shards, shard, op: "pull", clock, wait: WaitAt::Pull(clock), tensors: infos };
        async move { held.awaiting(shards.retrying("pull", shard, None, true, request)).await }
    });
    let pulled = try_join_all(sent).await?;
    assemble(infos, buffers, pulled)
}

/// Per tensor, the buffer its pulled values go in: one part's is filled by
/// appending (never zeroed first), several parts' are sliced from one of
/// the tensor's length. Each takes the memory of the array of the same
/// name in `reuse` (taken out of it) when that array is contiguous and
/// holds the tensor's length, so that a loop stepping into the same
/// [`Pulled`] allocates, and faults in fresh pages, only once.
fn buffers(infos: &[&TensorInfo], mut reuse: Option<&mut Pulled>) -> Vec<Vec<f32>> {
    infos
        .iter()
        .map(|t| {
            let len = t.shape.iter().product::<usize>();
            let old = reuse.as_mut().and_then(|r| r.values.remove(&t.name)).and_then(|a| {
                let standard = a.is_standard_layout() && a.len() == len;
                let (vec, offset) = a.into_raw_vec_and_offset();
                (standard && offset.unwrap_or(0) == 0 && vec.len() == len).then_some(vec)
            });
            match (t.parts.as_slice(), old) {
                ([_], Some(mut vec)) => {
                    vec.clear();
                    vec
                }
                ([_], None) => Vec::new(),
                (_, Some(vec)) => vec,
                (_, None) => vec![0f32; len],
            }
        })
        .collect()
}

/// Where each part of `info` is decoded to in `buffer` (see [`buffers`]).
fn part_buffers<'a>(info: &TensorInfo, buffer: &'a mut Vec<f32>) -> Vec<(Part, PartBuffer<'a>)> {
    if let [part] = info.parts.as_slice() {
        return vec![(*part, PartBuffer::Whole(buffer))];
    }
    let mut rest: &mut [f32] = buffer;
    let mut out = Vec::with_capacity(info.parts.len());
    for part in &info.parts {
        let (dst, tail) = std::mem::take(&mut rest).split_at_mut(part.len as usize);
        rest = tail;
        out.push((*part, PartBuffer::Slice(dst)));
    }
    out
}

/// The pulled tensors from their buffers and, per shard request, what each
/// of its parts (in `Entry` order, tagged with the tensor) reported.
fn assemble(
    infos: &[&TensorInfo],
    buffers: Vec<Vec<f32>>,
    pulled: Vec<Vec<(usize, PartPulled)>>,
) -> Result<Pulled, WorkerError> {
    let mut versions: Vec<Vec<Vec<i64>>> = vec![Vec::new(); infos.len()];
    let mut waited: Vec<Duration> = vec![Duration::ZERO; infos.len()];
    let mut rounds: Vec<u64> = vec![u64::MAX; infos.len()];
    let mut dropped = std::collections::BTreeSet::new();
    for (tensor, part) in pulled.into_iter().flatten() {
        versions[tensor].push(part.versions);
        waited[tensor] = waited[tensor].max(part.waited);
        rounds[tensor] = rounds[tensor].min(part.rounds);
        if part.dropped {
            tracing::debug!(
                tensor = %infos[tensor].name,
                "push dropped: its round closed before it arrived (backup workers); going on"
            );
            dropped.insert(infos[tensor].name.clone());
        }
    }
    let mut tensors = Vec::with_capacity(infos.len());
    for (((info, values), parts), waited) in infos.iter().zip(buffers).zip(versions).zip(waited) {
        let array =
            ArrayD::from_shape_vec(IxDyn(&info.shape), values).map_err(|e| WorkerError::Protocol {
                shard: info.parts.first().map_or(0, |p| p.shard),
                tensor: info.name.clone(),
                detail: e.to_string(),
            })?;
        tensors.push((info.name.clone(), array, merge_versions(&parts), waited));
    }
    let mut pulled = Pulled::from_tensors(tensors);
    pulled.rounds = infos.iter().zip(rounds).map(|(info, r)| (info.name.clone(), r)).collect();
    pulled.dropped = dropped;
    Ok(pulled)
}

/// One attempt at a several-part request to one shard: send it, then read
/// every part of the reply into its buffer.
struct ShardRequest<'a, 'b> {
    shards: &'a Shards,
    shard: u32,
    path: &'static str,
    outgoing: Outgoing<'b>,
    entries: Vec<Entry<'b>>,
    /// Entry index by the tensor's name on the shards.
    by_name: HashMap<&'b str, usize>,
}

impl<'a, 'b> ShardRequest<'a, 'b> {
    fn new(
        shards: &'a Shards,
        shard: u32,
        path: &'static str,
        outgoing: Outgoing<'b>,
        entries: Vec<Entry<'b>>,
    ) -> Self {
        let by_name = entries.iter().enumerate().map(|(i, e)| (e.wire_name, i)).collect();
        Self { shards, shard, path, outgoing, entries, by_name }
    }
}

impl Attempt for ShardRequest<'_, '_> {
    type Output = Vec<(usize, PartPulled)>;

    async fn run(&mut self, deadline: Duration) -> Result<Self::Output, Failure> {
        let protocol = Failure::Protocol;
        for entry in &mut self.entries {
            if let PartBuffer::Whole(values) = &mut entry.dst {
                // A retry starts the part over.
                values.clear();
                values.reserve_exact(entry.part.len as usize);
            }
        }
        let cfg = self.shards.config();
        let dtype = cfg.wire_dtype;
        let mut reply = self.outgoing.send(self.shards.data(self.shard), self.path, deadline, cfg).await?;
        let mut got: Vec<Option<PartPulled>> = vec![None; self.entries.len()];
        let mut current: Option<(usize, ChunkSequence)> = None;
        while let Some(msg) = reply.message().await? {
            let (chunk, data) = reply_chunk(msg)?;
            if let Some(h) = chunk.header {
                if let Some((i, chunks)) = current.take() {
                    chunks
                        .finish()
                        .map_err(|e| protocol(format!("tensor {}: {e}", self.entries[i].wire_name)))?;
                }
                let i = *self.by_name.get(h.tensor.as_str()).ok_or_else(|| {
                    protocol(format!("a part of tensor {:?}, which the request did not ask for", h.tensor))
                })?;
                let part = self.entries[i].part;
                if got[i].is_some() {
                    return Err(protocol(format!("tensor {:?} came twice", h.tensor)));
                }
                let chunks = ChunkSequence::new(part.len, dtype.size());
                let total = chunks.total();
                if (h.offset, h.len, h.total_bytes) != (part.offset, part.len, total) {
                    return Err(protocol(format!(
                        "tensor {:?}: expected elements {}..{} ({total} bytes), got {}..{} ({} bytes)",
                        h.tensor,
                        part.offset,
                        part.offset + part.len,
                        h.offset,
                        h.offset + h.len,
                        h.total_bytes
                    )));
                }
                got[i] = Some(PartPulled {
                    versions: h.versions,
                    waited: Duration::from_micros(h.waited_us),
                    rounds: h.rounds,
                    dropped: h.dropped,
                });
                current = Some((i, chunks));
            }
            let Some((i, chunks)) = current.as_mut() else {
                return Err(protocol("the first chunk of the reply has no header".into()));
            };
            let elements =
                chunks.accept(chunk.offset, data.len() as u64).map_err(|e| protocol(e.to_string()))?;
            match &mut self.entries[*i].dst {
                PartBuffer::Whole(values) => rope::decode_segments_append(values, &data, dtype),
                PartBuffer::Slice(slice) => rope::decode_segments_into(&mut slice[elements], &data, dtype),
            }
        }
        if let Some((i, chunks)) = current {
            chunks.finish().map_err(|e| protocol(format!("tensor {}: {e}", self.entries[i].wire_name)))?;
        }
        got.into_iter()
            .zip(&self.entries)
            .map(|(pulled, entry)| {
                pulled
                    .map(|p| (entry.tensor, p))
                    .ok_or_else(|| protocol(format!("the reply lacks tensor {:?}", entry.wire_name)))
            })
            .collect()
    }
}
