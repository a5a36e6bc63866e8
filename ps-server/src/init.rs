//! Seeded tensor initializers whose values do not depend on sharding.
//!
//! Element `i` of a tensor is a function of the seed and `i` alone: each
//! shard positions a ChaCha8 stream at the word of its first element, so a
//! tensor split over any number of shards holds the same values as a whole one.

use rand::RngCore;
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::SeedableRng;

/// How a tensor's initial values are chosen.
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub enum Init {
    /// All elements zero.
    #[default]
    Zeros,
    /// All elements equal to the value.
    Constant(f32),
    /// Uniform in `[low, high)`.
    Uniform {
        /// Lower bound.
        low: f32,
        /// Upper bound (exclusive).
        high: f32,
        /// Seed of the generator.
        seed: u64,
    },
    /// Normal with the given mean and standard deviation (Box-Muller).
    Normal {
        /// Mean.
        mean: f32,
        /// Standard deviation.
        std: f32,
        /// Seed of the generator.
        seed: u64,
    },
}

fn unit(word: u32) -> f32 {
    // 24 random bits: exactly representable, uniform in [0, 1).
    (word >> 8) as f32 * (1.0 / (1u32 << 24) as f32)
}

impl Init {
    /// The values of elements `offset..offset + len`.
    pub fn fill(&self, offset: u64, len: usize) -> Vec<f32> {
        match *self {
            Init::Zeros => vec![0.0; len],
            Init::Constant(v) => vec![v; len],
            Init::Uniform { low, high, seed } => {
                let mut rng = ChaCha8Rng::seed_from_u64(seed);
                rng.set_word_pos(u128::from(offset));
                (0..len).map(|_| low + (high - low) * unit(rng.next_u32())).collect()
            }
            Init::Normal { mean, std, seed } => {
                let mut rng = ChaCha8Rng::seed_from_u64(seed);
                rng.set_word_pos(2 * u128::from(offset));
                (0..len)
                    .map(|_| {
                        let u1 = 1.0 - unit(rng.next_u32()); // (0, 1]: ln is finite
                        let u2 = unit(rng.next_u32());
                        let r = (-2.0 * u1.ln()).sqrt();
                        mean + std * r * (std::f32::consts::TAU * u2).cos()
                    })
                    .collect()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_do_not_depend_on_split() {
        for init in
            [Init::Uniform { low: -1.0, high: 1.0, seed: 7 }, Init::Normal { mean: 0.0, std: 1.0, seed: 7 }]
        {
            let whole = init.fill(0, 100);
            let mut parts = init.fill(0, 37);
            parts.extend(init.fill(37, 63));
            assert_eq!(whole, parts);
        }
    }

    #[test]
    fn uniform_in_range_and_seeded() {
        let a = Init::Uniform { low: 2.0, high: 3.0, seed: 1 }.fill(0, 1000);
        assert!(a.iter().all(|x| (2.0..3.0).contains(x)));
        assert_ne!(a, Init::Uniform { low: 2.0, high: 3.0, seed: 2 }.fill(0, 1000));
        let mean = a.iter().sum::<f32>() / 1000.0;
        assert!((mean - 2.5).abs() < 0.05, "mean {mean}");
    }

    #[test]
    fn normal_moments() {
        let a = Init::Normal { mean: 1.0, std: 2.0, seed: 3 }.fill(0, 20_000);
        let mean = a.iter().sum::<f32>() / a.len() as f32;
        let var = a.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / a.len() as f32;
        assert!((mean - 1.0).abs() < 0.05, "mean {mean}");
        assert!((var.sqrt() - 2.0).abs() < 0.05, "std {}", var.sqrt());
    }
}
