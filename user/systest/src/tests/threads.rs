//! Threads: create, resume, exit, yield, suspend, kill, priorities,
//! affinity, thread-local storage, FP/SIMD state per thread, and a thread
//! in another address space.
//!
//! Threads share statics with the root thread; each test resets the ones it
//! uses first. There is no preemption, so every wait yields.

use super::{FAULT_TESTS, WAIT_YIELDS, next_va, root, stale, wait_until, yield_n};
use crate::harness::{Ctx, TestResult};
use crate::mirror::TextMirror;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use keel_abi::Error;
use keel_abi::boot::{ROOT_INFO_ADDR, ROOT_INFO_MAGIC};
use keel_abi::cap::{CapToken, NO_BADGE, Rights};
use keel_abi::syscall::PROT_WRITE;
use keel_rt::probe;
use keel_rt::syscall::{
    cap_delete, cap_derive, cap_space_create, map, mem_create, thread_create, thread_kill,
    thread_resume, thread_set_affinity, thread_set_priority, thread_set_tls, thread_suspend, unmap,
    yield_now,
};
use keel_rt::thread::Thread;

static FLAG: AtomicUsize = AtomicUsize::new(0);
static COUNTER: AtomicUsize = AtomicUsize::new(0);
static STOP: AtomicBool = AtomicBool::new(false);

/// Exit code of [`set_flag`].
const SET_FLAG_CODE: i32 = 7;

fn set_flag(value: usize) -> i32 {
    FLAG.store(value, Ordering::Release);
    SET_FLAG_CODE
}

fn count_with_yields(n: usize) -> i32 {
    for _ in 0..n {
        COUNTER.fetch_add(1, Ordering::AcqRel);
        let _ = yield_now();
    }
    0
}

fn count_until_stopped(_: usize) -> i32 {
    while !STOP.load(Ordering::Acquire) {
        COUNTER.fetch_add(1, Ordering::AcqRel);
        let _ = yield_now();
    }
    0
}

fn reset() {
    FLAG.store(0, Ordering::Release);
    COUNTER.store(0, Ordering::Release);
    STOP.store(false, Ordering::Release);
}

fn counter() -> usize {
    COUNTER.load(Ordering::Acquire)
}

pub fn thread_runs_and_exits() -> TestResult {
    reset();
    let t = Thread::spawn(set_flag, 0x1234).ctx("spawn")?;
    ensure_eq!(t.join(WAIT_YIELDS), Some(SET_FLAG_CODE));
    ensure_eq!(FLAG.load(Ordering::Acquire), 0x1234);
    // An exited thread is gone: its capability names a dead thread.
    ensure_eq!(thread_resume(t.token()), Err(Error::InvalidState));
    Ok(())
}

fn write_magic(va: usize) -> i32 {
    // SAFETY: `va` is a page the root thread mapped writable for us.
    unsafe { probe::store_u64(va, 0xc0ff_ee00_dead_beef) };
    0
}

pub fn thread_writes_mapped_memory() -> TestResult {
    let r = root()?;
    let mem = mem_create(r.pool, 1, 0).ctx("mem_create")?;
    let va = next_va(1);
    map(r.aspace, mem, va, 0, 1, PROT_WRITE).ctx("map")?;
    let t = Thread::spawn(write_magic, va + 64).ctx("spawn")?;
    ensure_eq!(t.join(WAIT_YIELDS), Some(0));
    // SAFETY: mapped above, not unmapped yet.
    let seen = unsafe { ((va + 64) as *const u64).read_volatile() };
    ensure_eq!(seen, 0xc0ff_ee00_dead_beef);
    // SAFETY: the thread has finished; nothing uses the page.
    unsafe { unmap(r.aspace, va, 1) }.ctx("unmap")?;
    cap_delete(mem).ctx("delete")?;
    Ok(())
}

