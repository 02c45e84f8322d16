//! Several CPUs: every CPU online and used, busy threads spread over them,
//! affinity kept, IPC between threads on different CPUs, TLB shootdown (a
//! reader on another CPU faults once the page is unmapped), hotplug, and
//! a thousand threads waking each other across CPUs with nothing lost or
//! leaked. Each test also runs on one CPU, where it checks what it can.

use super::ipc::Owned;
use super::{next_va, root};
use crate::harness::{Ctx, TestResult};
use alloc::vec::Vec;
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use keel_abi::Error;
use keel_abi::cap::{CapToken, Rights};
use keel_abi::ipc::MsgInfo;
use keel_abi::syscall::{PROT_WRITE, SystemInfoKey, ThreadInfoKey};
use keel_rt::ipc::{call, endpoint_create, recv, recv_until, reply, reply_recv, send};
use keel_rt::syscall::{
    cap_delete, cap_derive, cap_space_create, cpu_set_online, current_cpu, map, mem_create, now_ns,
    pool_available, sleep_ns, system_info, thread_info, thread_set_affinity, thread_set_priority,
    unmap,
};
use keel_rt::thread::{Thread, spawn_on};

/// CPUs that came up.
fn cpus() -> usize {
    system_info(SystemInfoKey::CpuCount).unwrap_or(1)
}

fn all_cpus() -> usize {
    (1usize << cpus()) - 1
}

static STOP: AtomicBool = AtomicBool::new(false);
static SPINS: [AtomicU64; 16] = [const { AtomicU64::new(0) }; 16];
/// CPUs each spinner was seen on (bit per CPU).
static SEEN: [AtomicUsize; 16] = [const { AtomicUsize::new(0) }; 16];

/// Spins until `STOP`, counting and noting the CPUs it runs on.
fn spinner(i: usize) -> i32 {
    let (Some(n), Some(seen)) = (SPINS.get(i), SEEN.get(i)) else {
        return 1;
    };
    while !STOP.load(Ordering::Relaxed) {
        n.fetch_add(1, Ordering::Relaxed);
        seen.fetch_or(1 << current_cpu(), Ordering::Relaxed);
    }
    0
}

/// Runs `f` with `n` spinners started (with affinities `masks`, default
/// all), the root thread above them so it can watch; stops them after.
fn with_spinners(masks: &[usize], f: impl FnOnce(&[Thread]) -> TestResult) -> TestResult {
    let r = root()?;
    STOP.store(false, Ordering::Relaxed);
    for (s, n) in SEEN.iter().zip(&SPINS) {
        s.store(0, Ordering::Relaxed);
        n.store(0, Ordering::Relaxed);
    }
    thread_set_priority(r.thread, 12).ctx("root priority")?;
    let mut ts = Vec::new();
    let mut result = Ok(());
    for (i, &m) in masks.iter().enumerate() {
        match Thread::create(spinner, i).ctx("create") {
            Ok(t) => {
                if let Err(e) = thread_set_affinity(t.token(), m).ctx("affinity") {
                    result = Err(e);
                }
                let _ = t.resume();
                ts.push(t);
            }
            Err(e) => result = Err(e),
        }
    }
    if result.is_ok() {
        result = f(&ts);
    }
    STOP.store(true, Ordering::Relaxed);
    for t in &ts {
        ensure_eq!(t.join(super::WAIT_YIELDS), Some(0), "spinner stops");
    }
    thread_set_priority(r.thread, 10).ctx("root priority back")?;
    result
}

pub fn every_cpu_is_online() -> TestResult {
    let n = cpus();
    ensure!((1..=16).contains(&n), "{n} CPUs");
    ensure_eq!(system_info(SystemInfoKey::OnlineCpus), Ok(all_cpus()));
    ensure!(current_cpu() < n);
    let me = root()?.thread;
    ensure_eq!(thread_info(me, ThreadInfoKey::Cpu), Ok(current_cpu()));
    Ok(())
}

