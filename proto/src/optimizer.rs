//! The server-side optimizer a tensor is declared with, defined once for
//! every process: its kinds and defaults, its config-file and manifest form
//! (serde, tagged by `kind`), its display form and its protocol form. The
//! update kernels are the shard's.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::pb;

/// Which optimizer: `sgd`, `adam` or `adagrad` in flags and config files.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OptimizerKind {
    /// SGD with momentum.
    Sgd,
    /// Adam (Kingma & Ba).
    Adam,
    /// AdaGrad.
    AdaGrad,
}

impl OptimizerKind {
    /// Its name in flags, config files and manifests: `sgd`, `adam` or `adagrad`.
    pub fn name(self) -> &'static str {
        match self {
            OptimizerKind::Sgd => "sgd",
            OptimizerKind::Adam => "adam",
            OptimizerKind::AdaGrad => "adagrad",
        }
    }

    /// The learning rate a kind gets when none is given: 0.3 for SGD, 0.001
    /// for Adam, 0.01 for AdaGrad.
    pub fn default_learning_rate(self) -> f32 {
        match self {
            OptimizerKind::Sgd => 0.3,
            OptimizerKind::Adam => 0.001,
            OptimizerKind::AdaGrad => 0.01,
        }
    }

    /// This kind with its defaults, at `learning_rate` (or the kind's default).
    pub fn with_defaults(self, learning_rate: Option<f32>) -> OptimizerConfig {
        let lr = learning_rate.unwrap_or(self.default_learning_rate());
        match self {
            OptimizerKind::Sgd => OptimizerConfig::sgd(lr),
            OptimizerKind::Adam => OptimizerConfig::adam(lr),
            OptimizerKind::AdaGrad => OptimizerConfig::adagrad(lr),
        }
    }
}

impl fmt::Display for OptimizerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for OptimizerKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "sgd" => Ok(OptimizerKind::Sgd),
            "adam" => Ok(OptimizerKind::Adam),
            "adagrad" => Ok(OptimizerKind::AdaGrad),
            _ => Err(format!("unknown optimizer {s:?}: use sgd, adam or adagrad")),
        }
    }
}

/// Optimizer hyper-parameters.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum OptimizerConfig {
    /// `v = momentum*v + g + wd*p; p -= lr*v` (plain SGD when momentum is 0).
    Sgd {
        /// Step size.
        learning_rate: f32,
        /// Momentum coefficient (0: plain SGD).
        momentum: f32,
        /// L2 weight decay.
        weight_decay: f32,
    },
    /// Adam (Kingma & Ba) with bias correction and L2 weight decay added to the gradient.
    Adam {
        /// Step size.
        learning_rate: f32,
        /// Decay rate of the first-moment estimate.
        beta1: f32,
        /// Decay rate of the second-moment estimate.
        beta2: f32,
        /// Added to the denominator for numerical stability.
        epsilon: f32,
        /// L2 weight decay.
        weight_decay: f32,
    },
    /// AdaGrad: `acc += g^2; p -= lr*g/(sqrt(acc)+eps)`.
    AdaGrad {
        /// Step size.
        learning_rate: f32,
        /// Added to the denominator for numerical stability.
        epsilon: f32,
        /// Starting value of every sum of squared gradients.
        initial_accumulator: f32,
    },
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        OptimizerKind::Sgd.with_defaults(None)
    }
}

impl OptimizerConfig {
    /// Plain SGD at `learning_rate`.
    pub fn sgd(learning_rate: f32) -> Self {
        OptimizerConfig::Sgd { learning_rate, momentum: 0.0, weight_decay: 0.0 }
    }

    /// Adam with the usual defaults (β1 0.9, β2 0.999, ε 1e-8) at `learning_rate`.
    pub fn adam(learning_rate: f32) -> Self {
        OptimizerConfig::Adam { learning_rate, beta1: 0.9, beta2: 0.999, epsilon: 1e-8, weight_decay: 0.0 }
    }

    /// AdaGrad with ε 1e-10 and initial accumulator 0.1 at `learning_rate`.
    pub fn adagrad(learning_rate: f32) -> Self {
        OptimizerConfig::AdaGrad { learning_rate, epsilon: 1e-10, initial_accumulator: 0.1 }
    }

