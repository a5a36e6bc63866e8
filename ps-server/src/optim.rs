//! Server-side optimizers: element-wise update kernels with per-tensor state.
//!
//! A step is applied block by block: call [`Optimizer::begin_step`] once, then
//! [`Optimizer::update`] for consecutive or arbitrary element ranges. The
//! kernels are fused single loops over plain slices, which the compiler
//! vectorises; they never allocate. The state lives in shared arrays
//! ([`crate::array`]) and the kernels see it as slices.

use ndarray::ArcArray1;
pub use ps_proto::OptimizerConfig;

use crate::array;

/// An optimizer and its state for one tensor part of `len` elements.
#[derive(Clone, Debug)]
pub struct Optimizer {
    config: OptimizerConfig,
    /// Momentum (SGD), first moment (Adam) or accumulator (AdaGrad); empty
    /// when unused. Shared copy-on-write, so a checkpoint's copy is free.
    slot_a: ArcArray1<f32>,
    /// Second moment (Adam); empty otherwise.
    slot_b: ArcArray1<f32>,
    /// Steps begun so far.
    step: u64,
    /// Adam's bias corrections for the current step: `1 - β^t`.
    correction: (f32, f32),
}

impl Optimizer {
    /// Fresh state (zeros, or AdaGrad's initial accumulator) for `len` elements.
    pub fn new(config: OptimizerConfig, len: usize) -> Self {
        let (slot_a, slot_b) = match config {
            OptimizerConfig::Sgd { momentum: 0.0, .. } => (Vec::new(), Vec::new()),
            OptimizerConfig::Sgd { .. } => (vec![0.0; len], Vec::new()),
            OptimizerConfig::Adam { .. } => (vec![0.0; len], vec![0.0; len]),
            OptimizerConfig::AdaGrad { initial_accumulator, .. } => {
                (vec![initial_accumulator; len], Vec::new())
            }
        };
        Self {
            config,
            slot_a: array::shared(slot_a),
            slot_b: array::shared(slot_b),
            step: 0,
            correction: (1.0, 1.0),
        }
    }

