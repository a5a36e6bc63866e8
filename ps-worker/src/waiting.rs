//! What a worker says while it retries a shard: the first transient
//! failure of a request at warn with its cause, then a line every
//! [`RETRY_LOG_EVERY`] for as long as the shard stays unreachable, and a
//! line when it answers again. Silence while waiting is a bug.

use std::time::{Duration, Instant};

use crate::retry::RETRY_LOG_EVERY;

/// One request's run of transient failures against one shard.
pub(crate) struct Waiting<'a> {
    worker: u32,
    shard: u32,
    addr: &'a str,
    op: &'static str,
    give_up_after: Duration,
    /// When the first failure happened, and when the last line was logged.
    since: Option<(Instant, Instant)>,
}

impl<'a> Waiting<'a> {
    /// Nothing has failed yet.
    pub(crate) fn new(
        worker: u32,
        shard: u32,
        addr: &'a str,
        op: &'static str,
        give_up_after: Duration,
    ) -> Self {
        Self { worker, shard, addr, op, give_up_after, since: None }
    }

    /// How long the request has been failing (zero before its first failure).
    pub(crate) fn failing_for(&self) -> Duration {
        self.since.map_or(Duration::ZERO, |(first, _)| first.elapsed())
    }

    /// An attempt failed transiently with `cause`; the request will be retried.
    pub(crate) fn failed(&mut self, cause: &str) {
        let now = Instant::now();
        let (worker, shard, addr, op) = (self.worker, self.shard, self.addr, self.op);
        let give_up = self.give_up_after.as_secs_f64();
        match self.since {
            None => {
                self.since = Some((now, now));
                tracing::warn!(
                    worker,
                    shard,
                    addr,
                    op,
                    "shard {shard} ({addr}) did not answer {op}: {cause}; retrying for up to {give_up:.0} s"
                );
            }
            Some((first, last)) if now.duration_since(last) >= RETRY_LOG_EVERY => {
                self.since = Some((first, now));
                let secs = now.duration_since(first).as_secs_f64();
                tracing::warn!(
                    worker,
                    shard,
                    addr,
                    op,
                    "still waiting for shard {shard} ({addr}) after {secs:.0} s ({op}: {cause}); \
                     giving up after {give_up:.0} s"
                );
            }
            Some(_) => {}
        }
    }

    /// The request succeeded: says so if it had been failing.
    pub(crate) fn done(&self) {
        if let Some((first, _)) = self.since {
            let (worker, shard, addr, op) = (self.worker, self.shard, self.addr, self.op);
            let secs = first.elapsed().as_secs_f64();
            tracing::warn!(
                worker,
                shard,
                addr,
                op,
                "shard {shard} ({addr}) answered {op} again after {secs:.1} s"
            );
        }
    }
}

/// An error with its sources, outermost first, joined by ": " (transport
/// errors keep the useful part, such as "Connection refused", in a source).
pub(crate) fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let next = s.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = s.source();
    }
    text
}
