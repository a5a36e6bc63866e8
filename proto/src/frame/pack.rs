//! Packing small frames of a body together. A `Step` or `PullMany` of
//! many small parts would otherwise be written two frames per part, each
//! its own write and, on the other side, its own wake-up; packed, a burst
//! of parts is one write.

use bytes::{Bytes, BytesMut};

/// Frames shorter than this are copied into a packed frame; longer ones go
/// out as they are, without a copy.
pub const PACKED_FRAME_BYTES: usize = 64 << 10;

/// The most bytes one packed frame holds.
pub const MAX_PACKED_BYTES: usize = 256 << 10;

/// Joins consecutive small frames (under [`PACKED_FRAME_BYTES`]) into
/// frames of at most [`MAX_PACKED_BYTES`]; the bytes come out in the order
/// they went in, so the message stream they carry is unchanged.
#[derive(Debug, Default)]
pub struct Packer {
    packed: BytesMut,
}

impl Packer {
    /// Takes the next `frame` and returns what is ready to send, in order:
    /// nothing while small frames are being packed; the packed frame once
    /// full; or, before a large frame, the packed frame and then `frame`.
    pub fn push(&mut self, frame: Bytes) -> impl Iterator<Item = Bytes> + use<> {
        let mut out = [None, None];
        if frame.len() >= PACKED_FRAME_BYTES {
            out = [self.flush(), Some(frame)];
        } else {
            if self.packed.len() + frame.len() > MAX_PACKED_BYTES {
                out[0] = self.flush();
            }
            self.packed.extend_from_slice(&frame);
        }
        out.into_iter().flatten()
    }

    /// What is packed and not yet sent, if anything: the frame to send
    /// before waiting for more, or at the end of the body.
    pub fn flush(&mut self) -> Option<Bytes> {
        (!self.packed.is_empty()).then(|| self.packed.split().freeze())
    }

    /// Whether nothing is packed.
    pub fn is_empty(&self) -> bool {
        self.packed.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(frames: &[usize]) -> (Vec<usize>, Vec<u8>) {
        let mut packer = Packer::default();
        let mut out = Vec::new();
        for (i, len) in frames.iter().enumerate() {
            out.extend(packer.push(Bytes::from(vec![i as u8; *len])));
        }
        out.extend(packer.flush());
        (out.iter().map(Bytes::len).collect(), out.concat())
    }

    /// Small frames are joined, large ones pass alone, a pack never exceeds
    /// its bound, and the bytes keep their order.
    #[test]
    fn packs_small_frames_in_order_within_the_bound() {
        let small = PACKED_FRAME_BYTES - 1;
        let frames = [10, 20, PACKED_FRAME_BYTES, 30, small, small, 5];
        let (lens, bytes) = run(&frames);
        assert_eq!(lens, vec![30, PACKED_FRAME_BYTES, 30 + 2 * small + 5]);
        let expected: Vec<u8> =
            frames.iter().enumerate().flat_map(|(i, len)| std::iter::repeat_n(i as u8, *len)).collect();
        assert_eq!(bytes, expected);

        let many = vec![small; 40];
        let (lens, _) = run(&many);
        assert!(lens.iter().all(|l| *l <= MAX_PACKED_BYTES), "{lens:?}");
        assert_eq!(lens.iter().sum::<usize>(), 40 * small);
        assert_eq!(lens.len(), 40usize.div_ceil(MAX_PACKED_BYTES / small));
    }
}
