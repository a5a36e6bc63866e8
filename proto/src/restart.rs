//! How a shard tells a worker that it came back from a checkpoint: a
//! `FAILED_PRECONDITION` status carrying the checkpoint and the restart's
//! session as metadata. Written by the shard and read by the worker, here
//! in one place.

use tonic::metadata::MetadataMap;

/// Status metadata key: the checkpoint's directory name, to pass to `Rewind`.
pub const RESTART_CHECKPOINT: &str = "ps-restart-checkpoint";
/// Status metadata key: the restart's session (16 hex digits), the `cause` of `Rewind`.
pub const RESTART_CAUSE: &str = "ps-restart-cause";

/// A shard restart, as a worker needs it to catch up: the checkpoint the
/// shard came back from and the session that names the restart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Restart {
    /// The checkpoint's directory name.
    pub checkpoint: String,
    /// The restart's session, passed to `Rewind` as its cause.
    pub cause: u64,
}

impl Restart {
    /// Writes this restart into a status's metadata (what a shard sends).
    /// A checkpoint name that is not a valid header value is left out, and
    /// the status then announces no restart.
    pub fn write_to(&self, meta: &mut MetadataMap) {
        if let Ok(v) = self.checkpoint.parse() {
            meta.insert(RESTART_CHECKPOINT, v);
        }
        if let Ok(v) = format!("{:016x}", self.cause).parse() {
            meta.insert(RESTART_CAUSE, v);
        }
    }

    /// The restart a status announces, if it announces one (what a worker reads).
    pub fn from_status(status: &tonic::Status) -> Option<Self> {
        if status.code() != tonic::Code::FailedPrecondition {
            return None;
        }
        let meta = status.metadata();
        let checkpoint = meta.get(RESTART_CHECKPOINT)?.to_str().ok()?.to_string();
        let cause = u64::from_str_radix(meta.get(RESTART_CAUSE)?.to_str().ok()?, 16).ok()?;
        Some(Self { checkpoint, cause })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restart_survives_the_trip_through_a_status() {
        let restart = Restart { checkpoint: "ckpt-000000000020-00000000000000ab".into(), cause: 0xab };
        let mut status = tonic::Status::failed_precondition("shard 1 is back at a checkpoint");
        restart.write_to(status.metadata_mut());
        assert_eq!(status.metadata().get(RESTART_CAUSE).unwrap(), "00000000000000ab");
        assert_eq!(Restart::from_status(&status), Some(restart.clone()));
        let mut other = tonic::Status::unavailable("restarting");
        restart.write_to(other.metadata_mut());
        assert_eq!(Restart::from_status(&other), None, "only FAILED_PRECONDITION announces a restart");
        assert_eq!(Restart::from_status(&tonic::Status::failed_precondition("stale clock")), None);
    }
}
