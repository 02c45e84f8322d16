//! `keel_rt::sync` under contention: threads on every CPU (preempted by
//! their slices, and yielding inside the lock) take a mutex and a
//! semaphore thousands of times; wake-ups that coalesce still wake every
//! waiter; creating a lock needs a pool and dropping it gives its memory
//! back.

use super::{WAIT_YIELDS, root, stale, wait_until};
use crate::harness::{Ctx, TestResult};
use alloc::vec::Vec;
use core::sync::atomic::{AtomicUsize, Ordering};
use keel_abi::Error;
use keel_rt::sync::{Mutex, Semaphore};
use keel_rt::syscall::{pool_available, yield_now};
use keel_rt::thread::Thread;

const WORKERS: usize = 4;
const ROUNDS: u64 = 2_000;

/// Adds one to the mutex's count `ROUNDS` times, not atomically: a read,
/// a pause (a yield now and then, so others find the lock held and
/// block), a write.
fn mutex_worker(arg: usize) -> i32 {
    // SAFETY: the test keeps the mutex alive until this thread is gone.
    let m = unsafe { &*(arg as *const Mutex<u64>) };
    for i in 0..ROUNDS {
        let Ok(mut count) = m.lock() else { return 1 };
        let seen = *count;
        if i % 64 == 0 {
            let _ = yield_now();
        } else {
            for _ in 0..20 {
                core::hint::spin_loop();
            }
        }
        *count = seen + 1;
    }
    0
}

/// Starts `WORKERS` threads running `f(arg)` and waits for them all;
/// their results.
fn run_workers(f: fn(usize) -> i32, arg: usize) -> Result<Vec<Option<i32>>, alloc::string::String> {
    let mut threads = Vec::new();
    for _ in 0..WORKERS {
        threads.push(Thread::spawn(f, arg).ctx("spawn")?);
    }
    Ok(threads.iter().map(|t| t.join(10 * WAIT_YIELDS)).collect())
}

pub fn a_mutex_excludes_threads_on_every_cpu() -> TestResult {
    let r = root()?;
    let m = Mutex::new(r.pool, 0u64).ctx("mutex")?;
    let held = m.try_lock().ctx("a new mutex is free")?;
    ensure!(m.try_lock().is_none(), "taken twice");
    drop(held);
    let results = run_workers(mutex_worker, &m as *const Mutex<u64> as usize)?;
    ensure_eq!(
        results,
        [Some(0); WORKERS].to_vec(),
        "every worker finished"
    );
    ensure_eq!(
        *m.lock().ctx("lock")?,
        WORKERS as u64 * ROUNDS,
        "no update lost"
    );
    Ok(())
}

static INSIDE: AtomicUsize = AtomicUsize::new(0);
static MOST_INSIDE: AtomicUsize = AtomicUsize::new(0);
const PERMITS: usize = 2;

/// Enters the semaphore's section 300 times, counting who is inside.
fn semaphore_worker(arg: usize) -> i32 {
    // SAFETY: the test keeps the semaphore alive until this thread is gone.
    let s = unsafe { &*(arg as *const Semaphore) };
    for i in 0..300 {
        if s.acquire().is_err() {
            return 1;
        }
        let now = INSIDE.fetch_add(1, Ordering::SeqCst) + 1;
        MOST_INSIDE.fetch_max(now, Ordering::SeqCst);
        if i % 8 == 0 {
            let _ = yield_now();
        }
        INSIDE.fetch_sub(1, Ordering::SeqCst);
        s.release();
    }
    0
}

pub fn a_semaphore_bounds_how_many_are_inside() -> TestResult {
    let r = root()?;
    let s = Semaphore::new(r.pool, PERMITS).ctx("semaphore")?;
    INSIDE.store(0, Ordering::SeqCst);
    MOST_INSIDE.store(0, Ordering::SeqCst);
    let results = run_workers(semaphore_worker, &s as *const Semaphore as usize)?;
    ensure_eq!(
        results,
        [Some(0); WORKERS].to_vec(),
        "every worker finished"
    );
    let most = MOST_INSIDE.load(Ordering::SeqCst);
    ensure!((1..=PERMITS).contains(&most), "{most} inside at once");
    ensure_eq!(s.available(), PERMITS, "every permit came back");
    Ok(())
}

static PASSED: AtomicUsize = AtomicUsize::new(0);

/// Takes one permit, then counts itself through.
fn one_permit(arg: usize) -> i32 {
    // SAFETY: as in `semaphore_worker`.
    let s = unsafe { &*(arg as *const Semaphore) };
    if s.acquire().is_err() {
        return 1;
    }
    PASSED.fetch_add(1, Ordering::SeqCst);
    0
}

pub fn a_semaphore_hands_permits_to_waiting_threads() -> TestResult {
    let r = root()?;
    let s = Semaphore::new(r.pool, 0).ctx("semaphore")?;
    PASSED.store(0, Ordering::SeqCst);
    let arg = &s as *const Semaphore as usize;
    let mut threads = Vec::new();
    for _ in 0..3 {
        threads.push(Thread::spawn(one_permit, arg).ctx("spawn")?);
    }
    for _ in 0..20 {
        yield_now().ctx("yield")?;
    }
    ensure_eq!(PASSED.load(Ordering::SeqCst), 0, "no permit yet");
    // Three releases at once: their signals may coalesce into one.
    for _ in 0..3 {
        s.release();
    }
    ensure!(
        wait_until(|| PASSED.load(Ordering::SeqCst) == 3),
        "{} of 3 got through",
        PASSED.load(Ordering::SeqCst)
    );
    for t in &threads {
        ensure_eq!(t.join(WAIT_YIELDS), Some(0));
    }
    ensure_eq!(s.available(), 0);
    Ok(())
}

pub fn locks_need_a_pool_and_give_back_their_memory() -> TestResult {
    let r = root()?;
    ensure_eq!(
        Mutex::new(stale(r.pool), 0u8).err(),
        Some(Error::InvalidCapability),
        "a stale pool"
    );
    ensure_eq!(
        Semaphore::new(r.aspace, 1).err(),
        Some(Error::WrongObjectType),
        "an address space is not a pool"
    );
    let before = pool_available(r.pool).ctx("pool")?;
    let locks = (Mutex::new(r.pool, ()), Semaphore::new(r.pool, 1));
    ensure!(locks.0.is_ok() && locks.1.is_ok(), "created");
    drop(locks);
    ensure_eq!(pool_available(r.pool), Ok(before), "given back");
    Ok(())
}
