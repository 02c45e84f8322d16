//! User-mode benchmarks of interrupts and preemption (rows of
//! [`crate::bench`]). A thread spinning on the cycle counter
//! (`SystemInfo(Cycles)`, guest instructions under `-icount`) sees an
//! interrupt or a preemption as a gap between two readings; each row is
//! the mean gap over `iters` events, less one spin step (the smallest gap,
//! the reading itself):
//! - `timer_interrupt_entry_to_return`: a periodic timer object fires with
//!   nobody waiting — interrupt entry, the timer and notification work,
//!   re-arming, and the return to the same thread;
//! - `timer_irq_to_user_handler_wakeup`: from the last reading of a
//!   spinning low-priority thread to the first of a high-priority thread
//!   woken by the timer's notification — the interrupt as a device's would
//!   be delivered to its user-space handler;
//! - `preemption_switch`: from the last reading of a round-robin thread
//!   whose slice ends to the first of the equal-priority thread that
//!   takes over.

use core::sync::atomic::{AtomicU64, Ordering};
use keel_abi::Error;
use keel_abi::cap::CapToken;
use keel_abi::syscall::SchedClass;
use keel_rt::ipc::{notification_create, wait};
use keel_rt::syscall::{
    cap_delete, cycles, now_ns, sleep_ns, thread_set_priority, thread_set_sched, timer_create,
    timer_set,
};
use keel_rt::thread::Thread;

/// The cost of one reading: the smallest of many gaps.
fn spin_step() -> u64 {
    let mut step = u64::MAX;
    let mut last = cycles();
    for _ in 0..64 {
        let now = cycles();
        step = step.min(now.wrapping_sub(last));
        last = now;
    }
    step
}

fn pool() -> Result<CapToken, Error> {
    keel_rt::root_info()
        .map(|i| CapToken::from_raw(i.pool))
        .ok_or(Error::InvalidState)
}

/// Spins until `events` gaps longer than a few steps were seen; the sum
/// of those gaps less one step each.
fn gaps(events: u64) -> u64 {
    let step = spin_step();
    let (mut seen, mut sum) = (0, 0);
    let mut last = cycles();
    while seen < events {
        let now = cycles();
        let gap = now.wrapping_sub(last);
        if gap > 4 * step {
            seen += 1;
            sum += gap - step;
        }
        last = now;
    }
    sum
}

pub fn timer_interrupt_entry_to_return(iters: u64) -> Result<Option<u64>, Error> {
    let n = notification_create(pool()?)?;
    let timer = timer_create(pool()?, n)?;
    timer_set(timer, now_ns() + 200_000, 200_000)?;
    let sum = gaps(iters);
    cap_delete(timer)?;
    cap_delete(n)?;
    Ok(Some(sum))
}

/// The spinning thread's last reading.
static LAST: AtomicU64 = AtomicU64::new(0);
/// Records its readings until killed.
fn spinner(_: usize) -> i32 {
    loop {
        LAST.store(cycles(), Ordering::Relaxed);
    }
}

/// The kernel's default priority, the root thread's.
const DEFAULT_PRIORITY: usize = 10;

/// Runs `f` with the root thread at `prio`, then back at the default.
fn raised<T>(prio: usize, f: impl FnOnce() -> Result<T, Error>) -> Result<T, Error> {
    let me = keel_rt::root_info()
        .map(|i| CapToken::from_raw(i.thread))
        .ok_or(Error::InvalidState)?;
    thread_set_priority(me, prio)?;
    let r = f();
    thread_set_priority(me, DEFAULT_PRIORITY)?;
    r
}

pub fn timer_irq_to_user_handler_wakeup(iters: u64) -> Result<Option<u64>, Error> {
    raised(12, || {
        let step = spin_step();
        let n = notification_create(pool()?)?;
        let timer = timer_create(pool()?, n)?;
        let mut t = Thread::spawn(spinner, 0)?;
        let mut sum = 0;
        for _ in 0..iters {
            timer_set(timer, now_ns() + 100_000, 0)?;
            wait(n)?;
            sum += cycles().wrapping_sub(LAST.load(Ordering::Relaxed)) - step;
        }
        t.kill()?;
        cap_delete(timer)?;
        cap_delete(n)?;
        Ok(Some(sum))
    })
}

/// The two round-robin threads' last readings, and the measurement.
static LASTS: [AtomicU64; 2] = [const { AtomicU64::new(0) }; 2];
static SAMPLES: AtomicU64 = AtomicU64::new(0);
static SUM: AtomicU64 = AtomicU64::new(0);
static WANT: AtomicU64 = AtomicU64::new(0);

/// Spins as side `me`: after a gap, the other side ran; the time from its
/// last reading to ours is a switch.
fn round_robin(me: usize) -> i32 {
    let step = spin_step();
    let mut last = cycles();
    while SAMPLES.load(Ordering::Relaxed) < WANT.load(Ordering::Relaxed) {
        let now = cycles();
        if now.wrapping_sub(last) > 4 * step {
            let other = LASTS.get(1 - me).map_or(0, |l| l.load(Ordering::Relaxed));
            if other > last {
                SUM.fetch_add(now - other - step, Ordering::Relaxed);
                SAMPLES.fetch_add(1, Ordering::Relaxed);
            }
        }
        if let Some(l) = LASTS.get(me) {
            l.store(now, Ordering::Relaxed);
        }
        last = now;
    }
    0
}

pub fn preemption_switch(iters: u64) -> Result<Option<u64>, Error> {
    raised(12, || {
        SAMPLES.store(0, Ordering::Relaxed);
        SUM.store(0, Ordering::Relaxed);
        WANT.store(iters, Ordering::Relaxed);
        let mut sides = [None, None];
        for (i, side) in sides.iter_mut().enumerate() {
            let t = Thread::create(round_robin, i)?;
            // The shortest slice, so the run is short.
            thread_set_sched(t.token(), SchedClass::RoundRobin, 5, 100_000)?;
            t.resume()?;
            *side = Some(t);
        }
        while SAMPLES.load(Ordering::Relaxed) < iters {
            sleep_ns(1_000_000)?;
        }
        // They run below us: done or not, they are killed.
        for t in sides.iter_mut().flatten() {
            t.kill()?;
        }
        Ok(Some(SUM.load(Ordering::Relaxed)))
    })
}
