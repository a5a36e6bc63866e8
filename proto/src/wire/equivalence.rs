//! The wire kernels against the per-element reference they replace.
//!
//! [`reference`] is the element-at-a-time code the wire module shipped
//! before its kernels were vectorised (issue 7). Every test compares bits,
//! not values, so NaN payloads, signed zeros and subnormals must match too.

use half::{bf16, f16};
use proptest::prelude::*;

use super::{WireDtype, add_into, decode_into, encode, first_non_finite};

const DTYPES: [WireDtype; 3] = [WireDtype::F32, WireDtype::F16, WireDtype::Bf16];

/// Lengths around every block size the kernels use (64-element scan blocks,
/// 256-element staging) and a few larger ones.
const LENGTHS: [usize; 16] = [0, 1, 2, 3, 7, 63, 64, 65, 127, 255, 256, 257, 511, 1000, 2048, 2051];

/// The per-element implementation the kernels must match bit for bit.
mod reference {
    use super::*;

    pub(super) fn encode(src: &[f32], dtype: WireDtype) -> Vec<u8> {
        let mut out = Vec::new();
        for x in src {
            match dtype {
                WireDtype::F32 => out.extend_from_slice(&x.to_le_bytes()),
                WireDtype::F16 => out.extend_from_slice(&f16::from_f32(*x).to_le_bytes()),
                WireDtype::Bf16 => out.extend_from_slice(&bf16::from_f32(*x).to_le_bytes()),
            }
        }
        out
    }

    pub(super) fn element(src: &[u8], i: usize, dtype: WireDtype) -> f32 {
        match dtype {
            WireDtype::F32 => {
                let b = &src[i * 4..i * 4 + 4];
                f32::from_le_bytes([b[0], b[1], b[2], b[3]])
            }
            WireDtype::F16 => f16::from_le_bytes([src[i * 2], src[i * 2 + 1]]).to_f32(),
            WireDtype::Bf16 => bf16::from_le_bytes([src[i * 2], src[i * 2 + 1]]).to_f32(),
        }
    }

    pub(super) fn decode(src: &[u8], dtype: WireDtype) -> Vec<f32> {
        (0..src.len() / dtype.size()).map(|i| element(src, i, dtype)).collect()
    }

    pub(super) fn add_into(dst: &mut [f32], src: &[u8], dtype: WireDtype) {
        for (i, d) in dst.iter_mut().enumerate() {
            *d += element(src, i, dtype);
        }
    }

    pub(super) fn first_non_finite(src: &[u8], dtype: WireDtype) -> Option<usize> {
        (0..src.len() / dtype.size()).find(|&i| !element(src, i, dtype).is_finite())
    }
}

/// Asserts `got` and `want` are the same bits, naming the first differences.
fn assert_same_bits(got: &[f32], want: &[f32], what: &str) {
    assert_same_sums(got, want, None, what);
}

/// Like [`assert_same_bits`], for sums `start[i] + addend[i]` if `inputs` is
/// `Some((start, addend))`: where both inputs are NaN, either input's quiet
/// NaN is accepted. Which one x86 returns depends on the operand order the
/// compiler picks (`fadd` is commutative to LLVM), not on the kernel: the
/// per-element reference compiled here and in the library disagree on it.
fn assert_same_sums(got: &[f32], want: &[f32], inputs: Option<(&[f32], &[f32])>, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let quiet = |x: f32| x.to_bits() | 0x0040_0000;
    let acceptable = |i: usize| match inputs {
        Some((start, addend)) if start[i].is_nan() && addend[i].is_nan() => {
            let either = [quiet(start[i]), quiet(addend[i])];
            either.contains(&got[i].to_bits()) && either.contains(&want[i].to_bits())
        }
        _ => got[i].to_bits() == want[i].to_bits(),
    };
    let diffs: Vec<String> = (0..got.len())
        .filter(|&i| !acceptable(i))
        .take(8)
        .map(|i| format!("[{i}] {:#010x} != {:#010x}", got[i].to_bits(), want[i].to_bits()))
        .collect();
    assert!(diffs.is_empty(), "{what}: {}", diffs.join(", "));
}

