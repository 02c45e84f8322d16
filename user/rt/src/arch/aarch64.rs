//! AArch64: `svc #0` with the number in `x8`, arguments in `x0`..`x5`, the
//! result in `x0`. Every other register is preserved.
//!
//! User programs use the `aarch64-unknown-none` target, which may use the
//! FP/SIMD registers anywhere; the kernel saves and restores them per
//! thread.

use core::arch::{asm, global_asm};
use keel_abi::Syscall;

/// The architecture's name.
pub const NAME: &str = "aarch64";
/// `e_machine` of this architecture's ELF files.
pub const ELF_MACHINE: u16 = 183;

macro_rules! raw_syscall {
    ($(#[$doc:meta])* $name:ident $(, $arg:ident => $reg:tt)*) => {
        $(#[$doc])*
        ///
        /// # Safety
        /// The call must not break the memory the program relies on (e.g.
        /// by unmapping or write-protecting it, or starting a thread on a
        /// bad stack).
        #[inline(always)]
        pub unsafe fn $name(number: usize $(, $arg: usize)*) -> isize {
            let ret: isize;
            // SAFETY: the caller vouches for the call's effect on memory;
            // the instruction preserves every register but `x0`, and does
            // not use the stack.
            unsafe {
                asm!(
                    "svc #0",
                    in("x8") number,
                    $(in($reg) $arg,)*
                    lateout("x0") ret,
                    options(nostack),
                );
            }
            ret
        }
    };
}

raw_syscall!(/// A system call without arguments.
    raw0);
raw_syscall!(/// A system call with one argument.
    raw1, a0 => "x0");
raw_syscall!(/// A system call with two arguments.
    raw2, a0 => "x0", a1 => "x1");
raw_syscall!(/// A system call with three arguments.
    raw3, a0 => "x0", a1 => "x1", a2 => "x2");
raw_syscall!(/// A system call with four arguments.
    raw4, a0 => "x0", a1 => "x1", a2 => "x2", a3 => "x3");
raw_syscall!(/// A system call with five arguments.
    raw5, a0 => "x0", a1 => "x1", a2 => "x2", a3 => "x3", a4 => "x4");
raw_syscall!(/// A system call with six arguments.
    raw6, a0 => "x0", a1 => "x1", a2 => "x2", a3 => "x3", a4 => "x4", a5 => "x5");

/// An IPC system call (`keel_abi::ipc`'s register convention): `number`
/// and six arguments in; the result (`x0`) and argument registers 1–5
/// (`x1`..`x5`: badge and message words 0–3 of a received message) out.
///
/// # Safety
/// As [`raw6`]; in addition the kernel may write the calling thread's IPC
/// buffer (received words and capability tokens), which the program
/// registered for that purpose.
#[inline(always)]
pub unsafe fn raw_ipc(number: usize, args: [usize; 6]) -> (isize, [usize; 5]) {
    let ret: isize;
    let [a0, mut a1, mut a2, mut a3, mut a4, mut a5] = args;
    // SAFETY: the caller vouches for the call's effect on memory; every
    // register the kernel changes is declared, and the stack is not used.
    unsafe {
        asm!(
            "svc #0",
            in("x8") number,
            inlateout("x0") a0 => ret,
            inout("x1") a1,
            inout("x2") a2,
            inout("x3") a3,
            inout("x4") a4,
            inout("x5") a5,
            options(nostack),
        );
    }
    (ret, [a1, a2, a3, a4, a5])
}

// The program entry: the kernel starts the first thread here with `sp`
// 16-byte aligned and the information page's address in `x0`. Zero frame
// pointer and link register end backtraces.
//
// The thread entry: `x0` points at the thread's start block (first field:
// the `done` word). The Rust part returns the exit code; `done` is set
// (store-release) only after, with no further use of the stack, so the
// joining thread may reuse the stack as soon as it sees it.
global_asm!(
    ".pushsection .text._start, \"ax\", %progbits",
    ".globl _start",
    ".type _start, %function",
    "_start:",
    "    mov x29, xzr",
    "    mov x30, xzr",
    "    bl {start}",
    "    udf #0",
    ".size _start, . - _start",
    ".popsection",
    "",
    ".pushsection .text.__keel_thread_entry, \"ax\", %progbits",
    ".globl __keel_thread_entry",
    ".hidden __keel_thread_entry",
    ".type __keel_thread_entry, %function",
    "__keel_thread_entry:",
    "    mov x29, xzr",
    "    mov x30, xzr",
    "    mov x19, x0",
    "    bl {thread_main}",
    "    sxtw x0, w0",
    "    mov w9, #1",
    "    stlr w9, [x19]",
    "    mov x8, #{exit}",
    "    svc #0",
    "    udf #0",
    ".size __keel_thread_entry, . - __keel_thread_entry",
    ".popsection",
    start = sym crate::entry::start,
    thread_main = sym crate::thread::thread_main,
    exit = const Syscall::ThreadExit as usize,
);

// The register probe (C ABI: `x0` = patterns, `x1` = results): saves
// x18..x30, loads a pattern into x1..x7 and x9..x30, calls
// `SystemInfo(PageSize)` and stores what the registers hold afterwards,
// in `PROBE_REG_NAMES` order, then restores x18..x30.
global_asm!(
    ".pushsection .text.__keel_probe_regs, \"ax\", %progbits",
    ".globl __keel_probe_regs",
    ".hidden __keel_probe_regs",
    ".type __keel_probe_regs, %function",
    "__keel_probe_regs:",
    "    sub sp, sp, #112",
    "    stp x18, x19, [sp, #0]",
    "    stp x20, x21, [sp, #16]",
    "    stp x22, x23, [sp, #32]",
    "    stp x24, x25, [sp, #48]",
    "    stp x26, x27, [sp, #64]",
    "    stp x28, x29, [sp, #80]",
    "    stp x30, x1, [sp, #96]",
    "    mov x8, x0",
    "    ldp x1, x2, [x8, #0]",
    "    ldp x3, x4, [x8, #16]",
    "    ldp x5, x6, [x8, #32]",
    "    ldp x7, x9, [x8, #48]",
    "    ldp x10, x11, [x8, #64]",
    "    ldp x12, x13, [x8, #80]",
    "    ldp x14, x15, [x8, #96]",
    "    ldp x16, x17, [x8, #112]",
    "    ldp x18, x19, [x8, #128]",
    "    ldp x20, x21, [x8, #144]",
    "    ldp x22, x23, [x8, #160]",
    "    ldp x24, x25, [x8, #176]",
    "    ldp x26, x27, [x8, #192]",
    "    ldp x28, x29, [x8, #208]",
    "    ldr x30, [x8, #224]",
    "    mov x0, #{key}",
    "    mov x8, #{number}",
    "    svc #0",
    "    str x30, [sp, #-16]!",
    "    ldr x30, [sp, #120]",
    "    stp x1, x2, [x30, #0]",
    "    stp x3, x4, [x30, #16]",
    "    stp x5, x6, [x30, #32]",
    "    stp x7, x9, [x30, #48]",
    "    stp x10, x11, [x30, #64]",
    "    stp x12, x13, [x30, #80]",
    "    stp x14, x15, [x30, #96]",
    "    stp x16, x17, [x30, #112]",
    "    stp x18, x19, [x30, #128]",
    "    stp x20, x21, [x30, #144]",
    "    stp x22, x23, [x30, #160]",
    "    stp x24, x25, [x30, #176]",
    "    stp x26, x27, [x30, #192]",
    "    stp x28, x29, [x30, #208]",
    "    ldr x1, [sp], #16",
    "    str x1, [x30, #224]",
    "    stp x0, x8, [x30, #232]",
    "    ldp x18, x19, [sp, #0]",
    "    ldp x20, x21, [sp, #16]",
    "    ldp x22, x23, [sp, #32]",
    "    ldp x24, x25, [sp, #48]",
    "    ldp x26, x27, [sp, #64]",
    "    ldp x28, x29, [sp, #80]",
    "    ldr x30, [sp, #96]",
    "    add sp, sp, #112",
    "    ret",
    ".size __keel_probe_regs, . - __keel_probe_regs",
    ".popsection",
    key = const keel_abi::syscall::SystemInfoKey::PageSize as usize,
    number = const Syscall::SystemInfo as usize,
);

// Code for a thread in another address space that maps only this
// program's text (see `crate::probe`): position-independent (relative
// branches only), no stack, no memory but the one load of
// `__keel_load_then_yield_forever`. The counter of `__keel_yield_then_exit`
// lives in `x19`, which the kernel preserves.
global_asm!(
    ".pushsection .text.__keel_yield_forever, \"ax\", %progbits",
    ".globl __keel_yield_forever",
    ".hidden __keel_yield_forever",
    ".type __keel_yield_forever, %function",
    "__keel_yield_forever:",
    "1:  mov x8, #{nr_yield}",
    "    svc #0",
    "    b 1b",
    ".size __keel_yield_forever, . - __keel_yield_forever",
    ".popsection",
    "",
    ".pushsection .text.__keel_yield_then_exit, \"ax\", %progbits",
    ".globl __keel_yield_then_exit",
    ".hidden __keel_yield_then_exit",
    ".type __keel_yield_then_exit, %function",
    "__keel_yield_then_exit:",
    "    mov x19, x0",
    "1:  cbz x19, 2f",
    "    mov x8, #{nr_yield}",
    "    svc #0",
    "    sub x19, x19, #1",
    "    b 1b",
    "2:  mov x0, xzr",
    "    mov x8, #{nr_exit}",
    "    svc #0",
    "    udf #0",
    ".size __keel_yield_then_exit, . - __keel_yield_then_exit",
    ".popsection",
    "",
    ".pushsection .text.__keel_load_then_yield_forever, \"ax\", %progbits",
    ".globl __keel_load_then_yield_forever",
    ".hidden __keel_load_then_yield_forever",
    ".type __keel_load_then_yield_forever, %function",
    "__keel_load_then_yield_forever:",
    "    ldr x9, [x0]",
    "1:  mov x8, #{nr_yield}",
    "    svc #0",
    "    b 1b",
    ".size __keel_load_then_yield_forever, . - __keel_load_then_yield_forever",
    ".popsection",
    nr_yield = const Syscall::Yield as usize,
    nr_exit = const Syscall::ThreadExit as usize,
);

// IPC servers for a thread in another address space (same rules as the
// routines above: position-independent, no stack). The endpoint token is
// the thread's argument (`x0`), kept in `x19`. Each loops on
// `ReplyRecv(ep, info, words)`; the first round replies to nothing (info
// 0). A failed `ReplyRecv` ends the thread with the (negative) error as
// its exit code.
// - `__keel_ipc_echo_forever` answers every message with the same label,
//   length and register words (the info masked, with the mask in `x20`,
//   to label and length);
// - `__keel_ipc_load_server` answers with one word: the word at the
//   address in message word 0 (`x2`) — it faults if that is unreadable.
const _: () = assert!(super::ECHO_REPLY_MASK & 0xffff_0000 == 0);
global_asm!(
    ".pushsection .text.__keel_ipc_echo_forever, \"ax\", %progbits",
    ".globl __keel_ipc_echo_forever",
    ".hidden __keel_ipc_echo_forever",
    ".type __keel_ipc_echo_forever, %function",
    "__keel_ipc_echo_forever:",
    "    mov x19, x0",
    "    movz x20, #{mask_0}",
    "    movk x20, #{mask_32}, lsl #32",
    "    movk x20, #{mask_48}, lsl #48",
    "    mov x1, xzr",
    "1:  mov x0, x19",
    "    mov x8, #{nr_reply_recv}",
    "    svc #0",
    "    tbnz x0, #63, 2f",
    "    and x1, x0, x20",
    "    b 1b",
    "2:  mov x8, #{nr_exit}",
    "    svc #0",
    "    udf #0",
    ".size __keel_ipc_echo_forever, . - __keel_ipc_echo_forever",
    ".popsection",
    "",
    ".pushsection .text.__keel_ipc_load_server, \"ax\", %progbits",
    ".globl __keel_ipc_load_server",
    ".hidden __keel_ipc_load_server",
    ".type __keel_ipc_load_server, %function",
    "__keel_ipc_load_server:",
    "    mov x19, x0",
    "    mov x1, xzr",
    "1:  mov x0, x19",
    "    mov x8, #{nr_reply_recv}",
    "    svc #0",
    "    tbnz x0, #63, 2f",
    "    ldr x2, [x2]",
    "    mov x1, #1",
    "    b 1b",
    "2:  mov x8, #{nr_exit}",
    "    svc #0",
    "    udf #0",
    ".size __keel_ipc_load_server, . - __keel_ipc_load_server",
    ".popsection",
    nr_reply_recv = const Syscall::ReplyRecv as usize,
    nr_exit = const Syscall::ThreadExit as usize,
    mask_0 = const super::ECHO_REPLY_MASK & 0xffff,
    mask_32 = const (super::ECHO_REPLY_MASK >> 32) & 0xffff,
    mask_48 = const super::ECHO_REPLY_MASK >> 48,
);

// The minimal program (`crate::process::minimal_elf` wraps it in an ELF
// file): position-independent, no stack, no memory but its information
// page, whose address is its argument, kept in a callee-saved register.
// With no arguments it exits at once with status 0; with `argc` of them,
// it first waits for its terminate notification, then exits with `argc`.
// Data, not text: only its bytes are used, copied into an image.
global_asm!(
    ".pushsection .rodata.__keel_minimal, \"a\", %progbits",
    ".globl __keel_minimal_start",
    ".hidden __keel_minimal_start",
    ".globl __keel_minimal_end",
    ".hidden __keel_minimal_end",
    ".balign 4",
    "__keel_minimal_start:",
    "    mov x19, x0",
    "    ldr x9, [x19, #{argc}]",
    "    cbz x9, 1f",
    "    ldr x0, [x19, #{terminate}]",
    "    mov x8, #{nr_wait}",
    "    svc #0",
    "1:  ldr x0, [x19, #{server}]",
    "    mov x1, #{info_lo}",
    "    movk x1, #{info_hi}, lsl #32",
    "    ldr x2, [x19, #{argc}]",
    "    mov x8, #{nr_call}",
    "    svc #0",
    "    mov x8, #{nr_exit}",
    "    svc #0",
    "2:  b 2b",
    "__keel_minimal_end:",
    ".popsection",
    argc = const super::minimal::ARGC,
    terminate = const super::minimal::TERMINATE,
    server = const super::minimal::SERVER,
    info_lo = const super::minimal::EXIT_INFO & 0xffff,
    info_hi = const super::minimal::EXIT_INFO >> 32,
    nr_wait = const Syscall::Wait as usize,
    nr_call = const Syscall::Call as usize,
    nr_exit = const Syscall::ThreadExit as usize,
);

// The minimal position-independent program (`crate::process::minimal::
// minimal_pie_elf` wraps it): it finds its data word from its own address
// (the code starts at `PIE_CODE`, the word at `PIE_DATA`), and exits with
// 0 if the loader's relocation made the word point at itself, else 1.
global_asm!(
    ".pushsection .rodata.__keel_minimal_pie, \"a\", %progbits",
    ".globl __keel_minimal_pie_start",
    ".hidden __keel_minimal_pie_start",
    ".globl __keel_minimal_pie_end",
    ".hidden __keel_minimal_pie_end",
    ".balign 4",
    "__keel_minimal_pie_start:",
    "    adr x9, .",
    "    add x9, x9, #{delta}",
    "    ldr x10, [x9]",
    "    cmp x9, x10",
    "    cset x2, ne",
    "    ldr x0, [x0, #{server}]",
    "    mov x1, #{info_lo}",
    "    movk x1, #{info_hi}, lsl #32",
    "    mov x8, #{nr_call}",
    "    svc #0",
    "    mov x8, #{nr_exit}",
    "    svc #0",
    "2:  b 2b",
    "__keel_minimal_pie_end:",
    ".popsection",
    delta = const super::minimal::PIE_DELTA,
    server = const super::minimal::SERVER,
    info_lo = const super::minimal::EXIT_INFO & 0xffff,
    info_hi = const super::minimal::EXIT_INFO >> 32,
    nr_call = const Syscall::Call as usize,
    nr_exit = const Syscall::ThreadExit as usize,
);

unsafe extern "C" {
    /// See the assembly above; `patterns` has [`PROBE_PATTERNS`] entries,
    /// `out` has `PROBE_REG_NAMES.len()`.
    pub fn __keel_probe_regs(patterns: *const u64, out: *mut u64);
    /// The thread entry; only its address is used.
    pub fn __keel_thread_entry();
    /// The program entry; only its address is used.
    pub fn _start();
    /// Yields forever; only its address is used.
    pub fn __keel_yield_forever();
    /// Yields as often as its argument says, then exits with 0; only its
    /// address is used.
    pub fn __keel_yield_then_exit();
    /// Loads the word its argument points at, then yields forever; only
    /// its address is used.
    pub fn __keel_load_then_yield_forever();
    /// Echoes every IPC message on the endpoint in its argument; only its
    /// address is used.
    pub fn __keel_ipc_echo_forever();
    /// Answers every IPC message on the endpoint in its argument with the
    /// word at the address in message word 0; only its address is used.
    pub fn __keel_ipc_load_server();
}

/// Registers the probe reports, in order: the patterned ones, then the
/// result (`x0`) and the number register (`x8`).
pub const PROBE_REG_NAMES: [&str; 31] = [
    "x1", "x2", "x3", "x4", "x5", "x6", "x7", "x9", "x10", "x11", "x12", "x13", "x14", "x15",
    "x16", "x17", "x18", "x19", "x20", "x21", "x22", "x23", "x24", "x25", "x26", "x27", "x28",
    "x29", "x30", "x0", "x8",
];
/// How many registers get a pattern.
pub const PROBE_PATTERNS: usize = 29;

/// What register `i` of [`PROBE_REG_NAMES`] must hold after the call.
pub const fn probe_expected(i: usize, page_size: u64) -> u64 {
    match i {
        29 => page_size,
        30 => Syscall::SystemInfo as u64,
        _ => super::pattern(i),
    }
}

/// Stops the thread with an undefined-instruction exception.
pub fn illegal_instruction() -> ! {
    // SAFETY: `udf` only raises an exception; the kernel ends the thread's
    // process.
    unsafe { asm!("udf #0", options(noreturn, nomem, nostack)) }
}

/// Raises a breakpoint exception.
pub fn breakpoint() {
    // SAFETY: `brk` only traps to the kernel.
    unsafe { asm!("brk #0", options(nomem, nostack)) }
}

/// Reads the word at `addr` with one load instruction (so a bad address
/// faults in a known place rather than being undefined behaviour).
///
/// # Safety
/// If `addr` is not readable the thread faults and the kernel ends its
/// process; call it only where that is what is being tested.
pub unsafe fn load_u64(addr: usize) -> u64 {
    let v: u64;
    // SAFETY: the caller accepts a fault; the load has no other effect.
    unsafe {
        asm!("ldr {v}, [{a}]", a = in(reg) addr, v = lateout(reg) v, options(nostack, readonly))
    };
    v
}

/// Writes `value` to `addr` with one store instruction.
///
/// # Safety
/// As [`load_u64`]; and if `addr` is writable, the caller owns it.
pub unsafe fn store_u64(addr: usize, value: u64) {
    // SAFETY: the caller owns `addr` or accepts a fault.
    unsafe { asm!("str {v}, [{a}]", a = in(reg) addr, v = in(reg) value, options(nostack)) };
}

/// The word at the thread-local storage base (`TPIDR_EL0`).
///
/// # Safety
/// The TLS base must point at a readable word.
pub unsafe fn read_tls_word() -> u64 {
    let v: u64;
    // SAFETY: the caller guarantees TPIDR_EL0 points at readable memory.
    unsafe {
        asm!(
            "mrs {v}, tpidr_el0",
            "ldr {v}, [{v}]",
            v = out(reg) v,
            options(nostack, readonly),
        )
    };
    v
}

/// Loads `a` and `b` into SIMD registers `v0` and `v31`, yields the CPU
/// (so other threads run and use their own values) and returns what the
/// two registers hold afterwards.
pub fn fp_across_yield(a: u64, b: u64) -> (u64, u64) {
    let (ra, rb): (u64, u64);
    // SAFETY: `Yield` has no effect on memory; the registers used are
    // declared.
    unsafe {
        asm!(
            "fmov d0, {a}",
            "fmov d31, {b}",
            "svc #0",
            "fmov {a}, d0",
            "fmov {b}, d31",
            a = inout(reg) a => ra,
            b = inout(reg) b => rb,
            in("x8") Syscall::Yield as usize,
            out("x0") _,
            out("v0") _,
            out("v31") _,
            options(nostack),
        );
    }
    (ra, rb)
}
