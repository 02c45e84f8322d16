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

use crate::mirror::TextMirror;
use core::sync::atomic::{AtomicBool, Ordering};
use keel_abi::Error;
use keel_abi::cap::{CapToken, NO_BADGE, Rights};
use keel_abi::harness::BENCH_PREFIX;
use keel_abi::syscall::SystemInfoKey;
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

/// The cheapest system call: `SystemInfo(PageSize)`.
fn null_syscall(iters: u64) -> Result<Option<u64>, Error> {
    for _ in 0..iters {
        core::hint::black_box(system_info(SystemInfoKey::PageSize)?);
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
