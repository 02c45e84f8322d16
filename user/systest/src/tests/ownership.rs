//! Ownership and accounting: every kernel object a request makes is
//! charged to a pool the requester holds, and goes, with its charge, when
//! the last capability to it goes (a thread with its last thread
//! capability, a process with its last capability-space capability);
//! capability spaces can never keep each other alive.

use super::root;
use crate::harness::{Ctx, TestResult};
use keel_abi::Error;
use keel_abi::cap::{NO_BADGE, Rights};
use keel_abi::syscall::SystemInfoKey;
use keel_rt::syscall::{
    aspace_create, cap_delegate, cap_delete, cap_derive, cap_grant, cap_identify, cap_space_create,
    pool_available, system_info, thread_create, thread_resume,
};

/// Pages a thread is charged to its capability space's pool (docs/abi.md).
const TCB_PAGES: usize = 1;

/// A never-resumed thread in `aspace` and `cspace`.
fn idle_thread(
    aspace: keel_abi::cap::CapToken,
    cspace: keel_abi::cap::CapToken,
) -> Result<keel_abi::cap::CapToken, Error> {
    // SAFETY: the thread is never resumed, so its entry and stack are never
    // used.
    unsafe { thread_create(aspace, cspace, 0x1000, 0x2000, 0) }
}

/// A suspended thread in a new capability space and address space, whose
/// three capabilities are then deleted, leaves nothing behind: deleting its
/// last capability ends the thread, which no longer keeps the spaces alive.
pub fn deleting_the_last_thread_capability_ends_it() -> TestResult {
    let r = root()?;
    let free = || system_info(SystemInfoKey::FreeFrames).ctx("FreeFrames");
    let pool_before = pool_available(r.pool).ctx("pool before")?;
    let frames_before = free()?;
    for round in 0..100 {
        let cs = cap_space_create(r.pool, 16).ctx("cspace")?;
        let aspace = aspace_create(r.pool).ctx("aspace")?;
        let t = idle_thread(aspace, cs).ctx("thread")?;
        cap_delete(t).ctx("delete thread")?;
        ensure_eq!(
            cap_identify(t).map(|_| ()),
            Err(Error::InvalidCapability),
            "round {round}"
        );
        cap_delete(aspace).ctx("delete aspace")?;
        cap_delete(cs).ctx("delete cspace")?;
    }
    ensure_eq!(
        pool_available(r.pool).ctx("pool after")?,
        pool_before,
        "pool pages after 100 rounds"
    );
    // Per-CPU frame and slab caches may keep a few; 100 leaked threads and
    // spaces kept well over 100.
    let frames_after = free()?;
    ensure!(
        frames_before.saturating_sub(frames_after) < 32,
        "{} frames lost in 100 rounds",
        frames_before.saturating_sub(frames_after)
    );
    Ok(())
}

/// A thread's TCB is charged to the pool of the capability space it runs
/// in, and credited back when the thread goes.
pub fn a_thread_is_charged_to_its_pool() -> TestResult {
    let r = root()?;
    let start = pool_available(r.pool).ctx("pool at the start")?;
    let cs = cap_space_create(r.pool, 16).ctx("cspace")?;
    let before = pool_available(r.pool).ctx("pool before")?;
    let t = idle_thread(r.aspace, cs).ctx("thread")?;
    let t2 = idle_thread(r.aspace, cs).ctx("thread 2")?;
    ensure_eq!(
        before - pool_available(r.pool).ctx("pool with threads")?,
        2 * TCB_PAGES
    );
    // Its derived capabilities keep it too.
    let child = cap_derive(t, Rights::READ, NO_BADGE).ctx("derive")?;
    cap_delete(t).ctx("delete")?;
    ensure_eq!(
        before - pool_available(r.pool).ctx("pool with a derived cap")?,
        2 * TCB_PAGES
    );
    cap_delete(child).ctx("delete child")?;
    ensure_eq!(
        before - pool_available(r.pool).ctx("pool with one thread")?,
        TCB_PAGES
    );
    // Deleting the process (its capability space) ends its threads: the
    // remaining thread capability goes stale and its charge comes back.
    cap_delete(cs).ctx("delete cspace")?;
    ensure_eq!(thread_resume(t2), Err(Error::InvalidState));
    ensure_eq!(pool_available(r.pool).ctx("pool after")?, start);
    cap_delete(t2).ctx("delete stale thread cap")?;
    Ok(())
}

/// Capability spaces are ranked by who made them; a capability to a space
/// may only go into a space that made it (or its makers): two spaces can
/// never hold each other, so deleting both frees both.
pub fn capability_spaces_cannot_hold_each_other() -> TestResult {
    let r = root()?;
    let before = pool_available(r.pool).ctx("pool before")?;
    let a = cap_space_create(r.pool, 16).ctx("a")?;
    let b = cap_space_create(r.pool, 16).ctx("b")?;
    ensure_eq!(cap_grant(a, b, Rights::ALL), Err(Error::InvalidArgument));
    ensure_eq!(cap_grant(b, a, Rights::READ), Err(Error::InvalidArgument));
    let a2 = cap_derive(a, Rights::ALL, NO_BADGE).ctx("derive a")?;
    ensure_eq!(cap_delegate(a2, b), Err(Error::InvalidArgument));
    // Not into itself either, and not the root task's own space into a
    // space it made.
    ensure_eq!(cap_grant(a2, a, Rights::ALL), Err(Error::InvalidArgument));
    ensure_eq!(
        cap_grant(r.cspace, a, Rights::READ),
        Err(Error::InvalidArgument)
    );
    // Other objects still go anywhere.
    let t = idle_thread(r.aspace, a).ctx("thread in a")?;
    let in_b = cap_grant(t, b, Rights::ALL).ctx("thread of a into b")?;
    let in_a = cap_grant(t, a, Rights::ALL).ctx("thread of a into a")?;
    ensure!(in_a.raw() != 0 && in_b.raw() != 0);
    cap_delete(t).ctx("delete t")?;
    cap_delete(a2).ctx("delete a2")?;
    cap_delete(a).ctx("delete a")?;
    cap_delete(b).ctx("delete b")?;
    ensure_eq!(
        pool_available(r.pool).ctx("pool after")?,
        before,
        "both spaces, the thread and its capabilities are gone"
    );
    Ok(())
}
