//! User-mode benchmarks, run when the root-task flags say
//! `ROOT_FLAG_BENCH`.
//!
//! Same method and output as the kernel's (`kernel/src/bench.rs`): each
//! benchmark runs once to warm up, then in [`BATCHES`] batches of `iters`
//! operations; the cycle counter (`SystemInfo(Cycles)`, guest instructions
//! under QEMU `-icount shift=0`) is read around each batch, and the median
//! and minimum ticks per operation are printed as
//! `bench user::<name> median=<n> min=<n> iters=<n> batches=<n>`. The two
//! counter reads (system calls themselves) are part of each batch, spread
//! over `iters` operations.
//!
//! The IPC rows (`ipc_*`, `notification_*`) time only the operation: the
//! server thread or process, endpoints, notifications and IPC buffers are
//! set up and torn down around the timed loop. A call/reply row is one
//! round trip: the client's `Call` and the server's `ReplyRecv`, two
//! thread switches. Servers run at the root thread's priority.

use crate::mirror::TextMirror;
use crate::tests::ipc::{Owned, ServerMode, ServerProcess, Session};
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use keel_abi::Error;
use keel_abi::cap::{CapToken, NO_BADGE, Rights};
use keel_abi::harness::{BENCH_NOTE_PREFIX, BENCH_PREFIX};
use keel_abi::syscall::SystemInfoKey;
use keel_rt::ipc::{
    MAX_WORDS, MsgInfo, call, endpoint_create, notification_create, poll, recv, send, signal, wait,
};
use keel_rt::println;
use keel_rt::probe;
use keel_rt::syscall::{
    cap_delete, cap_derive, cap_identify, cycles, system_info, thread_set_priority, yield_now,
};
use keel_rt::thread::Thread;

/// Batches per benchmark; the median and minimum are taken over these.
const BATCHES: usize = 15;

struct Bench {
    name: &'static str,
    iters: u64,
    /// Runs the operation `iters` times; returns the ticks it measured
    /// itself, for benchmarks with set-up outside the timed part.
    func: fn(u64) -> Result<Option<u64>, Error>,
}

const BENCHES: &[Bench] = &[
    Bench {
        name: "null_syscall",
        iters: 1000,
        func: null_syscall,
    },
    Bench {
        name: "clock_read_monotonic_ns",
        iters: 1000,
        func: clock_read,
    },
    Bench {
        name: "cap_identify",
        iters: 1000,
        func: cap_lookup,
    },
    Bench {
        name: "cap_derive_delete",
        iters: 500,
        func: cap_derive_delete,
    },
    Bench {
        name: "yield_round_trip",
        iters: 500,
        func: yield_round_trip,
    },
    Bench {
        name: "yield_round_trip_two_spaces",
        iters: 500,
        func: yield_round_trip_two_spaces,
    },
    Bench {
        name: "ipc_call_reply_fastpath_same_space",
        iters: 500,
        func: ipc_call_reply_fastpath_same_space,
    },
    Bench {
        name: "ipc_call_reply_fastpath_two_spaces",
        iters: 500,
        func: ipc_call_reply_fastpath_two_spaces,
    },
    Bench {
        name: "ipc_one_way_send_recv",
        iters: 500,
        func: ipc_one_way_send_recv,
    },
    Bench {
        name: "ipc_call_reply_slowpath",
        iters: 500,
        func: ipc_call_reply_slowpath,
    },
    Bench {
        name: "ipc_call_reply_64_bytes",
        iters: 500,
        func: ipc_call_reply_64_bytes,
    },
    Bench {
        name: "ipc_call_reply_4_kib",
        iters: 200,
        func: ipc_call_reply_4_kib,
    },
    Bench {
        name: "ipc_call_reply_cap_transfer",
        iters: 500,
        func: ipc_call_reply_cap_transfer,
    },
    Bench {
        name: "notification_signal_wait_round_trip",
        iters: 500,
        func: notification_signal_wait_round_trip,
    },
    Bench {
        name: "notification_signal_no_waiter",
        iters: 1000,
        func: notification_signal_no_waiter,
    },
    Bench {
        name: "notification_poll_empty",
        iters: 1000,
        func: notification_poll_empty,
    },
    Bench {
        name: "async_channel_message_two_threads",
        iters: 1000,
        func: crate::tests::channels::channel_stream,
    },
    Bench {
        name: "async_channel_message_batches_of_16",
        iters: 1024,
        func: crate::tests::channels::channel_stream_batched,
    },
    Bench {
        name: "async_channel_ring_send_recv_no_kernel",
        iters: 1000,
        func: crate::tests::channels::channel_ring_only,
    },
    Bench {
        name: "timer_interrupt_entry_to_return",
        iters: 20,
        func: crate::bench_time::timer_interrupt_entry_to_return,
    },
    Bench {
        name: "timer_irq_to_user_handler_wakeup",
        iters: 20,
        func: crate::bench_time::timer_irq_to_user_handler_wakeup,
    },
    Bench {
        name: "preemption_switch",
        iters: 20,
        func: crate::bench_time::preemption_switch,
    },
    Bench {
        name: "thread_create_join",
        iters: 50,
        func: thread_create_join,
    },
    Bench {
        name: "process_spawn_exit_wait",
        iters: 5,
        func: crate::tests::processes::spawn_exit_wait,
    },
    Bench {
        name: "process_minimal_spawn_exit_wait",
        iters: 20,
        func: crate::tests::processes::minimal_spawn_exit_wait,
    },
    Bench {
        name: "process_fork_exit_wait",
        iters: 5,
        func: crate::tests::processes::fork_exit_wait,
    },
];

