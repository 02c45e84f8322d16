//! Benchmarks of several CPUs, run when the machine has more than one
//! (`cargo xtask bench` boots a second time with `-smp 4` for them).
//! QEMU's `-icount` runs the CPUs one after another on one host thread
//! and counts every CPU's instructions on one clock, so parallel work
//! cannot show there: these rows are TCG wall-clock nanoseconds per
//! operation (multi-threaded TCG, the monotonic clock), not instructions.
//! Each is the median and minimum over batches, as in [`crate::bench`]:
//! - `ipc_round_trip_cross_cpu` / `_same_cpu`: a call/reply with the
//!   server pinned to another CPU / the same one;
//! - `wakeup_latency_cross_cpu`: from a signal on CPU 0 to the first
//!   reading of the thread it wakes on CPU 1;
//! - `map_unmap_with_remote_reader` / `_local`: mapping, touching (the
//!   first touch makes the entry) and unmapping a page while another
//!   thread of the space runs on another CPU (each unmap shoots down its
//!   TLB, answered at once by a CPU in user mode) / with no other thread
//!   running: the CPUs that ran the space before (earlier benchmarks) are
//!   still asked, since they may hold its TLB entries, and answer from
//!   idle, which under TCG is slower;
//! - `null_syscall_throughput_<n>cpu`: `n` threads on `n` CPUs making the
//!   register-only `SystemInfo(PageSize)`, wall time per call of all;
//!   `locked_syscall_throughput_<n>cpu` the same with `CapIdentify`, which
//!   takes the kernel lock.

use crate::tests::ipc::Owned;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use keel_abi::Error;
use keel_abi::cap::CapToken;
use keel_abi::harness::BENCH_PREFIX;
use keel_abi::syscall::{PROT_WRITE, SystemInfoKey};
use keel_rt::ipc::{
    MsgInfo, call, endpoint_create, notification_create, recv, reply_recv, signal, wait,
};
use keel_rt::println;
use keel_rt::syscall::{
    cap_identify, map, mem_create, now_ns, sleep_ns, system_info, thread_set_affinity, unmap,
    yield_now,
};
use keel_rt::thread::Thread;

const BATCHES: usize = 9;

fn root() -> Result<crate::tests::Root, Error> {
    crate::tests::root().map_err(|_| Error::InvalidState)
}

/// Runs `f(iters)` (wall ns for the batch) in batches; median and minimum
/// ns per operation, in tenths.
fn measure(iters: u64, f: &mut dyn FnMut(u64) -> Result<u64, Error>) -> Result<(u64, u64), Error> {
    f(iters)?;
    let mut tenths = [0u64; BATCHES];
    for slot in tenths.iter_mut() {
        *slot = f(iters)?.saturating_mul(10) / iters.max(1);
    }
    tenths.sort_unstable();
    Ok((tenths[BATCHES / 2], tenths[0]))
}

fn report(name: &str, iters: u64, r: Result<(u64, u64), Error>) {
    match r {
        Ok((median, min)) => println!(
            "{BENCH_PREFIX}smp::{name} median={}.{} min={}.{} iters={iters} batches={BATCHES}",
            median / 10,
            median % 10,
            min / 10,
            min % 10,
        ),
        Err(e) => println!("systest: benchmark smp::{name} failed: {e:?}"),
    }
}

/// Runs with the root thread pinned to CPU 0, restoring it after.
fn pinned<T>(f: impl FnOnce() -> Result<T, Error>) -> Result<T, Error> {
    let me = root()?.thread;
    thread_set_affinity(me, 1)?;
    let r = f();
    thread_set_affinity(me, usize::MAX)?;
    r
}

/// A thread running `func(arg)` on CPU `cpu` only.
fn on_cpu(cpu: usize, func: fn(usize) -> i32, arg: usize) -> Result<Thread, Error> {
    let t = Thread::create(func, arg)?;
    thread_set_affinity(t.token(), 1 << cpu)?;
    t.resume()?;
    Ok(t)
}

/// Answers calls on endpoint `ep` with their first word.
fn echo(ep: usize) -> i32 {
    let ep = CapToken::from_raw(ep as u64);
    let Ok(mut m) = recv(ep, 0) else { return 1 };
    loop {
        match reply_recv(ep, MsgInfo::new(0, 1, 0), [m.words[0], 0, 0, 0]) {
            Ok(next) => m = next,
            Err(_) => return 2,
        }
    }
}

fn ipc_round_trip(server_cpu: usize, iters: u64) -> Result<(u64, u64), Error> {
    pinned(|| {
        let ep = Owned(endpoint_create(root()?.pool)?);
        let _server = on_cpu(server_cpu, echo, ep.0.raw() as usize)?;
        measure(iters, &mut |n| {
            let t0 = now_ns();
            for i in 0..n {
                call(ep.0, MsgInfo::new(0, 1, 0), [i, 0, 0, 0])?;
            }
            Ok(now_ns() - t0)
        })
    })
}

static SIGNALLED_AT: AtomicU64 = AtomicU64::new(0);
static LATENCY: AtomicU64 = AtomicU64::new(0);
static WOKEN: AtomicU64 = AtomicU64::new(0);

