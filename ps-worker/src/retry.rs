//! Retries with bounded exponential backoff and full jitter.

use std::time::Duration;

use rand::Rng;
use tonic::Code;

/// When and how often a failed request is tried again.
///
/// Only transient failures are retried: `Unavailable` and `Cancelled`
/// (connection lost, shard restarting) always, and `DeadlineExceeded` for
/// requests that never wait on other workers. Pushes are safe to retry
/// because shards apply each (worker, clock, tensor part) exactly once.
///
/// A request is given up when either bound is reached: `max_attempts`
/// attempts, or `give_up_after` since its first failure. The default is
/// generous (any number of attempts for two minutes), so a worker rides
/// out shards that start after it or restart, and says so in its log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, including the first (at least 1).
    pub max_attempts: u32,
    /// How long after its first failure a request is still retried.
    pub give_up_after: Duration,
    /// Backoff before the second attempt; doubles each time.
    pub initial_backoff: Duration,
    /// Upper bound of one backoff.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: u32::MAX,
            give_up_after: DEFAULT_GIVE_UP_AFTER,
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(2),
        }
    }
}

/// How long a request is retried by default: long enough for a shard to
/// be restarted by hand or by a scheduler.
pub const DEFAULT_GIVE_UP_AFTER: Duration = Duration::from_secs(120);

/// How often a worker still retrying says so in its log.
pub const RETRY_LOG_EVERY: Duration = Duration::from_secs(5);

impl RetryPolicy {
    /// No retries.
    pub fn never() -> Self {
        Self { max_attempts: 1, ..Self::default() }
    }

    /// Whether a request that made `attempts` attempts, the first failure
    /// `failing_for` ago, may make another.
    pub fn allows_another(&self, attempts: u32, failing_for: Duration) -> bool {
        attempts < self.max_attempts && failing_for < self.give_up_after
    }

    /// Whether a failure with `code` is worth another attempt.
    pub fn is_transient(code: Code, waits_on_others: bool) -> bool {
        matches!(code, Code::Unavailable | Code::Cancelled)
            || (code == Code::DeadlineExceeded && !waits_on_others)
    }

    /// The pause before attempt `attempt + 1` (attempt counts from 1): a
    /// uniformly random duration up to `min(max, initial * 2^(attempt-1))`.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let cap = self
            .initial_backoff
            .saturating_mul(1u32 << (attempt.saturating_sub(1)).min(16))
            .min(self.max_backoff);
        let nanos = cap.as_nanos().min(u128::from(u64::MAX)) as u64;
        Duration::from_nanos(rand::rng().random_range(0..=nanos))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_bounded_and_grows() {
        let p = RetryPolicy::default();
        for attempt in 1..20 {
            let cap = p.initial_backoff.saturating_mul(1 << (attempt - 1).min(16)).min(p.max_backoff);
            assert!(p.backoff(attempt) <= cap);
        }
        assert!(p.backoff(30) <= Duration::from_secs(2));
    }

    #[test]
    fn a_request_is_given_up_at_either_bound() {
        let p =
            RetryPolicy { max_attempts: 3, give_up_after: Duration::from_secs(10), ..RetryPolicy::default() };
        assert!(p.allows_another(2, Duration::from_secs(9)));
        assert!(!p.allows_another(3, Duration::ZERO), "attempts");
        assert!(!p.allows_another(1, Duration::from_secs(10)), "time");
        assert!(!RetryPolicy::never().allows_another(1, Duration::ZERO));
        assert!(RetryPolicy::default().allows_another(1000, Duration::from_secs(119)));
    }

    #[test]
    fn only_transient_codes_retry() {
        assert!(RetryPolicy::is_transient(Code::Unavailable, true));
        assert!(RetryPolicy::is_transient(Code::DeadlineExceeded, false));
        assert!(!RetryPolicy::is_transient(Code::DeadlineExceeded, true));
        assert!(!RetryPolicy::is_transient(Code::FailedPrecondition, false));
        assert!(!RetryPolicy::is_transient(Code::InvalidArgument, false));
    }
}
