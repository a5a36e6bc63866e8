//! f32 ↔ f16 conversions with the F16C instructions, where the CPU has them.
//!
//! `half`'s slice conversions use these instructions too, but in a build
//! for baseline x86-64 they check for them and make a call every 8
//! elements, which held them to 4.4-5.2 G elements/s on the benchmark
//! machine (criterion `encode/f16`, `decode/f16`); these loops issue the
//! instructions back to back: 9.7 G elements/s encoding (staged into the
//! output) and 16 G decoding there. They are the same instructions with the same rounding
//! (to nearest, ties to even), so the bits are those of `half`'s F16C path,
//! which `f16::from_f32` and `f16::to_f32` take on such a CPU;
//! `super::equivalence` checks both against the per-element reference.
//!
//! Without F16C and AVX (or off x86-64), [`F16c::detect`] says `None` and
//! the callers keep `half`'s portable conversions.

/// Proof that this CPU runs AVX and F16C: only [`detect`](Self::detect)
/// makes one, and its conversions rely on nothing else.
#[derive(Clone, Copy, Debug)]
pub(super) struct F16c(());

impl F16c {
    /// The conversions, if this CPU has the instructions (checked once per
    /// process by `std`, then a load).
    #[inline]
    pub(super) fn detect() -> Option<Self> {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx") && std::arch::is_x86_feature_detected!("f16c") {
            return Some(Self(()));
        }
        None
    }

    /// Writes the little-endian f16 bytes of `src` to `dst`
    /// (`dst.len() == 2 * src.len()`), rounding as `f16::from_f32`.
    #[inline]
    pub(super) fn encode(self, src: &[f32], dst: &mut [u8]) {
        assert_eq!(dst.len(), src.len() * 2, "f16 encode length mismatch");
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `self` exists only if the CPU has AVX and F16C, the
        // functions' only requirement.
        unsafe {
            x86::encode(src, dst)
        }
    }

    /// Writes the f32 values of the little-endian f16 bytes `src` to `dst`
    /// (`src.len() == 2 * dst.len()`), exactly as `f16::to_f32`.
    #[inline]
    pub(super) fn decode(self, src: &[u8], dst: &mut [f32]) {
        assert_eq!(src.len(), dst.len() * 2, "f16 decode length mismatch");
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as for `encode`.
        unsafe {
            x86::decode(src, dst)
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::{__m128i, __m256, _MM_FROUND_TO_NEAREST_INT, _mm256_cvtph_ps, _mm256_cvtps_ph};

    use half::f16;

    /// Eight elements per instruction; the last few as single elements,
    /// through `half` (the same instruction, one lane used).
    #[target_feature(enable = "avx,f16c")]
    pub(super) fn encode(src: &[f32], dst: &mut [u8]) {
        let (blocks, rest) = src.as_chunks::<8>();
        let (out, out_rest) = dst.as_chunks_mut::<16>();
        for (block, out) in blocks.iter().zip(out) {
            let halves: __m128i =
                _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(bytemuck::cast::<_, __m256>(*block));
            *out = bytemuck::cast(halves);
        }
        for (x, out) in rest.iter().zip(out_rest.chunks_exact_mut(2)) {
            out.copy_from_slice(&f16::from_f32(*x).to_le_bytes());
        }
    }

    /// As [`encode`], the other way.
    #[target_feature(enable = "avx,f16c")]
    pub(super) fn decode(src: &[u8], dst: &mut [f32]) {
        let (blocks, rest) = src.as_chunks::<16>();
        let (out, out_rest) = dst.as_chunks_mut::<8>();
        for (block, out) in blocks.iter().zip(out) {
            let values: __m256 = _mm256_cvtph_ps(bytemuck::cast::<_, __m128i>(*block));
            *out = bytemuck::cast(values);
        }
        for (h, out) in rest.chunks_exact(2).zip(out_rest) {
            *out = f16::from_le_bytes([h[0], h[1]]).to_f32();
        }
    }
}
