//! Runs last: everything the tests took must be back. Pool pages come back
//! when the last capability and mapping of an object go; thread stacks
//! come back when their threads are finished or killed.

use super::root;
use crate::harness::{Ctx, TestResult};
use core::sync::atomic::{AtomicUsize, Ordering};
use keel_rt::syscall::pool_available;
use keel_rt::thread::{STACKS, free_stacks};

/// Pool pages available before the first test (`usize::MAX`: unknown).
static POOL_BEFORE: AtomicUsize = AtomicUsize::new(usize::MAX);

/// Records the pool level the last test compares against.
pub fn record_baseline() {
    if let Some(pages) = root().ok().and_then(|r| pool_available(r.pool).ok()) {
        POOL_BEFORE.store(pages, Ordering::Relaxed);
    }
}

pub fn everything_was_returned() -> TestResult {
    let r = root()?;
    let before = POOL_BEFORE.load(Ordering::Relaxed);
    ensure!(before != usize::MAX, "no baseline was recorded");
    let now = pool_available(r.pool).ctx("pool_available")?;
    ensure_eq!(now, before, "pool pages now and before the tests");
    ensure_eq!(free_stacks(), STACKS, "free thread stacks");
    Ok(())
}
