//! Chunking of payloads and validation of a received chunk sequence.
//!
//! A payload travels as consecutive chunks, each tagged with its byte offset.
//! [`Reassembly`] accepts a sequence only if the chunks are in order, without
//! gaps or overlaps, hold whole elements, and add up to exactly the expected
//! number of bytes.

use bytes::Bytes;

use crate::rope::Segments;
use crate::wire::WireDtype;

/// Default largest chunk: 1 MiB, one HTTP/2 frame (the shard's frame size),
/// below gRPC's default 4 MB message limit. See [`chunk_bytes_for`].
pub const DEFAULT_CHUNK_BYTES: usize = 1 << 20;

/// Smallest chunk [`chunk_bytes_for`] picks (unless the largest allowed is
/// smaller): below it, per-message costs show.
pub const MIN_CHUNK_BYTES: usize = 512 << 10;

/// The chunk size for a payload of `payload_bytes`: about an eighth of the
/// payload, at least [`MIN_CHUNK_BYTES`] and never more than
/// `max_chunk_bytes`.
///
/// A receiver decodes a chunk once all of it has arrived, so smaller chunks
/// let it decode one while the next is on the wire, and larger ones cost
/// fewer messages. On loopback, 4 MiB parts moved fastest in 512 KiB
/// chunks and 64 MiB parts in 1 MiB ones.
///
/// ```
/// use ps_proto::chunk::chunk_bytes_for;
/// assert_eq!(chunk_bytes_for(4 << 20, 1 << 20), 512 << 10);
/// assert_eq!(chunk_bytes_for(64 << 20, 1 << 20), 1 << 20);
/// assert_eq!(chunk_bytes_for(64 << 20, 4 << 10), 4 << 10);
/// ```
pub fn chunk_bytes_for(payload_bytes: usize, max_chunk_bytes: usize) -> usize {
    (payload_bytes / 8).max(MIN_CHUNK_BYTES).min(max_chunk_bytes).max(1)
}

/// Splits `payload` into `(byte_offset, chunk)` pieces of at most `chunk_bytes`
/// bytes (rounded down to whole elements of `elem_size`). Never copies.
/// An empty payload yields one empty chunk, so every payload has a first chunk.
pub fn split(payload: &Bytes, chunk_bytes: usize, elem_size: usize) -> Vec<(u64, Bytes)> {
    let step = (chunk_bytes / elem_size).max(1) * elem_size;
    if payload.is_empty() {
        return vec![(0, Bytes::new())];
    }
    (0..payload.len())
        .step_by(step)
        .map(|start| (start as u64, payload.slice(start..(start + step).min(payload.len()))))
        .collect()
}

/// Why a chunk sequence was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    /// A chunk starts after the end of the bytes received so far.
    #[error("gap in chunk sequence: expected a chunk at byte offset {expected}, got offset {got}")]
    Gap {
        /// Where the next chunk had to start.
        expected: u64,
        /// Where it started.
        got: u64,
    },
    /// A chunk starts before the end of the bytes received so far.
    #[error("overlapping chunk: expected a chunk at byte offset {expected}, got offset {got}")]
    Overlap {
        /// Where the next chunk had to start.
        expected: u64,
        /// Where it started.
        got: u64,
    },
    /// A chunk runs past the declared total.
    #[error("chunk at byte offset {offset} with {len} bytes runs past the payload's total of {total} bytes")]
    TooLong {
        /// The chunk's byte offset.
        offset: u64,
        /// The chunk's length in bytes.
        len: u64,
        /// The payload's declared length in bytes.
        total: u64,
    },
    /// A chunk holds a partial element.
    #[error("chunk at byte offset {offset} has {len} bytes, not a multiple of the {elem_size}-byte element")]
    PartialElement {
        /// The chunk's byte offset.
        offset: u64,
        /// The chunk's length in bytes.
        len: u64,
        /// Bytes per element of the wire dtype.
        elem_size: usize,
    },
    /// The stream ended before the declared total arrived.
    #[error("payload ended after {got} of {total} bytes")]
    Short {
        /// Bytes received.
        got: u64,
        /// The payload's declared length in bytes.
        total: u64,
    },
}

/// Where a chunk sequence stands: chunks in order, without gaps or
/// overlaps, of whole elements, adding up to exactly the part. Both sides
/// check with it: [`Reassembly`] for pushes on a shard, a worker for pull
/// replies (which it decodes into its own buffer).
#[derive(Debug)]
pub struct ChunkSequence {
    /// Bytes received so far.
    received: u64,
    /// Bytes of the whole part.
    total: u64,
    /// Bytes per element on the wire.
    size: u64,
}

impl ChunkSequence {
    /// Expects `len` elements of `elem_size` bytes each.
    pub fn new(len: u64, elem_size: usize) -> Self {
        Self { received: 0, total: len * elem_size as u64, size: elem_size as u64 }
    }