pub fn busy_threads_spread_over_every_cpu() -> TestResult {
    let n = cpus();
    let masks: Vec<usize> = (0..n).map(|_| usize::MAX).collect();
    with_spinners(&masks, |ts| {
        sleep_ns(20_000_000).ctx("sleep")?;
        let mut on = 0usize;
        for (i, t) in ts.iter().enumerate() {
            let cpu = thread_info(t.token(), ThreadInfoKey::Cpu).ctx("cpu")?;
            ensure!(on & (1 << cpu) == 0, "spinner {i} shares CPU {cpu}");
            on |= 1 << cpu;
            ensure!(
                SPINS[i].load(Ordering::Relaxed) > 0,
                "spinner {i} never ran"
            );
        }
        ensure_eq!(on, all_cpus(), "one spinner per CPU");
        Ok(())
    })
}

pub fn a_pinned_thread_never_migrates() -> TestResult {
    let n = cpus();
    let pin = 1 << (n - 1);
    // The pinned one, and more spinners than CPUs pressing on it.
    let mut masks = alloc::vec![pin];
    masks.extend((0..n).map(|_| usize::MAX));
    with_spinners(&masks, |_| {
        sleep_ns(30_000_000).ctx("sleep")?;
        ensure!(
            SPINS[0].load(Ordering::Relaxed) > 0,
            "the pinned thread ran"
        );
        ensure_eq!(SEEN[0].load(Ordering::Relaxed), pin, "only on its CPU");
        Ok(())
    })
}

pub fn affinity_rejects_cpus_that_are_not_there() -> TestResult {
    let t = Thread::create(spinner, 0).ctx("create")?;
    ensure_eq!(
        thread_set_affinity(t.token(), 0),
        Err(Error::InvalidArgument)
    );
    if cpus() < 64 {
        ensure_eq!(
            thread_set_affinity(t.token(), 1 << cpus()),
            Err(Error::InvalidArgument)
        );
    }
    Ok(())
}

static SERVER_CPU: AtomicUsize = AtomicUsize::new(usize::MAX);

/// Serves `+1` calls on endpoint `ep` forever, noting its CPU.
fn adder(ep: usize) -> i32 {
    let ep = CapToken::from_raw(ep as u64);
    let Ok(mut m) = recv(ep, 0) else { return 1 };
    loop {
        SERVER_CPU.fetch_and(1 << current_cpu(), Ordering::Relaxed);
        match reply_recv(ep, MsgInfo::new(0, 1, 0), [m.words[0] + 1, 0, 0, 0]) {
            Ok(next) => m = next,
            Err(_) => return 2,
        }
    }
}

pub fn ipc_between_threads_on_different_cpus() -> TestResult {
    let r = root()?;
    let n = cpus();
    let (client_cpu, server_cpu) = (0, n - 1);
    let ep = Owned(endpoint_create(r.pool).ctx("endpoint")?);
    SERVER_CPU.store(1 << server_cpu, Ordering::Relaxed);
    let mut server = Thread::create(adder, ep.0.raw() as usize).ctx("server")?;
    thread_set_affinity(server.token(), 1 << server_cpu).ctx("server affinity")?;
    server.resume().ctx("resume")?;
    thread_set_affinity(r.thread, 1 << client_cpu).ctx("client affinity")?;
    let mut result = Ok(());
    for i in 0..200u64 {
        match call(ep.0, MsgInfo::new(0, 1, 0), [i, 0, 0, 0]) {
            Ok(m) if m.words[0] == i + 1 && current_cpu() == client_cpu => {}
            other => {
                result = Err(alloc::format!(
                    "call {i}: {other:?} on CPU {}",
                    current_cpu()
                ));
                break;
            }
        }
    }
    thread_set_affinity(r.thread, usize::MAX).ctx("client affinity back")?;
    server.kill().ctx("kill server")?;
    result?;
    ensure_eq!(
        SERVER_CPU.load(Ordering::Relaxed),
        1 << server_cpu,
        "the server ran on its CPU only"
    );
    Ok(())
}

static READS: AtomicU64 = AtomicU64::new(0);

/// Reads the word at `addr` until it faults.
fn reader(addr: usize) -> i32 {
    loop {
        // SAFETY: the page is mapped until the test unmaps it; the fault
        // that follows is the point (its handler kills this process).
        let v = unsafe { keel_rt::probe::load_u64(addr) };
        if v != 0x5eed {
            return 1;
        }
        READS.fetch_add(1, Ordering::Release);
    }
}

