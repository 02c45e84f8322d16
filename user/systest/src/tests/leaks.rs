//! Runs last: everything the tests took must be back. Pool pages come back
//! when the last capability and mapping of an object go (less the page
//! tables the root task's address space keeps for reuse); thread stacks
//! come back when their threads are finished or killed.

use super::root;
use crate::harness::{Ctx, TestResult};
use core::sync::atomic::{AtomicUsize, Ordering};
use keel_rt::syscall::pool_available;
use keel_rt::thread::{STACKS, free_stacks};

/// Emptied page tables an address space may keep, still charged.
const KEPT_TABLES: usize = 3;

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
    // The root task's own address space is charged to the pool too: it
    // keeps the path of (at most three) tables to its last emptied 2 MiB
    // block for the next map there (docs/memory.md).
    ensure!(
        now <= before && before - now <= KEPT_TABLES,
        "pool pages now {} and before the tests {}",
        now,
        before
    );
    ensure_eq!(free_stacks(), STACKS, "free thread stacks");
    Ok(())
}
