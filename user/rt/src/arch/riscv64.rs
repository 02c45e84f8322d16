//! RISC-V (RV64GC): `ecall` with the number in `a7`, arguments in
//! `a0`..`a5`, the result in `a0`. Every other register is preserved.
//!
//! User programs use the `riscv64gc-unknown-none-elf` target (hard-float,
//! LP64D); the kernel saves and restores the FP registers per thread. `tp`
//! is the thread-local storage base. `gp` is not used (no linker
//! relaxation against `__global_pointer$`, which the linker script does
//! not define).

use core::arch::{asm, global_asm};
use keel_abi::Syscall;

/// The architecture's name.
pub const NAME: &str = "riscv64";
/// `e_machine` of this architecture's ELF files.
pub const ELF_MACHINE: u16 = 243;

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
            // the instruction preserves every register but `a0`, and does
            // not use the stack.
            unsafe {
                asm!(
                    "ecall",
                    in("a7") number,
                    $(in($reg) $arg,)*
                    lateout("a0") ret,
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
    raw1, a0 => "a0");
raw_syscall!(/// A system call with two arguments.
    raw2, a0 => "a0", a1 => "a1");
raw_syscall!(/// A system call with three arguments.
    raw3, a0 => "a0", a1 => "a1", a2 => "a2");
raw_syscall!(/// A system call with four arguments.
    raw4, a0 => "a0", a1 => "a1", a2 => "a2", a3 => "a3");
raw_syscall!(/// A system call with five arguments.
    raw5, a0 => "a0", a1 => "a1", a2 => "a2", a3 => "a3", a4 => "a4");
raw_syscall!(/// A system call with six arguments.
    raw6, a0 => "a0", a1 => "a1", a2 => "a2", a3 => "a3", a4 => "a4", a5 => "a5");

/// An IPC system call (`keel_abi::ipc`'s register convention): `number`
/// and six arguments in; the result (`a0`) and argument registers 1–5
/// (`a1`..`a5`: badge and message words 0–3 of a received message) out.
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
            "ecall",
            in("a7") number,
            inlateout("a0") a0 => ret,
            inout("a1") a1,
            inout("a2") a2,
            inout("a3") a3,
            inout("a4") a4,
            inout("a5") a5,
            options(nostack),
        );
    }
    (ret, [a1, a2, a3, a4, a5])
}

// The program entry: the kernel starts the first thread here with `sp`
// 16-byte aligned and the information page's address in `a0`. Zero frame
// pointer and return address end backtraces.
//
// The thread entry: `a0` points at the thread's start block (first field:
// the `done` word). The Rust part returns the exit code (sign-extended in
// `a0`, as the ABI returns an `i32`); `done` is set (after a release
// fence) only after, with no further use of the stack, so the joining
// thread may reuse the stack as soon as it sees it.
global_asm!(
    ".pushsection .text._start, \"ax\", @progbits",
    ".globl _start",
    ".type _start, @function",
    "_start:",
    "    mv s0, zero",
    "    mv ra, zero",
    "    call {start}",
    "    unimp",
    ".size _start, . - _start",
    ".popsection",
    "",
    ".pushsection .text.__keel_thread_entry, \"ax\", @progbits",
    ".globl __keel_thread_entry",
    ".hidden __keel_thread_entry",
    ".type __keel_thread_entry, @function",
    "__keel_thread_entry:",
    "    mv s0, zero",
    "    mv ra, zero",
    "    mv s1, a0",
    "    call {thread_main}",
    "    li t0, 1",
    "    fence rw, w",
    "    sw t0, 0(s1)",
    "    li a7, {exit}",
    "    ecall",
    "    unimp",
    ".size __keel_thread_entry, . - __keel_thread_entry",
    ".popsection",
    start = sym crate::entry::start,
    thread_main = sym crate::thread::thread_main,
    exit = const Syscall::ThreadExit as usize,
);

