//! Whether a re-declaration matches the tensor it names: every worker
//! declares the tensors it uses, so a second declaration is normal, but one
//! that asks for other settings than the first would silently train with
//! settings its sender did not ask for. It is refused (`ALREADY_EXISTS`)
//! naming the first setting that differs, expected vs got.

use super::{Declaration, TensorCell};
use crate::config::ShardConfig;
use crate::error::PsError;
use crate::sync::Policy;

/// Checks `decl` against `existing`, the part it names; the shard defaults
/// of `cfg` stand for settings `decl` leaves out, as they did at creation.
/// A part restored from a checkpoint has no initializer on record: any is
/// accepted (its values came from the checkpoint).
pub(super) fn check(existing: &TensorCell, decl: &Declaration, cfg: &ShardConfig) -> Result<(), PsError> {
    let meta = existing.meta();
    if meta.shape != decl.shape {
        return Err(PsError::ShapeConflict {
            tensor: decl.name.clone(),
            existing: meta.shape.clone(),
            requested: decl.shape.clone(),
        });
    }
    let conflict = |setting, existing: String, requested: String| PsError::DeclareConflict {
        tensor: decl.name.clone(),
        setting,
        existing,
        requested,
    };
    let policy = decl.policy.unwrap_or_else(|| cfg.default_policy());
    if policy != meta.policy {
        let setting = match (policy, meta.policy) {
            (Policy::Ssp { .. }, Policy::Ssp { .. }) => "staleness",
            _ => "policy",
        };
        return Err(conflict(setting, meta.policy.to_string(), policy.to_string()));
    }
    let optimizer = decl.optimizer.unwrap_or(cfg.optimizer);
    if optimizer != existing.optimizer {
        return Err(conflict("optimizer", format!("{:?}", existing.optimizer), format!("{optimizer:?}")));
    }
    if let Some(init) = &existing.init {
        // Compared as written, so that equal NaN parameters compare equal.
        let (first, now) = (format!("{init:?}"), format!("{:?}", decl.init));
        if first != now {
            return Err(conflict("initializer", first, now));
        }
    }
    if decl.allow_non_finite != meta.allow_non_finite {
        let said = |allowed| if allowed { "allowed" } else { "refused" }.to_string();
        return Err(conflict(
            "non-finite gradients",
            said(meta.allow_non_finite),
            said(decl.allow_non_finite),
        ));
    }
    Ok(())
}
