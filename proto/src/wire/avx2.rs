//! The bf16 kernels compiled for AVX2, where the CPU has it.
//!
//! The build targets baseline x86-64, where the compiler vectorises
//! `portable.rs`'s branch-free bf16 loops with 128-bit SSE2. These are the
//! same loops (inlined, not restated) compiled a second time for AVX2's
//! 256-bit registers and chosen at run time. They are integer bit
//! operations, so both builds give the same bits; `super::equivalence`
//! checks both against the per-element reference.

use super::portable;

/// Proof that this CPU runs AVX2: only [`detect`](Self::detect) makes one.
#[derive(Clone, Copy, Debug)]
pub(super) struct Avx2(());

impl Avx2 {
    /// The AVX2 builds, if this CPU has it (checked once per process by
    /// `std`, then a load).
    #[inline]
    pub(super) fn detect() -> Option<Self> {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            return Some(Self(()));
        }
        None
    }

    /// [`portable::encode_bf16_portable`], built for AVX2.
    pub(super) fn encode_bf16(self, src: &[f32]) -> Vec<u8> {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `self` exists only if the CPU has AVX2, the function's
        // only requirement.
        unsafe {
            x86::encode_bf16(src)
        }
        #[cfg(not(target_arch = "x86_64"))]
        portable::encode_bf16_portable(src)
    }

    /// [`portable::decode_bf16_portable`], built for AVX2.
    pub(super) fn decode_bf16(self, dst: &mut [f32], src: &[u8]) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as for `encode_bf16`.
        unsafe {
            x86::decode_bf16(dst, src)
        }
        #[cfg(not(target_arch = "x86_64"))]
        portable::decode_bf16_portable(dst, src)
    }

    /// [`portable::add_bf16_portable`], built for AVX2.
    pub(super) fn add_bf16(self, dst: &mut [f32], src: &[u8]) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as for `encode_bf16`.
        unsafe {
            x86::add_bf16(dst, src)
        }
        #[cfg(not(target_arch = "x86_64"))]
        portable::add_bf16_portable(dst, src)
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::portable;

    #[target_feature(enable = "avx2")]
    pub(super) fn encode_bf16(src: &[f32]) -> Vec<u8> {
        portable::encode_bf16_portable(src)
    }

    #[target_feature(enable = "avx2")]
    pub(super) fn decode_bf16(dst: &mut [f32], src: &[u8]) {
        portable::decode_bf16_portable(dst, src)
    }

    #[target_feature(enable = "avx2")]
    pub(super) fn add_bf16(dst: &mut [f32], src: &[u8]) {
        portable::add_bf16_portable(dst, src)
    }
}