pub fn unmapping_a_page_faults_a_reader_on_another_cpu() -> TestResult {
    let r = root()?;
    let n = cpus();
    READS.store(0, Ordering::Relaxed);
    let va = next_va(1);
    let mem = Owned(mem_create(r.pool, 1, 0).ctx("mem")?);
    map(r.aspace, mem.0, va, 0, 1, PROT_WRITE).ctx("map")?;
    // SAFETY: just mapped writable; the reader starts after this.
    unsafe { (va as *mut u64).write_volatile(0x5eed) };
    let ep = Owned(endpoint_create(r.pool).ctx("endpoint")?);
    let handler = Owned(cap_derive(ep.0, Rights::READ | Rights::WRITE, 0x7b).ctx("badge")?);
    let cs = Owned(cap_space_create(r.pool, 8).ctx("cap space")?);
    let t = Thread::create_in(cs.0, reader, va).ctx("create")?;
    keel_rt::ipc::thread_set_fault_handler(t.token(), handler.0).ctx("handler")?;
    thread_set_affinity(t.token(), 1 << (n - 1)).ctx("reader affinity")?;
    thread_set_affinity(r.thread, 1).ctx("root affinity")?;
    thread_set_priority(r.thread, 12).ctx("root priority")?;
    t.resume().ctx("resume")?;
    let deadline = now_ns() + 2_000_000_000;
    while READS.load(Ordering::Acquire) < 1000 && now_ns() < deadline {
        sleep_ns(1_000_000).ctx("sleep")?;
    }
    let read = READS.load(Ordering::Acquire);
    // SAFETY: only the reader uses the page, and its fault is the test.
    let unmapped = unsafe { unmap(r.aspace, va, 1) };
    let fault = recv_until(ep.0, 0, now_ns() + 2_000_000_000);
    thread_set_affinity(r.thread, usize::MAX).ctx("root affinity back")?;
    thread_set_priority(r.thread, 10).ctx("root priority back")?;
    ensure!(read >= 1000, "the reader read {read} times");
    unmapped.ctx("unmap")?;
    let m = fault.ctx("the reader's fault")?;
    ensure!(m.is_fault(), "not a fault: {m:?}");
    ensure_eq!(m.badge, 0x7b);
    ensure_eq!(m.words[..2], [1, va as u64], "a page fault at the page");
    reply(MsgInfo::new(keel_rt::ipc::FAULT_KILL, 0, 0), [0; 4]).ctx("kill it")?;
    ensure_eq!(t.join(super::WAIT_YIELDS), None, "killed, never finished");
    Ok(())
}

pub fn cpus_go_offline_and_come_back() -> TestResult {
    let r = root()?;
    let dc = CapToken::from_raw(r.info.device_control);
    let n = cpus();
    ensure_eq!(
        cpu_set_online(r.pool, 1, false),
        Err(Error::WrongObjectType)
    );
    ensure_eq!(
        cpu_set_online(dc, 0, false),
        Err(Error::InvalidArgument),
        "the boot CPU"
    );
    ensure_eq!(cpu_set_online(dc, n, false), Err(Error::InvalidArgument));
    ensure_eq!(
        cpu_set_online(dc, usize::MAX, true),
        Err(Error::InvalidArgument)
    );
    // SAFETY: `CpuSetOnline` touches no memory.
    let bad = unsafe {
        keel_rt::syscall::syscall3(
            keel_abi::Syscall::CpuSetOnline as usize,
            dc.raw() as usize,
            1,
            2,
        )
    };
    ensure_eq!(bad, Err(Error::InvalidArgument), "online must be 0 or 1");
    if n < 2 {
        return Ok(());
    }
    let c = n - 1;
    with_spinners(&[1 << c], |ts| {
        let t = ts.first().ctx("spinner")?.token();
        sleep_ns(2_000_000).ctx("sleep")?;
        ensure_eq!(thread_info(t, ThreadInfoKey::Cpu), Ok(c), "pinned");
        cpu_set_online(dc, c, false).ctx("offline")?;
        ensure_eq!(cpu_set_online(dc, c, false), Err(Error::InvalidState));
        ensure_eq!(
            system_info(SystemInfoKey::OnlineCpus),
            Ok(all_cpus() & !(1 << c))
        );
        sleep_ns(10_000_000).ctx("sleep")?;
        let before = SPINS[0].load(Ordering::Relaxed);
        sleep_ns(10_000_000).ctx("sleep")?;
        ensure!(
            thread_info(t, ThreadInfoKey::Cpu) != Ok(c),
            "it left the offline CPU"
        );
        ensure!(SPINS[0].load(Ordering::Relaxed) > before, "and still runs");
        cpu_set_online(dc, c, true).ctx("online")?;
        ensure_eq!(system_info(SystemInfoKey::OnlineCpus), Ok(all_cpus()));
        sleep_ns(10_000_000).ctx("sleep")?;
        ensure_eq!(thread_info(t, ThreadInfoKey::Cpu), Ok(c), "back on its CPU");
        Ok(())
    })
}

