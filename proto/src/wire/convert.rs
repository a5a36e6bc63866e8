//! Slice kernels between f32 values and wire bytes.
//!
//! Each kernel gives exactly the bits of converting one element at a time
//! with `f32::to_le_bytes`, `half::f16::from_f32` and `half::bf16::from_f32`
//! (and their inverses), which is what the wire module did before these
//! kernels; `super::equivalence` checks it. They exist because that
//! per-element code did not vectorise.
//!
//! - Encoding stages [`STAGE`] elements at a time in a stack buffer and
//!   appends it to the output with one `extend_from_slice`: one capacity
//!   check per block instead of per element, in safe code.
//! - f16 goes through the F16C instructions directly where the CPU has
//!   them ([`F16c`]), and otherwise through `half`'s slice conversions.
//!   Both use the same instructions, or the same software fallback, as
//!   `f16::from_f32` and `f16::to_f32`, so the bits are the same.
//! - `half` has no vectorised bf16 conversion, so `portable.rs`'s
//!   `bf16_from_f32_bits` and `bf16_to_f32_bits` restate its per-element rules without branches,
//!   which the compiler vectorises.

use half::f16;
use half::slice::HalfFloatSliceExt;

use super::avx2::Avx2;
use super::f16c::F16c;
use super::portable::{STAGE, add_bf16_portable, decode_bf16_portable, encode_bf16_portable, encode_staged};
use super::{WireDtype, word};

/// Little-endian f32 wire bytes of `src`.
pub(super) fn encode_f32(src: &[f32]) -> Vec<u8> {
    encode_staged::<4>(src, |block, bytes| {
        for (b, x) in bytes.chunks_exact_mut(4).zip(block) {
            b.copy_from_slice(&x.to_le_bytes());
        }
    })
}

/// Little-endian IEEE binary16 wire bytes of `src`, rounded as `f16::from_f32`.
pub(super) fn encode_f16(src: &[f32]) -> Vec<u8> {
    match F16c::detect() {
        // Staged, not zeroed then written: in a process that reuses its
        // memory, zeroing is a pass of its own (5-6% of a 64 MiB f16 step).
        Some(f16c) => encode_staged::<2>(src, |block, bytes| f16c.encode(block, bytes)),
        None => encode_f16_portable(src),
    }
}

/// [`encode_f16`] through `half`'s slice conversion, for CPUs without F16C.
pub(super) fn encode_f16_portable(src: &[f32]) -> Vec<u8> {
    let mut halves = [f16::ZERO; STAGE];
    encode_staged::<2>(src, |block, bytes| {
        let halves = &mut halves[..block.len()];
        halves.convert_from_f32_slice(block);
        // The halves' bits as they are in memory, which is little-endian
        // here: one copy instead of one per element (13% faster measured).
        #[cfg(target_endian = "little")]
        bytes.copy_from_slice(bytemuck::cast_slice(halves.reinterpret_cast()));
        #[cfg(not(target_endian = "little"))]
        for (b, h) in bytes.chunks_exact_mut(2).zip(halves.iter()) {
            b.copy_from_slice(&h.to_le_bytes());
        }
    })
}

/// Little-endian bfloat16 wire bytes of `src`, rounded as `bf16::from_f32`.
pub(super) fn encode_bf16(src: &[f32]) -> Vec<u8> {
    match Avx2::detect() {
        Some(avx2) => avx2.encode_bf16(src),
        None => encode_bf16_portable(src),
    }
}

/// Decodes the f16 payload `src` into `dst` (`src.len() == 2 * dst.len()`).
pub(super) fn decode_f16(dst: &mut [f32], src: &[u8]) {
    match F16c::detect() {
        Some(f16c) => f16c.decode(src, dst),
        None => decode_f16_portable(dst, src),
    }
}

/// [`decode_f16`] through `half`'s slice conversion, for CPUs without F16C.
pub(super) fn decode_f16_portable(dst: &mut [f32], src: &[u8]) {
    let mut halves = [f16::ZERO; STAGE];
    for (d, s) in dst.chunks_mut(STAGE).zip(src.chunks(STAGE * 2)) {
        let halves = &mut halves[..d.len()];
        for (h, b) in halves.iter_mut().zip(s.chunks_exact(2)) {
            *h = f16::from_le_bytes(word(b));
        }
        halves.convert_to_f32_slice(d);
    }
}

/// `dst[i] += ` element `i` of the f16 payload `src` (`src.len() == 2 * dst.len()`).
pub(super) fn add_f16(dst: &mut [f32], src: &[u8]) {
    let mut decoded = [0f32; STAGE];
    for (d, s) in dst.chunks_mut(STAGE).zip(src.chunks(STAGE * 2)) {
        let decoded = &mut decoded[..d.len()];
        decode_f16(decoded, s);
        for (d, x) in d.iter_mut().zip(decoded.iter()) {
            *d += x;
        }
    }
}

/// Appends the decoded `src` (whole `dtype` elements) to `dst`, through a
/// staged block on the stack: each new element is written once, where
/// growing `dst` with zeros first and decoding into them writes it twice
/// (that zeroing was 4% of a 64 MiB f16 step on each side).
pub(super) fn decode_append(dst: &mut Vec<f32>, src: &[u8], dtype: WireDtype) {
    let mut stage = [0f32; STAGE];
    dst.reserve(src.len() / dtype.size());
    for block in src.chunks(STAGE * dtype.size()) {
        let decoded = &mut stage[..block.len() / dtype.size()];
        super::decode_into(decoded, block, dtype);
        dst.extend_from_slice(decoded);
    }
}

/// Decodes the bf16 payload `src` into `dst` (`src.len() == 2 * dst.len()`).
pub(super) fn decode_bf16(dst: &mut [f32], src: &[u8]) {
    match Avx2::detect() {
        Some(avx2) => avx2.decode_bf16(dst, src),
        None => decode_bf16_portable(dst, src),
    }
}

/// `dst[i] += ` element `i` of the bf16 payload `src` (`src.len() == 2 * dst.len()`).
pub(super) fn add_bf16(dst: &mut [f32], src: &[u8]) {
    match Avx2::detect() {
        Some(avx2) => avx2.add_bf16(dst, src),
        None => add_bf16_portable(dst, src),
    }
}
