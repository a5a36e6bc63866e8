//! The synchronisation policy of a tensor, defined once for every process:
//! its text form (flags, config files, checkpoint manifests, metric labels)
//! and its protocol form.

use std::fmt;
use std::str::FromStr;

use crate::pb;

/// A tensor's synchronisation policy (DESIGN §3), with its options:
/// backup workers for sync, staleness scaling for ssp and async.
///
/// Its text form is `sync`, `sync+backup(b)`, `ssp(s)`, `ssp(s,scaled)`,
/// `async` or `async(scaled)`, where `scaled` is [`Scaling::Relative`]
/// (`relative` parses too) and `inverse` names [`Scaling::Inverse`]; since
/// parentheses need quoting in a shell, `sync+backup:b`, `ssp:s`,
/// `ssp:s:scaled` and `async:scaled` parse too:
///
/// ```
/// use ps_proto::{Policy, Scaling};
/// assert_eq!("ssp(3)".parse::<Policy>(), Ok(Policy::ssp(3)));
/// assert_eq!("ssp:3".parse::<Policy>(), Ok(Policy::ssp(3)));
/// assert_eq!(Policy::ssp(3).to_string(), "ssp(3)");
/// assert_eq!("sync+backup:1".parse::<Policy>(), Ok(Policy::Sync { backup: 1 }));
/// assert_eq!(Policy::Async { scaling: Scaling::Relative }.to_string(), "async(scaled)");
/// assert_eq!("async(inverse)".parse::<Policy>(), Ok(Policy::Async { scaling: Scaling::Inverse }));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Policy {
    /// Strong: the gradients of clock `c` are aggregated and applied once;
    /// `pull(c)` sees exactly the updates of clocks `< c`. With `backup`
    /// workers b > 0, a round closes on the first `W - b` gradients
    /// computed from its values, and later ones are dropped.
    Sync {
        /// Backup workers b: gradients a round does not wait for.
        backup: u32,
    },
    /// Bounded staleness: `pull(c)` waits until every live worker has
    /// completed clock `c - staleness - 1`, i.e. its clock is `>= c - staleness`.
    Ssp {
        /// The staleness bound `s`.
        staleness: u32,
        /// How a push's update is scaled by its staleness.
        scaling: Scaling,
    },
    /// Eventual: pushes are applied on arrival and pulls never wait.
    Async {
        /// How a push's update is scaled by its staleness.
        scaling: Scaling,
    },
}

/// How an ssp or async push's update is scaled by its staleness τ: the
/// number of updates applied to the tensor part between the pusher's last
/// read of it and the push's arrival.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scaling {
    /// Factor 1: every push counts fully.
    #[default]
    None,
    /// Factor `1 / max(1, τ)` (Zhang et al. 2016, "Staleness-aware Async-SGD").
    Inverse,
    /// Factor `min(1, (W - 1) / τ)`: a push counts fully up to the staleness
    /// `W - 1` that W workers taking turns give every push, and inversely
    /// to its staleness beyond that (a straggler's pushes).
    Relative,
}

impl Scaling {
    /// The factor a push of staleness `tau` is multiplied by before the
    /// optimizer, in a job of `workers` workers.
    pub fn factor(self, tau: u64, workers: u32) -> f32 {
        match self {
            Scaling::None => 1.0,
            Scaling::Inverse => 1.0 / tau.max(1) as f32,
            Scaling::Relative => (workers.saturating_sub(1).max(1) as f32 / tau.max(1) as f32).min(1.0),
        }
    }

    fn to_pb(self) -> pb::StalenessScaling {
        match self {
            Scaling::None => pb::StalenessScaling::None,
            Scaling::Inverse => pb::StalenessScaling::Inverse,
            Scaling::Relative => pb::StalenessScaling::Relative,
        }
    }

    fn from_pb(value: i32) -> Result<Self, String> {
        match pb::StalenessScaling::try_from(value) {
            Ok(pb::StalenessScaling::None) => Ok(Scaling::None),
            Ok(pb::StalenessScaling::Inverse) => Ok(Scaling::Inverse),
            Ok(pb::StalenessScaling::Relative) => Ok(Scaling::Relative),
            Err(_) => Err(format!("unknown staleness scaling value {value}")),
        }
    }
}

impl fmt::Display for Scaling {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Scaling::None => "none",
            Scaling::Inverse => "inverse",
            Scaling::Relative => "relative",
        })
    }
}

impl FromStr for Scaling {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(Scaling::None),
            "inverse" => Ok(Scaling::Inverse),
            "relative" => Ok(Scaling::Relative),
            _ => Err(format!(
                "unknown staleness scaling {s:?}: use none, inverse (1/max(1, tau)) or relative \
                 (min(1, (W-1)/tau))"
            )),
        }
    }
}

