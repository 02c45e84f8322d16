//! Time and preemption: sleeping against the monotonic clock, the timer
//! waking sleepers in deadline order, and time slices that keep a CPU hog
//! from starving the threads of its priority.

use super::root;
use crate::harness::{Ctx, TestResult};
use alloc::string::String;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use keel_abi::Error;
use keel_rt::syscall::{
    now_ns, sleep_ns, sleep_until, thread_resume, thread_set_priority, thread_suspend, yield_now,
};
use keel_rt::thread::Thread;

/// Priority of spawned threads (the kernel's default, the root task's too).
const NORMAL: usize = 10;
/// Above `NORMAL`: the root thread watching hogs.
const WATCHER: usize = 12;

static COUNTS: [AtomicU64; 2] = [const { AtomicU64::new(0) }; 2];

/// Counts forever, never entering the kernel.
fn hog(i: usize) -> i32 {
    let Some(c) = COUNTS.get(i) else { return 1 };
    loop {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

fn spawn_at(prio: usize, func: fn(usize) -> i32, arg: usize) -> Result<Thread, String> {
    let t = Thread::create(func, arg).ctx("create")?;
    thread_set_priority(t.token(), prio).ctx("priority")?;
    t.resume().ctx("resume")?;
    Ok(t)
}

/// Runs `f` with the root thread at `prio`, restoring `NORMAL` after.
fn at_priority(prio: usize, f: impl FnOnce() -> TestResult) -> TestResult {
    let r = root()?;
    thread_set_priority(r.thread, prio).ctx("root priority")?;
    let result = f();
    thread_set_priority(r.thread, NORMAL).ctx("root priority back")?;
    result
}

pub fn sleep_lasts_at_least_its_duration() -> TestResult {
    for ns in [0, 1_000_000, 3_000_000] {
        let t0 = now_ns();
        sleep_ns(ns).ctx("sleep")?;
        let slept = now_ns() - t0;
        ensure!(slept >= ns, "asked for {ns} ns, slept {slept}");
        ensure!(
            slept < ns + 2_000_000_000,
            "asked for {ns} ns, slept {slept}"
        );
    }
    // A deadline that has passed returns at once.
    ensure_eq!(sleep_until(0), Ok(()));
    ensure_eq!(sleep_until(now_ns()), Ok(()));
    Ok(())
}

static WOKEN: AtomicUsize = AtomicUsize::new(0);
static ORDER: [AtomicUsize; 3] = [const { AtomicUsize::new(usize::MAX) }; 3];

/// Sleeps until the deadline in `arg >> 2`, then records its place.
fn sleeper(arg: usize) -> i32 {
    if sleep_until((arg >> 2) as u64).is_err() {
        return 1;
    }
    let place = WOKEN.fetch_add(1, Ordering::Relaxed);
    match ORDER.get(place) {
        Some(o) => o.store(arg & 3, Ordering::Relaxed),
        None => return 2,
    }
    0
}

pub fn sleepers_wake_in_deadline_order() -> TestResult {
    WOKEN.store(0, Ordering::Relaxed);
    let start = now_ns();
    let ms = |n: u64| start + n * 1_000_000;
    let mut threads = alloc::vec::Vec::new();
    for (i, at) in [(0usize, ms(6)), (1, ms(2)), (2, ms(4))] {
        threads.push(Thread::spawn(sleeper, ((at as usize) << 2) | i).ctx("spawn")?);
    }
    sleep_until(ms(10)).ctx("sleep")?;
    for t in &threads {
        ensure_eq!(t.join(100), Some(0));
    }
    let order = ORDER.each_ref().map(|o| o.load(Ordering::Relaxed));
    ensure_eq!(order, [1, 2, 0], "wake-up order");
    ensure!(now_ns() >= ms(10));
    Ok(())
}

pub fn a_hog_cannot_starve_an_equal_priority_thread() -> TestResult {
    COUNTS[0].store(0, Ordering::Relaxed);
    let mut h = spawn_at(NORMAL, hog, 0)?;
    // The hog never yields: each of these returns only because the timer
    // ended the hog's slice.
    for i in 0..5 {
        let before = COUNTS[0].load(Ordering::Relaxed);
        yield_now().ctx("yield")?;
        ensure!(
            COUNTS[0].load(Ordering::Relaxed) > before,
            "the hog did not run during yield {i}"
        );
    }
    h.kill().ctx("kill")?;
    Ok(())
}

pub fn equal_priority_hogs_share_the_cpu() -> TestResult {
    at_priority(WATCHER, || {
        for c in &COUNTS {
            c.store(0, Ordering::Relaxed);
        }
        let mut a = spawn_at(NORMAL, hog, 0)?;
        let mut b = spawn_at(NORMAL, hog, 1)?;
        sleep_ns(200_000_000).ctx("sleep")?;
        let (x, y) = (
            COUNTS[0].load(Ordering::Relaxed),
            COUNTS[1].load(Ordering::Relaxed),
        );
        a.kill().ctx("kill")?;
        b.kill().ctx("kill")?;
        ensure!(x > 0 && y > 0, "a hog never ran: {x} and {y}");
        ensure!(
            x.abs_diff(y) * 10 <= x.max(y),
            "shares {x} and {y} differ by more than 10%"
        );
        Ok(())
    })
}

pub fn a_woken_higher_priority_thread_preempts_a_hog() -> TestResult {
    at_priority(WATCHER, || {
        let mut h = spawn_at(NORMAL, hog, 0)?;
        let mut late = [0u64; 5];
        for l in &mut late {
            let deadline = now_ns() + 2_000_000;
            sleep_until(deadline).ctx("sleep")?;
            *l = now_ns() - deadline;
        }
        h.kill().ctx("kill")?;
        late.sort_unstable();
        // Well under the hog's 5 ms slice: the wake-up preempted it.
        ensure!(late[2] < 2_000_000, "woke late by {late:?} ns");
        Ok(())
    })
}

/// Sleeps forever; returns its `Sleep`'s error code.
fn sleep_forever(_: usize) -> i32 {
    match sleep_until(u64::MAX) {
        Ok(()) => 0,
        Err(e) => e as i32,
    }
}

pub fn sleepers_can_be_suspended_and_killed() -> TestResult {
    let t = Thread::spawn(sleep_forever, 0).ctx("spawn")?;
    yield_now().ctx("yield")?;
    ensure_eq!(t.finished(), None, "it sleeps");
    thread_suspend(t.token()).ctx("suspend")?;
    thread_resume(t.token()).ctx("resume")?;
    ensure_eq!(
        t.join(10),
        Some(Error::InvalidState as i32),
        "a suspended sleep fails"
    );
    let mut u = Thread::spawn(sleep_forever, 0).ctx("spawn")?;
    yield_now().ctx("yield")?;
    u.kill().ctx("kill a sleeper")?;
    ensure_eq!(u.finished(), None);
    Ok(())
}