/// Waits on notification `n`; adds the time since the signal to `LATENCY`.
fn waker(n: usize) -> i32 {
    let n = CapToken::from_raw(n as u64);
    while wait(n).is_ok() {
        LATENCY.fetch_add(
            now_ns() - SIGNALLED_AT.load(Ordering::Acquire),
            Ordering::Relaxed,
        );
        WOKEN.fetch_add(1, Ordering::Release);
    }
    1
}

fn wakeup_latency(iters: u64) -> Result<(u64, u64), Error> {
    pinned(|| {
        let n = Owned(notification_create(root()?.pool)?);
        let _t = on_cpu(1, waker, n.0.raw() as usize)?;
        measure(iters, &mut |k| {
            LATENCY.store(0, Ordering::Relaxed);
            for _ in 0..k {
                let woken = WOKEN.load(Ordering::Acquire);
                SIGNALLED_AT.store(now_ns(), Ordering::Release);
                signal(n.0, 1)?;
                while WOKEN.load(Ordering::Acquire) == woken {
                    core::hint::spin_loop();
                }
            }
            Ok(LATENCY.load(Ordering::Relaxed))
        })
    })
}

static RUN: AtomicBool = AtomicBool::new(false);

/// Spins while `RUN`, keeping the address space loaded on its CPU.
fn remote_reader(_: usize) -> i32 {
    while RUN.load(Ordering::Relaxed) {
        core::hint::spin_loop();
    }
    0
}

fn map_unmap(remote: bool, iters: u64) -> Result<(u64, u64), Error> {
    pinned(|| {
        let r = root()?;
        let mem = Owned(mem_create(r.pool, 1, 0)?);
        let va = crate::tests::next_va(1);
        RUN.store(true, Ordering::Relaxed);
        let reader = if remote {
            Some(on_cpu(1, remote_reader, 0)?)
        } else {
            None
        };
        let result = measure(iters, &mut |n| {
            let t0 = now_ns();
            for _ in 0..n {
                map(r.aspace, mem.0, va, 0, 1, PROT_WRITE)?;
                // Pages are mapped on first touch: a write makes the
                // entry (and a TLB entry) for the unmap to remove.
                // SAFETY: the page was just mapped writable; nothing else
                // uses it, and nothing uses it after the unmap.
                unsafe {
                    (va as *mut u8).write_volatile(1);
                    unmap(r.aspace, va, 1)
                }?;
            }
            Ok(now_ns() - t0)
        });
        RUN.store(false, Ordering::Relaxed);
        if let Some(t) = reader {
            t.join(1000);
        }
        result
    })
}

static GO: AtomicBool = AtomicBool::new(false);
static DONE: AtomicUsize = AtomicUsize::new(0);
static OPS: AtomicU64 = AtomicU64::new(0);
static POOL_TOKEN: AtomicU64 = AtomicU64::new(0);

/// Makes `OPS` system calls (kind `locked`: through the kernel lock) once
/// `GO` is set, then counts itself done.
fn syscaller(locked: usize) -> i32 {
    while !GO.load(Ordering::Acquire) {
        let _ = yield_now();
    }
    let pool = CapToken::from_raw(POOL_TOKEN.load(Ordering::Relaxed));
    for _ in 0..OPS.load(Ordering::Relaxed) {
        let r = if locked == 1 {
            cap_identify(pool).map(|_| 0)
        } else {
            system_info(SystemInfoKey::PageSize)
        };
        core::hint::black_box(r).ok();
    }
    DONE.fetch_add(1, Ordering::Release);
    0
}

fn throughput(cpus: usize, locked: usize, iters: u64) -> Result<(u64, u64), Error> {
    POOL_TOKEN.store(root()?.pool.raw(), Ordering::Relaxed);
    pinned(|| {
        measure(iters, &mut |n| {
            GO.store(false, Ordering::Release);
            DONE.store(0, Ordering::Release);
            OPS.store(n, Ordering::Relaxed);
            let mut ts = alloc::vec::Vec::new();
            for cpu in 1..=cpus {
                ts.push(on_cpu(cpu % system_cpus(), syscaller, locked)?);
            }
            let t0 = now_ns();
            GO.store(true, Ordering::Release);
            while DONE.load(Ordering::Acquire) < cpus {
                sleep_ns(100_000)?;
            }
            let ns = now_ns() - t0;
            for t in &ts {
                t.join(1000);
            }
            Ok(ns / cpus as u64)
        })
    })
}

fn system_cpus() -> usize {
    system_info(SystemInfoKey::CpuCount).unwrap_or(1)
}

/// Runs every SMP benchmark (needs at least two CPUs).
pub fn run_all() {
    let cpus = system_cpus();
    println!("systest: SMP benchmarks on {cpus} CPUs (TCG wall-clock ns per operation)");
    report("ipc_round_trip_cross_cpu", 500, ipc_round_trip(1, 500));
    report("ipc_round_trip_same_cpu", 500, ipc_round_trip(0, 500));
    report("wakeup_latency_cross_cpu", 100, wakeup_latency(100));
    report("map_unmap_with_remote_reader", 200, map_unmap(true, 200));
    report("map_unmap_local", 200, map_unmap(false, 200));
    for n in [1, 2, 4].into_iter().filter(|&n| n <= cpus) {
        let name = alloc::format!("null_syscall_throughput_{n}cpu");
        report(&name, 20_000, throughput(n, 0, 20_000));
        let name = alloc::format!("locked_syscall_throughput_{n}cpu");
        report(&name, 5_000, throughput(n, 1, 5_000));
    }
}