/// Threads in the ring, and messages going round it at once.
const RING: usize = 1000;
const TOKENS: u64 = 50;
const HOPS: u64 = 5_000;
const RING_STACK: usize = 1024;

#[repr(C, align(16))]
struct RingStacks(UnsafeCell<[[u8; RING_STACK]; RING]>);
// SAFETY: each stack is used by one ring thread only (`spawn_on`).
unsafe impl Sync for RingStacks {}
static RING_STACKS: RingStacks = RingStacks(UnsafeCell::new([[0; RING_STACK]; RING]));
static RING_EPS: [AtomicU64; RING] = [const { AtomicU64::new(0) }; RING];
static RING_HOPS: AtomicU64 = AtomicU64::new(0);

/// Ring thread `i`: receives a message on its endpoint, passes it on.
fn ring_thread(i: usize) -> i32 {
    let ep = |j: usize| CapToken::from_raw(RING_EPS[j % RING].load(Ordering::Relaxed));
    loop {
        let Ok(m) = recv(ep(i), 0) else { return 1 };
        RING_HOPS.fetch_add(1, Ordering::Relaxed);
        if send(ep(i + 1), MsgInfo::new(0, 1, 0), m.words).is_err() {
            return 2;
        }
    }
}

pub fn a_thousand_threads_wake_each_other_across_cpus() -> TestResult {
    let r = root()?;
    let before = pool_available(r.pool).ctx("pool before")?;
    RING_HOPS.store(0, Ordering::Relaxed);
    let mut eps = Vec::new();
    let mut threads = Vec::new();
    let mut result: TestResult = (|| {
        for e in &RING_EPS {
            let ep = endpoint_create(r.pool).ctx("endpoint")?;
            e.store(ep.raw(), Ordering::Relaxed);
            eps.push(ep);
        }
        for i in 0..RING {
            let top = RING_STACKS.0.get() as usize + (i + 1) * RING_STACK;
            // SAFETY: stack `i` is this thread's alone; it is killed below
            // before the test ends.
            let t = unsafe { spawn_on(top, ring_thread, i) }.ctx("spawn")?;
            threads.push(t);
            thread_set_affinity(t, usize::MAX).ctx("affinity")?;
        }
        for k in 0..TOKENS {
            let at = k as usize * (RING / TOKENS as usize);
            let target = CapToken::from_raw(RING_EPS[at].load(Ordering::Relaxed));
            send(target, MsgInfo::new(0, 1, 0), [k, 0, 0, 0]).ctx("inject")?;
        }
        let deadline = now_ns() + 60_000_000_000;
        while RING_HOPS.load(Ordering::Relaxed) < HOPS {
            ensure!(
                now_ns() < deadline,
                "only {} hops: a wake-up was lost",
                RING_HOPS.load(Ordering::Relaxed)
            );
            sleep_ns(2_000_000).ctx("sleep")?;
        }
        let mut used = 0usize;
        for t in &threads {
            if let Ok(c) = thread_info(*t, ThreadInfoKey::Cpu) {
                used |= 1 << c;
            }
        }
        ensure_eq!(used, all_cpus(), "the ring ran on every CPU");
        Ok(())
    })();
    for t in threads {
        if let Err(e) = keel_rt::syscall::thread_kill(t) {
            result = result.and(Err(alloc::format!("kill: {e:?}")));
        }
        let _ = cap_delete(t);
    }
    for ep in eps {
        let _ = cap_delete(ep);
    }
    ensure_eq!(
        pool_available(r.pool).ctx("pool after")?,
        before,
        "nothing leaked"
    );
    result
}