/// Runs every benchmark and prints one line each.
pub fn run_all() {
    println!("systest: user-mode benchmarks");
    for b in BENCHES {
        match measure(b) {
            Ok((median, min)) => println!(
                "{BENCH_PREFIX}user::{} median={}.{} min={}.{} iters={} batches={BATCHES}",
                b.name,
                median / 10,
                median % 10,
                min / 10,
                min % 10,
                b.iters,
            ),
            Err(e) => println!("systest: benchmark user::{} failed: {e:?}", b.name),
        }
    }
    scale();
}

/// Minimal processes alive at once in the scale run.
const SCALE: usize = 10_000;

/// The scale run, once (it is too long to batch): [`SCALE`] minimal
/// processes spawned and alive at once, then asked to terminate and
/// reaped. Prints ticks per process for each half, and the memory they
/// took while alive (free frames, so kernel objects, page tables, the
/// information page each and the server's share).
fn scale() {
    let row = |name: &str, ticks: u64| {
        let tenths = ticks * 10 / SCALE as u64;
        let (whole, frac) = (tenths / 10, tenths % 10);
        println!(
            "{BENCH_PREFIX}user::{name} median={whole}.{frac} min={whole}.{frac} iters={SCALE} batches=1"
        );
    };
    let mut pids = alloc::vec::Vec::new();
    if pids.try_reserve_exact(SCALE).is_err() {
        println!("systest: benchmark user::processes_10000 failed: no heap");
        return;
    }
    match crate::tests::processes::many_alive(&mut pids) {
        Ok((spawn, end, frames)) => {
            row("processes_10000_spawn_all", spawn);
            row("processes_10000_terminate_and_reap_all", end);
            println!(
                "{BENCH_NOTE_PREFIX}{SCALE} minimal processes alive at once: {frames} frames, {} bytes each; {} M instructions for all",
                frames * 4096 / SCALE,
                (spawn + end) / 1_000_000,
            );
        }
        Err(e) => println!("systest: benchmark user::processes_10000 failed: {e:?}"),
    }
}

/// Median and minimum of ticks per operation, in tenths.
fn measure(b: &Bench) -> Result<(u64, u64), Error> {
    let iters = b.iters.max(1);
    (b.func)(iters)?;
    let mut tenths = [0u64; BATCHES];
    for slot in tenths.iter_mut() {
        let t0 = cycles();
        let own = (b.func)(iters)?;
        let ticks = own.unwrap_or(cycles().wrapping_sub(t0));
        *slot = ticks.saturating_mul(10) / iters;
    }
    tenths.sort_unstable();
    Ok((tenths[BATCHES / 2], tenths[0]))
}