pub fn yield_switches_between_threads() -> TestResult {
    reset();
    // With the root thread on its CPU: yields take turns there.
    let t = Thread::create(count_with_yields, 10).ctx("create")?;
    thread_set_affinity(t.token(), 1).ctx("affinity")?;
    t.resume().ctx("resume")?;
    let mut seen = Vec::new();
    for _ in 0..100 {
        if t.finished().is_some() {
            break;
        }
        let _ = yield_now();
        seen.push(counter());
    }
    ensure_eq!(t.join(WAIT_YIELDS), Some(0));
    ensure_eq!(counter(), 10);
    // Each yield ran the other thread for one step: the root thread saw
    // the counter in between, not only 0 and 10.
    ensure!(
        seen.iter().filter(|&&c| c > 0 && c < 10).count() >= 5,
        "counter values seen: {seen:?}"
    );
    Ok(())
}

pub fn suspend_and_resume() -> TestResult {
    reset();
    let t = Thread::spawn(count_until_stopped, 0).ctx("spawn")?;
    ensure!(wait_until(|| counter() > 0), "the thread never ran");
    thread_suspend(t.token()).ctx("suspend")?;
    let frozen = counter();
    yield_n(10);
    ensure_eq!(counter(), frozen, "a suspended thread ran");
    ensure_eq!(thread_suspend(t.token()), Err(Error::InvalidState));
    thread_resume(t.token()).ctx("resume")?;
    ensure!(
        wait_until(|| counter() > frozen),
        "the resumed thread did not run"
    );
    ensure_eq!(thread_resume(t.token()), Err(Error::InvalidState));
    STOP.store(true, Ordering::Release);
    ensure_eq!(t.join(WAIT_YIELDS), Some(0));
    Ok(())
}

pub fn kill_stops_a_thread() -> TestResult {
    reset();
    let mut t = Thread::spawn(count_until_stopped, 0).ctx("spawn")?;
    ensure!(wait_until(|| counter() > 0), "the thread never ran");
    thread_kill(t.token()).ctx("kill")?;
    let frozen = counter();
    yield_n(10);
    ensure_eq!(counter(), frozen, "a killed thread ran");
    ensure_eq!(thread_kill(t.token()), Err(Error::InvalidState));
    ensure_eq!(thread_resume(t.token()), Err(Error::InvalidState));
    ensure_eq!(thread_suspend(t.token()), Err(Error::InvalidState));
    t.kill().ctx("release")?;
    Ok(())
}

pub fn thread_create_rejects_bad_arguments() -> TestResult {
    let r = root()?;
    let entry = set_flag as fn(usize) -> i32 as usize;
    let stack = next_va(1);
    let space_ro = cap_derive(r.aspace, Rights::READ, NO_BADGE).ctx("derive aspace")?;
    let cspace_ro = cap_derive(r.cspace, Rights::READ, NO_BADGE).ctx("derive cspace")?;
    let cases = [
        (r.pool, CapToken::NULL, Error::WrongObjectType),
        (r.aspace, r.aspace, Error::WrongObjectType),
        (space_ro, CapToken::NULL, Error::AccessDenied),
        (r.aspace, cspace_ro, Error::AccessDenied),
        (stale(r.aspace), CapToken::NULL, Error::InvalidCapability),
        (r.aspace, stale(r.cspace), Error::InvalidCapability),
    ];
    for (aspace, cspace, want) in cases {
        // SAFETY: every case is refused, so no thread is made; if one
        // were, it is killed below before it ever runs.
        let got = unsafe { thread_create(aspace, cspace, entry, stack, 0) };
        if let Ok(t) = got {
            let _ = thread_kill(t);
            let _ = cap_delete(t);
        }
        ensure_eq!(got, Err(want), "aspace {aspace:?} cspace {cspace:?}");
    }
    cap_delete(cspace_ro).ctx("delete")?;
    cap_delete(space_ro).ctx("delete")?;
    Ok(())
}