    /// Names of the state slots `config` keeps for a part, in order.
    pub fn slot_names(config: &OptimizerConfig) -> &'static [&'static str] {
        match config {
            OptimizerConfig::Sgd { momentum: 0.0, .. } => &[],
            OptimizerConfig::Sgd { .. } => &["momentum"],
            OptimizerConfig::Adam { .. } => &["adam_m", "adam_v"],
            OptimizerConfig::AdaGrad { .. } => &["adagrad_accumulator"],
        }
    }

    /// State restored from a checkpoint: `slots` must hold exactly the slots
    /// of [`slot_names`](Self::slot_names), in order, of `len` elements each.
    pub fn restore(
        config: OptimizerConfig,
        len: usize,
        steps: u64,
        slots: Vec<Vec<f32>>,
    ) -> Result<Self, String> {
        let names = Self::slot_names(&config);
        if slots.len() != names.len() {
            return Err(format!(
                "{} keeps {} state slots {names:?}; got {}",
                config.name(),
                names.len(),
                slots.len()
            ));
        }
        if let Some((i, s)) = slots.iter().enumerate().find(|(_, s)| s.len() != len) {
            return Err(format!("state slot {:?} has {} elements; expected {len}", names[i], s.len()));
        }
        let mut slots = slots.into_iter();
        let mut opt = Self::new(config, 0);
        opt.slot_a = array::shared(slots.next().unwrap_or_default());
        opt.slot_b = array::shared(slots.next().unwrap_or_default());
        opt.step = steps;
        if steps > 0 {
            // Recompute the current step's bias corrections.
            opt.step -= 1;
            opt.begin_step();
        }
        Ok(opt)
    }

    /// The hyper-parameters.
    pub fn config(&self) -> &OptimizerConfig {
        &self.config
    }

    /// Steps begun so far.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// Bytes of optimizer state held.
    pub fn state_bytes(&self) -> usize {
        (self.slot_a.len() + self.slot_b.len()) * 4
    }

    /// Named state slots (for inspection and checkpoints), in the order of
    /// [`slot_names`](Self::slot_names).
    pub fn slots(&self) -> Vec<(&'static str, &[f32])> {
        Self::slot_names(&self.config)
            .iter()
            .zip([array::as_slice(&self.slot_a), array::as_slice(&self.slot_b)])
            .map(|(n, s)| (*n, s))
            .collect()
    }

    /// The state slots as shared arrays (not copied), in the order of
    /// [`slot_names`](Self::slot_names).
    pub fn shared_slots(&self) -> Vec<ArcArray1<f32>> {
        [&self.slot_a, &self.slot_b].into_iter().take(Self::slot_names(&self.config).len()).cloned().collect()
    }

    /// Starts a new step; every element should then be updated once.
    pub fn begin_step(&mut self) {
        self.step += 1;
        if let OptimizerConfig::Adam { beta1, beta2, .. } = self.config {
            let t = i32::try_from(self.step).unwrap_or(i32::MAX);
            self.correction = (1.0 - beta1.powi(t), 1.0 - beta2.powi(t));
        }
    }

    /// Updates `params` (elements `offset..offset + params.len()` of the part)
    /// with `scale * grad`. Parts of at least [`PARALLEL_ELEMENTS`] elements
    /// are updated on several threads; every element's arithmetic is the
    /// same either way, so the result is bit-identical.
    ///
    /// # Panics
    /// If `grad` and `params` differ in length or the range is out of bounds.
    pub fn update(&mut self, offset: usize, params: &mut [f32], grad: &[f32], scale: f32) {
        assert_eq!(params.len(), grad.len(), "optimizer update length mismatch");
        let range = offset..offset + params.len();
        let kernel = Kernel { config: self.config, correction: self.correction, scale };
        let (a, b): (&mut [f32], &mut [f32]) = match Self::slot_names(&self.config).len() {
            0 => (&mut [], &mut []),
            1 => (&mut array::make_mut(&mut self.slot_a)[range], &mut []),
            _ => (
                &mut array::make_mut(&mut self.slot_a)[range.clone()],
                &mut array::make_mut(&mut self.slot_b)[range],
            ),
        };
        let threads = parallelism(params.len());
        if threads <= 1 {
            return kernel.run(params, grad, a, b);
        }
        let per = params.len().div_ceil(threads);
        std::thread::scope(|scope| {
            let mut pieces = split4(params, grad, a, b, per);
            let last = pieces.pop();
            for (p, g, a, b) in pieces {
                scope.spawn(move || kernel.run(p, g, a, b));
            }
            if let Some((p, g, a, b)) = last {
                kernel.run(p, g, a, b);
            }
        });
    }

    /// One whole step on all of `params`.
    pub fn step(&mut self, params: &mut [f32], grad: &[f32], scale: f32) {
        self.begin_step();
        self.update(0, params, grad, scale);
    }
}

/// Parts with at least this many elements are updated on several threads:
/// below it, starting a thread costs more than it saves.
pub const PARALLEL_ELEMENTS: usize = 1 << 22;

/// Threads to update `len` elements on: one per core, each with at least
/// half of [`PARALLEL_ELEMENTS`].
fn parallelism(len: usize) -> usize {
    if len < PARALLEL_ELEMENTS {
        return 1;
    }
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    cores.min(len / (PARALLEL_ELEMENTS / 2)).max(1)
}

/// One thread's share of an update: parameters, gradient, state slots.
type Piece<'a> = (&'a mut [f32], &'a [f32], &'a mut [f32], &'a mut [f32]);

