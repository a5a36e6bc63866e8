//! Buffers of pushed pieces, kept for the next piece.

use std::sync::Mutex;

/// Buffers for receiving the pieces of sync pushes, kept after use: once
/// as many exist as pieces are received at once, receiving a piece
/// allocates nothing, and no freed buffer lingers in the allocator
/// waiting for its memory to go back to the system (which, with a piece
/// freed every few milliseconds, kept tens of MiB resident). Keeps at most
/// `max_kept` buffers.
#[derive(Debug)]
pub struct PieceBuffers {
    free: Mutex<Vec<Vec<f32>>>,
    max_kept: usize,
}

impl PieceBuffers {
    /// A pool that keeps at most `max_kept` buffers.
    pub fn new(max_kept: usize) -> Self {
        Self { free: Mutex::new(Vec::new()), max_kept }
    }

    /// An empty buffer with room for `capacity` elements: a kept one if one
    /// is large enough, else a new one.
    pub fn take(&self, capacity: usize) -> Vec<f32> {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        match free.iter().position(|b| b.capacity() >= capacity) {
            Some(i) => free.swap_remove(i),
            None => Vec::with_capacity(capacity),
        }
    }

    /// Keeps `buffer`, emptied, for a later piece, unless `max_kept` are kept already.
    pub fn give(&self, mut buffer: Vec<f32>) {
        buffer.clear();
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        if free.len() < self.max_kept && buffer.capacity() > 0 {
            free.push(buffer);
        }
    }

    /// Buffers kept now.
    #[cfg(test)]
    fn kept(&self) -> usize {
        self.free.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_given_buffer_is_taken_again_and_no_more_than_max_are_kept() {
        let pool = PieceBuffers::new(2);
        let mut a = pool.take(100);
        assert!(a.capacity() >= 100 && a.is_empty());
        a.extend([1.0; 100]);
        let a_ptr = a.as_ptr();
        pool.give(a);
        let b = pool.take(60);
        assert_eq!(b.as_ptr(), a_ptr, "the kept buffer is reused");
        assert!(b.is_empty(), "and handed out empty");
        assert!(pool.take(1000).capacity() >= 1000, "too small a kept buffer is not handed out");
        for _ in 0..3 {
            pool.give(Vec::with_capacity(10));
        }
        assert_eq!(pool.kept(), 2);
    }
}