    /// This config with SGD momentum `momentum` (other kinds have none: unchanged).
    pub fn with_momentum(mut self, momentum: f32) -> Self {
        if let OptimizerConfig::Sgd { momentum: m, .. } = &mut self {
            *m = momentum;
        }
        self
    }

    /// This config with L2 weight decay `weight_decay` (SGD and Adam; AdaGrad has none: unchanged).
    pub fn with_weight_decay(mut self, weight_decay: f32) -> Self {
        match &mut self {
            OptimizerConfig::Sgd { weight_decay: w, .. } | OptimizerConfig::Adam { weight_decay: w, .. } => {
                *w = weight_decay;
            }
            OptimizerConfig::AdaGrad { .. } => {}
        }
        self
    }

    /// Which optimizer this is.
    pub fn kind(&self) -> OptimizerKind {
        match self {
            OptimizerConfig::Sgd { .. } => OptimizerKind::Sgd,
            OptimizerConfig::Adam { .. } => OptimizerKind::Adam,
            OptimizerConfig::AdaGrad { .. } => OptimizerKind::AdaGrad,
        }
    }

    /// Short name: `sgd`, `adam` or `adagrad`.
    pub fn name(&self) -> &'static str {
        self.kind().name()
    }

    /// The step size.
    pub fn learning_rate(&self) -> f32 {
        match *self {
            OptimizerConfig::Sgd { learning_rate, .. }
            | OptimizerConfig::Adam { learning_rate, .. }
            | OptimizerConfig::AdaGrad { learning_rate, .. } => learning_rate,
        }
    }

    /// Checks that hyper-parameters are finite and in range: a positive
    /// learning rate and epsilon, momentum and betas in [0, 1), no negative
    /// weight decay. The error names the first that is not, with its value.
    pub fn validate(&self) -> Result<(), String> {
        let name = self.name();
        let positive = |what: &str, v: f32| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(format!("{name} {what} must be a positive number, got {v}"))
            }
        };
        let non_negative = |what: &str, v: f32| {
            if v.is_finite() && v >= 0.0 {
                Ok(())
            } else {
                Err(format!("{name} {what} must be zero or a positive number, got {v}"))
            }
        };
        let fraction = |what: &str, v: f32| {
            if (0.0..1.0).contains(&v) {
                Ok(())
            } else {
                Err(format!("{name} {what} must be in [0, 1), got {v}"))
            }
        };
        match *self {
            OptimizerConfig::Sgd { learning_rate, momentum, weight_decay } => {
                positive("learning rate", learning_rate)?;
                fraction("momentum", momentum)?;
                non_negative("weight decay", weight_decay)
            }
            OptimizerConfig::Adam { learning_rate, beta1, beta2, epsilon, weight_decay } => {
                positive("learning rate", learning_rate)?;
                fraction("beta1", beta1)?;
                fraction("beta2", beta2)?;
                positive("epsilon", epsilon)?;
                non_negative("weight decay", weight_decay)
            }
            OptimizerConfig::AdaGrad { learning_rate, epsilon, initial_accumulator } => {
                positive("learning rate", learning_rate)?;
                positive("epsilon", epsilon)?;
                non_negative("initial accumulator", initial_accumulator)
            }
        }
    }

    /// The protocol form.
    pub fn to_pb(&self) -> pb::Optimizer {
        use pb::optimizer::Kind;
        let kind = match *self {
            OptimizerConfig::Sgd { learning_rate, momentum, weight_decay } => {
                Kind::Sgd(pb::Sgd { learning_rate, momentum, weight_decay })
            }
            OptimizerConfig::Adam { learning_rate, beta1, beta2, epsilon, weight_decay } => {
                Kind::Adam(pb::Adam { learning_rate, beta1, beta2, epsilon, weight_decay })
            }
            OptimizerConfig::AdaGrad { learning_rate, epsilon, initial_accumulator } => {
                Kind::Adagrad(pb::AdaGrad { learning_rate, epsilon, initial_accumulator })
            }
        };
        pb::Optimizer { kind: Some(kind) }
    }

    /// The config a protocol message names; `None` when it names none (the
    /// receiver's default).
    pub fn from_pb(opt: &pb::Optimizer) -> Option<Self> {
        use pb::optimizer::Kind;
        Some(match opt.kind.as_ref()? {
            Kind::Sgd(s) => OptimizerConfig::Sgd {
                learning_rate: s.learning_rate,
                momentum: s.momentum,
                weight_decay: s.weight_decay,
            },
            Kind::Adam(a) => OptimizerConfig::Adam {
                learning_rate: a.learning_rate,
                beta1: a.beta1,
                beta2: a.beta2,
                epsilon: a.epsilon,
                weight_decay: a.weight_decay,
            },
            Kind::Adagrad(a) => OptimizerConfig::AdaGrad {
                learning_rate: a.learning_rate,
                epsilon: a.epsilon,
                initial_accumulator: a.initial_accumulator,
            },
        })
    }
}