pub fn thread_in_its_own_cspace_runs() -> TestResult {
    let r = root()?;
    reset();
    let cs = cap_space_create(r.pool, 16).ctx("cap_space_create")?;
    let t = Thread::create_in(cs, set_flag, 0x77).ctx("create")?;
    t.resume().ctx("resume")?;
    ensure_eq!(t.join(WAIT_YIELDS), Some(SET_FLAG_CODE));
    ensure_eq!(FLAG.load(Ordering::Acquire), 0x77);
    drop(t);
    cap_delete(cs).ctx("delete")?;
    Ok(())
}

pub fn priority_bounds() -> TestResult {
    let r = root()?;
    let t = Thread::create(set_flag, 1).ctx("create")?;
    for p in [0, 10, 31] {
        ensure_eq!(thread_set_priority(t.token(), p), Ok(()), "priority {p}");
    }
    for p in [32, 255, 256, usize::MAX] {
        ensure_eq!(
            thread_set_priority(t.token(), p),
            Err(Error::InvalidArgument),
            "priority {p}"
        );
    }
    ensure_eq!(thread_set_priority(r.pool, 1), Err(Error::WrongObjectType));
    ensure_eq!(
        thread_set_priority(stale(t.token()), 1),
        Err(Error::InvalidCapability)
    );
    // Never resumed: dropping it kills it.
    drop(t);
    Ok(())
}

/// The root thread's priority while these tests run (the kernel default).
const ROOT_PRIORITY: usize = 10;

pub fn higher_priority_thread_runs_first() -> TestResult {
    let r = root()?;
    reset();
    thread_set_priority(r.thread, ROOT_PRIORITY).ctx("root priority")?;
    let t = Thread::create(set_flag, 0x55).ctx("create")?;
    thread_set_priority(t.token(), ROOT_PRIORITY + 5).ctx("set priority")?;
    t.resume().ctx("resume")?;
    // No yield: making a higher-priority thread runnable runs it at once.
    ensure_eq!(FLAG.load(Ordering::Acquire), 0x55);
    ensure_eq!(t.join(WAIT_YIELDS), Some(SET_FLAG_CODE));
    Ok(())
}

pub fn lower_priority_thread_waits() -> TestResult {
    let r = root()?;
    reset();
    thread_set_priority(r.thread, ROOT_PRIORITY).ctx("root priority")?;
    let t = Thread::create(set_flag, 0x66).ctx("create")?;
    // On the root thread's CPU (another CPU would run it at once).
    thread_set_affinity(t.token(), 1).ctx("affinity")?;
    thread_set_priority(t.token(), ROOT_PRIORITY - 5).ctx("set priority")?;
    t.resume().ctx("resume")?;
    // Yield only gives way to equal or higher priorities.
    yield_n(10);
    ensure_eq!(
        FLAG.load(Ordering::Acquire),
        0,
        "a lower-priority thread ran"
    );
    thread_set_priority(t.token(), ROOT_PRIORITY).ctx("raise priority")?;
    ensure_eq!(t.join(WAIT_YIELDS), Some(SET_FLAG_CODE));
    ensure_eq!(FLAG.load(Ordering::Acquire), 0x66);
    Ok(())
}

pub fn affinity_bounds() -> TestResult {
    let r = root()?;
    let t = Thread::create(set_flag, 1).ctx("create")?;
    ensure_eq!(thread_set_affinity(t.token(), 1), Ok(()));
    ensure_eq!(thread_set_affinity(t.token(), usize::MAX), Ok(()));
    ensure_eq!(
        thread_set_affinity(t.token(), 0),
        Err(Error::InvalidArgument)
    );
    let cpus = r.info.cpu_count as usize;
    if cpus < usize::BITS as usize {
        ensure_eq!(
            thread_set_affinity(t.token(), 1 << cpus),
            Err(Error::InvalidArgument),
            "only CPU {cpus}, which does not exist"
        );
    }
    ensure_eq!(thread_set_affinity(r.pool, 1), Err(Error::WrongObjectType));
    // It still runs with a valid mask.
    t.resume().ctx("resume")?;
    ensure_eq!(t.join(WAIT_YIELDS), Some(SET_FLAG_CODE));
    Ok(())
}

