//! Slice kernels between f32 values and wire bytes.
//!
//! Each kernel gives exactly the bits of converting one element at a time
//! with `f32::to_le_bytes`, `half::f16::from_f32` and `half::bf16::from_f32`
//! (and their inverses), which is what the wire module did before these
//! kernels; `super::equivalence` checks it. They exist because that
//! per-element code did not vectorise.
//!
//! Encoding stages [`STAGE`] elements at a time in a stack buffer and appends
//! it to the output with one `extend_from_slice`: one capacity check per
//! block instead of per element, in safe code.

/// Elements converted per staged block: 1 KiB of f32, in L1.
const STAGE: usize = 256;

/// Encodes `src` as `SIZE`-byte elements: `fill(block, bytes)` writes the
/// `block.len() * SIZE` wire bytes of each block of at most [`STAGE`] elements.
#[inline(always)]
fn encode_staged<const SIZE: usize>(src: &[f32], mut fill: impl FnMut(&[f32], &mut [u8])) -> Vec<u8> {
    let mut out = Vec::with_capacity(src.len() * SIZE);
    let mut stage = [0u8; STAGE * 4];
    for block in src.chunks(STAGE) {
        let bytes = &mut stage[..block.len() * SIZE];
        fill(block, bytes);
        out.extend_from_slice(bytes);
    }
    out
}

/// Little-endian f32 wire bytes of `src`.
pub(super) fn encode_f32(src: &[f32]) -> Vec<u8> {
    encode_staged::<4>(src, |block, bytes| {
        for (b, x) in bytes.chunks_exact_mut(4).zip(block) {
            b.copy_from_slice(&x.to_le_bytes());
        }
    })
}
