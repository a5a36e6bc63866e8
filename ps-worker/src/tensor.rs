//! Describing tensors to declare.

use ps_proto::pb;

/// A tensor to declare: name, shape, initial values and optional overrides
/// of the cluster's optimizer and policy.
///
/// ```
/// use ps_worker::TensorDecl;
/// let w = TensorDecl::new("fc1.weight", &[784, 128]).normal(0.0, 0.05, 42).ssp(3);
/// assert_eq!(w.spec().shape, vec![784, 128]);
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct TensorDecl {
    spec: pb::TensorSpec,
}

impl TensorDecl {
    /// A zero-initialised tensor using the cluster's default optimizer and policy.
    pub fn new(name: impl Into<String>, shape: &[usize]) -> Self {
        Self {
            spec: pb::TensorSpec {
                name: name.into(),
                shape: shape.iter().map(|d| *d as u64).collect(),
                ..Default::default()
            },
        }
    }

    fn init(mut self, kind: pb::initializer::Kind) -> Self {
        self.spec.init = Some(pb::Initializer { kind: Some(kind) });
        self
    }

    /// Every element `value`.
    pub fn constant(self, value: f32) -> Self {
        self.init(pb::initializer::Kind::Constant(value))
    }

    /// Uniform in `[low, high)`, seeded; identical however the tensor is sharded.
    pub fn uniform(self, low: f32, high: f32, seed: u64) -> Self {
        self.init(pb::initializer::Kind::Uniform(pb::Uniform { low, high, seed }))
    }

    /// Normal(mean, std), seeded; identical however the tensor is sharded.
    pub fn normal(self, mean: f32, std: f32, seed: u64) -> Self {
        self.init(pb::initializer::Kind::Normal(pb::Normal { mean, std, seed }))
    }

    /// Strong consistency for this tensor.
    pub fn sync(mut self) -> Self {
        self.spec.policy = pb::Policy::Sync as i32;
        self
    }

    /// Bounded staleness `s` for this tensor.
    pub fn ssp(mut self, staleness: u32) -> Self {
        self.spec.policy = pb::Policy::Ssp as i32;
        self.spec.staleness = Some(staleness);
        self
    }

    /// Eventual consistency for this tensor.
    pub fn async_(mut self) -> Self {
        self.spec.policy = pb::Policy::Async as i32;
        self
    }

    /// This tensor's optimizer: plain SGD.
    pub fn sgd(mut self, learning_rate: f32, momentum: f32) -> Self {
        let sgd = pb::Sgd { learning_rate, momentum, weight_decay: 0.0 };
        self.spec.optimizer = Some(pb::Optimizer { kind: Some(pb::optimizer::Kind::Sgd(sgd)) });
        self
    }

    /// This tensor's optimizer: Adam with β1 0.9, β2 0.999, ε 1e-8.
    pub fn adam(mut self, learning_rate: f32) -> Self {
        let adam = pb::Adam { learning_rate, beta1: 0.9, beta2: 0.999, epsilon: 1e-8, weight_decay: 0.0 };
        self.spec.optimizer = Some(pb::Optimizer { kind: Some(pb::optimizer::Kind::Adam(adam)) });
        self
    }

    /// This tensor's optimizer: AdaGrad with ε 1e-10 and initial accumulator 0.1.
    pub fn adagrad(mut self, learning_rate: f32) -> Self {
        let a = pb::AdaGrad { learning_rate, epsilon: 1e-10, initial_accumulator: 0.1 };
        self.spec.optimizer = Some(pb::Optimizer { kind: Some(pb::optimizer::Kind::Adagrad(a)) });
        self
    }

    /// Accept NaN and Inf in this tensor's gradients.
    pub fn allow_non_finite(mut self) -> Self {
        self.spec.allow_non_finite = true;
        self
    }

    /// The declaration as the protocol's `TensorSpec`, for code that shares
    /// the shards' reading of it (e.g. computing the initial values).
    pub fn spec(&self) -> &pb::TensorSpec {
        &self.spec
    }

    /// The name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// The shape.
    pub fn shape(&self) -> Vec<usize> {
        self.spec.shape.iter().map(|d| *d as usize).collect()
    }
}
