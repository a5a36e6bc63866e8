//! Wire encoding of tensor payloads: little-endian f32, f16 or bf16 bytes.
//!
//! The master copy of a tensor is always f32; f16 and bf16 only shrink what
//! travels. Decoding never builds an intermediate `Vec<f32>`: callers decode
//! straight into their destination ([`decode_into`], [`add_into`]).
//!
//! No kernel here works element by element with per-element branches or
//! capacity checks: the conversions (`wire/convert.rs`) and the non-finite
//! scan (`wire/scan.rs`) run as loops the compiler vectorises, and give the
//! same bits as the per-element code they replaced (`wire/equivalence.rs`).

use bytes::Bytes;

use crate::pb;

mod avx2;
mod convert;
mod f16c;
mod portable;
mod scan;

/// Element encoding of a payload.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum WireDtype {
    /// 4-byte IEEE binary32, little-endian (exact).
    #[default]
    F32,
    /// 2-byte IEEE binary16, little-endian (lossy, range +-65504).
    F16,
    /// 2-byte bfloat16, little-endian (lossy, f32's range).
    Bf16,
}

impl WireDtype {
    /// Bytes per encoded element.
    pub const fn size(self) -> usize {
        match self {
            WireDtype::F32 => 4,
            WireDtype::F16 | WireDtype::Bf16 => 2,
        }
    }

    /// Lower-case name used in messages and flags.
    pub const fn name(self) -> &'static str {
        match self {
            WireDtype::F32 => "f32",
            WireDtype::F16 => "f16",
            WireDtype::Bf16 => "bf16",
        }
    }
}

impl std::fmt::Display for WireDtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for WireDtype {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "f32" => Ok(WireDtype::F32),
            "f16" => Ok(WireDtype::F16),
            "bf16" => Ok(WireDtype::Bf16),
            other => Err(format!("unknown wire dtype {other:?}; expected f32, f16 or bf16")),
        }
    }
}

impl From<pb::WireDtype> for WireDtype {
    fn from(d: pb::WireDtype) -> Self {
        match d {
            pb::WireDtype::F32 => WireDtype::F32,
            pb::WireDtype::F16 => WireDtype::F16,
            pb::WireDtype::Bf16 => WireDtype::Bf16,
        }
    }
}

impl From<WireDtype> for pb::WireDtype {
    fn from(d: WireDtype) -> Self {
        match d {
            WireDtype::F32 => pb::WireDtype::F32,
            WireDtype::F16 => pb::WireDtype::F16,
            WireDtype::Bf16 => pb::WireDtype::Bf16,
        }
    }
}

impl WireDtype {
    /// The dtype of a raw protobuf enum value; `None` for a value this build does not know.
    pub fn from_i32(v: i32) -> Option<Self> {
        pb::WireDtype::try_from(v).ok().map(Into::into)
    }
}

/// Encodes `src` in `dtype`.
///
/// f32 is a copy of the bytes. f16 and bf16 give exactly the bits of
/// `half::f16::from_f32` and `half::bf16::from_f32` on each element: round to
/// nearest, ties to even, overflow to ±Inf, NaN kept as a quiet NaN with its
/// sign. The work is done in vectorisable blocks, not element by element.
pub fn encode(src: &[f32], dtype: WireDtype) -> Bytes {
    match dtype {
        WireDtype::F32 => Bytes::from(convert::encode_f32(src)),
        WireDtype::F16 => Bytes::from(convert::encode_f16(src)),
        WireDtype::Bf16 => Bytes::from(convert::encode_bf16(src)),
    }
}

/// Decodes `src` into `dst`, which must hold exactly `src.len() / dtype.size()` elements.
///
/// Exact: every f16 and bf16 value is an f32. The bits are those of
/// `half::f16::to_f32` and `half::bf16::to_f32` on each element (a NaN stays
/// NaN with its sign and payload, made quiet).
///
/// # Panics
/// If the lengths disagree (a caller bug: payload lengths are validated first).
pub fn decode_into(dst: &mut [f32], src: &[u8], dtype: WireDtype) {
    assert_eq!(dst.len() * dtype.size(), src.len(), "decode_into length mismatch");
    match dtype {
        WireDtype::F32 => {
            for (d, s) in dst.iter_mut().zip(src.chunks_exact(4)) {
                *d = f32::from_le_bytes([s[0], s[1], s[2], s[3]]);
            }
        }
        WireDtype::F16 => convert::decode_f16(dst, src),
        WireDtype::Bf16 => convert::decode_bf16(dst, src),
    }
}

/// Appends the decoded `src` to `dst`: the values [`decode_into`] gives,
/// each written once (no zeroing pass first).
///
/// # Panics
/// If `src` holds a partial element (a caller bug: chunks are validated first).
pub fn decode_append(dst: &mut Vec<f32>, src: &[u8], dtype: WireDtype) {
    assert!(src.len().is_multiple_of(dtype.size()), "decode_append: partial element");
    convert::decode_append(dst, src, dtype);
}

/// Adds the decoded `src` into `dst` element-wise: `dst[i] += src[i]`.
///
/// Each element is decoded as by [`decode_into`], then added in f32. When
/// both operands of an addition are NaN, which of the two payloads the sum
/// carries is the compiler's choice, as for any f32 `+`.
///
/// # Panics
/// If the lengths disagree.
pub fn add_into(dst: &mut [f32], src: &[u8], dtype: WireDtype) {
    assert_eq!(dst.len() * dtype.size(), src.len(), "add_into length mismatch");
    match dtype {
        WireDtype::F32 => {
            for (d, s) in dst.iter_mut().zip(src.chunks_exact(4)) {
                *d += f32::from_le_bytes([s[0], s[1], s[2], s[3]]);
            }
        }
        WireDtype::F16 => convert::add_f16(dst, src),
        WireDtype::Bf16 => convert::add_bf16(dst, src),
    }
}

