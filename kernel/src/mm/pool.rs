//! The memory-pool object: a budget of pages that every kernel allocation
//! made on behalf of a process is charged to (memory objects, address
//! spaces and their page tables, capability spaces, threads), so one
//! process cannot exhaust kernel memory.
//!
//! A pool can be carved out of another (`PoolCreate`): its whole limit is
//! charged to the parent until the child goes, so the limits nest (a
//! process's pool inside its parent's), at most [`MAX_DEPTH`] deep (so
//! dropping a chain of them cannot overflow the kernel stack).
//!
//! Invariant: `used <= limit`; every charge is credited back exactly once,
//! by the object it was charged for, when that object is destroyed.

use super::kref::KArc;
use core::sync::atomic::{AtomicU64, Ordering};
use keel_abi::Error;

/// Most pools a pool may be nested in.
pub const MAX_DEPTH: u32 = 16;

/// A page budget: charges fail with `OutOfMemory` once `limit` pages are
/// in use. Thread-safe (atomic counter).
pub struct MemoryPool {
    limit: u64,
    used: AtomicU64,
    /// The pool this one's limit is charged to, if carved from one, and
    /// how many pools this one is nested in.
    parent: Option<KArc<MemoryPool>>,
    depth: u32,
}

impl MemoryPool {
    /// An empty pool that allows at most `limit_pages` pages in use.
    pub const fn new(limit_pages: u64) -> MemoryPool {
        MemoryPool {
            limit: limit_pages,
            used: AtomicU64::new(0),
            parent: None,
            depth: 0,
        }
    }

    /// A pool of `pages` pages charged to `parent` for as long as it lives.
    /// `InvalidArgument` if `parent` is [`MAX_DEPTH`] deep.
    pub fn carve(parent: &KArc<MemoryPool>, pages: u64) -> Result<KArc<MemoryPool>, Error> {
        let depth = parent.depth + 1;
        super::kref::ensure(depth <= MAX_DEPTH, Error::InvalidArgument)?;
        parent.charge(pages)?;
        // On failure the dropped value credits the parent back.
        KArc::try_new(MemoryPool {
            limit: pages,
            used: AtomicU64::new(0),
            parent: Some(parent.clone()),
            depth,
        })
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

impl Drop for MemoryPool {
    fn drop(&mut self) {
        if let Some(parent) = &self.parent {
            parent.credit(self.limit);
        }
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

    #[test]
    fn a_carved_pool_holds_its_limit_of_the_parent_until_it_goes() {
        let root = KArc::try_new(MemoryPool::new(100)).unwrap();
        let child = MemoryPool::carve(&root, 60).unwrap();
        assert_eq!(root.available(), 40);
        assert_eq!(MemoryPool::carve(&root, 41).err(), Some(Error::OutOfMemory));
        assert_eq!(child.charge(61), Err(Error::OutOfMemory));
        let mut chain = child.clone();
        for _ in 1..MAX_DEPTH {
            chain = MemoryPool::carve(&chain, 1).unwrap();
        }
        assert_eq!(
            MemoryPool::carve(&chain, 1).err(),
            Some(Error::InvalidArgument)
        );
        drop((child, chain));
        assert_eq!(root.available(), 100, "the whole chain gave back");
    }
}
