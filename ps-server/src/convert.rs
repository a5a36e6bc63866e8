//! Conversions between protocol messages and the shard's own types, with the
//! validation that belongs at the edge (unknown enum values, missing fields).

use ps_proto::pb;

use crate::error::{PsError, shown};
use crate::init::Init;
use crate::optim::OptimizerConfig;
use crate::shard::Declaration;
use crate::sync::Policy;

/// The policy a declaration asks for; `None` means the shard default.
pub fn policy(spec: &pb::TensorSpec, default_staleness: u32) -> Result<Option<Policy>, PsError> {
    Policy::from_pb(
        spec.policy,
        spec.staleness,
        default_staleness,
        spec.backup_workers,
        spec.staleness_scaling,
    )
    .map_err(|e| PsError::InvalidArgument(format!("tensor {}: {e}", shown(&spec.name))))
}

/// The initializer of a declaration (zeros when absent).
pub fn init(spec: &pb::TensorSpec) -> Result<Init, PsError> {
    use pb::initializer::Kind;
    let bad = |what: &str| PsError::InvalidArgument(format!("tensor {}: {what}", shown(&spec.name)));
    Ok(match spec.init.as_ref().and_then(|i| i.kind.as_ref()) {
        None => Init::Zeros,
        Some(Kind::Constant(v)) if v.is_finite() => Init::Constant(*v),
        Some(Kind::Constant(v)) => return Err(bad(&format!("constant initializer {v} is not finite"))),
        Some(Kind::Uniform(u)) if u.low.is_finite() && u.high.is_finite() && u.low <= u.high => {
            Init::Uniform { low: u.low, high: u.high, seed: u.seed }
        }
        Some(Kind::Uniform(u)) => {
            return Err(bad(&format!("uniform initializer needs low <= high, got {u:?}")));
        }
        Some(Kind::Normal(n)) if n.mean.is_finite() && n.std.is_finite() && n.std >= 0.0 => {
            Init::Normal { mean: n.mean, std: n.std, seed: n.seed }
        }
        Some(Kind::Normal(n)) => return Err(bad(&format!("normal initializer needs std >= 0, got {n:?}"))),
    })
}

/// The optimizer of a declaration; `None` means the shard default.
pub fn optimizer(opt: Option<&pb::Optimizer>) -> Option<OptimizerConfig> {
    OptimizerConfig::from_pb(opt?)
}

/// A declaration from its protocol form.
pub fn declaration(spec: pb::TensorSpec, default_staleness: u32) -> Result<Declaration, PsError> {
    Ok(Declaration {
        policy: policy(&spec, default_staleness)?,
        init: init(&spec)?,
        optimizer: optimizer(spec.optimizer.as_ref()),
        allow_non_finite: spec.allow_non_finite,
        shape: spec.shape,
        name: spec.name,
    })
}
