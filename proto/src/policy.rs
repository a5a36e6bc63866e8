//! The synchronisation policy of a tensor, defined once for every process:
//! its text form (flags, config files, checkpoint manifests, metric labels)
//! and its protocol form.

use std::fmt;
use std::str::FromStr;

use crate::pb;

/// A tensor's synchronisation policy (DESIGN §3).
///
/// Its text form is `sync`, `ssp(s)` or `async`; `ssp:s` parses too, since
/// parentheses need quoting in a shell:
///
/// ```
/// use ps_proto::Policy;
/// assert_eq!("ssp(3)".parse::<Policy>(), Ok(Policy::Ssp { staleness: 3 }));
/// assert_eq!("ssp:3".parse::<Policy>(), Ok(Policy::Ssp { staleness: 3 }));
/// assert_eq!(Policy::Ssp { staleness: 3 }.to_string(), "ssp(3)");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Policy {
    /// Strong: the gradients of all live workers for clock `c` are aggregated
    /// and applied once; `pull(c)` sees exactly the updates of clocks `< c`.
    Sync,
    /// Bounded staleness: `pull(c)` waits until every live worker has
    /// completed clock `c - staleness - 1`, i.e. its clock is `>= c - staleness`.
    Ssp {
        /// The staleness bound `s`.
        staleness: u32,
    },
    /// Eventual: pushes are applied on arrival and pulls never wait.
    Async,
}

impl Policy {
    /// The staleness a read may show: 0 for sync, `s` for ssp, unbounded (`None`) for async.
    pub fn staleness_bound(&self) -> Option<u64> {
        match self {
            Policy::Sync => Some(0),
            Policy::Ssp { staleness } => Some(u64::from(*staleness)),
            Policy::Async => None,
        }
    }

    /// The protocol form: the enum value and the staleness field (0 unless ssp).
    pub fn to_pb(self) -> (pb::Policy, u32) {
        match self {
            Policy::Sync => (pb::Policy::Sync, 0),
            Policy::Ssp { staleness } => (pb::Policy::Ssp, staleness),
            Policy::Async => (pb::Policy::Async, 0),
        }
    }

    /// The policy a protocol message names: `None` for `POLICY_UNSPECIFIED`
    /// (the receiver's default); an ssp without a staleness gets
    /// `default_staleness`. An unknown enum value is an error naming it.
    pub fn from_pb(
        value: i32,
        staleness: Option<u32>,
        default_staleness: u32,
    ) -> Result<Option<Self>, String> {
        let policy = pb::Policy::try_from(value).map_err(|_| format!("unknown policy value {value}"))?;
        Ok(match policy {
            pb::Policy::Unspecified => None,
            pb::Policy::Sync => Some(Policy::Sync),
            pb::Policy::Ssp => Some(Policy::Ssp { staleness: staleness.unwrap_or(default_staleness) }),
            pb::Policy::Async => Some(Policy::Async),
        })
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Policy::Sync => f.write_str("sync"),
            Policy::Ssp { staleness } => write!(f, "ssp({staleness})"),
            Policy::Async => f.write_str("async"),
        }
    }
}

impl FromStr for Policy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("unknown policy {s:?}: use sync, ssp(N) (or ssp:N) or async");
        match s {
            "sync" => Ok(Policy::Sync),
            "async" => Ok(Policy::Async),
            _ => {
                let n = s
                    .strip_prefix("ssp(")
                    .and_then(|r| r.strip_suffix(')'))
                    .or_else(|| s.strip_prefix("ssp:"))
                    .ok_or_else(bad)?;
                Ok(Policy::Ssp { staleness: n.parse().map_err(|_| bad())? })
            }
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
        for p in [Policy::Sync, Policy::Ssp { staleness: 0 }, Policy::Ssp { staleness: 10 }, Policy::Async] {
            assert_eq!(p.to_string().parse::<Policy>(), Ok(p));
            let (kind, staleness) = p.to_pb();
            assert_eq!(Policy::from_pb(kind as i32, Some(staleness), 99), Ok(Some(p)));
        }
        for bad in ["", "ssp", "ssp()", "ssp(x)", "ssp(3", "ssp:-1", "SYNC", "bsp"] {
            assert!(bad.parse::<Policy>().unwrap_err().contains("unknown policy"), "{bad:?}");
        }
        assert_eq!(Policy::from_pb(pb::Policy::Ssp as i32, None, 4), Ok(Some(Policy::Ssp { staleness: 4 })));
        assert_eq!(Policy::from_pb(0, None, 4), Ok(None));
        assert!(Policy::from_pb(17, None, 4).unwrap_err().contains("17"));
        assert_eq!(Policy::Async.staleness_bound(), None);
    }
}