/// Splits four aligned slices (the state slices may be empty) into pieces of `per` elements.
fn split4<'a>(
    mut p: &'a mut [f32],
    mut g: &'a [f32],
    mut a: &'a mut [f32],
    mut b: &'a mut [f32],
    per: usize,
) -> Vec<Piece<'a>> {
    let mut pieces = Vec::new();
    while !p.is_empty() {
        let n = per.min(p.len());
        let (na, nb) = (n.min(a.len()), n.min(b.len()));
        let (p0, p1) = std::mem::take(&mut p).split_at_mut(n);
        let (g0, g1) = g.split_at(n);
        let (a0, a1) = std::mem::take(&mut a).split_at_mut(na);
        let (b0, b1) = std::mem::take(&mut b).split_at_mut(nb);
        pieces.push((p0, g0, a0, b0));
        (p, g, a, b) = (p1, g1, a1, b1);
    }
    pieces
}

/// One optimizer step's elementwise arithmetic, independent of where the
/// state lives, so any split of the elements gives the same bits.
#[derive(Clone, Copy)]
struct Kernel {
    config: OptimizerConfig,
    correction: (f32, f32),
    scale: f32,
}

impl Kernel {
    /// Updates `params` with `grad`; `a` and `b` are the state slots the
    /// optimizer has (empty otherwise), aligned with `params`.
    fn run(self, params: &mut [f32], grad: &[f32], a: &mut [f32], b: &mut [f32]) {
        let scale = self.scale;
        match self.config {
            OptimizerConfig::Sgd { learning_rate: lr, momentum, weight_decay: wd } => {
                if momentum == 0.0 {
                    for (p, g) in params.iter_mut().zip(grad) {
                        *p -= lr * (scale * g + wd * *p);
                    }
                } else {
                    for ((p, g), v) in params.iter_mut().zip(grad).zip(a) {
                        *v = flush_subnormal(momentum * *v + scale * g + wd * *p);
                        *p -= lr * *v;
                    }
                }
            }
            OptimizerConfig::Adam { learning_rate: lr, beta1, beta2, epsilon, weight_decay: wd } => {
                let (c1, c2) = self.correction;
                for (((p, g), m), v) in params.iter_mut().zip(grad).zip(a).zip(b) {
                    let g = scale * g + wd * *p;
                    *m = flush_subnormal(beta1 * *m + (1.0 - beta1) * g);
                    *v = flush_subnormal(beta2 * *v + (1.0 - beta2) * g * g);
                    *p -= lr * (*m / c1) / ((*v / c2).sqrt() + epsilon);
                }
            }
            OptimizerConfig::AdaGrad { learning_rate: lr, epsilon, .. } => {
                for ((p, g), acc) in params.iter_mut().zip(grad).zip(a) {
                    let g = scale * g;
                    *acc += g * g;
                    *p -= lr * g / (acc.sqrt() + epsilon);
                }
            }
        }
    }
}

