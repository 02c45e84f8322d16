//! Processes through the process server (`keel_rt::process`): spawn with
//! arguments, environment and capabilities, exit statuses, faults, kill
//! and terminate, fork (copy-on-write) and exec, stale pids, everything
//! given back after many processes, and a fork bomb held by its pool.
//!
//! The children are this program itself: [`child_main`] runs the role its
//! first argument names.

use super::{WAIT_YIELDS, root};
use crate::harness::{Ctx, TestResult};
use alloc::string::String;
use core::sync::atomic::{AtomicU64, Ordering};
use keel_abi::Error;
use keel_abi::cap::{CapToken, Rights};
use keel_abi::ipc::MsgInfo;
use keel_abi::process::{ExitStatus, ProcInfo};
use keel_abi::syscall::SystemInfoKey;
use keel_rt::ipc::{call, endpoint_create, notification_create, poll, recv, signal};
use keel_rt::process::{Pid, args, exec, fork, kill, spawn, terminate, wait, wait_for_terminate};
use keel_rt::syscall::{cap_delete, cap_derive, pool_available, sleep_ns, system_info};

/// Pool pages of most children (the program's image, data and stack fit).
const CHILD_PAGES: usize = 1024;

fn start(role: &[&str], pass: &[CapToken]) -> Result<Pid, String> {
    start_with(CHILD_PAGES, role, pass)
}

fn start_with(pages: usize, role: &[&str], pass: &[CapToken]) -> Result<Pid, String> {
    let r = root()?;
    spawn(r.boot_image, pages, role, &["KEEL=1"], pass).ctx("spawn")
}

fn status_of(pid: Pid) -> Result<ExitStatus, String> {
    let (got, status) = wait(Some(pid), true).ctx("wait")?;
    ensure_eq!(got, pid);
    Ok(status)
}

/// The `i`th capability this process was passed (null if none).
fn passed(i: usize) -> CapToken {
    let raw = keel_rt::process::info().and_then(|info| info.passed.get(i).copied());
    CapToken::from_raw(raw.unwrap_or(0))
}

/// What a child does, by its first argument.
pub fn child_main(_info: &'static ProcInfo) -> i32 {
    let mut a = args();
    match a.next().unwrap_or("") {
        "exit" => a.next().and_then(|s| s.parse().ok()).unwrap_or(-1),
        "args" => {
            let all: alloc::vec::Vec<&str> = args().collect();
            i32::from(all != ["args", "a", "bb", "KEEL=1"])
        }
        "fault" => {
            // SAFETY: none: the point is the fault (page 0 is never mapped).
            unsafe { core::ptr::null_mut::<u64>().write_volatile(1) };
            0
        }
        "sleep" => {
            let _ = sleep_ns(60_000_000_000);
            1
        }
        "serve" => {
            // Takes one call on the passed endpoint and never answers.
            let ep = passed(0);
            let _ = recv(ep, 0);
            let _ = sleep_ns(60_000_000_000);
            1
        }
        "term" => match wait_for_terminate() {
            Ok(()) => 42,
            Err(_) => 1,
        },
        "signal" => {
            let n = passed(0);
            i32::from(signal(n, 4).is_err())
        }
        "fork" => fork_child(),
        "exec" => {
            let image = passed(0);
            let e = exec(image, &["exit", "77"], &[], &[]);
            keel_rt::println!("exec failed: {e:?}");
            1
        }
        "bomb" => bomb(),
        "forks" => forks(a.next().and_then(|s| s.parse().ok()).unwrap_or(1)),
        _ => 2,
    }
}

/// Forks `n` children that exit at once, reaping each: exits with the
/// cycle-counter ticks per fork + exit + wait (the benchmark's figure).
fn forks(n: u64) -> i32 {
    let t0 = keel_rt::syscall::cycles();
    for _ in 0..n {
        match fork(FORK_PAGES) {
            Ok(None) => keel_rt::process::exit(0),
            Ok(Some(pid)) => {
                if wait(Some(pid), true).is_err() {
                    return -1;
                }
            }
            Err(_) => return -2,
        }
    }
    let per = keel_rt::syscall::cycles().wrapping_sub(t0) / n.max(1);
    i32::try_from(per).unwrap_or(i32::MAX)
}

/// Pool pages of a benchmark's forked child (the image's data, bss and
/// stack copied copy-on-write are charged in full).
const FORK_PAGES: usize = 1024;