fn pool() -> Result<CapToken, Error> {
    keel_rt::root_info()
        .map(|i| CapToken::from_raw(i.pool))
        .ok_or(Error::InvalidState)
}

/// A thread of this process made, run to its end and joined (its
/// capability deleted): `Thread::spawn` + `join`.
fn thread_create_join(iters: u64) -> Result<Option<u64>, Error> {
    for _ in 0..iters {
        let t = Thread::spawn(|_| 0, 0)?;
        if t.join(crate::tests::WAIT_YIELDS) != Some(0) {
            return Err(Error::InvalidState);
        }
    }
    Ok(None)
}

/// The cheapest system call: `SystemInfo(PageSize)`.
fn null_syscall(iters: u64) -> Result<Option<u64>, Error> {
    for _ in 0..iters {
        core::hint::black_box(system_info(SystemInfoKey::PageSize)?);
    }
    Ok(None)
}

/// Reading the monotonic clock: `SystemInfo(MonotonicNs)`.
fn clock_read(iters: u64) -> Result<Option<u64>, Error> {
    for _ in 0..iters {
        core::hint::black_box(system_info(SystemInfoKey::MonotonicNs)?);
    }
    Ok(None)
}

/// A capability lookup: `CapIdentify` of the pool.
fn cap_lookup(iters: u64) -> Result<Option<u64>, Error> {
    let pool = pool()?;
    for _ in 0..iters {
        core::hint::black_box(cap_identify(pool)?);
    }
    Ok(None)
}

/// Deriving a capability and deleting it again.
fn cap_derive_delete(iters: u64) -> Result<Option<u64>, Error> {
    let pool = pool()?;
    for _ in 0..iters {
        let c = cap_derive(pool, Rights::READ, NO_BADGE)?;
        cap_delete(c)?;
    }
    Ok(None)
}

static PARTNER_STOP: AtomicBool = AtomicBool::new(false);

fn partner(_: usize) -> i32 {
    while !PARTNER_STOP.load(Ordering::Acquire) {
        let _ = yield_now();
    }
    0
}

/// A yield that switches to another thread of the same process, which
/// yields straight back: two system calls and two thread switches per
/// operation. Starting and stopping the partner is not timed.
fn yield_round_trip(iters: u64) -> Result<Option<u64>, Error> {
    PARTNER_STOP.store(false, Ordering::Release);
    let t = Thread::spawn(partner, 0)?;
    yield_now()?;
    let t0 = cycles();
    for _ in 0..iters {
        yield_now()?;
    }
    let ticks = cycles().wrapping_sub(t0);
    PARTNER_STOP.store(true, Ordering::Release);
    t.join(1000).ok_or(Error::InvalidState)?;
    Ok(Some(ticks))
}

/// Priority of both threads of [`yield_round_trip_two_spaces`]: the
/// kernel's default, which the root thread starts with.
const YIELD_PRIORITY: usize = 10;

/// A yield that switches to a thread in another address space (and
/// process), which yields straight back: two system calls and two
/// address-space switches per operation, i.e. per round trip. The other
/// thread runs `keel_rt`'s stackless yield loop from this program's text,
/// mapped at the same addresses in its space. Setting up and tearing down
/// the address space, process and thread is not timed.
fn yield_round_trip_two_spaces(iters: u64) -> Result<Option<u64>, Error> {
    let info = keel_rt::root_info().ok_or(Error::InvalidState)?;
    let mut mirror = TextMirror::create(info, crate::tests::next_va)?;
    let mut other = mirror.spawn(
        CapToken::from_raw(info.pool),
        probe::yield_forever_address(),
        0,
        YIELD_PRIORITY,
    )?;
    thread_set_priority(CapToken::from_raw(info.thread), YIELD_PRIORITY)?;
    other.resume()?;
    yield_now()?;
    let t0 = cycles();
    for _ in 0..iters {
        yield_now()?;
    }
    let ticks = cycles().wrapping_sub(t0);
    other.release()?;
    mirror.release()?;
    Ok(Some(ticks))
}

