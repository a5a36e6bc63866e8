//! The pull replies still being sent from a tensor part's values, counted
//! so that an update can wait for them and change the values in place
//! instead of copying them.
//!
//! A pull reply sends the part's values from their own memory. If an update
//! came while one was still being sent, the update had to copy the whole
//! part first, and with many workers pulling, each reply in flight could
//! keep another copy alive. An update now waits until no reply holds the
//! values (for at most [`UPDATE_WAIT`]), and pulls that find an update
//! waiting let it go first (the sync core holds them while an update is
//! pending), so the values exist once. An update that gives
//! up copies the values, and the copy is counted afresh: a reply that is
//! never read holds back one update, not every later one.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

/// How long an update waits for pull replies to be sent before it copies
/// the values instead: a reader that stops reading delays updates at most
/// this long.
pub const UPDATE_WAIT: Duration = Duration::from_secs(2);

/// Counts the pull replies reading a part's values.
#[derive(Debug)]
pub struct Readers {
    /// Replies holding the values.
    reading: watch::Sender<usize>,
}

impl Default for Readers {
    fn default() -> Self {
        Self { reading: watch::Sender::new(0) }
    }
}

impl Readers {
    /// Counts one more reply reading the values until the lease drops.
    /// Take it under the part's lock, with the snapshot.
    pub fn lease(self: &Arc<Self>) -> ReadLease {
        self.reading.send_modify(|n| *n += 1);
        ReadLease(Arc::clone(self))
    }

    /// Replies reading the values now.
    pub fn reading(&self) -> usize {
        *self.reading.borrow()
    }

    /// Returns once no reply reads the values, or at `deadline`, or once
    /// these readers are retired.
    pub async fn finished(&self, deadline: tokio::time::Instant) {
        let mut reading = self.reading.subscribe();
        let _ = tokio::time::timeout_at(deadline, reading.wait_for(|n| *n == 0)).await;
    }

    /// Ends the counting because the values they read were replaced by a
    /// copy: updates waiting in [`finished`](Self::finished) return and
    /// look at the copy's readers instead. Leases still held end later
    /// without effect.
    pub fn retire(&self) {
        self.reading.send_replace(0);
    }
}

/// One pull reply reading the values; dropping it ends the read.
#[derive(Debug)]
pub struct ReadLease(Arc<Readers>);

impl Drop for ReadLease {
    fn drop(&mut self) {
        self.0.reading.send_modify(|n| *n = n.saturating_sub(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_count_the_replies_reading() {
        let readers = Arc::new(Readers::default());
        let a = readers.lease();
        let b = readers.lease();
        assert_eq!(readers.reading(), 2);
        drop(a);
        assert_eq!(readers.reading(), 1);
        drop(b);
        assert_eq!(readers.reading(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn finished_returns_when_the_last_lease_drops() {
        let readers = Arc::new(Readers::default());
        let lease = readers.lease();
        let waiter = {
            let readers = Arc::clone(&readers);
            tokio::spawn(async move {
                readers.finished(tokio::time::Instant::now() + Duration::from_secs(3600)).await;
                tokio::time::Instant::now()
            })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        let dropped_at = tokio::time::Instant::now();
        drop(lease);
        assert_eq!(waiter.await.expect("waiter"), dropped_at);
    }

    #[tokio::test(start_paused = true)]
    async fn finished_returns_when_the_readers_are_retired() {
        let readers = Arc::new(Readers::default());
        let lease = readers.lease();
        let started = tokio::time::Instant::now();
        let waiter = {
            let readers = Arc::clone(&readers);
            tokio::spawn(async move { readers.finished(started + UPDATE_WAIT).await })
        };
        tokio::task::yield_now().await;
        readers.retire();
        waiter.await.expect("waiter");
        assert_eq!(tokio::time::Instant::now(), started);
        // A lease that ends after the retirement changes nothing.
        drop(lease);
        assert_eq!(readers.reading(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn finished_gives_up_at_the_deadline() {
        let readers = Arc::new(Readers::default());
        let _lease = readers.lease();
        let deadline = tokio::time::Instant::now() + UPDATE_WAIT;
        readers.finished(deadline).await;
        assert_eq!(tokio::time::Instant::now(), deadline);
        assert_eq!(readers.reading(), 1);
    }
}