static TLS_A: u64 = 0x7715_a000_0000_00aa;
static TLS_B: u64 = 0x7715_b000_0000_00bb;

/// Checks, across several yields, that the TLS base points at `expected`.
fn check_tls(expected: usize) -> i32 {
    for _ in 0..5 {
        // SAFETY: the creator set this thread's TLS base to a static word.
        if unsafe { probe::read_tls_word() } != expected as u64 {
            return 1;
        }
        let _ = yield_now();
    }
    0
}

pub fn tls_is_per_thread() -> TestResult {
    let r = root()?;
    let a = Thread::create(check_tls, TLS_A as usize).ctx("create a")?;
    let b = Thread::create(check_tls, TLS_B as usize).ctx("create b")?;
    thread_set_tls(a.token(), &raw const TLS_A as usize).ctx("tls a")?;
    thread_set_tls(b.token(), &raw const TLS_B as usize).ctx("tls b")?;
    a.resume().ctx("resume a")?;
    b.resume().ctx("resume b")?;
    // The root thread sets its own base too, and keeps it across switches.
    thread_set_tls(r.thread, &raw const TLS_A as usize).ctx("tls root")?;
    let mut root_ok = true;
    for _ in 0..5 {
        // SAFETY: the base was just set to a static word.
        root_ok &= unsafe { probe::read_tls_word() } == TLS_A;
        let _ = yield_now();
    }
    thread_set_tls(r.thread, 0).ctx("tls root back to 0")?;
    ensure!(root_ok, "the root thread's TLS base changed");
    ensure_eq!(a.join(WAIT_YIELDS), Some(0), "thread a");
    ensure_eq!(b.join(WAIT_YIELDS), Some(0), "thread b");
    Ok(())
}

pub fn tls_rejects_bad_capabilities() -> TestResult {
    let r = root()?;
    ensure_eq!(thread_set_tls(r.pool, 0x1000), Err(Error::WrongObjectType));
    ensure_eq!(
        thread_set_tls(CapToken::NULL, 0x1000),
        Err(Error::WrongObjectType)
    );
    ensure_eq!(
        thread_set_tls(stale(r.thread), 0x1000),
        Err(Error::InvalidCapability)
    );
    let ro = cap_derive(r.thread, Rights::READ, NO_BADGE).ctx("derive")?;
    ensure_eq!(thread_set_tls(ro, 0x1000), Err(Error::AccessDenied));
    cap_delete(ro).ctx("delete")?;
    Ok(())
}

pub fn tls_non_canonical_base_is_harmless() -> TestResult {
    reset();
    let t = Thread::create(set_flag, 0x99).ctx("create")?;
    // The kernel may refuse the value or accept it; either way the thread
    // must run (x86 cannot load a non-canonical FS base).
    let set = thread_set_tls(t.token(), 0x8000_0000_0000_0000);
    ensure!(
        matches!(set, Ok(()) | Err(Error::InvalidArgument)),
        "set_tls: {set:?}"
    );
    t.resume().ctx("resume")?;
    ensure_eq!(t.join(WAIT_YIELDS), Some(SET_FLAG_CODE));
    ensure_eq!(FLAG.load(Ordering::Acquire), 0x99);
    Ok(())
}

/// Keeps values in FP/SIMD registers across yields; 0 if they survived.
fn fp_worker(seed: usize) -> i32 {
    for i in 0..20u64 {
        let a = seed as u64 ^ i.wrapping_mul(0x0101_0101_0101_0101);
        let b = !a;
        if probe::fp_across_yield(a, b) != (a, b) {
            return 1;
        }
    }
    0
}

