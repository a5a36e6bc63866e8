//! Tensor placement: a pure function from (tensor name, element count, shard
//! count, split threshold) to the element ranges each shard holds.
//!
//! Small tensors live whole on the shard chosen by a stable hash of their
//! name, so many small tensors spread over the shards. Tensors with at least
//! `split_threshold` elements are cut into `num_shards` contiguous ranges of
//! near-equal length (the first `len % num_shards` ranges one element longer),
//! so no single shard becomes hot for a large tensor.

/// One contiguous element range of a tensor and the shard that holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Part {
    /// Shard id holding this range.
    pub shard: u32,
    /// First element of the range.
    pub offset: u64,
    /// Number of elements in the range (never zero).
    pub len: u64,
}

/// 64-bit FNV-1a: stable across platforms, processes and releases.
///
/// `std`'s `DefaultHasher` is explicitly not stable across releases, so it
/// cannot decide placement that servers and workers must agree on.
pub fn stable_hash(name: &str) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    name.bytes().fold(OFFSET, |h, b| (h ^ u64::from(b)).wrapping_mul(PRIME))
}

/// The parts of a tensor of `len` elements over `num_shards` shards, in
/// element order. Parts are disjoint, non-empty and cover `0..len` exactly.
///
/// ```
/// use ps_proto::placement::{place, Part};
/// // Large: split evenly, remainder to the first shards.
/// assert_eq!(place("w", 10, 3, 4), vec![
///     Part { shard: 0, offset: 0, len: 4 },
///     Part { shard: 1, offset: 4, len: 3 },
///     Part { shard: 2, offset: 7, len: 3 },
/// ]);
/// // Small: whole, on one shard chosen by name.
/// assert_eq!(place("b", 3, 3, 4).len(), 1);
/// ```
///
/// # Panics
/// If `num_shards` is zero.
pub fn place(name: &str, len: u64, num_shards: u32, split_threshold: u64) -> Vec<Part> {
    assert!(num_shards > 0, "a cluster has at least one shard");
    if len == 0 {
        return Vec::new();
    }
    if len < split_threshold.max(1) || num_shards == 1 {
        let shard = (stable_hash(name) % u64::from(num_shards)) as u32;
        return vec![Part { shard, offset: 0, len }];
    }
    let n = u64::from(num_shards).min(len);
    let (base, extra) = (len / n, len % n);
    let mut offset = 0;
    (0..n)
        .map(|i| {
            let part_len = base + u64::from(i < extra);
            let part = Part { shard: i as u32, offset, len: part_len };
            offset += part_len;
            part
        })
        .collect()
}

/// The part of a tensor that `shard` holds, if any.
pub fn part_on_shard(
    name: &str,
    len: u64,
    num_shards: u32,
    split_threshold: u64,
    shard: u32,
) -> Option<Part> {
    place(name, len, num_shards, split_threshold).into_iter().find(|p| p.shard == shard)
}

/// The ranges a sync push to `part` goes in when its shard takes such
/// pushes in pieces of `piece_len` elements (see `DeclareReply.piece_len`):
/// consecutive and in order, each `piece_len` long but the last. `part`
/// itself when `piece_len` is 0 or at least `part.len`.
///
/// ```
/// use ps_proto::placement::{Part, pieces};
/// let part = Part { shard: 1, offset: 10, len: 5 };
/// assert_eq!(pieces(part, 2), vec![
///     Part { shard: 1, offset: 10, len: 2 },
///     Part { shard: 1, offset: 12, len: 2 },
///     Part { shard: 1, offset: 14, len: 1 },
/// ]);
/// assert_eq!(pieces(part, 0), vec![part]);
/// ```
pub fn pieces(part: Part, piece_len: u64) -> Vec<Part> {
    if piece_len == 0 || piece_len >= part.len {
        return vec![part];
    }
    (0..part.len.div_ceil(piece_len))
        .map(|i| {
            let start = i * piece_len;
            Part { shard: part.shard, offset: part.offset + start, len: piece_len.min(part.len - start) }
        })
        .collect()
}

