//! `keel_rt::sync` under contention: threads on every CPU (preempted by
//! their slices, and yielding inside the lock) take a mutex, a semaphore
//! and a readers-writer lock thousands of times and meet at a barrier;
//! a condition variable wakes one waiter or all; creating a lock needs a
//! pool and dropping it gives its memory back.

use super::{WAIT_YIELDS, root, stale, wait_until, yield_n};
use crate::harness::{Ctx, TestResult};
use alloc::vec::Vec;
use core::sync::atomic::{AtomicUsize, Ordering};
use keel_abi::Error;
use keel_rt::sync::{Barrier, Condvar, Mutex, RwLock, Semaphore};
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
    let locks = (
        Mutex::new(r.pool, ()),
        Semaphore::new(r.pool, 1),
        RwLock::new(r.pool, ()),
        Barrier::new(r.pool, 2),
    );
    ensure!(
        locks.0.is_ok() && locks.1.is_ok() && locks.2.is_ok() && locks.3.is_ok(),
        "created"
    );
    drop(locks);
    ensure_eq!(pool_available(r.pool), Ok(before), "given back");
    Ok(())
}

/// The condition-variable test's shared state: tokens handed out, guarded.
struct Tokens {
    m: Mutex<u64>,
    cv: Condvar,
}

/// Waits for a token, takes it, counts itself through.
fn token_taker(arg: usize) -> i32 {
    // SAFETY: the test keeps the state alive until this thread is gone.
    let t = unsafe { &*(arg as *const Tokens) };
    let Ok(mut tokens) = t.m.lock() else { return 1 };
    while *tokens == 0 {
        match t.cv.wait(tokens) {
            Ok(g) => tokens = g,
            Err(_) => return 2,
        }
    }
    *tokens -= 1;
    PASSED.fetch_add(1, Ordering::SeqCst);
    0
}

pub fn a_condvar_wakes_one_or_every_waiter() -> TestResult {
    let r = root()?;
    let t = Tokens {
        m: Mutex::new(r.pool, 0).ctx("mutex")?,
        cv: Condvar::new(r.pool).ctx("condvar")?,
    };
    PASSED.store(0, Ordering::SeqCst);
    let arg = &t as *const Tokens as usize;
    let mut threads = Vec::new();
    for _ in 0..3 {
        threads.push(Thread::spawn(token_taker, arg).ctx("spawn")?);
    }
    let give = |n: u64, all: bool| -> TestResult {
        let mut tokens = t.m.lock().ctx("lock")?;
        *tokens += n;
        if all {
            t.cv.notify_all();
        } else {
            t.cv.notify_one();
        }
        Ok(())
    };
    yield_n(20);
    ensure_eq!(PASSED.load(Ordering::SeqCst), 0, "no token yet");
    give(1, false)?;
    ensure!(
        wait_until(|| PASSED.load(Ordering::SeqCst) == 1),
        "one woken"
    );
    yield_n(20);
    ensure_eq!(PASSED.load(Ordering::SeqCst), 1, "only one token");
    give(2, true)?;
    ensure!(
        wait_until(|| PASSED.load(Ordering::SeqCst) == 3),
        "{} of 3 through",
        PASSED.load(Ordering::SeqCst)
    );
    for t in &threads {
        ensure_eq!(t.join(WAIT_YIELDS), Some(0));
    }
    Ok(())
}

static ODD_SEEN: AtomicUsize = AtomicUsize::new(0);

/// Even-numbered workers write (two steps, a yield between: readers must
/// never see the middle), odd ones read.
fn rw_worker(arg: usize) -> i32 {
    // SAFETY: the test keeps the lock alive until this thread is gone.
    let l = unsafe { &*(arg as *const (RwLock<u64>, AtomicUsize)) };
    let writer = l.1.fetch_add(1, Ordering::SeqCst) % 2 == 0;
    for i in 0..200 {
        if writer {
            let Ok(mut v) = l.0.write() else { return 1 };
            *v += 1;
            if i % 4 == 0 {
                let _ = yield_now();
            }
            *v += 1;
        } else {
            let Ok(v) = l.0.read() else { return 1 };
            if *v % 2 == 1 {
                ODD_SEEN.fetch_add(1, Ordering::SeqCst);
            }
            if i % 4 == 0 {
                let _ = yield_now();
            }
        }
    }
    0
}

pub fn a_rwlock_never_shows_a_write_half_done() -> TestResult {
    let r = root()?;
    let l = (
        RwLock::new(r.pool, 0u64).ctx("rwlock")?,
        AtomicUsize::new(0),
    );
    ODD_SEEN.store(0, Ordering::SeqCst);
    let results = run_workers(rw_worker, &l as *const (RwLock<u64>, AtomicUsize) as usize)?;
    ensure_eq!(
        results,
        [Some(0); WORKERS].to_vec(),
        "every worker finished"
    );
    ensure_eq!(
        ODD_SEEN.load(Ordering::SeqCst),
        0,
        "a reader saw a write half done"
    );
    ensure_eq!(*l.0.read().ctx("read")?, (WORKERS / 2) as u64 * 200 * 2);
    let r1 = l.0.read().ctx("read")?;
    ensure!(l.0.read().is_ok(), "two readers at once");
    drop(r1);
    Ok(())
}

const ROUNDS_AT_BARRIER: usize = 50;
static ARRIVED: AtomicUsize = AtomicUsize::new(0);
static LEADERS: AtomicUsize = AtomicUsize::new(0);
static EARLY: AtomicUsize = AtomicUsize::new(0);

/// Meets the others at the barrier `ROUNDS_AT_BARRIER` times; after each
/// meeting, everyone must have arrived for this round.
fn barrier_worker(arg: usize) -> i32 {
    // SAFETY: the test keeps the barrier alive until this thread is gone.
    let b = unsafe { &*(arg as *const Barrier) };
    for round in 1..=ROUNDS_AT_BARRIER {
        ARRIVED.fetch_add(1, Ordering::SeqCst);
        match b.wait() {
            Ok(leader) => LEADERS.fetch_add(usize::from(leader), Ordering::SeqCst),
            Err(_) => return 1,
        };
        if ARRIVED.load(Ordering::SeqCst) < round * WORKERS {
            EARLY.fetch_add(1, Ordering::SeqCst);
        }
    }
    0
}

pub fn a_barrier_holds_each_round_until_all_arrive() -> TestResult {
    let r = root()?;
    ensure_eq!(Barrier::new(r.pool, 0).err(), Some(Error::InvalidArgument));
    let b = Barrier::new(r.pool, WORKERS).ctx("barrier")?;
    for a in [&ARRIVED, &LEADERS, &EARLY] {
        a.store(0, Ordering::SeqCst);
    }
    let results = run_workers(barrier_worker, &b as *const Barrier as usize)?;
    ensure_eq!(
        results,
        [Some(0); WORKERS].to_vec(),
        "every worker finished"
    );
    ensure_eq!(EARLY.load(Ordering::SeqCst), 0, "left before all arrived");
    ensure_eq!(
        LEADERS.load(Ordering::SeqCst),
        ROUNDS_AT_BARRIER,
        "one leader a round"
    );
    Ok(())
}