/// Benchmark: spawn of this program as a process that exits at once, and
/// its reaping; `iters` times.
pub fn spawn_exit_wait(iters: u64) -> Result<Option<u64>, Error> {
    let r = root().map_err(|_| Error::InvalidState)?;
    for _ in 0..iters {
        let p = spawn(r.boot_image, CHILD_PAGES, &["exit", "0"], &[], &[])?;
        wait(Some(p), true)?;
    }
    Ok(None)
}

/// Benchmark: fork + exit + wait, measured inside a process (the root
/// task is not forked): the child reports ticks per round as its status.
pub fn fork_exit_wait(iters: u64) -> Result<Option<u64>, Error> {
    let r = root().map_err(|_| Error::InvalidState)?;
    let n = alloc::format!("{iters}");
    let p = spawn(r.boot_image, 2 * FORK_PAGES, &["forks", &n], &[], &[])?;
    match wait(Some(p), true)? {
        (_, ExitStatus::Exited(per)) if per >= 0 => Ok(Some(per as u64 * iters)),
        _ => Err(Error::InvalidState),
    }
}

static SHARED: AtomicU64 = AtomicU64::new(5);

/// Forks; the child changes a static and exits with it, the parent
/// checks its own copy did not change and reaps the child.
fn fork_child() -> i32 {
    match fork(0) {
        Ok(None) => {
            SHARED.store(9, Ordering::Relaxed);
            SHARED.load(Ordering::Relaxed) as i32
        }
        Ok(Some(pid)) => {
            // Let the child run first, then look.
            let _ = sleep_ns(2_000_000);
            let mine = SHARED.load(Ordering::Relaxed);
            match wait(Some(pid), true) {
                Ok((_, ExitStatus::Exited(9))) if mine == 5 => 0,
                other => {
                    keel_rt::println!("fork: mine {mine}, child {other:?}");
                    3
                }
            }
        }
        Err(e) => {
            keel_rt::println!("fork failed: {e:?}");
            4
        }
    }
}

/// Forks until the pool says no, in every copy; reaps; exits 0 if the
/// refusal was `OutOfMemory` (or the pool nesting limit).
fn bomb() -> i32 {
    let mut made = 0;
    let refused = loop {
        match fork(0) {
            Ok(Some(_)) => made += 1,
            Ok(None) => made = 0,
            Err(e) => break e,
        }
    };
    while made > 0 && wait(None, true).is_ok() {
        made -= 1;
    }
    i32::from(!matches!(
        refused,
        Error::OutOfMemory | Error::InvalidArgument
    ))
}

pub fn spawn_passes_arguments_and_reports_the_exit_status() -> TestResult {
    let p = start(&["exit", "7"], &[])?;
    ensure_eq!(status_of(p)?, ExitStatus::Exited(7));
    let p = start(&["exit", "-3"], &[])?;
    ensure_eq!(status_of(p)?, ExitStatus::Exited(-3));
    let p = start(&["args", "a", "bb"], &[])?;
    ensure_eq!(status_of(p)?, ExitStatus::Exited(0), "argv and environment");
    Ok(())
}

pub fn passed_capabilities_arrive() -> TestResult {
    let r = root()?;
    let n = notification_create(r.pool).ctx("notification")?;
    let p = start(&["signal"], &[n]);
    let status = p.and_then(status_of);
    let bits = poll(n);
    cap_delete(n).ctx("delete")?;
    ensure_eq!(status?, ExitStatus::Exited(0));
    ensure_eq!(bits, Ok(4));
    Ok(())
}

pub fn a_fault_ends_only_its_process() -> TestResult {
    let p = start(&["fault"], &[])?;
    ensure_eq!(status_of(p)?, ExitStatus::Faulted(1), "page fault");
    Ok(())
}

pub fn wait_without_hang_and_for_nobody() -> TestResult {
    ensure_eq!(
        wait(None, false).err(),
        Some(Error::InvalidArgument),
        "no children"
    );
    let p = start(&["sleep"], &[])?;
    ensure_eq!(wait(Some(p), false).err(), Some(Error::WouldBlock));
    kill(p).ctx("kill")?;
    ensure_eq!(status_of(p)?, ExitStatus::Killed, "killed asleep");
    ensure_eq!(
        wait(Some(p), false).err(),
        Some(Error::InvalidArgument),
        "reaped"
    );
    ensure_eq!(
        kill(p).err(),
        Some(Error::InvalidArgument),
        "a stale pid names nobody"
    );
    ensure_eq!(
        kill(keel_abi::process::ROOT_PID).err(),
        Some(Error::InvalidArgument)
    );
    Ok(())
}

