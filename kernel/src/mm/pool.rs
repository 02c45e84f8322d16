//! The memory-pool object: a budget of pages that every kernel allocation
//! made on behalf of a process is charged to (memory objects, address
//! spaces and their page tables, capability spaces, threads), so one
//! process cannot exhaust kernel memory.
//!
//! Invariant: `used <= limit`; every charge is credited back exactly once,
//! by the object it was charged for, when that object is destroyed.

use core::sync::atomic::{AtomicU64, Ordering};
use keel_abi::Error;

/// A page budget: charges fail with `OutOfMemory` once `limit` pages are
/// in use. Thread-safe (atomic counter).
#[derive(Debug)]
pub struct MemoryPool {
    limit: u64,
    used: AtomicU64,
}

impl MemoryPool {
    /// An empty pool that allows at most `limit_pages` pages in use.
    pub const fn new(limit_pages: u64) -> MemoryPool {
        MemoryPool {
            limit: limit_pages,
            used: AtomicU64::new(0),
        }
    }

    /// Takes `pages` from the pool, or `OutOfMemory` if it has fewer left.
    pub fn charge(&self, pages: u64) -> Result<(), Error> {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(pages).filter(|&u| u <= self.limit)
            })
            .map(|_| ())
            .map_err(|_| Error::OutOfMemory)
    }

    /// Returns `pages` taken by [`Self::charge`].
    pub fn credit(&self, pages: u64) {
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                Some(used.saturating_sub(pages))
            });
    }

    /// Pages still available.
    pub fn available(&self) -> u64 {
        self.limit.saturating_sub(self.used.load(Ordering::Acquire))
    }

    /// The most pages the pool allows in use at once, as given to
    /// [`Self::new`].
    pub fn limit(&self) -> u64 {
        self.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_stop_at_the_limit_and_credits_return() {
        let q = MemoryPool::new(10);
        assert_eq!(q.charge(6), Ok(()));
        assert_eq!(q.charge(5), Err(Error::OutOfMemory));
        assert_eq!(q.available(), 4);
        assert_eq!(q.charge(u64::MAX), Err(Error::OutOfMemory));
        q.credit(6);
        assert_eq!(q.available(), 10);
        assert_eq!(q.charge(10), Ok(()));
    }
}