/// The index in [`pieces`]`(part, piece_len)` of the piece that is exactly
/// `offset..offset + len`, if one is (the whole part is piece 0 only when
/// it is the only piece).
pub fn piece_index(part: Part, piece_len: u64, offset: u64, len: u64) -> Option<usize> {
    if piece_len == 0 || piece_len >= part.len {
        return ((offset, len) == (part.offset, part.len)).then_some(0);
    }
    let start = offset.checked_sub(part.offset)?;
    if !start.is_multiple_of(piece_len) || start >= part.len {
        return None;
    }
    (len == piece_len.min(part.len - start)).then_some((start / piece_len) as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn hash_is_pinned() {
        // Changing these values changes where existing jobs' tensors live.
        assert_eq!(stable_hash(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(stable_hash("a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn single_shard_holds_everything() {
        assert_eq!(place("w", 100, 1, 10), vec![Part { shard: 0, offset: 0, len: 100 }]);
    }

    #[test]
    fn small_tensors_spread_over_shards() {
        let mut used = [false; 4];
        for i in 0..64 {
            let parts = place(&format!("layer{i}.bias"), 10, 4, 1000);
            assert_eq!(parts.len(), 1);
            used[parts[0].shard as usize] = true;
        }
        assert!(used.iter().all(|u| *u), "64 names hashed onto fewer than 4 shards: {used:?}");
    }

    #[test]
    fn large_tensor_uses_every_shard() {
        let parts = place("embedding", 100_000_000, 4, 1 << 20);
        assert_eq!(parts.len(), 4);
        assert!(parts.iter().all(|p| p.len == 25_000_000));
    }

    #[test]
    fn fewer_elements_than_shards() {
        let parts = place("t", 2, 4, 1);
        assert_eq!(parts, vec![Part { shard: 0, offset: 0, len: 1 }, Part { shard: 1, offset: 1, len: 1 }]);
    }

    proptest! {
        #[test]
        fn parts_partition_the_tensor(name in "[a-z.]{0,12}", len in 0u64..10_000, shards in 1u32..9, threshold in 0u64..2_000) {
            let parts = place(&name, len, shards, threshold);
            let mut next = 0;
            for p in &parts {
                prop_assert_eq!(p.offset, next);
                prop_assert!(p.len > 0);
                prop_assert!(p.shard < shards);
                next += p.len;
            }
            prop_assert_eq!(next, len);
            let max = parts.iter().map(|p| p.len).max().unwrap_or(0);
            let min = parts.iter().map(|p| p.len).min().unwrap_or(0);
            if parts.len() > 1 { prop_assert!(max - min <= 1); }
            prop_assert_eq!(parts, place(&name, len, shards, threshold));
        }

        #[test]
        fn pieces_partition_the_part_and_are_found_again(offset in 0u64..1_000, len in 1u64..5_000, piece_len in 0u64..700) {
            let part = Part { shard: 2, offset, len };
            let ps = pieces(part, piece_len);
            let mut next = offset;
            for (i, p) in ps.iter().enumerate() {
                prop_assert_eq!((p.shard, p.offset), (2, next));
                prop_assert!(p.len > 0);
                if i + 1 < ps.len() { prop_assert_eq!(p.len, piece_len); }
                prop_assert_eq!(piece_index(part, piece_len, p.offset, p.len), Some(i));
                next += p.len;
            }
            prop_assert_eq!(next, offset + len);
            // Nothing else is a piece: not the whole part (when split), nor a
            // piece shifted by less than a piece or cut short.
            if ps.len() > 1 {
                prop_assert_eq!(piece_index(part, piece_len, offset, len), None);
            }
            if piece_len != 1 {
                prop_assert_eq!(piece_index(part, piece_len, offset + 1, ps[0].len), None);
            }
            if ps[0].len > 1 {
                prop_assert_eq!(piece_index(part, piece_len, offset, ps[0].len - 1), None);
            }
        }
    }
}