/// `sgd(lr=0.1, momentum=0.9, weight_decay=0)`, `adam(lr=0.001, beta1=0.9,
/// beta2=0.999, eps=0.00000001, weight_decay=0)`, `adagrad(lr=0.01,
/// eps=0.0000000001, initial_accumulator=0.1)`: for logs and `inspect`.
impl fmt::Display for OptimizerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            OptimizerConfig::Sgd { learning_rate, momentum, weight_decay } => {
                write!(f, "sgd(lr={learning_rate}, momentum={momentum}, weight_decay={weight_decay})")
            }
            OptimizerConfig::Adam { learning_rate, beta1, beta2, epsilon, weight_decay } => write!(
                f,
                "adam(lr={learning_rate}, beta1={beta1}, beta2={beta2}, eps={epsilon}, weight_decay={weight_decay})"
            ),
            OptimizerConfig::AdaGrad { learning_rate, epsilon, initial_accumulator } => {
                write!(
                    f,
                    "adagrad(lr={learning_rate}, eps={epsilon}, initial_accumulator={initial_accumulator})"
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_parse_and_carry_their_defaults() {
        for kind in [OptimizerKind::Sgd, OptimizerKind::Adam, OptimizerKind::AdaGrad] {
            assert_eq!(kind.to_string().parse::<OptimizerKind>(), Ok(kind));
            let config = kind.with_defaults(None);
            assert_eq!((config.kind(), config.learning_rate()), (kind, kind.default_learning_rate()));
            assert_eq!(config.name(), kind.to_string());
            assert!(config.validate().is_ok());
        }
        assert!("Adam".parse::<OptimizerKind>().unwrap_err().contains("use sgd, adam or adagrad"));
        assert_eq!(OptimizerKind::Adam.with_defaults(Some(0.5)).learning_rate(), 0.5);
    }

    #[test]
    fn protocol_and_config_file_forms_round_trip() {
        let configs = [
            OptimizerConfig::sgd(0.1).with_momentum(0.9).with_weight_decay(1e-4),
            OptimizerConfig::adam(1e-3).with_weight_decay(0.01),
            OptimizerConfig::adagrad(0.01),
        ];
        for c in configs {
            assert_eq!(OptimizerConfig::from_pb(&c.to_pb()), Some(c));
            let toml_like = serde_json::to_value(c).unwrap();
            assert_eq!(toml_like["kind"], c.name());
            assert_eq!(serde_json::from_value::<OptimizerConfig>(toml_like).unwrap(), c);
        }
        assert_eq!(OptimizerConfig::from_pb(&pb::Optimizer { kind: None }), None);
        assert_eq!(OptimizerConfig::adagrad(0.1).with_momentum(0.9), OptimizerConfig::adagrad(0.1));
        let bad = OptimizerConfig::sgd(0.1).with_momentum(5.0);
        assert_eq!(bad.validate(), Err("sgd momentum must be in [0, 1), got 5".to_string()));
        let backwards = OptimizerConfig::sgd(-1.0);
        assert_eq!(
            backwards.validate(),
            Err("sgd learning rate must be a positive number, got -1".to_string())
        );
        assert!(OptimizerConfig::adam(1e-3).with_weight_decay(-0.1).validate().is_err());
    }
}