/// Checks encode, decode_into and add_into on `values` against the reference.
fn check_round_trip(values: &[f32], dtype: WireDtype) {
    let wire = encode(values, dtype);
    let expected = reference::encode(values, dtype);
    if let Some(i) = (0..values.len()).find(|&i| {
        let s = dtype.size();
        wire[i * s..(i + 1) * s] != expected[i * s..(i + 1) * s]
    }) {
        panic!("{dtype} encode of {:#010x} differs", values[i].to_bits());
    }
    assert_eq!(wire.len(), expected.len(), "{dtype} encode length");

    let mut decoded = vec![0f32; values.len()];
    decode_into(&mut decoded, &wire, dtype);
    assert_same_bits(&decoded, &reference::decode(&wire, dtype), &format!("{dtype} decode"));

    // Finite accumulators; NaN and infinite ones are covered separately.
    let start: Vec<f32> = (0..values.len()).map(|i| (i % 13) as f32 * 0.25 - 1.5).collect();
    let mut sum = start.clone();
    add_into(&mut sum, &wire, dtype);
    let mut expected_sum = start.clone();
    reference::add_into(&mut expected_sum, &wire, dtype);
    let addend = reference::decode(&wire, dtype);
    assert_same_sums(&sum, &expected_sum, Some((&start, &addend)), &format!("{dtype} add_into"));
}

/// f32 bit patterns covering every rounding case of both half formats: all
/// values of the top 19 bits (sign, exponent and the 10 mantissa bits f16
/// keeps, so every bf16 value and rounding position) with the low 13 bits
/// exact zero, just above zero, just below and at the f16 halfway point, just
/// above it, and all ones. This includes ±0, subnormals, values that round up
/// to ±Inf, ±Inf, and quiet and signalling NaNs with many payloads.
fn sweep() -> Vec<f32> {
    const LOW: [u32; 6] = [0, 1, 0x0FFF, 0x1000, 0x1001, 0x1FFF];
    (0..1u32 << 19).flat_map(|high| LOW.map(|low| f32::from_bits(high << 13 | low))).collect()
}

#[test]
fn encode_decode_add_match_reference_on_sweep() {
    let values = sweep();
    for dtype in DTYPES {
        check_round_trip(&values, dtype);
    }
}

#[test]
fn half_decode_and_add_match_reference_on_every_pattern() {
    let wire: Vec<u8> = (0..=u16::MAX).flat_map(u16::to_le_bytes).collect();
    for dtype in [WireDtype::F16, WireDtype::Bf16] {
        let mut decoded = vec![0f32; 1 << 16];
        decode_into(&mut decoded, &wire, dtype);
        assert_same_bits(&decoded, &reference::decode(&wire, dtype), &format!("{dtype} decode"));

        // Accumulators include NaN (with payloads), ±Inf, ±0 and subnormals.
        let start: Vec<f32> = (0..1u32 << 16).map(|i| f32::from_bits(i.wrapping_mul(0x9E37_79B9))).collect();
        let mut sum = start.clone();
        add_into(&mut sum, &wire, dtype);
        let mut expected = start.clone();
        reference::add_into(&mut expected, &wire, dtype);
        let addend = reference::decode(&wire, dtype);
        assert_same_sums(&sum, &expected, Some((&start, &addend)), &format!("{dtype} add_into"));
    }
}

#[test]
fn all_lengths_match_reference() {
    for n in LENGTHS {
        let values: Vec<f32> = (0..n as u32).map(|i| f32::from_bits(i.wrapping_mul(0x2545_F491))).collect();
        for dtype in DTYPES {
            check_round_trip(&values, dtype);
            let wire = encode(&values, dtype);
            assert_eq!(first_non_finite(&wire, dtype), reference::first_non_finite(&wire, dtype));
        }
    }
}

/// The tests above take the F16C and AVX2 kernels where the CPU has them;
/// the portable builds other CPUs take match too.
#[test]
fn portable_kernels_match_reference_on_sweep_and_every_pattern() {
    use super::convert::*;
    use super::portable::{add_bf16_portable, decode_bf16_portable, encode_bf16_portable};
    let mut values = sweep();
    values.truncate(values.len() - 5); // a length that is no multiple of a block
    let every: Vec<u8> = (0..=u16::MAX).flat_map(u16::to_le_bytes).collect();
    type Kernels = (fn(&[f32]) -> Vec<u8>, fn(&mut [f32], &[u8]), Option<fn(&mut [f32], &[u8])>);
    let kernels: [(WireDtype, Kernels); 2] = [
        (WireDtype::F16, (encode_f16_portable, decode_f16_portable, None)),
        (WireDtype::Bf16, (encode_bf16_portable, decode_bf16_portable, Some(add_bf16_portable))),
    ];
    for (dtype, (encode, decode, add)) in kernels {
        assert!(encode(&values) == reference::encode(&values, dtype), "portable {dtype} encode");
        let mut decoded = vec![0f32; 1 << 16];
        decode(&mut decoded, &every);
        assert_same_bits(&decoded, &reference::decode(&every, dtype), &format!("portable {dtype} decode"));
        if let Some(add) = add {
            let start: Vec<f32> =
                (0..1u32 << 16).map(|i| f32::from_bits(i.wrapping_mul(0x9E37_79B9))).collect();
            let mut sum = start.clone();
            add(&mut sum, &every);
            let mut expected = start.clone();
            reference::add_into(&mut expected, &every, dtype);
            assert_same_sums(&sum, &expected, Some((&start, &decoded)), &format!("portable {dtype} add"));
        }
    }
}

