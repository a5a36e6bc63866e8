//! The HTTP bodies of data-path requests and replies: frames known up
//! front, or a tensor encoded chunk by chunk as the transport asks for more.
//! Every data-carrying message goes out as its head and its data `Bytes`
//! ([`super::framing::data_message_head`]).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use prost::Message;

use super::framing::data_message_head;
use crate::wire::{self, WireDtype};

/// An HTTP body of frames known up front, then optional trailers: what a
/// data-path request or reply sends.
#[derive(Debug, Default)]
pub struct FramesBody {
    frames: VecDeque<Bytes>,
    trailers: Option<http::HeaderMap>,
}

impl FramesBody {
    /// `frames` in order, then `trailers` if any.
    pub fn new(frames: VecDeque<Bytes>, trailers: Option<http::HeaderMap>) -> Self {
        Self { frames, trailers }
    }
}

impl http_body::Body for FramesBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        if let Some(frame) = self.frames.pop_front() {
            return Poll::Ready(Some(Ok(http_body::Frame::data(frame))));
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(http_body::Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.frames.is_empty() && self.trailers.is_none()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.frames.iter().map(|f| f.len() as u64).sum())
    }
}

/// Elements of `dtype` per chunk of at most `chunk_bytes` (at least one).
fn chunk_elems(chunk_bytes: usize, dtype: WireDtype) -> usize {
    (chunk_bytes / dtype.size()).max(1)
}

/// The chunk of `values` that starts at element `start` (at most
/// `chunk_elems` elements) encoded as `dtype`: its message head, with the
/// other fields from `fields(byte offset)`, its data, and where the next
/// chunk starts (`None` after the last; an empty `values` is one chunk).
fn encode_chunk<M: Message>(
    values: &[f32],
    start: usize,
    chunk_elems: usize,
    dtype: WireDtype,
    fields: &mut impl FnMut(u64) -> M,
) -> (Bytes, Bytes, Option<usize>) {
    let end = (start + chunk_elems).min(values.len());
    let data = wire::encode(&values[start..end], dtype);
    let head = data_message_head(&fields((start * dtype.size()) as u64), data.len());
    (head, data, (end < values.len()).then_some(end))
}

/// The chunks of `values` encoded as `dtype`, each encoded only when the
/// iterator reaches it: `(message head, data)`, data empty only for an
/// empty `values`, which is one chunk. `values` is borrowed (`&[f32]`) or
/// any owner of the elements, which the iterator keeps until it ends.
pub fn encoded_chunks<V: AsRef<[f32]>, M: Message>(
    values: V,
    dtype: WireDtype,
    chunk_bytes: usize,
    mut fields: impl FnMut(u64) -> M,
) -> impl Iterator<Item = (Bytes, Bytes)> {
    let chunk_elems = chunk_elems(chunk_bytes, dtype);
    let mut next = Some(0);
    std::iter::from_fn(move || {
        let (head, data, after) = encode_chunk(values.as_ref(), next?, chunk_elems, dtype, &mut fields);
        next = after;
        Some((head, data))
    })
}

/// A reply body of data-carrying messages encoded from `values` one chunk
/// at a time, when the transport asks for the next frame: encoding the
/// next chunk overlaps sending the previous ones, and at most one encoded
/// chunk exists at a time. Then the `trailers`.
///
/// `values` is any owner of the f32 elements (`V: AsRef<[f32]>`), such as a
/// shared array: the body reads them in place and drops the owner with
/// itself.
pub struct EncodingBody<V, F> {
    values: V,
    dtype: WireDtype,
    chunk_elems: usize,
    /// Where the next chunk starts; `None` once every chunk is out.
    next: Option<usize>,
    fields: F,
    data: Option<Bytes>,
    trailers: Option<http::HeaderMap>,
}

impl<V, F> std::fmt::Debug for EncodingBody<V, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncodingBody").field("dtype", &self.dtype).field("next", &self.next).finish()
    }
}

impl<V: AsRef<[f32]>, M: Message, F: FnMut(u64) -> M> EncodingBody<V, F> {
    /// `values` encoded as `dtype` in chunks of at most `chunk_bytes`
    /// (whole elements), each message's other fields from `fields(byte_offset)`;
    /// an empty `values` still sends one message.
    pub fn new(
        values: V,
        dtype: WireDtype,
        chunk_bytes: usize,
        fields: F,
        trailers: Option<http::HeaderMap>,
    ) -> Self {
        let chunk_elems = chunk_elems(chunk_bytes, dtype);
        Self { values, dtype, chunk_elems, next: Some(0), fields, data: None, trailers }
    }
}

impl<V: AsRef<[f32]> + Unpin, M: Message, F: FnMut(u64) -> M + Unpin> http_body::Body for EncodingBody<V, F> {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        if let Some(data) = self.data.take() {
            return Poll::Ready(Some(Ok(http_body::Frame::data(data))));
        }
        if let Some(start) = self.next {
            let this = &mut *self;
            let (head, data, next) =
                encode_chunk(this.values.as_ref(), start, this.chunk_elems, this.dtype, &mut this.fields);
            this.next = next;
            this.data = (!data.is_empty()).then_some(data);
            return Poll::Ready(Some(Ok(http_body::Frame::data(head))));
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(http_body::Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.next.is_none() && self.data.is_none() && self.trailers.is_none()
    }
}

/// The frames of a message carrying `data` after `fields`, in `chunk_bytes`
/// pieces of whole `elem_size` elements: each chunk's head, then its data.
pub fn data_frames<M: Message>(
    payload: &Bytes,
    chunk_bytes: usize,
    elem_size: usize,
    mut chunk_fields: impl FnMut(u64) -> M,
) -> VecDeque<Bytes> {
    let mut frames = VecDeque::new();
    for (offset, data) in crate::chunk::split(payload, chunk_bytes, elem_size) {
        frames.push_back(data_message_head(&chunk_fields(offset), data.len()));
        if !data.is_empty() {
            frames.push_back(data);
        }
    }
    frames
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb;

    /// The encoding body and `encoded_chunks` send what `data_frames` of the
    /// whole encoded payload sends, in every dtype, also for an empty tensor.
    #[test]
    fn encoding_body_equals_eager_frames() {
        use http_body::Body as _;
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        for n in [0, 1, 9, 1000] {
            let values: std::sync::Arc<[f32]> = (0..n).map(|i| i as f32 * 0.75 - 5.0).collect();
            for dtype in [WireDtype::F32, WireDtype::F16, WireDtype::Bf16] {
                let fields = |offset| pb::PullChunk { header: None, offset, data: Bytes::new() };
                let payload = wire::encode(&values, dtype);
                let eager: Vec<Bytes> = data_frames(&payload, 100, dtype.size(), fields).into();
                let mut body =
                    EncodingBody::new(values.clone(), dtype, 100, fields, Some(http::HeaderMap::new()));
                let mut lazy = Vec::new();
                while let Poll::Ready(Some(Ok(frame))) = Pin::new(&mut body).poll_frame(&mut cx) {
                    match frame.into_data() {
                        Ok(data) => lazy.push(data),
                        Err(frame) => assert!(frame.is_trailers()),
                    }
                }
                assert_eq!(lazy, eager, "{n} {dtype:?}");
                assert!(body.is_end_stream());
                let iterated: Vec<Bytes> = encoded_chunks(&values, dtype, 100, fields)
                    .flat_map(|(head, data)| [Some(head), (!data.is_empty()).then_some(data)])
                    .flatten()
                    .collect();
                assert_eq!(iterated, eager, "encoded_chunks, {n} {dtype:?}");
            }
        }
    }
}
