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

    /// This tensor's synchronisation policy (instead of the cluster's default).
    pub fn policy(mut self, policy: ps_proto::Policy) -> Self {
        let fields = policy.to_pb();
        self.spec.policy = fields.kind as i32;
        self.spec.staleness = matches!(policy, ps_proto::Policy::Ssp { .. }).then_some(fields.staleness);
        self.spec.backup_workers = fields.backup_workers;
        self.spec.staleness_scaling = fields.scaling as i32;
        self
    }

    /// Strong consistency for this tensor.
    pub fn sync(self) -> Self {
        self.policy(ps_proto::Policy::SYNC)
    }

    /// Bounded staleness `s` for this tensor.
    pub fn ssp(self, staleness: u32) -> Self {
        self.policy(ps_proto::Policy::ssp(staleness))
    }

    /// Eventual consistency for this tensor.
    pub fn async_(self) -> Self {
        self.policy(ps_proto::Policy::ASYNC)
    }

    /// This tensor's optimizer (instead of the cluster's default).
    pub fn optimizer(mut self, optimizer: ps_proto::OptimizerConfig) -> Self {
        self.spec.optimizer = Some(optimizer.to_pb());
        self
    }

    /// This tensor's optimizer: SGD with `momentum` (0: plain SGD).
    pub fn sgd(self, learning_rate: f32, momentum: f32) -> Self {
        self.optimizer(ps_proto::OptimizerConfig::sgd(learning_rate).with_momentum(momentum))
    }

    /// This tensor's optimizer: Adam with β1 0.9, β2 0.999, ε 1e-8.
    pub fn adam(self, learning_rate: f32) -> Self {
        self.optimizer(ps_proto::OptimizerConfig::adam(learning_rate))
    }

    /// This tensor's optimizer: AdaGrad with ε 1e-10 and initial accumulator 0.1.
    pub fn adagrad(self, learning_rate: f32) -> Self {
        self.optimizer(ps_proto::OptimizerConfig::adagrad(learning_rate))
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
