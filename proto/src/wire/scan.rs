//! The non-finite scan: the first NaN or infinity of an encoded payload.
//!
//! An element is NaN or infinite exactly when all its exponent bits are set,
//! in all three wire formats, so the scan tests bits and never decodes.
//! Blocks of [`SCAN_BLOCK`] elements are tested with a branch-free OR the
//! compiler vectorises; only a block that holds a non-finite element is
//! searched element by element for the first one.

use super::word;

/// Elements tested per branch-free block (256 measured no faster).
const SCAN_BLOCK: usize = 64;

/// Exponent mask of an f32, as its little-endian `u32` word.
const F32_EXPONENT: u32 = 0x7F80_0000;
/// Exponent mask of an IEEE binary16, as its `u16` word.
const F16_EXPONENT: u16 = 0x7C00;
/// Exponent mask of a bfloat16, as its `u16` word.
const BF16_EXPONENT: u16 = 0x7F80;

/// Index of the first non-finite f32 in `src` (whole elements only).
pub(super) fn first_f32(src: &[u8]) -> Option<usize> {
    first::<4>(src, |e| u32::from_le_bytes(word(e)) & F32_EXPONENT == F32_EXPONENT)
}

/// Index of the first non-finite f16 in `src` (whole elements only).
pub(super) fn first_f16(src: &[u8]) -> Option<usize> {
    first::<2>(src, |e| u16::from_le_bytes(word(e)) & F16_EXPONENT == F16_EXPONENT)
}

/// Index of the first non-finite bf16 in `src` (whole elements only).
pub(super) fn first_bf16(src: &[u8]) -> Option<usize> {
    first::<2>(src, |e| u16::from_le_bytes(word(e)) & BF16_EXPONENT == BF16_EXPONENT)
}

/// Index of the first non-finite value of already decoded f32s.
pub(super) fn first_decoded(values: &[f32]) -> Option<usize> {
    let non_finite = |x: &f32| x.to_bits() & F32_EXPONENT == F32_EXPONENT;
    let mut blocks = values.chunks_exact(SCAN_BLOCK);
    for (b, block) in blocks.by_ref().enumerate() {
        if block.iter().fold(false, |any, x| any | non_finite(x)) {
            return block.iter().position(non_finite).map(|i| b * SCAN_BLOCK + i);
        }
    }
    let done = values.len() / SCAN_BLOCK * SCAN_BLOCK;
    blocks.remainder().iter().position(non_finite).map(|i| done + i)
}

/// Index of the first `SIZE`-byte element of `src` for which `non_finite`
/// holds; trailing bytes short of a whole element are ignored.
#[inline(always)]
fn first<const SIZE: usize>(src: &[u8], non_finite: impl Fn(&[u8]) -> bool + Copy) -> Option<usize> {
    let mut blocks = src.chunks_exact(SCAN_BLOCK * SIZE);
    for (b, block) in blocks.by_ref().enumerate() {
        // No early exit inside the block, so this is one vector loop.
        let any = block.chunks_exact(SIZE).fold(false, |any, e| any | non_finite(e));
        if any {
            return position::<SIZE>(block, non_finite).map(|i| b * SCAN_BLOCK + i);
        }
    }
    let done = src.len() / (SCAN_BLOCK * SIZE) * SCAN_BLOCK;
    position::<SIZE>(blocks.remainder(), non_finite).map(|i| done + i)
}

/// Element-by-element search, for one block or the tail.
#[inline(always)]
fn position<const SIZE: usize>(src: &[u8], non_finite: impl Fn(&[u8]) -> bool) -> Option<usize> {
    src.chunks_exact(SIZE).position(non_finite)
}
