//! A byte rope: bytes held as the pieces they arrived in (a transport's
//! read buffers), and f32 decoding straight from those pieces. Taking a
//! prefix or reading never copies more than the bytes asked for.

use std::collections::VecDeque;

use bytes::{Buf, Bytes};

use crate::wire::{self, WireDtype};

/// A byte sequence held as the pieces it arrived in; taking a prefix or
/// reading it never copies more than the bytes asked for.
#[derive(Debug, Clone, Default)]
pub struct Segments {
    parts: VecDeque<Bytes>,
    len: usize,
}

impl Segments {
    /// One piece.
    pub fn from_bytes(bytes: Bytes) -> Self {
        let mut s = Self::default();
        s.push(bytes);
        s
    }

    /// Appends a piece.
    pub fn push(&mut self, bytes: Bytes) {
        if !bytes.is_empty() {
            self.len += bytes.len();
            self.parts.push_back(bytes);
        }
    }

    /// Total bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The pieces, in order.
    pub fn parts(&self) -> impl Iterator<Item = &[u8]> {
        self.parts.iter().map(|b| b.as_ref())
    }

    /// Removes and returns the first `n` bytes (at most all), sharing the pieces.
    pub fn split_to(&mut self, n: usize) -> Segments {
        let mut head = Segments::default();
        let mut want = n.min(self.len);
        while want > 0 {
            let Some(front) = self.parts.front_mut() else { break };
            if front.len() <= want {
                want -= front.len();
                let whole = self.parts.pop_front().unwrap_or_default();
                self.len -= whole.len();
                head.push(whole);
            } else {
                let piece = front.split_to(want);
                self.len -= want;
                head.push(piece);
                want = 0;
            }
        }
        head
    }

    /// The first `N` bytes, if there are that many, without consuming them.
    pub fn peek<const N: usize>(&self) -> Option<[u8; N]> {
        if self.len < N {
            return None;
        }
        let mut out = [0u8; N];
        let mut filled = 0;
        for part in &self.parts {
            let n = part.len().min(N - filled);
            out[filled..filled + n].copy_from_slice(&part[..n]);
            filled += n;
            if filled == N {
                break;
            }
        }
        Some(out)
    }
}

impl Buf for Segments {
    fn remaining(&self) -> usize {
        self.len
    }

    fn chunk(&self) -> &[u8] {
        self.parts.front().map(|b| b.as_ref()).unwrap_or_default()
    }

    fn advance(&mut self, mut cnt: usize) {
        assert!(cnt <= self.len, "advance past the end of Segments");
        self.len -= cnt;
        while cnt > 0 {
            let Some(front) = self.parts.front_mut() else { break };
            if front.len() <= cnt {
                cnt -= front.len();
                self.parts.pop_front();
            } else {
                front.advance(cnt);
                cnt = 0;
            }
        }
    }
}

/// Decodes `data` (exactly `dst.len()` elements of `dtype`, in any
/// pieces) into `dst`. An element split across two pieces is joined in a
/// 4-byte scratch; everything else is decoded straight from the pieces.
pub fn decode_segments_into(dst: &mut [f32], data: &Segments, dtype: WireDtype) {
    debug_assert_eq!(data.len(), dst.len() * dtype.size());
    let mut next = 0;
    for_each_run(data, dtype.size(), |run| {
        let n = run.len() / dtype.size();
        wire::decode_into(&mut dst[next..next + n], run, dtype);
        next += n;
    });
}

/// Decodes `data` (whole elements of `dtype`, in any pieces) onto the end
/// of `dst`, writing each new element once: f32 bytes are copied as they
/// are, and f16/bf16 are decoded through a small block on the stack
/// ([`wire::decode_append`]), so nothing is zeroed first.
pub fn decode_segments_append(dst: &mut Vec<f32>, data: &Segments, dtype: WireDtype) {
    dst.reserve(data.len() / dtype.size());
    for_each_run(data, dtype.size(), |run| match dtype {
        WireDtype::F32 => append_f32(dst, run),
        WireDtype::F16 | WireDtype::Bf16 => wire::decode_append(dst, run, dtype),
    });
}

