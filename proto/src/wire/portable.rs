//! The baseline kernels of the wire conversions: staged encoding, and the
//! bf16 rules restated without branches. `convert` dispatches to them on
//! CPUs without AVX2; the AVX2 build (`avx2`) inlines the same code, so
//! both give the same bits.

use super::word;

/// Elements converted per staged block: 1 KiB of f32, in L1.
pub(super) const STAGE: usize = 256;

/// Encodes `src` as `SIZE`-byte elements: `fill(block, bytes)` writes the
/// `block.len() * SIZE` wire bytes of each block of at most [`STAGE`] elements.
#[inline(always)]
pub(super) fn encode_staged<const SIZE: usize>(
    src: &[f32],
    mut fill: impl FnMut(&[f32], &mut [u8]),
) -> Vec<u8> {
    let mut out = Vec::with_capacity(src.len() * SIZE);
    let mut stage = [0u8; STAGE * 4];
    for block in src.chunks(STAGE) {
        let bytes = &mut stage[..block.len() * SIZE];
        fill(block, bytes);
        out.extend_from_slice(bytes);
    }
    out
}

/// [`encode_bf16`](super::convert::encode_bf16) as the baseline build compiles it; inlined into the AVX2 build.
#[inline(always)]
pub(super) fn encode_bf16_portable(src: &[f32]) -> Vec<u8> {
    encode_staged::<2>(src, |block, bytes| {
        for (b, x) in bytes.chunks_exact_mut(2).zip(block) {
            b.copy_from_slice(&bf16_from_f32_bits(x.to_bits()).to_le_bytes());
        }
    })
}

/// [`decode_bf16`](super::convert::decode_bf16) as the baseline build compiles it; inlined into the AVX2 build.
#[inline(always)]
pub(super) fn decode_bf16_portable(dst: &mut [f32], src: &[u8]) {
    for (d, b) in dst.iter_mut().zip(src.chunks_exact(2)) {
        *d = f32::from_bits(bf16_to_f32_bits(u16::from_le_bytes(word(b))));
    }
}

/// [`add_bf16`](super::convert::add_bf16) as the baseline build compiles it; inlined into the AVX2 build.
#[inline(always)]
pub(super) fn add_bf16_portable(dst: &mut [f32], src: &[u8]) {
    for (d, b) in dst.iter_mut().zip(src.chunks_exact(2)) {
        *d += f32::from_bits(bf16_to_f32_bits(u16::from_le_bytes(word(b))));
    }
}

/// The bfloat16 bits of the f32 whose bits are `x`, as `bf16::from_f32`:
/// round to nearest, ties to even, overflowing to ±Inf; a NaN keeps its sign
/// and top 7 payload bits and is made quiet (bit 6 set).
#[inline(always)]
fn bf16_from_f32_bits(x: u32) -> u16 {
    // Adding 0x7FFF, plus 1 if the lowest kept bit is set, carries into the
    // kept bits exactly when the dropped half is above 0x8000, or equal to it
    // and the kept part is odd. A carry out of the mantissa bumps the
    // exponent, up to Inf past the largest finite value. Only NaNs could wrap
    // around, and they take the other branch. Selecting in 32 bits and
    // narrowing once vectorises better than narrowing both sides.
    let is_nan = x & 0x7FFF_FFFF > 0x7F80_0000;
    let y = if is_nan { x | 0x0040_0000 } else { x.wrapping_add(0x7FFF + ((x >> 16) & 1)) };
    (y >> 16) as u16
}

/// The f32 bits of the bfloat16 `h`, as `bf16::to_f32`: exact, except that a
/// NaN is made quiet (bit 22 set).
#[inline(always)]
fn bf16_to_f32_bits(h: u16) -> u32 {
    let quiet = u16::from(h & 0x7FFF > 0x7F80) << 6;
    u32::from(h | quiet) << 16
}