    /// Bytes of the whole part.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Accepts the chunk of `len` bytes at byte `offset` and returns the
    /// range of the part's elements it holds, or says why the sequence is
    /// malformed; a rejected chunk changes nothing.
    pub fn accept(&mut self, offset: u64, len: u64) -> Result<std::ops::Range<usize>, ChunkError> {
        let expected = self.received;
        if offset > expected {
            return Err(ChunkError::Gap { expected, got: offset });
        }
        if offset < expected {
            return Err(ChunkError::Overlap { expected, got: offset });
        }
        if offset + len > self.total {
            return Err(ChunkError::TooLong { offset, len, total: self.total });
        }
        if !len.is_multiple_of(self.size) {
            return Err(ChunkError::PartialElement { offset, len, elem_size: self.size as usize });
        }
        self.received += len;
        Ok((offset / self.size) as usize..(self.received / self.size) as usize)
    }

    /// Whether exactly the whole part arrived.
    pub fn finish(&self) -> Result<(), ChunkError> {
        if self.received != self.total {
            return Err(ChunkError::Short { got: self.received, total: self.total });
        }
        Ok(())
    }
}

/// Checks a chunk sequence against its expected length and decodes each
/// chunk, as it arrives, into one f32 buffer of exactly the part's length.
/// Nothing of the received chunks is kept: each `Bytes` a transport hands
/// over keeps its whole read buffer alive, which measured 2.4 times the
/// payload for 1 MiB chunks, and the decoded buffer is what the shard adds
/// or applies, so it needs no second pass and no second copy. The first
/// NaN or infinity is found as each chunk is decoded, while the chunk is
/// still in cache, so checking a gradient takes no pass of its own either.
#[derive(Debug)]
pub struct Reassembly {
    len: u64,
    dtype: WireDtype,
    sequence: ChunkSequence,
    values: Vec<f32>,
    first_non_finite: Option<usize>,
}

impl Reassembly {
    /// Expects exactly `len` elements encoded as `dtype`. Nothing is
    /// allocated until the first chunk with data arrives.
    pub fn new(len: u64, dtype: WireDtype) -> Self {
        Self::with_buffer(len, dtype, Vec::new())
    }

    /// Like [`new`](Self::new), decoding into `buffer` (emptied first),
    /// which allocates nothing if it has room for `len` elements.
    pub fn with_buffer(len: u64, dtype: WireDtype, mut buffer: Vec<f32>) -> Self {
        buffer.clear();
        Self {
            len,
            dtype,
            sequence: ChunkSequence::new(len, dtype.size()),
            values: buffer,
            first_non_finite: None,
        }
    }

    /// The index and value of the first NaN or infinity among the elements
    /// received so far, if any.
    pub fn first_non_finite(&self) -> Option<(usize, f32)> {
        self.first_non_finite.map(|i| (i, self.values[i]))
    }

    /// Accepts the next chunk (`offset` in bytes of the encoded payload),
    /// or says why the sequence is malformed. A rejected chunk leaves the
    /// reassembly unchanged.
    pub fn push(&mut self, offset: u64, data: Bytes) -> Result<(), ChunkError> {
        self.push_segments(offset, &Segments::from_bytes(data))
    }

    /// Like [`push`](Self::push), for a chunk still in the pieces it
    /// arrived in (elements may straddle pieces).
    pub fn push_segments(&mut self, offset: u64, data: &Segments) -> Result<(), ChunkError> {
        let len = data.len() as u64;
        self.sequence.accept(offset, len)?;
        if len > 0 {
            if self.values.capacity() < self.len as usize {
                self.values.reserve_exact(self.len as usize);
            }
            // Chunks arrive in order, so each is decoded onto the end of the
            // buffer: every element is written once, and no pass zeroes
            // the part first.
            let start = self.values.len();
            crate::rope::decode_segments_append(&mut self.values, data, self.dtype);
            if self.first_non_finite.is_none() {
                self.first_non_finite =
                    crate::wire::first_non_finite_f32(&self.values[start..]).map(|i| start + i);
            }
        }
        Ok(())
    }