/// A policy's protocol fields, as [`Policy::to_pb`] writes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PolicyFields {
    /// The policy kind.
    pub kind: pb::Policy,
    /// The ssp bound (0 unless ssp).
    pub staleness: u32,
    /// Backup workers (0 unless sync).
    pub backup_workers: u32,
    /// Staleness scaling (none for sync).
    pub scaling: pb::StalenessScaling,
}

impl Policy {
    /// Plain sync: every live worker's gradient in every round.
    pub const SYNC: Policy = Policy::Sync { backup: 0 };
    /// Plain async: every push applied on arrival, unscaled.
    pub const ASYNC: Policy = Policy::Async { scaling: Scaling::None };

    /// Bounded staleness `s`, unscaled.
    pub const fn ssp(staleness: u32) -> Policy {
        Policy::Ssp { staleness, scaling: Scaling::None }
    }

    /// Whether this is sync (with or without backup workers).
    pub fn is_sync(&self) -> bool {
        matches!(self, Policy::Sync { .. })
    }

    /// Backup workers: 0 unless sync with backup workers.
    pub fn backup_workers(&self) -> u32 {
        match self {
            Policy::Sync { backup } => *backup,
            _ => 0,
        }
    }

    /// The staleness scaling: none for sync.
    pub fn scaling(&self) -> Scaling {
        match self {
            Policy::Sync { .. } => Scaling::None,
            Policy::Ssp { scaling, .. } | Policy::Async { scaling } => *scaling,
        }
    }

    /// The kind alone: `sync`, `ssp` or `async` (for metric labels).
    pub fn kind(&self) -> &'static str {
        match self {
            Policy::Sync { .. } => "sync",
            Policy::Ssp { .. } => "ssp",
            Policy::Async { .. } => "async",
        }
    }

    /// The staleness a read may show: 0 for sync, `s` for ssp, unbounded (`None`) for async.
    pub fn staleness_bound(&self) -> Option<u64> {
        match self {
            Policy::Sync { .. } => Some(0),
            Policy::Ssp { staleness, .. } => Some(u64::from(*staleness)),
            Policy::Async { .. } => None,
        }
    }

    /// The protocol form.
    pub fn to_pb(self) -> PolicyFields {
        let kind = match self {
            Policy::Sync { .. } => pb::Policy::Sync,
            Policy::Ssp { .. } => pb::Policy::Ssp,
            Policy::Async { .. } => pb::Policy::Async,
        };
        let staleness = match self {
            Policy::Ssp { staleness, .. } => staleness,
            _ => 0,
        };
        PolicyFields {
            kind,
            staleness,
            backup_workers: self.backup_workers(),
            scaling: self.scaling().to_pb(),
        }
    }

    /// The policy a protocol message names: `None` for `POLICY_UNSPECIFIED`
    /// (the receiver's default); an ssp without a staleness gets
    /// `default_staleness`. `backup_workers` counts for sync only and
    /// `scaling` for ssp and async only. An unknown enum value is an error
    /// naming it.
    pub fn from_pb(
        value: i32,
        staleness: Option<u32>,
        default_staleness: u32,
        backup_workers: u32,
        scaling: i32,
    ) -> Result<Option<Self>, String> {
        let policy = pb::Policy::try_from(value).map_err(|_| format!("unknown policy value {value}"))?;
        let scaling = Scaling::from_pb(scaling)?;
        Ok(match policy {
            pb::Policy::Unspecified => None,
            pb::Policy::Sync => Some(Policy::Sync { backup: backup_workers }),
            pb::Policy::Ssp => {
                Some(Policy::Ssp { staleness: staleness.unwrap_or(default_staleness), scaling })
            }
            pb::Policy::Async => Some(Policy::Async { scaling }),
        })
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Policy::Sync { backup: 0 } => f.write_str("sync"),
            Policy::Sync { backup } => write!(f, "sync+backup({backup})"),
            Policy::Ssp { staleness, scaling: Scaling::None } => write!(f, "ssp({staleness})"),
            Policy::Ssp { staleness, scaling: Scaling::Inverse } => write!(f, "ssp({staleness},inverse)"),
            Policy::Ssp { staleness, scaling: Scaling::Relative } => write!(f, "ssp({staleness},scaled)"),
            Policy::Async { scaling: Scaling::None } => f.write_str("async"),
            Policy::Async { scaling: Scaling::Inverse } => f.write_str("async(inverse)"),
            Policy::Async { scaling: Scaling::Relative } => f.write_str("async(scaled)"),
        }
    }
}

