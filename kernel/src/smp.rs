//! Several CPUs: bringing up every CPU the firmware reports, which CPUs
//! are online, and the messages CPUs send each other by IPI (TLB
//! shootdowns, the panic stop). Portable; each architecture starts a CPU
//! (`arch::cpu_start`) and delivers IPIs (`arch::send_ipi`).
//!
//! Locking discipline (see also `entry`): one big kernel lock, seL4's
//! choice, with critical sections as long as one system call or
//! interrupt. Everything here is lock-free (atomics): a CPU waiting for
//! the kernel lock keeps answering shootdowns and the panic stop
//! ([`lock_wait`]), so the holder may wait for other CPUs' answers
//! without deadlock.
//!
//! States of a CPU: not started → checked in (`cpu_main` ran) → online
//! (it takes part in scheduling) ⇄ offline (parked in `arch::idle`, taking
//! only IPIs). The boot CPU is online from the start.

use crate::bootinfo::{BootInfo, MAX_CPUS};
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use spin::{Mutex, MutexGuard};

/// The big kernel lock: test-and-test-and-set. Not a ticket lock: when
/// CPUs are virtual and outnumber the host's, a ticket lock hands the lock
/// to a waiter the host has descheduled and every CPU waits for the host
/// to run it again (lock-waiter preemption: a 1,000-thread IPC ring did
/// not finish in 5 minutes at `-smp 3` on two host cores; it takes under a
/// second with this lock). Linux falls back to
/// the same kind of lock as a guest for the same reason. A CPU waiting for
/// it keeps answering IPI requests ([`lock_wait`]).
pub struct BigLock<T>(Mutex<T>);

impl<T> BigLock<T> {
    /// An unlocked lock holding `value`.
    pub const fn new(value: T) -> Self {
        BigLock(Mutex::new(value))
    }

    /// Takes the lock, answering requests while it waits.
    pub fn lock(&self) -> MutexGuard<'_, T> {
        loop {
            if !self.0.is_locked()
                && let Some(guard) = self.0.try_lock()
            {
                return guard;
            }
            lock_wait();
        }
    }
}

/// CPUs whose `cpu_main` ran (bit per CPU index).
static CHECKED_IN: AtomicU64 = AtomicU64::new(1);
/// The run has started: CPUs other than the boot CPU schedule threads.
static RUNNING: AtomicBool = AtomicBool::new(false);
/// A panic is stopping every CPU.
static PANICKING: AtomicBool = AtomicBool::new(false);
/// Shootdown requests: bit `i` set asks CPU `i` to flush its TLB; it
/// clears the bit when done.
static FLUSH: AtomicU64 = AtomicU64::new(0);
/// IPIs each CPU has taken (for the in-kernel tests).
#[cfg(feature = "ktest")]
static IPIS_TAKEN: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];

/// How many CPUs came up: their indices are `0..count()`.
pub fn count() -> usize {
    64 - started_mask().leading_zeros() as usize
}

/// Bit mask of every CPU that came up.
pub fn started_mask() -> u64 {
    CHECKED_IN.load(Ordering::Acquire)
}

/// Starts every CPU `info` lists besides this one, one at a time, waiting
/// for each (bounded) to check in; a CPU that does not is reported and
/// skipped. Called once by the boot CPU, before any thread runs.
pub fn start_cpus(info: &BootInfo<'_>) {
    let me = crate::arch::cpu_hw_id();
    let mut next = 1usize;
    for &hw in info.cpu_ids.iter().filter(|&&hw| hw != me) {
        if next >= MAX_CPUS {
            break;
        }
        if let Err(why) = crate::arch::cpu_start(info, next, hw) {
            kprintln!("smp: cpu {next} (hardware id {hw:#x}) not started: {why}");
            continue;
        }
        if wait_for(|| CHECKED_IN.load(Ordering::Acquire) & (1 << next) != 0) {
            next += 1;
        } else {
            // Its index is given to the next one; a late check-in of this
            // one would be a bug of the firmware.
            kprintln!("smp: cpu {next} (hardware id {hw:#x}) did not come up; skipped");
        }
    }
    if info.cpu_count > MAX_CPUS {
        kprintln!("smp: {} CPUs reported, {MAX_CPUS} used", info.cpu_count);
    }
    kprintln!("smp: {} CPUs online", count());
}