/// The `N` bytes of one element of a payload (`e.len()` must be `N`), for
/// `from_le_bytes`.
///
/// A copy, not `[e[0], e[1]]`: assembled byte by byte, the compiler may load
/// the bytes one at a time instead of as vectors (measured: the bf16 decode
/// loop at 11 GiB/s, the f16 non-finite scan, which drops the low byte it
/// does not test, at 5.7 GiB/s).
#[inline(always)]
fn word<const N: usize>(e: &[u8]) -> [u8; N] {
    let mut w = [0; N];
    w.copy_from_slice(e);
    w
}

/// Index of the first NaN or infinite element of an encoded payload, if any.
///
/// Trailing bytes short of a whole element are ignored. The answer is that of
/// decoding each element and testing [`f32::is_finite`], but no element is
/// decoded: the exponent bits are tested directly, a block at a time.
pub fn first_non_finite(src: &[u8], dtype: WireDtype) -> Option<usize> {
    match dtype {
        WireDtype::F32 => scan::first_f32(src),
        WireDtype::F16 => scan::first_f16(src),
        WireDtype::Bf16 => scan::first_bf16(src),
    }
}

/// Index of the first NaN or infinity among already decoded values (the
/// same exponent-bit scan as [`first_non_finite`]).
pub fn first_non_finite_f32(values: &[f32]) -> Option<usize> {
    scan::first_decoded(values)
}

/// Any owner of f32 values viewed as their little-endian bytes, without a
/// copy: the bytes keep `owner` alive and see exactly `owner.as_ref()`.
#[cfg(target_endian = "little")]
pub fn shared_f32_bytes<T: AsRef<[f32]> + Send + 'static>(owner: T) -> Bytes {
    struct Owner<T>(T);
    impl<T: AsRef<[f32]>> AsRef<[u8]> for Owner<T> {
        fn as_ref(&self) -> &[u8] {
            bytemuck::cast_slice(self.0.as_ref())
        }
    }
    Bytes::from_owner(Owner(owner))
}

#[cfg(test)]
mod equivalence;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f32_round_trip_is_exact() {
        let v = [1.5f32, -0.0, f32::MAX, f32::MIN_POSITIVE, 3.25e-7];
        let bytes = encode(&v, WireDtype::F32);
        assert_eq!(&bytes[..4], &1.5f32.to_le_bytes());
        let mut out = [0f32; 5];
        decode_into(&mut out, &bytes, WireDtype::F32);
        assert_eq!(out.map(f32::to_bits), v.map(f32::to_bits));
    }

    #[test]
    fn half_dtypes_round_to_nearest() {
        let v = [1.0f32, 0.1, -2.5, 1000.0];
        for dtype in [WireDtype::F16, WireDtype::Bf16] {
            let bytes = encode(&v, dtype);
            assert_eq!(bytes.len(), 8);
            let mut out = [0f32; 4];
            decode_into(&mut out, &bytes, dtype);
            for (a, b) in v.iter().zip(out) {
                assert!((a - b).abs() <= a.abs() * 0.008, "{dtype}: {a} -> {b}");
            }
        }
        // 0.1 is not representable: bf16 keeps 8 bits of mantissa.
        let mut out = [0f32; 1];
        decode_into(&mut out, &encode(&[0.1], WireDtype::Bf16), WireDtype::Bf16);
        assert_eq!(out[0], 0.100_097_656);
    }

    #[test]
    fn add_into_accumulates() {
        let mut acc = [1.0f32, 2.0, 3.0];
        add_into(&mut acc, &encode(&[0.5, -2.0, 1.0], WireDtype::F32), WireDtype::F32);
        assert_eq!(acc, [1.5, 0.0, 4.0]);
        add_into(&mut acc, &encode(&[0.5, 0.5, 0.5], WireDtype::F16), WireDtype::F16);
        assert_eq!(acc, [2.0, 0.5, 4.5]);
    }

    #[test]
    fn finds_non_finite() {
        assert_eq!(first_non_finite(&encode(&[1.0, 2.0], WireDtype::F32), WireDtype::F32), None);
        assert_eq!(first_non_finite(&encode(&[1.0, f32::NAN], WireDtype::F32), WireDtype::F32), Some(1));
        assert_eq!(first_non_finite(&encode(&[f32::INFINITY], WireDtype::Bf16), WireDtype::Bf16), Some(0));
        // 1e6 overflows f16 to +inf on encode.
        assert_eq!(first_non_finite(&encode(&[0.0, 1e6], WireDtype::F16), WireDtype::F16), Some(1));
    }

    #[test]
    fn decoded_scan_finds_the_first_non_finite_value() {
        for len in [0usize, 1, 63, 64, 65, 200] {
            for at in 0..len {
                for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, f32::from_bits(0x7F80_0001)] {
                    let mut v: Vec<f32> = (0..len).map(|i| i as f32 - 3.5).collect();
                    v[at] = bad;
                    assert_eq!(first_non_finite_f32(&v), Some(at), "len {len}, at {at}");
                }
            }
            let finite: Vec<f32> = (0..len).map(|i| f32::MAX - i as f32).collect();
            assert_eq!(first_non_finite_f32(&finite), None);
        }
    }

    #[test]
    fn shared_view_is_little_endian() {
        let b = shared_f32_bytes(vec![1.0f32, 2.0]);
        assert_eq!(&b[..], &encode(&[1.0, 2.0], WireDtype::F32)[..]);
    }
}
