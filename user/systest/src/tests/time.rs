//! Time and scheduling: sleeping against the monotonic clock, the timer
//! waking sleepers in deadline order, time slices that keep a CPU hog from
//! starving the threads of its priority, the scheduling classes (real
//! time, normal by nice weight, idle) and the statistics.

use super::root;
use crate::harness::{Ctx, TestResult};
use alloc::string::String;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use keel_abi::Error;
use keel_abi::cap::{NO_BADGE, Rights};
use keel_abi::syscall::{SchedClass, SystemInfoKey, ThreadInfoKey};
use keel_rt::ipc;
use keel_rt::syscall::{
    cap_delete, cap_derive, now_ns, sleep_ns, sleep_until, system_info, thread_info, thread_resume,
    thread_set_affinity, thread_set_priority, thread_set_sched, thread_suspend, timer_create,
    timer_set, yield_now,
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

/// A new thread on CPU 0 only, with the root thread (the harness keeps
/// it there): these tests measure how threads share one CPU.
fn create_here(func: fn(usize) -> i32, arg: usize) -> Result<Thread, String> {
    let t = Thread::create(func, arg).ctx("create")?;
    thread_set_affinity(t.token(), 1).ctx("affinity")?;
    Ok(t)
}

fn spawn_at(prio: usize, func: fn(usize) -> i32, arg: usize) -> Result<Thread, String> {
    let t = create_here(func, arg)?;
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
    // Far enough apart that making the threads (slow under emulation
    // without -icount) does not take longer.
    for (i, at) in [(0usize, ms(150)), (1, ms(50)), (2, ms(100))] {
        threads.push(Thread::spawn(sleeper, ((at as usize) << 2) | i).ctx("spawn")?);
    }
    sleep_until(ms(10)).ctx("sleep")?;
    for t in &threads {
        ensure_eq!(t.join(super::WAIT_YIELDS), Some(0));
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
    // ended the hog's slice, and the hog ran in between. (Under
    // multi-threaded TCG a slice ends in host time, and a host that holds
    // up the emulated CPU may end one before the hog got anywhere; so 5
    // of at most 20.)
    let mut ran = 0;
    for _ in 0..20 {
        let before = COUNTS[0].load(Ordering::Relaxed);
        yield_now().ctx("yield")?;
        ran += usize::from(COUNTS[0].load(Ordering::Relaxed) > before);
        if ran == 5 {
            break;
        }
    }
    ensure!(
        ran == 5,
        "the hog ran during {ran} of 20 yields (root on CPU {}, hog on CPU {:?}, switched in {:?} times)",
        keel_rt::syscall::current_cpu(),
        thread_info(h.token(), ThreadInfoKey::Cpu),
        thread_info(h.token(), ThreadInfoKey::Switches)
    );
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
    // Suspended before it got to its sleep (held up by the host), it
    // would only sleep later: suspend it again then.
    let mut code = None;
    for _ in 0..10 {
        thread_suspend(t.token()).ctx("suspend")?;
        thread_resume(t.token()).ctx("resume")?;
        code = t.join(100);
        if code.is_some() {
            break;
        }
    }
    ensure_eq!(
        code,
        Some(Error::InvalidState as i32),
        "a suspended sleep fails"
    );
    let mut u = Thread::spawn(sleep_forever, 0).ctx("spawn")?;
    yield_now().ctx("yield")?;
    u.kill().ctx("kill a sleeper")?;
    ensure_eq!(u.finished(), None);
    Ok(())
}

/// A hog in `class` with `param` (priority or nice), counting in
/// `COUNTS[i]`.
fn hog_in(class: SchedClass, param: isize, i: usize) -> Result<Thread, String> {
    let t = create_here(hog, i)?;
    thread_set_sched(t.token(), class, param, 0).ctx("set class")?;
    t.resume().ctx("resume")?;
    Ok(t)
}

fn run_ns(t: &Thread) -> Result<u64, String> {
    thread_info(t.token(), ThreadInfoKey::RunNs)
        .map(|v| v as u64)
        .ctx("RunNs")
}

/// Runs two hogs for `ms` while the root thread sleeps above them; their
/// CPU times.
fn race(a: (SchedClass, isize), b: (SchedClass, isize), ms: u64) -> Result<(u64, u64), String> {
    let mut x = hog_in(a.0, a.1, 0)?;
    let mut y = hog_in(b.0, b.1, 1)?;
    sleep_ns(ms * 1_000_000).ctx("sleep")?;
    let times = (run_ns(&x)?, run_ns(&y)?);
    x.kill().ctx("kill")?;
    y.kill().ctx("kill")?;
    Ok(times)
}

pub fn equal_nice_hogs_share_the_cpu() -> TestResult {
    at_priority(WATCHER, || {
        let (x, y) = race((SchedClass::Normal, 0), (SchedClass::Normal, 0), 200)?;
        ensure!(x > 0 && y > 0, "a hog never ran: {x} and {y} ns");
        ensure!(
            x.abs_diff(y) * 10 <= x.max(y),
            "CPU times {x} and {y} ns differ by more than 10%"
        );
        Ok(())
    })
}

pub fn nice_weights_set_the_ratio() -> TestResult {
    at_priority(WATCHER, || {
        // Weights 1024 and 335: nice 0 gets 3.06 times the CPU of nice 5.
        let (x, y) = race((SchedClass::Normal, 0), (SchedClass::Normal, 5), 300)?;
        ensure!(y > 0, "the nice-5 hog never ran");
        let ratio = x * 100 / y;
        ensure!(
            (270..=345).contains(&ratio),
            "nice 0 : nice 5 = {x} : {y} ns ({ratio}%), expected about 306%"
        );
        Ok(())
    })
}

pub fn real_time_beats_normal_beats_idle() -> TestResult {
    at_priority(WATCHER, || {
        let (rt, normal) = race((SchedClass::RoundRobin, 1), (SchedClass::Normal, -20), 50)?;
        ensure!(
            rt > 0 && normal == 0,
            "real time {rt} ns, normal {normal} ns"
        );
        let (normal, idle) = race((SchedClass::Normal, 19), (SchedClass::Idle, 0), 50)?;
        ensure!(
            normal > 0 && idle == 0,
            "normal {normal} ns, idle {idle} ns"
        );
        Ok(())
    })
}

pub fn fifo_threads_are_not_time_sliced() -> TestResult {
    at_priority(WATCHER, || {
        let (first, second) = race((SchedClass::Fifo, 5), (SchedClass::Fifo, 5), 50)?;
        ensure!(
            first > 0 && second == 0,
            "FIFO hogs ran {first} and {second} ns"
        );
        let (a, b) = race((SchedClass::RoundRobin, 5), (SchedClass::RoundRobin, 5), 50)?;
        ensure!(a > 0 && b > 0, "round-robin hogs ran {a} and {b} ns");
        Ok(())
    })
}

pub fn thread_set_sched_rejects_bad_arguments() -> TestResult {
    let t = Thread::create(hog, 0).ctx("create")?;
    let tok = t.token();
    use SchedClass::*;
    for (class, param, slice) in [
        (RoundRobin, 32, 0),
        (RoundRobin, -1, 0),
        (RoundRobin, 5, 50_000),
        (RoundRobin, 5, 2_000_000_000),
        (Fifo, 5, 1_000_000),
        (Normal, 20, 0),
        (Normal, -21, 0),
        (Normal, 0, 1_000_000),
        (Idle, 1, 0),
    ] {
        ensure_eq!(
            thread_set_sched(tok, class, param, slice),
            Err(Error::InvalidArgument),
            "{class:?} {param} {slice}"
        );
    }
    // SAFETY: does not touch user memory.
    let bad_class = unsafe {
        keel_rt::syscall::syscall4(
            keel_abi::Syscall::ThreadSetSched as usize,
            tok.raw() as usize,
            4,
            0,
            0,
        )
    };
    ensure_eq!(bad_class, Err(Error::InvalidArgument));
    ensure_eq!(
        thread_info(tok, ThreadInfoKey::Class),
        Ok(SchedClass::RoundRobin as usize),
        "unchanged"
    );
    ensure_eq!(thread_set_sched(tok, Normal, -3, 0), Ok(()));
    ensure_eq!(
        thread_info(tok, ThreadInfoKey::Nice),
        Ok(17),
        "nice -3, plus 20"
    );
    ensure_eq!(thread_set_sched(tok, RoundRobin, 7, 200_000), Ok(()));
    ensure_eq!(thread_info(tok, ThreadInfoKey::Priority), Ok(7));
    // SAFETY: does not touch user memory.
    let bad_key = unsafe {
        keel_rt::syscall::syscall2(
            keel_abi::Syscall::ThreadInfo as usize,
            tok.raw() as usize,
            6,
        )
    };
    ensure_eq!(bad_key, Err(Error::InvalidArgument));
    // A capability without WRITE cannot change the class; READ reads.
    let read_only = cap_derive(tok, Rights::READ, NO_BADGE).ctx("derive")?;
    ensure!(thread_set_sched(read_only, Normal, 0, 0).is_err());
    ensure_eq!(thread_info(read_only, ThreadInfoKey::Priority), Ok(7));
    let none = cap_derive(tok, Rights::WRITE, NO_BADGE).ctx("derive")?;
    ensure!(thread_info(none, ThreadInfoKey::RunNs).is_err());
    cap_delete(read_only).ctx("delete")?;
    cap_delete(none).ctx("delete")?;
    Ok(())
}

pub fn statistics_count_run_time_switches_and_idle() -> TestResult {
    let r = root()?;
    let switches = thread_info(r.thread, ThreadInfoKey::Switches).ctx("switches")?;
    let ran = thread_info(r.thread, ThreadInfoKey::RunNs).ctx("run")?;
    let idle = system_info(SystemInfoKey::IdleNs).ctx("idle")?;
    // Nothing else runs: the CPU idles through the sleep.
    sleep_ns(5_000_000).ctx("sleep")?;
    let idle_after = system_info(SystemInfoKey::IdleNs).ctx("idle")?;
    ensure!(
        idle_after >= idle + 4_000_000,
        "idle {idle} -> {idle_after} ns over a 5 ms sleep"
    );
    ensure!(thread_info(r.thread, ThreadInfoKey::Switches).ctx("switches")? > switches);
    ensure!(thread_info(r.thread, ThreadInfoKey::RunNs).ctx("run")? > ran);
    ensure!(ran > 0 && ran < now_ns() as usize);
    Ok(())
}

/// Receives once on the endpoint `arg`, then never replies.
fn silent_server(arg: usize) -> i32 {
    let ep = keel_abi::cap::CapToken::from_raw(arg as u64);
    if ipc::recv(ep, 0).is_err() {
        return 1;
    }
    let _ = sleep_until(u64::MAX);
    0
}

/// Signals the notification `arg` after 3 ms.
fn late_signaller(arg: usize) -> i32 {
    let _ = sleep_ns(3_000_000);
    match ipc::signal(keel_abi::cap::CapToken::from_raw(arg as u64), 4) {
        Ok(()) => 0,
        Err(_) => 1,
    }
}

pub fn ipc_gives_up_at_its_deadline() -> TestResult {
    let r = root()?;
    let ep = ipc::endpoint_create(r.pool).ctx("endpoint")?;
    let n = ipc::notification_create(r.pool).ctx("notification")?;
    // Nobody sends, nobody signals: each gives up at its deadline.
    let t0 = now_ns();
    let got = ipc::recv_until(ep, 0, t0 + 2_000_000);
    ensure!(
        matches!(got, Err(Error::TimedOut)),
        "recv: {:?}",
        got.map(|m| m.info)
    );
    ensure!(now_ns() >= t0 + 2_000_000, "recv gave up early");
    let t1 = now_ns();
    ensure_eq!(ipc::wait_until(n, t1 + 1_000_000), Err(Error::TimedOut));
    ensure!(now_ns() >= t1 + 1_000_000, "wait gave up early");
    // A server that takes the call and never replies: the caller gives up.
    let server = Thread::spawn(silent_server, ep.raw() as usize).ctx("server")?;
    let got = ipc::call_until(
        ep,
        keel_abi::ipc::MsgInfo::new(1, 0, 0),
        [0; 4],
        now_ns() + 2_000_000,
    );
    ensure!(
        matches!(got, Err(Error::TimedOut)),
        "call: {:?}",
        got.map(|m| m.info)
    );
    drop(server);
    // The deadline is for the next call only: this wait outlives it.
    let signaller = Thread::spawn(late_signaller, n.raw() as usize).ctx("signaller")?;
    ipc::ipc_timeout(now_ns() + 1_000_000).ctx("arm")?;
    yield_now().ctx("the call the deadline applies to")?;
    ensure_eq!(ipc::wait(n), Ok(4));
    ensure_eq!(signaller.join(100), Some(0));
    // Signalled before the deadline: the bits, not an error.
    ipc::signal(n, 2).ctx("signal")?;
    ensure_eq!(ipc::wait_until(n, now_ns() + 1_000_000), Ok(2));
    cap_delete(ep).ctx("delete")?;
    cap_delete(n).ctx("delete")?;
    Ok(())
}

pub fn timers_fire_once_or_periodically_until_disarmed() -> TestResult {
    let r = root()?;
    let n = ipc::notification_create(r.pool).ctx("notification")?;
    let badged = cap_derive(n, Rights::ALL, 0x20).ctx("badge")?;
    let timer = timer_create(r.pool, badged).ctx("timer")?;
    // One-shot: fires once, at or after its deadline, with the badge.
    let deadline = now_ns() + 2_000_000;
    timer_set(timer, deadline, 0).ctx("arm")?;
    ensure_eq!(ipc::wait(n), Ok(0x20));
    ensure!(now_ns() >= deadline, "fired before its deadline");
    sleep_ns(3_000_000).ctx("sleep")?;
    ensure_eq!(ipc::poll(n), Ok(0), "a one-shot timer fired twice");
    // Periodic: fires every period until disarmed.
    let start = now_ns();
    timer_set(timer, start + 1_000_000, 1_000_000).ctx("arm periodic")?;
    for _ in 0..5 {
        ensure_eq!(ipc::wait(n), Ok(0x20));
    }
    ensure!(
        now_ns() >= start + 5_000_000,
        "five periods took less than 5 ms"
    );
    timer_set(timer, 0, 0).ctx("disarm")?;
    let _ = ipc::poll(n);
    sleep_ns(3_000_000).ctx("sleep")?;
    ensure_eq!(ipc::poll(n), Ok(0), "a disarmed timer fired");
    // Deleting the timer disarms it too.
    timer_set(timer, now_ns() + 1_000_000, 1_000_000).ctx("arm again")?;
    cap_delete(timer).ctx("delete")?;
    sleep_ns(3_000_000).ctx("sleep")?;
    ensure_eq!(ipc::poll(n), Ok(0), "a deleted timer fired");
    cap_delete(badged).ctx("delete")?;
    cap_delete(n).ctx("delete")?;
    Ok(())
}

pub fn timer_calls_reject_bad_arguments() -> TestResult {
    let r = root()?;
    let n = ipc::notification_create(r.pool).ctx("notification")?;
    let timer = timer_create(r.pool, n).ctx("timer")?;
    ensure_eq!(
        timer_set(timer, now_ns(), 50_000),
        Err(Error::InvalidArgument),
        "period below 100 µs"
    );
    ensure_eq!(timer_set(n, now_ns(), 0), Err(Error::WrongObjectType));
    let read_only = cap_derive(n, Rights::READ, NO_BADGE).ctx("derive")?;
    ensure!(
        timer_create(r.pool, read_only).is_err(),
        "a notification without WRITE"
    );
    ensure!(timer_create(n, n).is_err(), "a notification is not a pool");
    let timer_ro = cap_derive(timer, Rights::READ, NO_BADGE).ctx("derive")?;
    ensure!(
        timer_set(timer_ro, now_ns(), 0).is_err(),
        "a timer without WRITE"
    );
    for c in [timer_ro, read_only, timer, n] {
        cap_delete(c).ctx("delete")?;
    }
    Ok(())
}