pub fn killing_a_server_in_ipc_fails_its_caller() -> TestResult {
    let r = root()?;
    let ep = endpoint_create(r.pool).ctx("endpoint")?;
    let granted = cap_derive(ep, Rights::ALL, 0).ctx("derive")?;
    let p = start(&["serve"], &[granted])?;
    static EP: AtomicU64 = AtomicU64::new(0);
    EP.store(ep.raw(), Ordering::Relaxed);
    let t = keel_rt::thread::Thread::spawn(
        |_| {
            let ep = CapToken::from_raw(EP.load(Ordering::Relaxed));
            match call(ep, MsgInfo::new(1, 0, 0), [0; 4]) {
                Err(Error::Disconnected) => 0,
                _ => 1,
            }
        },
        0,
    )
    .ctx("thread")?;
    // The child has the call (or will); kill it while the caller waits.
    let _ = sleep_ns(5_000_000);
    kill(p).ctx("kill")?;
    let caller = t.join(WAIT_YIELDS);
    let status = status_of(p);
    let _ = cap_delete(granted);
    cap_delete(ep).ctx("delete")?;
    ensure_eq!(caller, Some(0), "the caller saw Disconnected");
    ensure_eq!(status?, ExitStatus::Killed);
    Ok(())
}

pub fn terminate_is_a_request_the_process_handles() -> TestResult {
    let p = start(&["term"], &[])?;
    terminate(p).ctx("terminate")?;
    ensure_eq!(status_of(p)?, ExitStatus::Exited(42));
    Ok(())
}

pub fn fork_copies_on_write() -> TestResult {
    let p = start_with(4 * CHILD_PAGES, &["fork"], &[])?;
    ensure_eq!(status_of(p)?, ExitStatus::Exited(0));
    Ok(())
}

pub fn exec_replaces_the_image() -> TestResult {
    let r = root()?;
    let p = start_with(4 * CHILD_PAGES, &["exec"], &[r.boot_image])?;
    ensure_eq!(status_of(p)?, ExitStatus::Exited(77));
    Ok(())
}

pub fn bad_images_are_refused() -> TestResult {
    let r = root()?;
    let junk = keel_rt::syscall::mem_create(r.pool, 1, 0).ctx("mem")?;
    let got = spawn(junk, CHILD_PAGES, &["x"], &[], &[]);
    let too_big = spawn(r.boot_image, usize::MAX / 2, &["exit", "0"], &[], &[]);
    let small = spawn(r.boot_image, 8, &["exit", "0"], &[], &[]);
    cap_delete(junk).ctx("delete")?;
    ensure_eq!(got.err(), Some(Error::InvalidArgument), "not an ELF file");
    ensure_eq!(
        too_big.err(),
        Some(Error::OutOfMemory),
        "more than the pool"
    );
    ensure_eq!(
        small.err(),
        Some(Error::OutOfMemory),
        "a pool too small for the image"
    );
    Ok(())
}

pub fn a_fork_bomb_is_held_by_its_pool() -> TestResult {
    let r = root()?;
    let before = pool_available(r.pool).ctx("pool")?;
    let p = spawn(r.boot_image, 8 * CHILD_PAGES, &["bomb"], &[], &[]).ctx("spawn")?;
    ensure_eq!(status_of(p)?, ExitStatus::Exited(0), "stopped by the pool");
    ensure_eq!(
        pool_available(r.pool).ctx("pool")?,
        before,
        "all given back"
    );
    Ok(())
}

pub fn many_processes_give_everything_back() -> TestResult {
    let r = root()?;
    let frames = || system_info(SystemInfoKey::FreeFrames).unwrap_or(0);
    // One first, so that kernel caches have grown to what a process needs.
    let p = start(&["exit", "0"], &[])?;
    ensure_eq!(status_of(p)?, ExitStatus::Exited(0));
    let (pool, free) = (pool_available(r.pool).ctx("pool")?, frames());
    for i in 0..200 {
        let p = start(&["exit", "0"], &[]).map_err(|e| alloc::format!("process {i}: {e}"))?;
        ensure_eq!(status_of(p)?, ExitStatus::Exited(0));
    }
    ensure_eq!(pool_available(r.pool).ctx("pool")?, pool, "pool pages");
    // On one CPU the count is exact. With several, the kernel heap's
    // per-CPU slab caches and frame hot lists may keep a few frames on
    // the CPUs the processes ran on (as in ownership's test); a leak of
    // anything per process would keep over 200.
    let now = frames();
    if system_info(SystemInfoKey::CpuCount).unwrap_or(1) == 1 {
        ensure_eq!(now, free, "free frames");
    } else {
        ensure!(now + 32 >= free, "free frames {now}, before {free}");
    }
    Ok(())
}