/// `x`, or 0 when `x` is subnormal. Decaying optimizer state (momentum,
/// Adam's moments) of units whose gradient stays 0 would otherwise sink into
/// subnormal floats, on which x86 arithmetic is tens of times slower; a
/// state below `f32::MIN_POSITIVE` (1.2e-38) has no effect on any update
/// an `f32` parameter can show. Branch-free, so the loops stay vectorised.
#[inline(always)]
pub fn flush_subnormal(x: f32) -> f32 {
    if x.abs() < f32::MIN_POSITIVE { 0.0 } else { x }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: &[f32], b: &[f32]) {
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() <= 1e-6 * (1.0 + y.abs()), "{a:?} != {b:?}");
        }
    }

    #[test]
    fn sgd_plain_and_weight_decay() {
        // p = 1, g = 0.5, lr = 0.1, wd = 0.2: p -= 0.1 * (0.5 + 0.2) = 0.93
        let mut o =
            Optimizer::new(OptimizerConfig::Sgd { learning_rate: 0.1, momentum: 0.0, weight_decay: 0.2 }, 1);
        let mut p = [1.0];
        o.step(&mut p, &[0.5], 1.0);
        close(&p, &[0.93]);
        assert_eq!(o.state_bytes(), 0);
    }

    #[test]
    fn sgd_momentum_three_steps() {
        // lr 0.1, mu 0.9, g = 1 each step, scale 0.5 -> effective g 0.5
        // v1 = 0.5, p = -0.05; v2 = 0.95, p = -0.145; v3 = 1.355, p = -0.2805
        let mut o =
            Optimizer::new(OptimizerConfig::Sgd { learning_rate: 0.1, momentum: 0.9, weight_decay: 0.0 }, 1);
        let mut p = [0.0];
        let mut seen = Vec::new();
        for _ in 0..3 {
            o.step(&mut p, &[1.0], 0.5);
            seen.push(p[0]);
        }
        close(&seen, &[-0.05, -0.145, -0.2805]);
    }

    #[test]
    fn adam_two_steps() {
        // lr 0.1, b1 0.9, b2 0.999, eps 1e-8, p0 = 1
        // step 1, g = 2: m = 0.2, v = 0.004, mhat = 2, vhat = 4 -> p = 1 - 0.1*2/2 = 0.9
        // step 2, g = 1: m = 0.28, v = 0.004996, mhat = 0.28/0.19 = 1.473684,
        //   vhat = 0.004996/0.001999 = 2.499250, sqrt = 1.580901 -> p = 0.9 - 0.1*0.932180 = 0.806782
        let mut o = Optimizer::new(OptimizerConfig::adam(0.1), 1);
        let mut p = [1.0];
        o.step(&mut p, &[2.0], 1.0);
        close(&p, &[0.9]);
        o.step(&mut p, &[1.0], 1.0);
        close(&p, &[0.806_782]);
        assert_eq!(o.state_bytes(), 8);
        assert_eq!(o.slots().iter().map(|s| s.0).collect::<Vec<_>>(), vec!["adam_m", "adam_v"]);
    }

    #[test]
    fn adagrad_two_steps() {
        // lr 0.5, eps 0, acc0 0.1, p0 = 0
        // g = 1: acc = 1.1, p = -0.5/1.048809 = -0.476731
        // g = 2: acc = 5.1, p = -0.476731 - 1/2.258318 = -0.919537
        let mut o = Optimizer::new(
            OptimizerConfig::AdaGrad { learning_rate: 0.5, epsilon: 1e-12, initial_accumulator: 0.1 },
            1,
        );
        let mut p = [0.0];
        o.step(&mut p, &[1.0], 1.0);
        close(&p, &[-0.476_731]);
        o.step(&mut p, &[2.0], 1.0);
        close(&p, &[-0.919_537]);
    }

    #[test]
    fn blockwise_update_equals_whole_update() {
        let grad: Vec<f32> = (0..10).map(|i| i as f32 * 0.1 - 0.3).collect();
        let mut whole = vec![1.0f32; 10];
        let mut blocks = whole.clone();
        let mut a = Optimizer::new(OptimizerConfig::adam(0.01), 10);
        let mut b = a.clone();
        for _ in 0..3 {
            a.step(&mut whole, &grad, 1.0);
            b.begin_step();
            b.update(0, &mut blocks[..4], &grad[..4], 1.0);
            b.update(4, &mut blocks[4..], &grad[4..], 1.0);
        }
        assert_eq!(whole, blocks);
    }

    #[test]
    fn restored_state_continues_exactly() {
        let grad = [0.5f32, -1.0, 2.0];
        let mut p = vec![1.0f32; 3];
        let mut a = Optimizer::new(OptimizerConfig::adam(0.01), 3);
        a.step(&mut p, &grad, 1.0);
        a.step(&mut p, &grad, 1.0);
        let slots = a.slots().iter().map(|(_, s)| s.to_vec()).collect();
        let mut b = Optimizer::restore(OptimizerConfig::adam(0.01), 3, a.steps(), slots).unwrap();
        let mut q = p.clone();
        a.step(&mut p, &grad, 1.0);
        b.step(&mut q, &grad, 1.0);
        assert_eq!(p, q);
        assert!(Optimizer::restore(OptimizerConfig::adam(0.01), 3, 1, vec![vec![0.0; 3]]).is_err());
        assert!(Optimizer::restore(OptimizerConfig::sgd(0.1), 3, 1, vec![]).is_ok());
    }

    #[test]
    fn a_shared_copy_is_not_changed_by_updates() {
        let mut a = Optimizer::new(OptimizerConfig::adam(0.1), 2);
        let copy = a.clone();
        a.step(&mut [1.0, 1.0], &[1.0, 1.0], 1.0);
        assert!(copy.slots().iter().all(|(_, s)| s.iter().all(|v| *v == 0.0)));
        assert!(a.slots().iter().all(|(_, s)| s.iter().all(|v| *v != 0.0)));
    }

    #[test]
    fn validation_rejects_bad_hyper_parameters() {
        assert!(OptimizerConfig::sgd(f32::NAN).validate().is_err());
        assert!(
            OptimizerConfig::Sgd { learning_rate: 0.1, momentum: 1.5, weight_decay: 0.0 }.validate().is_err()
        );
        assert!(OptimizerConfig::adam(0.001).validate().is_ok());
    }

    /// With a gradient of 0 the state decays geometrically; it must reach 0,
    /// never a subnormal float, for SGD momentum and both Adam moments.
    #[test]
    fn decaying_state_is_flushed_to_zero_not_subnormal() {
        for config in [
            OptimizerConfig::Sgd { learning_rate: 0.1, momentum: 0.9, weight_decay: 0.0 },
            OptimizerConfig::Adam {
                learning_rate: 1e-3,
                beta1: 0.9,
                beta2: 0.999,
                epsilon: 1e-8,
                weight_decay: 0.0,
            },
        ] {
            let mut opt = Optimizer::new(config, 1);
            let mut p = [0.5f32];
            opt.step(&mut p, &[1.0], 1.0);
            for _ in 0..200_000 {
                opt.step(&mut p, &[0.0], 1.0);
                for (name, slot) in opt.slots() {
                    assert!(!slot[0].is_subnormal(), "{config:?}: {name} became subnormal: {:e}", slot[0]);
                }
                if opt.slots().iter().all(|(_, s)| s[0] == 0.0) {
                    break;
                }
            }
            assert!(opt.slots().iter().all(|(_, s)| s[0] == 0.0), "{config:?}: the state never reached 0");
        }
        assert_eq!(flush_subnormal(1e-39), 0.0);
        assert_eq!(flush_subnormal(-1e-39), 0.0);
        assert_eq!(flush_subnormal(f32::MIN_POSITIVE), f32::MIN_POSITIVE);
        assert_eq!(flush_subnormal(-2.5), -2.5);
    }

    /// A part large enough to be updated on several threads gets the same
    /// bits as one updated element by element on one thread, for every optimizer.
    #[test]
    fn a_parallel_update_is_bit_identical_to_a_serial_one() {
        let n = PARALLEL_ELEMENTS + 12_345;
        let grad: Vec<f32> = (0..n).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect();
        let configs = [
            OptimizerConfig::sgd(0.1),
            OptimizerConfig::Sgd { learning_rate: 0.1, momentum: 0.9, weight_decay: 1e-4 },
            OptimizerConfig::adam(0.01),
            OptimizerConfig::AdaGrad { learning_rate: 0.1, epsilon: 1e-8, initial_accumulator: 0.0 },
        ];
        for config in configs {
            let mut parallel = Optimizer::new(config, n);
            let mut serial = parallel.clone();
            let mut p: Vec<f32> = (0..n).map(|i| (i % 97) as f32 * 0.01).collect();
            let mut q = p.clone();
            for _ in 0..2 {
                parallel.step(&mut p, &grad, 0.5);
                serial.begin_step();
                let kernel = Kernel { config, correction: serial.correction, scale: 0.5 };
                let (a, b) = (array::make_mut(&mut serial.slot_a), array::make_mut(&mut serial.slot_b));
                kernel.run(&mut q, &grad, a, b);
            }
            assert!(p.iter().zip(&q).all(|(x, y)| x.to_bits() == y.to_bits()), "{config:?}");
            assert_eq!(parallel.slots(), serial.slots(), "{config:?}");
        }
    }
}