fn root() -> Result<crate::tests::Root, Error> {
    crate::tests::root().map_err(|_| Error::InvalidState)
}

/// `iters` calls of `len` words (through IPC buffers beyond four) and, if
/// `cap`, one capability each, to a [`crate::tests::ipc::server`] thread
/// of this process that echoes them (and deletes the capability it got).
fn call_reply(iters: u64, flags: u64, len: usize, cap: bool) -> Result<Option<u64>, Error> {
    let r = root()?;
    thread_set_priority(r.thread, YIELD_PRIORITY)?;
    let buffers = len > 4 || cap;
    let session = Session::start(&r, flags, ServerMode::Echo, buffers)?;
    let ntfn = Owned(notification_create(r.pool)?);
    let caps = if cap {
        let buf = session.buffer().ok_or(Error::InvalidState)?;
        buf.set_caps(&[ntfn.0]);
        1
    } else {
        0
    };
    if let Some(buf) = session.buffer() {
        for i in 0..len {
            buf.set_word(i, i as u64);
        }
    }
    let info = MsgInfo::new(1, len, caps).with(flags);
    let t0 = cycles();
    for i in 0..iters {
        core::hint::black_box(call(session.ep, info, [i, 1, 2, 3])?);
    }
    let ticks = cycles().wrapping_sub(t0);
    session.stop(flags)?;
    Ok(Some(ticks))
}

/// Call and reply of one register word between two threads of this
/// process, on the kernel's fast path.
fn ipc_call_reply_fastpath_same_space(iters: u64) -> Result<Option<u64>, Error> {
    call_reply(iters, 0, 1, false)
}

/// The same on the general path (`MsgInfo::SLOWPATH`).
fn ipc_call_reply_slowpath(iters: u64) -> Result<Option<u64>, Error> {
    call_reply(iters, MsgInfo::SLOWPATH, 1, false)
}

/// Call and reply of 8 words (64 bytes: four in registers, four through
/// the IPC buffers).
fn ipc_call_reply_64_bytes(iters: u64) -> Result<Option<u64>, Error> {
    call_reply(iters, 0, 8, false)
}

/// Call and reply of the longest message, 504 words (4,032 bytes, all but
/// four through the IPC buffers).
fn ipc_call_reply_4_kib(iters: u64) -> Result<Option<u64>, Error> {
    call_reply(iters, 0, MAX_WORDS, false)
}

/// Call and reply of one word with one capability (a notification)
/// transferred; the server deletes the capability it received before
/// answering, so each operation includes that `CapDelete`.
fn ipc_call_reply_cap_transfer(iters: u64) -> Result<Option<u64>, Error> {
    call_reply(iters, 0, 1, true)
}

/// Call and reply of one register word with a server in another address
/// space and process: `keel_rt`'s stackless echo loop
/// (`probe::ipc_echo_forever_address`) mapped from this program's text.
fn ipc_call_reply_fastpath_two_spaces(iters: u64) -> Result<Option<u64>, Error> {
    let r = root()?;
    thread_set_priority(r.thread, YIELD_PRIORITY)?;
    let ep = Owned(endpoint_create(r.pool)?);
    let server = ServerProcess::start(&r, ep.0, probe::ipc_echo_forever_address(), YIELD_PRIORITY)?;
    let info = MsgInfo::new(1, 1, 0);
    let t0 = cycles();
    for i in 0..iters {
        core::hint::black_box(call(ep.0, info, [i, 0, 0, 0])?);
    }
    let ticks = cycles().wrapping_sub(t0);
    drop(server);
    Ok(Some(ticks))
}

/// Endpoint of [`sink`].
static SINK_EP: AtomicU64 = AtomicU64::new(0);
/// Label that makes [`sink`] return.
const SINK_STOP: u64 = 1;

