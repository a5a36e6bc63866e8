//! What a tensor part is, fixed at declaration: below both the part that
//! holds it ([`crate::tensor`]) and the checkpoints that record it
//! ([`crate::checkpoint`]).

use crate::sync::Policy;

/// What a tensor part is: fixed at declaration.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorMeta {
    /// Tensor name.
    pub name: String,
    /// Shape of the whole tensor.
    pub shape: Vec<u64>,
    /// First element of the whole tensor held here.
    pub offset: u64,
    /// Elements held here.
    pub len: u64,
    /// Synchronisation policy.
    pub policy: Policy,
    /// Whether NaN/Inf gradients are accepted.
    pub allow_non_finite: bool,
    /// Sync only: elements per piece that a push may cover instead of the
    /// whole part ([`ps_proto::placement::pieces`]); 0: whole pushes only.
    pub piece_len: u64,
}