/// Appends little-endian f32 `bytes` (whole elements) to `dst`.
fn append_f32(dst: &mut Vec<f32>, bytes: &[u8]) {
    #[cfg(target_endian = "little")]
    if let Ok(values) = bytemuck::try_cast_slice::<u8, f32>(bytes) {
        dst.extend_from_slice(values);
        return;
    }
    // Unaligned (where the transport's frames put them): through a small
    // block on the stack, which measured about 15% faster than extending
    // element by element and as fast as an aligned copy.
    let mut blocks = bytes.chunks_exact(64);
    for block in &mut blocks {
        let mut out = [0f32; 16];
        for (o, b) in out.iter_mut().zip(block.chunks_exact(4)) {
            *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        }
        dst.extend_from_slice(&out);
    }
    let rest = blocks.remainder();
    dst.extend(rest.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])));
}

/// Calls `f` on consecutive runs of whole `size`-byte elements of `data`,
/// in order: each piece's whole elements as one run, and an element split
/// across pieces, joined in a scratch, as a run of its own.
fn for_each_run(data: &Segments, size: usize, mut f: impl FnMut(&[u8])) {
    let mut carry = [0u8; 4];
    let mut carried = 0;
    for mut part in data.parts() {
        if carried > 0 {
            let n = (size - carried).min(part.len());
            carry[carried..carried + n].copy_from_slice(&part[..n]);
            carried += n;
            part = &part[n..];
            if carried < size {
                continue;
            }
            f(&carry[..size]);
        }
        let whole = part.len() / size * size;
        if whole > 0 {
            f(&part[..whole]);
        }
        let tail = &part[whole..];
        carry[..tail.len()].copy_from_slice(tail);
        carried = tail.len();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both decoders, into a slice and onto a buffer's end, give what
    /// `wire::decode_into` of the whole payload gives, wherever it is cut.
    #[test]
    fn decodes_elements_split_across_pieces() {
        let values: Vec<f32> = (0..37).map(|i| i as f32 * 1.25 - 2.0).collect();
        // The payload at an aligned address and at an odd one, as it can
        // sit in a transport's read buffer.
        for (dtype, shift) in
            [WireDtype::F32, WireDtype::F16, WireDtype::Bf16].into_iter().flat_map(|d| [(d, 0), (d, 1)])
        {
            let mut raw = vec![0u8; shift];
            raw.extend_from_slice(&wire::encode(&values, dtype));
            let bytes = Bytes::from(raw).slice(shift..);
            let mut expected = vec![0.0; values.len()];
            wire::decode_into(&mut expected, &bytes, dtype);
            for cut_a in 0..bytes.len() {
                for cut_b in cut_a..bytes.len() {
                    let mut s = Segments::default();
                    s.push(bytes.slice(..cut_a));
                    s.push(bytes.slice(cut_a..cut_b));
                    s.push(bytes.slice(cut_b..));
                    let mut got = vec![f32::NAN; values.len()];
                    decode_segments_into(&mut got, &s, dtype);
                    assert_eq!(got, expected, "{dtype:?} shift {shift} cuts {cut_a} {cut_b}");
                    // Appended after what a buffer already holds; the cuts
                    // put pieces at every alignment.
                    let mut appended = vec![7.5];
                    decode_segments_append(&mut appended, &s, dtype);
                    assert_eq!(appended[0], 7.5);
                    assert_eq!(
                        appended[1..],
                        expected,
                        "{dtype:?} shift {shift} cuts {cut_a} {cut_b}, appended"
                    );
                }
            }
        }
    }

    #[test]
    fn split_to_shares_pieces() {
        let a = Bytes::from_static(b"abcdef");
        let mut s = Segments::default();
        s.push(a.slice(..2));
        s.push(a.slice(2..));
        let head = s.split_to(3);
        assert_eq!(head.parts().collect::<Vec<_>>(), vec![&b"ab"[..], &b"c"[..]]);
        assert_eq!(s.parts().collect::<Vec<_>>(), vec![&b"def"[..]]);
        assert_eq!(s.parts().next().unwrap().as_ptr(), a[3..].as_ptr());
    }
}