impl FromStr for Policy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "unknown policy {s:?}: use sync, sync+backup(B), ssp(N), ssp(N,scaled), async or \
                 async(scaled) (or sync+backup:B, ssp:N, ssp:N:scaled, async:scaled; inverse in \
                 place of scaled for 1/max(1, tau))"
            )
        };
        // `name(args)` or `name:args`, args split on `,` or `:`.
        let (name, args) = match s.split_once('(') {
            Some((name, rest)) => (name, Some(rest.strip_suffix(')').ok_or_else(bad)?)),
            None => match s.split_once(':') {
                Some((name, rest)) => (name, Some(rest)),
                None => (s, None),
            },
        };
        let args: Vec<&str> = args.map(|a| a.split([',', ':']).collect()).unwrap_or_default();
        let scaled = |arg: Option<&&str>| match arg {
            None => Ok(Scaling::None),
            Some(&"scaled" | &"relative") => Ok(Scaling::Relative),
            Some(&"inverse") => Ok(Scaling::Inverse),
            Some(_) => Err(bad()),
        };
        let number = |arg: &str| arg.parse::<u32>().map_err(|_| bad());
        match (name, args.as_slice()) {
            ("sync", []) => Ok(Policy::SYNC),
            ("sync+backup", [b]) => Ok(Policy::Sync { backup: number(b)? }),
            ("ssp", [n, rest @ ..]) if rest.len() <= 1 => {
                Ok(Policy::Ssp { staleness: number(n)?, scaling: scaled(rest.first())? })
            }
            ("async", []) => Ok(Policy::ASYNC),
            ("async", [_]) => Ok(Policy::Async { scaling: scaled(args.first())? }),
            _ => Err(bad()),
        }
    }
}

impl serde::Serialize for Policy {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Policy {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_and_protocol_forms_round_trip() {
        let scaled = Scaling::Relative;
        for p in [
            Policy::Async { scaling: Scaling::Inverse },
            Policy::Ssp { staleness: 2, scaling: Scaling::Inverse },
            Policy::SYNC,
            Policy::Sync { backup: 1 },
            Policy::ssp(0),
            Policy::ssp(10),
            Policy::Ssp { staleness: 3, scaling: scaled },
            Policy::ASYNC,
            Policy::Async { scaling: scaled },
        ] {
            assert_eq!(p.to_string().parse::<Policy>(), Ok(p));
            let f = p.to_pb();
            let back =
                Policy::from_pb(f.kind as i32, Some(f.staleness), 99, f.backup_workers, f.scaling as i32);
            assert_eq!(back, Ok(Some(p)));
        }
        for (text, p) in [
            ("ssp:3:scaled", Policy::Ssp { staleness: 3, scaling: scaled }),
            ("async:scaled", Policy::Async { scaling: scaled }),
            ("sync+backup:2", Policy::Sync { backup: 2 }),
        ] {
            assert_eq!(text.parse::<Policy>(), Ok(p), "{text}");
        }
        for bad in [
            "",
            "ssp",
            "ssp()",
            "ssp(x)",
            "ssp(3",
            "ssp:-1",
            "SYNC",
            "bsp",
            "sync+backup",
            "sync(1)",
            "async(fast)",
            "ssp(3,scaled,x)",
            "sync+backup(x)",
        ] {
            assert!(bad.parse::<Policy>().unwrap_err().contains("unknown policy"), "{bad:?}");
        }
        assert_eq!(Policy::from_pb(pb::Policy::Ssp as i32, None, 4, 0, 0), Ok(Some(Policy::ssp(4))));
        assert_eq!(Policy::from_pb(0, None, 4, 0, 0), Ok(None));
        assert!(Policy::from_pb(17, None, 4, 0, 0).unwrap_err().contains("17"));
        assert!(Policy::from_pb(1, None, 4, 0, 9).unwrap_err().contains("9"));
        assert_eq!(Policy::ASYNC.staleness_bound(), None);
    }

    #[test]
    fn inverse_scaling_divides_by_the_staleness_but_never_scales_up() {
        assert_eq!(Scaling::Inverse.factor(0, 4), 1.0);
        assert_eq!(Scaling::Inverse.factor(1, 4), 1.0);
        assert_eq!(Scaling::Inverse.factor(4, 4), 0.25);
        assert_eq!(Scaling::None.factor(100, 4), 1.0);
        assert_eq!(Scaling::Relative.factor(3, 4), 1.0);
        assert_eq!(Scaling::Relative.factor(12, 4), 0.25);
        assert_eq!(Scaling::Relative.factor(0, 1), 1.0);
    }
}