// The register probe (C ABI: `a0` = patterns, `a1` = results): saves ra,
// gp, tp and s0..s11, loads a pattern into every register but sp, a0 and
// a7, calls `SystemInfo(PageSize)` and stores what the registers hold
// afterwards, in `PROBE_REG_NAMES` order, then restores what it saved.
global_asm!(
    ".pushsection .text.__keel_probe_regs, \"ax\", @progbits",
    ".globl __keel_probe_regs",
    ".hidden __keel_probe_regs",
    ".type __keel_probe_regs, @function",
    "__keel_probe_regs:",
    "    addi sp, sp, -144",
    "    sd ra, 0(sp)",
    "    sd gp, 8(sp)",
    "    sd tp, 16(sp)",
    "    sd s0, 24(sp)",
    "    sd s1, 32(sp)",
    "    sd s2, 40(sp)",
    "    sd s3, 48(sp)",
    "    sd s4, 56(sp)",
    "    sd s5, 64(sp)",
    "    sd s6, 72(sp)",
    "    sd s7, 80(sp)",
    "    sd s8, 88(sp)",
    "    sd s9, 96(sp)",
    "    sd s10, 104(sp)",
    "    sd s11, 112(sp)",
    "    sd a1, 120(sp)",
    "    mv a7, a0",
    "    ld ra, 0(a7)",
    "    ld gp, 8(a7)",
    "    ld tp, 16(a7)",
    "    ld t0, 24(a7)",
    "    ld t1, 32(a7)",
    "    ld t2, 40(a7)",
    "    ld s0, 48(a7)",
    "    ld s1, 56(a7)",
    "    ld a1, 64(a7)",
    "    ld a2, 72(a7)",
    "    ld a3, 80(a7)",
    "    ld a4, 88(a7)",
    "    ld a5, 96(a7)",
    "    ld a6, 104(a7)",
    "    ld s2, 112(a7)",
    "    ld s3, 120(a7)",
    "    ld s4, 128(a7)",
    "    ld s5, 136(a7)",
    "    ld s6, 144(a7)",
    "    ld s7, 152(a7)",
    "    ld s8, 160(a7)",
    "    ld s9, 168(a7)",
    "    ld s10, 176(a7)",
    "    ld s11, 184(a7)",
    "    ld t3, 192(a7)",
    "    ld t4, 200(a7)",
    "    ld t5, 208(a7)",
    "    ld t6, 216(a7)",
    "    li a0, {key}",
    "    li a7, {number}",
    "    ecall",
    "    sd t6, 128(sp)",
    "    ld t6, 120(sp)",
    "    sd ra, 0(t6)",
    "    sd gp, 8(t6)",
    "    sd tp, 16(t6)",
    "    sd t0, 24(t6)",
    "    sd t1, 32(t6)",
    "    sd t2, 40(t6)",
    "    sd s0, 48(t6)",
    "    sd s1, 56(t6)",
    "    sd a1, 64(t6)",
    "    sd a2, 72(t6)",
    "    sd a3, 80(t6)",
    "    sd a4, 88(t6)",
    "    sd a5, 96(t6)",
    "    sd a6, 104(t6)",
    "    sd s2, 112(t6)",
    "    sd s3, 120(t6)",
    "    sd s4, 128(t6)",
    "    sd s5, 136(t6)",
    "    sd s6, 144(t6)",
    "    sd s7, 152(t6)",
    "    sd s8, 160(t6)",
    "    sd s9, 168(t6)",
    "    sd s10, 176(t6)",
    "    sd s11, 184(t6)",
    "    sd t3, 192(t6)",
    "    sd t4, 200(t6)",
    "    sd t5, 208(t6)",
    "    ld t5, 128(sp)",
    "    sd t5, 216(t6)",
    "    sd a0, 224(t6)",
    "    sd a7, 232(t6)",
    "    ld ra, 0(sp)",
    "    ld gp, 8(sp)",
    "    ld tp, 16(sp)",
    "    ld s0, 24(sp)",
    "    ld s1, 32(sp)",
    "    ld s2, 40(sp)",
    "    ld s3, 48(sp)",
    "    ld s4, 56(sp)",
    "    ld s5, 64(sp)",
    "    ld s6, 72(sp)",
    "    ld s7, 80(sp)",
    "    ld s8, 88(sp)",
    "    ld s9, 96(sp)",
    "    ld s10, 104(sp)",
    "    ld s11, 112(sp)",
    "    addi sp, sp, 144",
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
// lives in `s1`, which the kernel preserves.
global_asm!(
    ".pushsection .text.__keel_yield_forever, \"ax\", @progbits",
    ".globl __keel_yield_forever",
    ".hidden __keel_yield_forever",
    ".type __keel_yield_forever, @function",
    "__keel_yield_forever:",
    "1:  li a7, {nr_yield}",
    "    ecall",
    "    j 1b",
    ".size __keel_yield_forever, . - __keel_yield_forever",
    ".popsection",
    "",
    ".pushsection .text.__keel_yield_then_exit, \"ax\", @progbits",
    ".globl __keel_yield_then_exit",
    ".hidden __keel_yield_then_exit",
    ".type __keel_yield_then_exit, @function",
    "__keel_yield_then_exit:",
    "    mv s1, a0",
    "1:  beqz s1, 2f",
    "    li a7, {nr_yield}",
    "    ecall",
    "    addi s1, s1, -1",
    "    j 1b",
    "2:  li a0, 0",
    "    li a7, {nr_exit}",
    "    ecall",
    "    unimp",
    ".size __keel_yield_then_exit, . - __keel_yield_then_exit",
    ".popsection",
    "",
    ".pushsection .text.__keel_load_then_yield_forever, \"ax\", @progbits",
    ".globl __keel_load_then_yield_forever",
    ".hidden __keel_load_then_yield_forever",
    ".type __keel_load_then_yield_forever, @function",
    "__keel_load_then_yield_forever:",
    "    ld t0, 0(a0)",
    "1:  li a7, {nr_yield}",
    "    ecall",
    "    j 1b",
    ".size __keel_load_then_yield_forever, . - __keel_load_then_yield_forever",
    ".popsection",
    nr_yield = const Syscall::Yield as usize,
    nr_exit = const Syscall::ThreadExit as usize,
);

// IPC servers for a thread in another address space (same rules as the
// routines above: position-independent, no stack). The endpoint token is
// the thread's argument (`a0`), kept in `s1`. Each loops on
// `ReplyRecv(ep, info, words)`; the first round replies to nothing (info
// 0). A failed `ReplyRecv` ends the thread with the (negative) error as
// its exit code.
// - `__keel_ipc_echo_forever` answers every message with the same label,
//   length and register words (the info masked, with the mask in `s2`,
//   to label and length);
// - `__keel_ipc_load_server` answers with one word: the word at the
//   address in message word 0 (`a2`) — it faults if that is unreadable.
global_asm!(
    ".pushsection .text.__keel_ipc_echo_forever, \"ax\", @progbits",
    ".globl __keel_ipc_echo_forever",
    ".hidden __keel_ipc_echo_forever",
    ".type __keel_ipc_echo_forever, @function",
    "__keel_ipc_echo_forever:",
    "    mv s1, a0",
    "    li s2, {echo_mask}",
    "    li a1, 0",
    "1:  mv a0, s1",
    "    li a7, {nr_reply_recv}",
    "    ecall",
    "    bltz a0, 2f",
    "    and a1, a0, s2",
    "    j 1b",
    "2:  li a7, {nr_exit}",
    "    ecall",
    "    unimp",
    ".size __keel_ipc_echo_forever, . - __keel_ipc_echo_forever",
    ".popsection",
    "",
    ".pushsection .text.__keel_ipc_load_server, \"ax\", @progbits",
    ".globl __keel_ipc_load_server",
    ".hidden __keel_ipc_load_server",
    ".type __keel_ipc_load_server, @function",
    "__keel_ipc_load_server:",
    "    mv s1, a0",
    "    li a1, 0",
    "1:  mv a0, s1",
    "    li a7, {nr_reply_recv}",
    "    ecall",
    "    bltz a0, 2f",
    "    ld a2, 0(a2)",
    "    li a1, 1",
    "    j 1b",
    "2:  li a7, {nr_exit}",
    "    ecall",
    "    unimp",
    ".size __keel_ipc_load_server, . - __keel_ipc_load_server",
    ".popsection",
    nr_reply_recv = const Syscall::ReplyRecv as usize,
    nr_exit = const Syscall::ThreadExit as usize,
    echo_mask = const super::ECHO_REPLY_MASK,
);

// The minimal program (`crate::process::minimal_elf` wraps it in an ELF
// file): position-independent, no stack, no memory but its information
// page, whose address is its argument, kept in a callee-saved register.
// With no arguments it exits at once with status 0; with `argc` of them,
// it first waits for its terminate notification, then exits with `argc`.
// Data, not text: only its bytes are used, copied into an image.
global_asm!(
    ".pushsection .rodata.__keel_minimal, \"a\", @progbits",
    ".globl __keel_minimal_start",
    ".hidden __keel_minimal_start",
    ".globl __keel_minimal_end",
    ".hidden __keel_minimal_end",
    ".option push",
    ".option norelax",
    ".balign 4",
    "__keel_minimal_start:",
    "    mv s1, a0",
    "    ld t0, {argc}(s1)",
    "    beqz t0, 1f",
    "    ld a0, {terminate}(s1)",
    "    li a7, {nr_wait}",
    "    ecall",
    "1:  ld a0, {server}(s1)",
    "    li a1, {exit_info}",
    "    ld a2, {argc}(s1)",
    "    li a7, {nr_call}",
    "    ecall",
    "    li a7, {nr_exit}",
    "    ecall",
    "2:  j 2b",
    "__keel_minimal_end:",
    ".option pop",
    ".popsection",
    argc = const super::minimal::ARGC,
    terminate = const super::minimal::TERMINATE,
    server = const super::minimal::SERVER,
    exit_info = const super::minimal::EXIT_INFO,
    nr_wait = const Syscall::Wait as usize,
    nr_call = const Syscall::Call as usize,
    nr_exit = const Syscall::ThreadExit as usize,
);

// The minimal position-independent program (`crate::process::minimal::
// minimal_pie_elf` wraps it): it finds its data word from its own address
// (the code starts at `PIE_CODE`, the word at `PIE_DATA`), and exits with
// 0 if the loader's relocation made the word point at itself, else 1.
global_asm!(
    ".pushsection .rodata.__keel_minimal_pie, \"a\", @progbits",
    ".globl __keel_minimal_pie_start",
    ".hidden __keel_minimal_pie_start",
    ".globl __keel_minimal_pie_end",
    ".hidden __keel_minimal_pie_end",
    ".option push",
    ".option norelax",
    ".balign 4",
    "__keel_minimal_pie_start:",
    "    auipc t1, 0",
    "    li t2, {delta}",
    "    add t1, t1, t2",
    "    ld t3, 0(t1)",
    "    sub t3, t3, t1",
    "    snez a2, t3",
    "    ld a0, {server}(a0)",
    "    li a1, {exit_info}",
    "    li a7, {nr_call}",
    "    ecall",
    "    li a7, {nr_exit}",
    "    ecall",
    "2:  j 2b",
    "__keel_minimal_pie_end:",
    ".option pop",
    ".popsection",
    delta = const super::minimal::PIE_DELTA,
    server = const super::minimal::SERVER,
    exit_info = const super::minimal::EXIT_INFO,
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
/// result (`a0`) and the number register (`a7`).
pub const PROBE_REG_NAMES: [&str; 30] = [
    "ra", "gp", "tp", "t0", "t1", "t2", "s0", "s1", "a1", "a2", "a3", "a4", "a5", "a6", "s2", "s3",
    "s4", "s5", "s6", "s7", "s8", "s9", "s10", "s11", "t3", "t4", "t5", "t6", "a0", "a7",
];
/// How many registers get a pattern.
pub const PROBE_PATTERNS: usize = 28;

/// What register `i` of [`PROBE_REG_NAMES`] must hold after the call.
pub const fn probe_expected(i: usize, page_size: u64) -> u64 {
    match i {
        28 => page_size,
        29 => Syscall::SystemInfo as u64,
        _ => super::pattern(i),
    }
}

/// Stops the thread with an illegal-instruction exception.
pub fn illegal_instruction() -> ! {
    // SAFETY: `unimp` only raises an exception; the kernel ends the
    // thread's process.
    unsafe { asm!("unimp", options(noreturn, nomem, nostack)) }
}

/// Raises a breakpoint exception.
pub fn breakpoint() {
    // SAFETY: `ebreak` only traps to the kernel.
    unsafe { asm!("ebreak", options(nomem, nostack)) }
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
        asm!("ld {v}, 0({a})", a = in(reg) addr, v = lateout(reg) v, options(nostack, readonly))
    };
    v
}

/// Writes `value` to `addr` with one store instruction.
///
/// # Safety
/// As [`load_u64`]; and if `addr` is writable, the caller owns it.
pub unsafe fn store_u64(addr: usize, value: u64) {
    // SAFETY: the caller owns `addr` or accepts a fault.
    unsafe { asm!("sd {v}, 0({a})", a = in(reg) addr, v = in(reg) value, options(nostack)) };
}

/// The word at the thread-local storage base (`tp`).
///
/// # Safety
/// The TLS base must point at a readable word.
pub unsafe fn read_tls_word() -> u64 {
    let v: u64;
    // SAFETY: the caller guarantees `tp` points at readable memory.
    unsafe { asm!("ld {v}, 0(tp)", v = lateout(reg) v, options(nostack, readonly)) };
    v
}

/// Loads `a` and `b` into FP registers `f0` and `f31`, yields the CPU (so
/// other threads run and use their own values) and returns what the two
/// registers hold afterwards.
pub fn fp_across_yield(a: u64, b: u64) -> (u64, u64) {
    let (ra, rb): (u64, u64);
    // SAFETY: `Yield` has no effect on memory; the registers used are
    // declared.
    unsafe {
        asm!(
            "fmv.d.x f0, {a}",
            "fmv.d.x f31, {b}",
            "ecall",
            "fmv.x.d {a}, f0",
            "fmv.x.d {b}, f31",
            a = inout(reg) a => ra,
            b = inout(reg) b => rb,
            in("a7") Syscall::Yield as usize,
            out("a0") _,
            out("f0") _,
            out("f31") _,
            options(nostack),
        );
    }
    (ra, rb)
}