/// Spins until `done()` or about 100 ms (of the clock, or of spinning
/// without one) pass; whether `done()`.
fn wait_for(done: impl Fn() -> bool) -> bool {
    let hz = crate::time::hz();
    let start = crate::arch::clock_ticks();
    let mut spins = 0u64;
    while !done() {
        spins += 1;
        let late = if hz == 0 {
            spins > 100_000_000
        } else {
            crate::arch::clock_ticks().saturating_sub(start) > hz / 10
        };
        if late {
            return done();
        }
        crate::arch::spin_wait();
    }
    true
}

/// The run starts: every CPU that came up is told (by IPI) to take part
/// in scheduling.
pub fn start_running() {
    RUNNING.store(true, Ordering::Release);
    send_ipis(started_mask() & !(1 << crate::arch::cpu_index()));
}

/// Sends an IPI to each CPU of `mask` (bit per index).
fn send_ipis(mask: u64) {
    for i in (0..MAX_CPUS).filter(|&i| mask & (1 << i) != 0) {
        crate::arch::send_ipi(i);
    }
}

/// Whether the run has started (before it, other CPUs only take IPIs).
pub fn running() -> bool {
    RUNNING.load(Ordering::Acquire)
}

/// Where a started CPU arrives (from `arch::cpu_start`), interrupts
/// masked: it checks in and waits for work.
pub fn cpu_main(index: usize) -> ! {
    CHECKED_IN.fetch_or(1 << (index % MAX_CPUS), Ordering::AcqRel);
    crate::arch::idle()
}

/// Takes what another CPU asked of this one by IPI (a TLB flush, the
/// panic stop); called first for every IPI and while waiting for the
/// kernel lock.
pub fn answer() {
    let me = crate::arch::cpu_index();
    if PANICKING.load(Ordering::Acquire) {
        crate::arch::halt();
    }
    let bit = 1u64 << (me % MAX_CPUS);
    if FLUSH.load(Ordering::Acquire) & bit != 0 {
        crate::arch::flush_all();
        FLUSH.fetch_and(!bit, Ordering::AcqRel);
    }
}

/// An IPI arrived: answers it (and counts it, for the tests).
pub fn on_ipi() {
    #[cfg(feature = "ktest")]
    IPIS_TAKEN[crate::arch::cpu_index() % MAX_CPUS].fetch_add(1, Ordering::Relaxed);
    answer();
}

/// IPIs CPU `cpu` has taken.
#[cfg(feature = "ktest")]
fn ipis_taken(cpu: usize) -> u64 {
    IPIS_TAKEN.get(cpu).map_or(0, |n| n.load(Ordering::Relaxed))
}

/// One round of waiting for the kernel lock: answers requests meanwhile.
#[inline]
pub fn lock_wait() {
    answer();
    crate::arch::spin_wait();
}

/// Flushes the TLBs of the CPUs in `cpus` (bit per index; this CPU and
/// CPUs that never came up are left out) and waits until they have.
/// Called with the kernel lock held.
pub fn shootdown(cpus: u64) {
    let me = 1u64 << (crate::arch::cpu_index() % MAX_CPUS);
    let targets = cpus & started_mask() & !me;
    if targets == 0 {
        return;
    }
    FLUSH.fetch_or(targets, Ordering::AcqRel);
    send_ipis(targets);
    while FLUSH.load(Ordering::Acquire) & targets != 0 {
        if PANICKING.load(Ordering::Acquire) {
            crate::arch::halt();
        }
        crate::arch::spin_wait();
    }
}

/// A panic on this CPU: stops every other one (they halt when they take
/// the IPI or next wait for the kernel lock); whether this CPU is the
/// first to panic (the one that reports).
pub fn stop_others() -> bool {
    if PANICKING.swap(true, Ordering::AcqRel) {
        return false;
    }
    send_ipis(started_mask() & !(1 << crate::arch::cpu_index()));
    true
}

crate::ktest!(
    fn every_started_cpu_takes_an_ipi() {
        let me = crate::arch::cpu_index();
        kassert_eq!(me, 0);
        for cpu in (1..count()).filter(|&c| started_mask() & (1 << c) != 0) {
            let before = ipis_taken(cpu);
            crate::arch::send_ipi(cpu);
            kassert!(
                wait_for(|| ipis_taken(cpu) > before),
                "cpu {cpu} took no IPI"
            );
        }
        Ok(())
    }
);

crate::ktest!(
    fn a_shootdown_is_answered_by_every_other_cpu() {
        shootdown(u64::MAX);
        kassert_eq!(FLUSH.load(Ordering::Acquire), 0);
        Ok(())
    }
);
