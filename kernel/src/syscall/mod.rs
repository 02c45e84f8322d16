//! System calls: decode, then invoke (seL4's split).
//!
//! [`decode`] reads the call's number and arguments ([`Args`], typed
//! accessors), checks every one — ranges, flags, capability tokens with
//! their object types and rights, the capability-space rank rule — and
//! reserves what the call will need (a free capability slot, room in the
//! thread and space tables — a thread's run-queue room comes with its
//! slot — the new object itself with its pool charge), all without a
//! visible effect: a [`Call`] dropped
//! unused gives everything back. [`invoke`] then does it. Invoking a
//! decoded call cannot fail, except for the calls that touch user memory
//! or page tables (`DebugWrite`, `Map`, `Unmap`, `Protect`), which report a
//! fault or a page table their pool cannot pay for and change nothing (or,
//! for `DebugWrite`, print what they read before the fault).
//!
//! What must happen after a call is reported, not listed by hand: objects
//! whose last capability went are queued as orphans by their references
//! and ended by `Kernel::collect` after every call; [`Outcome::after`]
//! tells the scheduler whether the caller yields. Nothing a user passes can
//! panic the kernel; user memory is only touched through `mm::user`'s
//! checked copy helpers. Numbers and argument layouts are in
//! `keel_abi::Syscall` and `docs/abi.md`.
#![forbid(unsafe_code)]

mod decode;
mod invoke;
mod process;
mod time;

use decode::{Args, decode};
use invoke::invoke;

use crate::cap::CSpaceId;
use crate::object::ThreadId;
use crate::sched::After;
use crate::task::Kernel;
use keel_abi::syscall::SystemInfoKey;
use keel_abi::{Error, Syscall};

/// Most bytes one `DebugWrite` prints.
pub const DEBUG_WRITE_MAX: usize = 64 * 1024;
/// Capability descendants removed per `CapRevoke` call.
pub const REVOKE_BUDGET: usize = 256;
/// Most slots of a capability space made by `CapSpaceCreate`.
pub const USER_CSPACE_MAX_SLOTS: usize = 1 << 16;

/// What a call returns to its caller and asks of the scheduler.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The value (or error) the caller gets back.
    pub value: Result<usize, Error>,
    /// Whether the caller yields the CPU.
    pub after: After,
}

impl Outcome {
    fn value(value: Result<usize, Error>) -> Outcome {
        Outcome {
            value,
            after: After::Continue,
        }
    }
}

/// The calls answered from their registers alone, without the kernel
/// lock or the caller's TCB: `SystemInfo` of constants, the cycle counter
/// and the clock. `None`: the call needs the kernel.
pub fn light(number: usize, args: [usize; 6]) -> Option<isize> {
    if number != Syscall::SystemInfo as usize {
        return None;
    }
    light_info(SystemInfoKey::try_from(args[0]).ok()?).map(|v| v as isize)
}

/// The `SystemInfo` keys [`light`] answers.
fn light_info(key: SystemInfoKey) -> Option<usize> {
    match key {
        SystemInfoKey::PageSize => Some(crate::mm::object::PAGE),
        SystemInfoKey::Cycles => Some(crate::arch::cycle_counter() as usize),
        SystemInfoKey::MonotonicNs => Some(crate::time::now_ns() as usize),
        SystemInfoKey::CurrentCpu => Some(crate::arch::cpu_index()),
        _ => None,
    }
}

/// Runs system call `number` with `args` for thread `caller`, whose
/// capability space is `cspace`.
pub fn dispatch(
    k: &mut Kernel,
    caller: ThreadId,
    cspace: CSpaceId,
    number: usize,
    args: [usize; 6],
) -> Outcome {
    // A deadline armed by `IpcTimeout` applies to this call only.
    let timed = k.start_timeout(caller);
    // Interrupts and time decode into their own form (`time`), so the
    // common calls' stays small.
    let outcome = if time::handles(number) {
        time::dispatch(k, caller, cspace, number, Args(args))
    } else if process::handles(number) {
        process::dispatch(k, cspace, number, Args(args))
    } else {
        match decode(k, caller, cspace, number, Args(args)) {
            Ok(call) => invoke(k, caller, call),
            Err(e) => Outcome::value(Err(e)),
        }
    };
    if timed && outcome.after != crate::sched::After::Block {
        k.end_timeout(caller);
    }
    // End what lost its last reference in the call (one load if nothing).
    k.collect();
    outcome
}