    /// The decoded elements, once exactly all of them have arrived.
    pub fn finish(self) -> Result<Vec<f32>, ChunkError> {
        self.sequence.finish()?;
        Ok(self.values)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(n: usize) -> Bytes {
        Bytes::from((0..n).map(|i| i as u8).collect::<Vec<_>>())
    }

    #[test]
    fn split_is_zero_copy_and_element_aligned() {
        let p = payload(20);
        let parts = split(&p, 9, 4);
        assert_eq!(
            parts.iter().map(|(o, c)| (*o, c.len())).collect::<Vec<_>>(),
            vec![(0, 8), (8, 8), (16, 4)]
        );
        assert_eq!(parts[1].1.as_ptr(), p[8..].as_ptr());
    }

    fn floats(n: usize) -> Vec<f32> {
        (0..n).map(|i| i as f32 * 0.5 - 3.0).collect()
    }

    #[test]
    fn split_and_reassemble_round_trip_in_every_dtype() {
        let v = floats(1000);
        for dtype in [WireDtype::F32, WireDtype::F16, WireDtype::Bf16] {
            let p = crate::wire::encode(&v, dtype);
            let mut r = Reassembly::new(v.len() as u64, dtype);
            for (off, c) in split(&p, 1000, dtype.size()) {
                r.push(off, c).unwrap();
            }
            let mut expected = vec![0.0; v.len()];
            crate::wire::decode_into(&mut expected, &p, dtype);
            assert_eq!(r.finish().unwrap(), expected, "{dtype:?}");
        }
    }

    #[test]
    fn rejects_malformed_sequences() {
        let mut r = Reassembly::new(4, WireDtype::F32);
        r.push(0, payload(8)).unwrap();
        assert_eq!(r.push(12, payload(4)), Err(ChunkError::Gap { expected: 8, got: 12 }));
        assert_eq!(r.push(4, payload(4)), Err(ChunkError::Overlap { expected: 8, got: 4 }));
        assert_eq!(r.push(8, payload(12)), Err(ChunkError::TooLong { offset: 8, len: 12, total: 16 }));
        assert_eq!(
            r.push(8, payload(3)),
            Err(ChunkError::PartialElement { offset: 8, len: 3, elem_size: 4 })
        );
        r.push(8, payload(4)).unwrap();
        assert_eq!(r.finish(), Err(ChunkError::Short { got: 12, total: 16 }));
    }

    #[test]
    fn reassembly_keeps_no_received_buffer_alive() {
        let received = Bytes::from(vec![0u8; 1 << 16]);
        let mut r = Reassembly::new(2, WireDtype::F32);
        r.push(0, received.slice(0..8)).unwrap();
        assert_eq!(r.finish().unwrap(), vec![0.0; 2]);
        assert!(received.is_unique(), "the 64 KiB buffer the chunk came in is still referenced");
    }

    #[test]
    fn finds_the_first_non_finite_element_across_chunks() {
        for (index, bad) in [
            (0, f32::NAN),
            (5, f32::INFINITY),
            (6, f32::NEG_INFINITY),
            (255, f32::NAN),
            (256, f32::INFINITY),
            (257, f32::NAN),
            (999, f32::NAN),
        ] {
            let mut v = floats(1000);
            v[index] = bad;
            v[index.max(1) + 1..].iter_mut().step_by(7).for_each(|x| *x = f32::NAN);
            for dtype in [WireDtype::F32, WireDtype::F16, WireDtype::Bf16] {
                let mut r = Reassembly::new(v.len() as u64, dtype);
                for (off, c) in split(&crate::wire::encode(&v, dtype), 24, dtype.size()) {
                    r.push(off, c).unwrap();
                }
                let (i, x) = r.first_non_finite().unwrap();
                assert_eq!(i, index, "{dtype:?}");
                assert_eq!(x.is_nan(), bad.is_nan(), "{dtype:?}");
            }
        }
        let mut r = Reassembly::new(300, WireDtype::F32);
        r.push(0, crate::wire::encode(&[1.0; 300], WireDtype::F32)).unwrap();
        assert_eq!(r.first_non_finite(), None);
    }

    #[test]
    fn empty_payload_has_one_empty_chunk() {
        let parts = split(&Bytes::new(), 16, 4);
        assert_eq!(parts.len(), 1);
        let mut r = Reassembly::new(0, WireDtype::F32);
        r.push(0, parts[0].1.clone()).unwrap();
        assert!(r.finish().unwrap().is_empty());
    }

    /// The cases of `rejects_malformed_sequences` on the sequence alone, with
    /// the same errors (a worker checks pull replies with it).
    #[test]
    fn chunk_cursor_rejects_what_reassembly_rejects() {
        let mut c = ChunkSequence::new(4, 4);
        assert_eq!(c.accept(0, 8), Ok(0..2));
        assert_eq!(c.accept(12, 4), Err(ChunkError::Gap { expected: 8, got: 12 }));
        assert_eq!(c.accept(4, 4), Err(ChunkError::Overlap { expected: 8, got: 4 }));
        assert_eq!(c.accept(8, 12), Err(ChunkError::TooLong { offset: 8, len: 12, total: 16 }));
        assert_eq!(c.accept(8, 3), Err(ChunkError::PartialElement { offset: 8, len: 3, elem_size: 4 }));
        assert_eq!(c.accept(8, 4), Ok(2..3));
        assert_eq!(c.finish(), Err(ChunkError::Short { got: 12, total: 16 }));
        assert_eq!(c.accept(12, 4), Ok(3..4));
        assert_eq!(c.finish(), Ok(()));
    }

    #[test]
    fn an_empty_part_is_one_empty_chunk() {
        let mut c = ChunkSequence::new(0, 2);
        assert_eq!(c.accept(0, 0), Ok(0..0));
        assert_eq!(c.finish(), Ok(()));
    }
}