pub fn fp_registers_are_per_thread() -> TestResult {
    let a = Thread::spawn(fp_worker, 0x1111_2222_3333_4444).ctx("spawn a")?;
    let b = Thread::spawn(fp_worker, 0x5555_6666_7777_8888).ctx("spawn b")?;
    ensure_eq!(fp_worker(0x9999_aaaa_bbbb_cccc), 0, "root thread");
    ensure_eq!(a.join(WAIT_YIELDS), Some(0), "thread a");
    ensure_eq!(b.join(WAIT_YIELDS), Some(0), "thread b");
    Ok(())
}

/// Yields of the thread in [`runs_in_another_address_space`] before it
/// exits.
const ALTERNATIONS: usize = 5;

pub fn runs_in_another_address_space() -> TestResult {
    let r = root()?;
    thread_set_priority(r.thread, ROOT_PRIORITY).ctx("root priority")?;
    let mut mirror = TextMirror::create(r.info, next_va).ctx("mirror")?;
    let text = mirror.text();
    ensure!(
        text.contains(&keel_rt::entry_address()),
        "text {text:#x?} holds _start"
    );
    // On the root thread's CPU: the steps below count on yields taking
    // turns with it.
    let spawn = |entry, arg| {
        let p = mirror
            .spawn(r.pool, entry, arg, ROOT_PRIORITY)
            .ctx("spawn in the other space")?;
        thread_set_affinity(p.thread(), 1).ctx("affinity")?;
        Ok::<_, alloc::string::String>(p)
    };

    // Each of our yields runs the other thread for one of its yields,
    // unless the timer ended its slice first (on a slow emulated machine,
    // often): it has exited after a few times ALTERNATIONS of ours.
    let mut p = spawn(probe::yield_then_exit_address(), ALTERNATIONS)?;
    ensure_eq!(p.alive(), Ok(true), "a new thread");
    p.resume().ctx("resume")?;
    let mut ours = 0;
    wait_until(|| {
        ours += 1;
        p.alive() != Ok(true)
    });
    ensure_eq!(
        p.alive(),
        Ok(false),
        "after {ours} of our yields it should have exited"
    );
    ensure_eq!(thread_kill(p.thread()), Err(Error::InvalidState));
    p.release().ctx("release")?;

    // A thread that yields forever is killed between two of its yields.
    let mut p = spawn(probe::yield_forever_address(), 0)?;
    p.resume().ctx("resume")?;
    yield_n(10);
    ensure_eq!(p.alive(), Ok(true), "the yield loop stopped");
    ensure_eq!(thread_kill(p.thread()), Ok(()));
    yield_n(2);
    ensure_eq!(p.alive(), Ok(false), "a killed thread");
    ensure_eq!(thread_kill(p.thread()), Err(Error::InvalidState));
    p.release().ctx("release")?;

    // The space is really another one: a load from the mirrored text
    // works there, one from the information page, which our space maps
    // (we read it), faults and ends that process, not ours.
    if FAULT_TESTS {
        // SAFETY: the kernel maps the information page read-only for the
        // life of the task.
        let magic = unsafe { (ROOT_INFO_ADDR as *const u64).read_volatile() };
        ensure_eq!(magic, ROOT_INFO_MAGIC);
        let mut good = spawn(probe::load_then_yield_forever_address(), text.start)?;
        let mut bad = spawn(probe::load_then_yield_forever_address(), ROOT_INFO_ADDR)?;
        good.resume().ctx("resume")?;
        bad.resume().ctx("resume")?;
        yield_n(10);
        ensure_eq!(good.alive(), Ok(true), "after a load from the text");
        ensure_eq!(
            bad.alive(),
            Ok(false),
            "after a load from {ROOT_INFO_ADDR:#x}"
        );
        good.release().ctx("release")?;
        bad.release().ctx("release")?;
    }
    mirror.release().ctx("release the mirror")?;
    Ok(())
}
