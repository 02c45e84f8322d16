//! The architecture layer of the user runtime: the only code in `keel-rt`
//! that depends on the instruction set.
//!
//! Each architecture module provides the same names:
//! - `NAME` and `ELF_MACHINE` (the ELF `e_machine`);
//! - `raw0`..`raw6`: the system-call instruction with the number and
//!   arguments in the registers `keel_abi::Syscall` documents, returning
//!   the raw result register;
//! - the program entry `_start` and the thread entry `__keel_thread_entry`
//!   (assembly, declared as `extern "C"` for their addresses; see
//!   [`crate::entry`] and [`crate::thread`]);
//! - `illegal_instruction`, `breakpoint`, `load_u64`, `store_u64`,
//!   `read_tls_word`, `fp_across_yield` and `__keel_probe_regs`, the
//!   machine-level probes [`crate::probe`] wraps for the system tests;
//! - `PROBE_REG_NAMES`, `PROBE_PATTERNS` and `probe_expected`, describing
//!   what `__keel_probe_regs` checks;
//! - `__keel_yield_forever`, `__keel_yield_then_exit` and
//!   `__keel_load_then_yield_forever`: position-independent assembly that
//!   uses no stack, for threads in another address space that maps only
//!   this program's text (see [`crate::probe`]);
//! - `raw_ipc`: the system-call instruction for IPC calls, returning the
//!   result register and argument registers 1–5 ([`crate::ipc`]);
//! - `__keel_ipc_echo_forever` and `__keel_ipc_load_server`: stackless
//!   IPC server loops for such threads (see [`crate::probe`]);
//! - the minimal program's code between `__keel_minimal_start` and
//!   `__keel_minimal_end`, and the position-independent one's between
//!   `__keel_minimal_pie_start` and `__keel_minimal_pie_end` (read-only
//!   data; [`minimal_program`], [`minimal_pie_program`]).

#[cfg(target_arch = "aarch64")]
mod aarch64;
#[cfg(target_arch = "aarch64")]
pub use self::aarch64::*;

#[cfg(target_arch = "riscv64")]
mod riscv64;
#[cfg(target_arch = "riscv64")]
pub use self::riscv64::*;

#[cfg(target_arch = "x86_64")]
mod x86_64;
#[cfg(target_arch = "x86_64")]
pub use self::x86_64::*;

/// The value register `i` is loaded with before the probe's system call:
/// distinct per register and unlike any address or small number.
pub const fn pattern(i: usize) -> u64 {
    0xa5a5_0000_0000_0000 | ((i as u64 + 1) << 32) | (0x0101_0101 * (i as u64 + 1))
}

/// What `__keel_ipc_echo_forever` keeps of a received message-info word
/// for its reply: label and length (no capabilities, no flags).
pub const ECHO_REPLY_MASK: u64 =
    keel_abi::ipc::MsgInfo::new(keel_abi::ipc::MsgInfo::MAX_LABEL, 0x3ff, 0).0;

/// What the minimal program's assembly reads and sends: offsets in its
/// information page, and the message info of its `EXIT` call.
pub(crate) mod minimal {
    use keel_abi::ipc::MsgInfo;
    use keel_abi::process::{ProcInfo, label};

    pub const ARGC: usize = core::mem::offset_of!(ProcInfo, argc);
    pub const SERVER: usize = core::mem::offset_of!(ProcInfo, server);
    pub const TERMINATE: usize = core::mem::offset_of!(ProcInfo, terminate);
    pub const EXIT_INFO: u64 = MsgInfo::new(label::EXIT, 1, 0).0;
    /// From the position-independent code's start to its data word.
    pub const PIE_DELTA: usize =
        crate::process::minimal::PIE_DATA - crate::process::minimal::PIE_CODE;
    const _: () = assert!(EXIT_INFO & 0xffff_0000 == 0 && EXIT_INFO >> 48 == 0);
}

unsafe extern "C" {
    static __keel_minimal_start: u8;
    static __keel_minimal_end: u8;
    static __keel_minimal_pie_start: u8;
    static __keel_minimal_pie_end: u8;
}

/// The bytes from `start` to `end`.
///
/// # Safety
/// The two are symbols around bytes of read-only data, there for the
/// life of the program.
unsafe fn between(start: *const u8, end: *const u8) -> &'static [u8] {
    let len = (end as usize).saturating_sub(start as usize);
    // SAFETY: the caller's promise.
    unsafe { core::slice::from_raw_parts(start, len) }
}

/// The minimal program's machine code (position-independent; see the
/// assembly in the architecture's module).
pub fn minimal_program() -> &'static [u8] {
    // SAFETY: the symbols surround the code, in read-only data.
    unsafe {
        between(
            &raw const __keel_minimal_start,
            &raw const __keel_minimal_end,
        )
    }
}

/// The minimal position-independent program's machine code.
pub fn minimal_pie_program() -> &'static [u8] {
    // SAFETY: the symbols surround the code, in read-only data.
    unsafe {
        between(
            &raw const __keel_minimal_pie_start,
            &raw const __keel_minimal_pie_end,
        )
    }
}
