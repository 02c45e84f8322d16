//! The in-kernel benchmark harness.
//!
//! Benchmarks are declared with [`kbench!`] next to the code they measure and
//! land in the `.kbenches` linker section. A kernel built with the `bench`
//! feature runs each one in [`BATCHES`] batches of `iters` operations, reads
//! the cycle counter around each batch and prints
//! `bench <name> median=<n> min=<n> iters=<n> batches=<n>` (ticks per
//! operation, to one decimal). Under QEMU `-icount shift=0` the counter
//! advances once per guest instruction, so the figures are instructions per
//! operation and are deterministic.
//!
//! The loop overhead of the harness is measured by the `bench::empty`
//! benchmark and reported, not subtracted.

/// Batches per benchmark; the median and minimum are taken over these.
pub const BATCHES: usize = 15;

/// One registered benchmark.
#[repr(C)]
pub struct KBench {
    /// Module path and name.
    pub name: &'static str,
    /// Operations per batch.
    pub iters: u64,
    /// Runs the operation `iters` times; returns the ticks it measured
    /// itself, for benchmarks that need set-up outside the timed part.
    pub func: fn(u64) -> Option<u64>,
}

/// Declares an in-kernel benchmark. Compiled only in the `bench` build.
/// The `-> ticks` form returns the cycle-counter ticks of the measured
/// part of its `iters` operations, excluding per-operation set-up.
#[macro_export]
macro_rules! kbench {
    (fn $name:ident($iters:ident: u64) -> ticks $body:block, iters = $n:expr) => {
        $crate::kbench!(@register $name, $n, {
            fn $name($iters: u64) -> Option<u64> {
                fn body($iters: u64) -> u64 $body
                Some(body($iters))
            }
        });
    };
    (fn $name:ident($iters:ident: u64) $body:block, iters = $n:expr) => {
        $crate::kbench!(@register $name, $n, {
            fn $name($iters: u64) -> Option<u64> {
                fn body($iters: u64) $body
                body($iters);
                None
            }
        });
    };
    (@register $name:ident, $n:expr, { $func:item }) => {
        #[cfg(feature = "bench")]
        $func
        #[cfg(feature = "bench")]
        const _: () = {
            #[used]
            #[unsafe(link_section = ".kbenches")]
            static BENCH: $crate::bench::KBench = $crate::bench::KBench {
                name: concat!(module_path!(), "::", stringify!($name)),
                iters: $n,
                func: $name,
            };
        };
    };
}

#[cfg(target_os = "none")]
unsafe extern "C" {
    // Defined by every architecture's linker.ld around `.kbenches` (KEEP,
    // 8-byte aligned). Declared as bytes: only their addresses are used.
    static __kbenches_start: u8;
    static __kbenches_end: u8;
}

/// All benchmarks registered in the `.kbenches` section by [`kbench!`].
#[cfg(target_os = "none")]
fn registered() -> &'static [KBench] {
    // SAFETY: the linker script places every `KBench` static emitted by
    // `kbench!` contiguously between these two symbols.
    unsafe { crate::ktest::section(&raw const __kbenches_start, &raw const __kbenches_end) }
}

/// Runs every registered benchmark and prints one line per benchmark.
#[cfg(target_os = "none")]
pub fn run_all() {
    for b in registered() {
        let iters = b.iters.max(1);
        // Warm caches and lazily initialised state once.
        let _ = (b.func)(iters);
        let mut tenths = [0u64; BATCHES];
        for slot in tenths.iter_mut() {
            let t0 = crate::arch::cycle_counter();
            let own = (b.func)(iters);
            let ticks = own.unwrap_or(crate::arch::cycle_counter().wrapping_sub(t0));
            *slot = ticks.saturating_mul(10) / iters;
        }
        tenths.sort_unstable();
        let median = tenths[BATCHES / 2];
        let min = tenths[0];
        kprintln!(
            "{}{} median={}.{} min={}.{} iters={} batches={}",
            keel_abi::harness::BENCH_PREFIX,
            b.name,
            median / 10,
            median % 10,
            min / 10,
            min % 10,
            iters,
            BATCHES
        );
    }
}

kbench!(
    fn empty(iters: u64) {
        for i in 0..iters {
            core::hint::black_box(i);
        }
    },
    iters = 1000
);

kbench!(
    fn cycle_counter_read(iters: u64) {
        for _ in 0..iters {
            core::hint::black_box(crate::arch::cycle_counter());
        }
    },
    iters = 1000
);

kbench!(
    fn breakpoint_trap_round_trip(iters: u64) {
        for _ in 0..iters {
            crate::arch::breakpoint();
        }
    },
    iters = 200
);

// Benchmarks of the capability system (`cap/` forbids unsafe code, which
// the harness's link-section registration needs, so they live here).

