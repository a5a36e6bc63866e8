//! A shared budget of push bytes being received at once, so the payloads
//! that unfinished pushes hold stay bounded however many streams are open.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Bytes of push payload the shard receives at once, counted in KiB.
#[derive(Clone, Debug)]
pub struct PushBudget {
    kib: Arc<Semaphore>,
    total_kib: u32,
}

/// A share of the budget, given back when dropped.
#[derive(Debug)]
pub struct Reserved {
    _permit: OwnedSemaphorePermit,
}

impl PushBudget {
    /// A budget of `bytes` (rounded up to KiB, at most 4 TiB).
    pub fn new(bytes: u64) -> Self {
        let total_kib = bytes.div_ceil(1024).clamp(1, u64::from(u32::MAX)) as u32;
        Self { kib: Arc::new(Semaphore::new(total_kib as usize)), total_kib }
    }

    /// Waits until `bytes` fit (a request above the whole budget waits for
    /// all of it, so it runs alone) and reserves them. `None` only if the
    /// budget was closed, which nothing does.
    pub async fn reserve(&self, bytes: u64) -> Option<Reserved> {
        let kib = bytes.div_ceil(1024).clamp(1, u64::from(self.total_kib)) as u32;
        Arc::clone(&self.kib).acquire_many_owned(kib).await.ok().map(|_permit| Reserved { _permit })
    }

    /// KiB not reserved now.
    pub fn available_kib(&self) -> usize {
        self.kib.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reservations_wait_for_room_and_give_it_back() {
        let budget = PushBudget::new(10 << 10);
        let a = budget.reserve(6 << 10).await.expect("open");
        assert_eq!(budget.available_kib(), 4);
        let more = budget.clone();
        let waiting = tokio::spawn(async move { more.reserve(5 << 10).await });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "5 KiB fit in the 4 KiB left");
        drop(a);
        let b = waiting.await.expect("task").expect("open");
        assert_eq!(budget.available_kib(), 5);
        drop(b);
        // Larger than the whole budget: takes all of it.
        let all = budget.reserve(1 << 40).await.expect("open");
        assert_eq!(budget.available_kib(), 0);
        drop(all);
        assert_eq!(budget.available_kib(), 10);
    }
}
