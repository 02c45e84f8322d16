//! Machine-level probes for the system tests: things only assembly can do
//! (fill every register around a system call, keep values in FP registers
//! across a yield, fault on purpose at a known instruction).
//!
//! The text routines ([`yield_forever_address`] and its siblings) are for
//! threads in *another* address space that maps nothing but this program's
//! text segment, at the same addresses: they are position-independent
//! assembly that uses no stack and touches no memory (except the one load
//! of [`load_then_yield_forever_address`] and [`ipc_load_server_address`]),
//! and only system calls that do not read user memory (the IPC servers
//! send and receive register words only).
//!
//! The faulting probes exist to be run in a thread of a separate process
//! (its own capability space), which the kernel kills; they are never
//! undefined behaviour on the Rust side, because the bad access is a single
//! assembly instruction.

use crate::arch;
use alloc::vec::Vec;

/// Fills every register a system call must preserve with a distinct
/// pattern, makes a `SystemInfo(PageSize)` call and returns the registers
/// that afterwards differ from what the ABI promises, as `(name, expected,
/// found)`. Empty when the kernel preserved everything.
pub fn syscall_register_mismatches(page_size: u64) -> Vec<(&'static str, u64, u64)> {
    let patterns: [u64; arch::PROBE_PATTERNS] = core::array::from_fn(arch::pattern);
    let mut out = [0u64; arch::PROBE_REG_NAMES.len()];
    // SAFETY: `patterns` and `out` have the lengths the probe expects; the
    // probe follows the C calling convention (it restores the registers
    // the convention preserves) and its system call has no memory effect.
    unsafe { arch::__keel_probe_regs(patterns.as_ptr(), out.as_mut_ptr()) };
    arch::PROBE_REG_NAMES
        .iter()
        .zip(out)
        .enumerate()
        .filter_map(|(i, (name, found))| {
            let want = arch::probe_expected(i, page_size);
            (found != want).then_some((*name, want, found))
        })
        .collect()
}

/// Loads `a` and `b` into two FP/SIMD registers (the first and the last),
/// yields, and returns what the registers hold afterwards.
pub fn fp_across_yield(a: u64, b: u64) -> (u64, u64) {
    arch::fp_across_yield(a, b)
}

/// The word at the thread-local storage base.
///
/// # Safety
/// The calling thread's TLS base must point at a readable, aligned word.
pub unsafe fn read_tls_word() -> u64 {
    // SAFETY: forwarded from the caller.
    unsafe { arch::read_tls_word() }
}

/// Reads the word at `addr` with a single load instruction.
///
/// # Safety
/// A bad address faults and the kernel kills the thread's process.
pub unsafe fn load_u64(addr: usize) -> u64 {
    // SAFETY: forwarded from the caller.
    unsafe { arch::load_u64(addr) }
}

/// Writes the word at `addr` with a single store instruction.
///
/// # Safety
/// A bad address faults and the kernel kills the thread's process; a good
/// one must be owned by the caller.
pub unsafe fn store_u64(addr: usize, value: u64) {
    // SAFETY: forwarded from the caller.
    unsafe { arch::store_u64(addr, value) }
}

/// Executes an instruction the architecture defines as illegal.
pub fn illegal_instruction() -> ! {
    arch::illegal_instruction()
}

/// Executes the breakpoint instruction.
pub fn breakpoint() {
    arch::breakpoint()
}

/// Entry of a routine that calls `Yield` in a loop, forever.
pub fn yield_forever_address() -> usize {
    arch::__keel_yield_forever as *const () as usize
}

/// Entry of a routine that calls `Yield` as many times as its argument
/// (first argument register) says, then `ThreadExit(0)`.
pub fn yield_then_exit_address() -> usize {
    arch::__keel_yield_then_exit as *const () as usize
}

/// Entry of a routine that loads the word at the address in its argument
/// (first argument register; it faults if that is not readable), then
/// calls `Yield` in a loop, forever.
pub fn load_then_yield_forever_address() -> usize {
    arch::__keel_load_then_yield_forever as *const () as usize
}

/// Entry of a stackless IPC server that loops on `ReplyRecv` on the
/// endpoint token in its argument (first argument register), answering
/// every message with its own label, length and register words (no
/// capabilities; so only messages of up to four words, as it has no IPC
/// buffer). A failed `ReplyRecv` ends it with the error as exit code.
pub fn ipc_echo_forever_address() -> usize {
    arch::__keel_ipc_echo_forever as *const () as usize
}

/// Entry of a stackless IPC server that loops on `ReplyRecv` on the
/// endpoint token in its argument, answering every message with one word:
/// the word at the address in message word 0 of its address space (it
/// faults if that is not readable). A failed `ReplyRecv` ends it.
pub fn ipc_load_server_address() -> usize {
    arch::__keel_ipc_load_server as *const () as usize
}