/// A capability system with one space holding one thread capability.
#[cfg(feature = "bench")]
fn one_cap() -> Option<(
    crate::cap::CapSystem<u64>,
    crate::cap::CSpaceId,
    keel_abi::cap::CapToken,
)> {
    let mut caps = crate::cap::CapSystem::<u64>::new();
    let space = caps.create_space(64).ok()?;
    let t = caps
        .insert(
            space,
            crate::cap::Dest::Any,
            7,
            keel_abi::cap::ObjectType::Thread,
            keel_abi::cap::Rights::ALL,
            keel_abi::cap::NO_BADGE,
        )
        .ok()?;
    Some((caps, space, t))
}

crate::kbench!(
    fn cap_lookup(iters: u64) {
        let Some((caps, space, t)) = one_cap() else {
            return;
        };
        for _ in 0..iters {
            let c = caps.lookup_as(
                core::hint::black_box(space),
                core::hint::black_box(t),
                keel_abi::cap::ObjectType::Thread,
                keel_abi::cap::Rights::WRITE,
            );
            core::hint::black_box(c.map(|c| *c.object()).ok());
        }
    },
    iters = 1000
);

crate::kbench!(
    fn cap_derive_delete(iters: u64) {
        let Some((mut caps, space, t)) = one_cap() else {
            return;
        };
        for _ in 0..iters {
            if let Ok(child) = caps.derive(
                space,
                t,
                crate::cap::Dest::Any,
                keel_abi::cap::Rights::READ,
                keel_abi::cap::NO_BADGE,
            ) {
                let _ = core::hint::black_box(caps.delete(space, child));
            }
        }
    },
    iters = 1000
);

// Benchmarks of the scheduler (`sched/` forbids unsafe code too): picking
// the next thread and queueing the one that ran, with 10, 1,000 and 10,000
// runnable threads: real time, spread over the priorities (O(1), so the
// three should agree), and normal (a heap by virtual time: O(log n)).

/// A run-queue entry: its table slot is its number.
#[cfg(feature = "bench")]
#[derive(Clone, Copy, PartialEq, Eq)]
struct Runnable(u32);

#[cfg(feature = "bench")]
impl crate::sched::Slot for Runnable {
    fn slot(&self) -> usize {
        self.0 as usize
    }
}

/// `iters` times: pick the next thread, charge it 1 ms, queue it again.
#[cfg(feature = "bench")]
fn pick_with(runnable: u32, class: crate::sched::Class, iters: u64) -> u64 {
    use crate::sched::{Params, Scheduler};
    let mut s = Scheduler::new();
    let mut params = alloc::vec::Vec::new();
    if s.reserve_slot(runnable as usize).is_err() || params.try_reserve(runnable as usize).is_err()
    {
        return 0;
    }
    for t in 0..runnable {
        params.push(Params {
            class,
            prio: (t % 8) as u8 * 4,
            nice: (t % 5) as i8,
            ..Params::default()
        });
    }
    for (t, p) in params.iter_mut().enumerate() {
        let _ = s.enqueue(Runnable(t as u32), p, true);
    }
    let t0 = crate::arch::cycle_counter();
    for _ in 0..iters {
        if let Some(t) = core::hint::black_box(s.pick())
            && let Some(p) = params.get_mut(t.0 as usize)
        {
            s.charge(p, 1_000_000);
            let _ = s.enqueue(t, p, false);
        }
    }
    crate::arch::cycle_counter().wrapping_sub(t0)
}

crate::kbench!(
    fn sched_pick_requeue_10_runnable(iters: u64) -> ticks {
        pick_with(10, crate::sched::Class::RoundRobin, iters)
    },
    iters = 1000
);

crate::kbench!(
    fn sched_pick_requeue_1000_runnable(iters: u64) -> ticks {
        pick_with(1000, crate::sched::Class::RoundRobin, iters)
    },
    iters = 1000
);

crate::kbench!(
    fn sched_pick_requeue_10000_runnable(iters: u64) -> ticks {
        pick_with(10_000, crate::sched::Class::RoundRobin, iters)
    },
    iters = 1000
);

crate::kbench!(
    fn sched_pick_requeue_normal_10_runnable(iters: u64) -> ticks {
        pick_with(10, crate::sched::Class::Normal, iters)
    },
    iters = 1000
);

crate::kbench!(
    fn sched_pick_requeue_normal_1000_runnable(iters: u64) -> ticks {
        pick_with(1000, crate::sched::Class::Normal, iters)
    },
    iters = 1000
);

crate::kbench!(
    fn sched_pick_requeue_normal_10000_runnable(iters: u64) -> ticks {
        pick_with(10_000, crate::sched::Class::Normal, iters)
    },
    iters = 1000
);