/// The f16 and bf16 encodings of all 2^32 f32 bit patterns. Too slow for a
/// debug build; `cargo test --release -p ps-proto -- --ignored` runs it
/// (about 16 s).
#[test]
#[ignore]
fn half_encode_matches_reference_on_every_f32() {
    let mut chunk = Vec::with_capacity(1 << 20);
    for high in 0..1u32 << 12 {
        chunk.clear();
        chunk.extend((0..1u32 << 20).map(|low| f32::from_bits(high << 20 | low)));
        for dtype in [WireDtype::F16, WireDtype::Bf16] {
            let wire = encode(&chunk, dtype);
            assert!(wire[..] == reference::encode(&chunk, dtype)[..], "{dtype}, block {high:#x}");
        }
    }
}

/// A finite element of `dtype`, as its wire word.
fn finite_word(dtype: WireDtype) -> BoxedStrategy<u32> {
    match dtype {
        // Clearing one exponent bit leaves exponent != all ones.
        WireDtype::F32 => any::<u32>().prop_map(|w| w & !0x4000_0000).boxed(),
        WireDtype::F16 => any::<u16>().prop_map(|w| u32::from(w & !0x4000)).boxed(),
        WireDtype::Bf16 => any::<u16>().prop_map(|w| u32::from(w & !0x4000)).boxed(),
    }
}

/// A NaN or infinity of `dtype` (any sign and payload), as its wire word.
fn special_word(dtype: WireDtype) -> BoxedStrategy<u32> {
    let (exponent, mantissa) = match dtype {
        WireDtype::F32 => (0x7F80_0000u32, 0x007F_FFFFu32),
        WireDtype::F16 => (0x7C00, 0x03FF),
        WireDtype::Bf16 => (0x7F80, 0x007F),
    };
    let sign = if dtype == WireDtype::F32 { 0x8000_0000 } else { 0x8000 };
    prop_oneof![
        Just(exponent),                                 // +Inf
        Just(exponent | sign),                          // -Inf
        (1..=mantissa).prop_map(move |m| exponent | m), // NaN, any payload
        (1..=mantissa).prop_map(move |m| exponent | m | sign),
    ]
    .boxed()
}

/// A payload of mostly finite elements with occasional NaN/Inf, plus 0 to
/// size - 1 trailing bytes (not a whole element, so ignored by the scan).
fn payload() -> impl Strategy<Value = (WireDtype, Vec<u8>)> {
    prop::sample::select(DTYPES.to_vec()).prop_flat_map(|dtype| {
        let word = prop_oneof![300 => finite_word(dtype), 1 => special_word(dtype)];
        (
            Just(dtype),
            prop::collection::vec(word, 0..1500),
            prop::collection::vec(any::<u8>(), 0..dtype.size()),
        )
            .prop_map(|(dtype, words, tail)| {
                let mut bytes: Vec<u8> = Vec::new();
                for w in words {
                    bytes.extend_from_slice(&w.to_le_bytes()[..dtype.size()]);
                }
                bytes.extend_from_slice(&tail);
                (dtype, bytes)
            })
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn scan_matches_reference((dtype, bytes) in payload()) {
        prop_assert_eq!(first_non_finite(&bytes, dtype), reference::first_non_finite(&bytes, dtype));
    }

    #[test]
    fn kernels_match_reference_on_random_bits(words in prop::collection::vec(any::<u32>(), 0..1100)) {
        let values: Vec<f32> = words.iter().map(|&w| f32::from_bits(w)).collect();
        for dtype in DTYPES {
            check_round_trip(&values, dtype);
            let wire = encode(&values, dtype);
            prop_assert_eq!(first_non_finite(&wire, dtype), reference::first_non_finite(&wire, dtype));
        }
    }
}

#[test]
fn scan_finds_each_position() {
    for dtype in DTYPES {
        for n in LENGTHS {
            for at in 0..n {
                let mut values = vec![1.0f32; n];
                values[at] = if at % 2 == 0 { f32::NAN } else { f32::NEG_INFINITY };
                // A second special after the first must not be reported.
                if at + 70 < n {
                    values[at + 70] = f32::INFINITY;
                }
                let wire = encode(&values, dtype);
                assert_eq!(first_non_finite(&wire, dtype), Some(at), "{dtype}, n {n}, at {at}");
            }
            assert_eq!(first_non_finite(&encode(&vec![1.0; n], dtype), dtype), None);
        }
    }
}