/// Receives messages on [`SINK_EP`] until one is labelled [`SINK_STOP`].
fn sink(_: usize) -> i32 {
    let ep = CapToken::from_raw(SINK_EP.load(Ordering::Acquire));
    loop {
        match recv(ep, 0) {
            Ok(m) if m.info.label() == SINK_STOP => return 0,
            Ok(_) => {}
            Err(_) => return 1,
        }
    }
}

/// One-way IPC: `Send` of one register word to a thread of this process
/// waiting in `Recv`, which takes it and waits again. Per operation: one
/// `Send`, one `Recv`, two thread switches — half a call/reply round trip
/// in system calls and switches.
fn ipc_one_way_send_recv(iters: u64) -> Result<Option<u64>, Error> {
    let r = root()?;
    thread_set_priority(r.thread, YIELD_PRIORITY)?;
    let ep = Owned(endpoint_create(r.pool)?);
    SINK_EP.store(ep.0.raw(), Ordering::Release);
    let t = Thread::spawn(sink, 0)?;
    yield_now()?;
    let info = MsgInfo::new(0, 1, 0);
    let t0 = cycles();
    for i in 0..iters {
        send(ep.0, info, [i, 0, 0, 0])?;
    }
    let ticks = cycles().wrapping_sub(t0);
    send(ep.0, MsgInfo::new(SINK_STOP, 0, 0), [0; 4])?;
    t.join(1000).ok_or(Error::InvalidState)?;
    Ok(Some(ticks))
}

/// Notifications of [`ping_pong`]: it waits on the first, signals the
/// second.
static PING: AtomicU64 = AtomicU64::new(0);
static PONG: AtomicU64 = AtomicU64::new(0);

fn ping_pong(_: usize) -> i32 {
    let ping = CapToken::from_raw(PING.load(Ordering::Acquire));
    let pong = CapToken::from_raw(PONG.load(Ordering::Acquire));
    while wait(ping).is_ok() {
        if PARTNER_STOP.load(Ordering::Acquire) {
            return 0;
        }
        if signal(pong, 1).is_err() {
            return 1;
        }
    }
    1
}

/// Two threads of this process ping-pong through two notifications: per
/// operation two `Signal`s, two `Wait`s and two thread switches.
fn notification_signal_wait_round_trip(iters: u64) -> Result<Option<u64>, Error> {
    let r = root()?;
    thread_set_priority(r.thread, YIELD_PRIORITY)?;
    let ping = Owned(notification_create(r.pool)?);
    let pong = Owned(notification_create(r.pool)?);
    PING.store(ping.0.raw(), Ordering::Release);
    PONG.store(pong.0.raw(), Ordering::Release);
    PARTNER_STOP.store(false, Ordering::Release);
    let t = Thread::spawn(ping_pong, 0)?;
    yield_now()?;
    let t0 = cycles();
    for _ in 0..iters {
        signal(ping.0, 1)?;
        wait(pong.0)?;
    }
    let ticks = cycles().wrapping_sub(t0);
    PARTNER_STOP.store(true, Ordering::Release);
    signal(ping.0, 1)?;
    t.join(1000).ok_or(Error::InvalidState)?;
    Ok(Some(ticks))
}

/// `Signal` of a notification nobody waits on.
fn notification_signal_no_waiter(iters: u64) -> Result<Option<u64>, Error> {
    let ntfn = Owned(notification_create(pool()?)?);
    let t0 = cycles();
    for _ in 0..iters {
        signal(ntfn.0, 1)?;
    }
    let ticks = cycles().wrapping_sub(t0);
    poll(ntfn.0)?;
    Ok(Some(ticks))
}

/// `Poll` of a notification with nothing pending.
fn notification_poll_empty(iters: u64) -> Result<Option<u64>, Error> {
    let ntfn = Owned(notification_create(pool()?)?);
    let t0 = cycles();
    for _ in 0..iters {
        core::hint::black_box(poll(ntfn.0)?);
    }
    Ok(Some(cycles().wrapping_sub(t0)))
}
