//! x86_64: `syscall` with the number in `rax`, arguments in `rdi rsi rdx
//! r10 r8 r9`, the result in `rax`; the instruction itself clobbers `rcx`
//! (return address) and `r11` (flags). Everything else is preserved.
//!
//! The user target (`x86_64-unknown-none`) is soft-float, so compiled code
//! never touches SSE registers; only [`fp_across_yield`] does, on purpose.

use core::arch::{asm, global_asm};
use keel_abi::Syscall;

/// The architecture's name.
pub const NAME: &str = "x86_64";
/// `e_machine` of this architecture's ELF files.
pub const ELF_MACHINE: u16 = 62;

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
            // the instruction preserves every register but the result
            // and `rcx`/`r11`, declared here, and does not use the stack.
            unsafe {
                asm!(
                    "syscall",
                    inlateout("rax") number as isize => ret,
                    $(in($reg) $arg,)*
                    lateout("rcx") _,
                    lateout("r11") _,
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
    raw1, a0 => "rdi");
raw_syscall!(/// A system call with two arguments.
    raw2, a0 => "rdi", a1 => "rsi");
raw_syscall!(/// A system call with three arguments.
    raw3, a0 => "rdi", a1 => "rsi", a2 => "rdx");
raw_syscall!(/// A system call with four arguments.
    raw4, a0 => "rdi", a1 => "rsi", a2 => "rdx", a3 => "r10");
raw_syscall!(/// A system call with five arguments.
    raw5, a0 => "rdi", a1 => "rsi", a2 => "rdx", a3 => "r10", a4 => "r8");
raw_syscall!(/// A system call with six arguments.
    raw6, a0 => "rdi", a1 => "rsi", a2 => "rdx", a3 => "r10", a4 => "r8", a5 => "r9");

/// An IPC system call (`keel_abi::ipc`'s register convention): `number`
/// and six arguments in; the result register and argument registers 1–5
/// (`rsi rdx r10 r8 r9`: badge and message words 0–3 of a received
/// message) out. `rdi` (argument 0) is declared clobbered although the
/// ABI says the kernel leaves it.
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
    // register the instruction or the kernel changes is declared, and the
    // stack is not used.
    unsafe {
        asm!(
            "syscall",
            inlateout("rax") number as isize => ret,
            inlateout("rdi") a0 => _,
            inout("rsi") a1,
            inout("rdx") a2,
            inout("r10") a3,
            inout("r8") a4,
            inout("r9") a5,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    (ret, [a1, a2, a3, a4, a5])
}

// The program entry: the kernel starts the first thread here with `rsp`
// 16-byte aligned and the information page's address in `rdi`. The `call`
// leaves `rsp` as the C ABI expects at a function's first instruction;
// `rbp = 0` ends frame-pointer chains.
//
// The thread entry: `rdi` points at the thread's start block (first field:
// the `done` word). The Rust part returns the exit code; `done` is set
// only after, with no further use of the stack, so the joining thread may
// reuse the stack as soon as it sees it.
global_asm!(
    ".pushsection .text._start, \"ax\", @progbits",
    ".globl _start",
    ".type _start, @function",
    "_start:",
    "    xor ebp, ebp",
    "    call {start}",
    "    ud2",
    ".size _start, . - _start",
    ".popsection",
    "",
    ".pushsection .text.__keel_thread_entry, \"ax\", @progbits",
    ".globl __keel_thread_entry",
    ".hidden __keel_thread_entry",
    ".type __keel_thread_entry, @function",
    "__keel_thread_entry:",
    "    xor ebp, ebp",
    "    mov rbx, rdi",
    "    call {thread_main}",
    "    movsxd rdi, eax",
    "    mov dword ptr [rbx], 1",
    "    mov eax, {exit}",
    "    syscall",
    "    ud2",
    ".size __keel_thread_entry, . - __keel_thread_entry",
    ".popsection",
    start = sym crate::entry::start,
    thread_main = sym crate::thread::thread_main,
    exit = const Syscall::ThreadExit as usize,
);

// The register probe (C ABI: `rdi` = patterns, `rsi` = results): loads a
// pattern into every register the system call must preserve, calls
// `SystemInfo(PageSize)` and stores what the registers hold afterwards,
// in `PROBE_REG_NAMES` order.
global_asm!(
    ".pushsection .text.__keel_probe_regs, \"ax\", @progbits",
    ".globl __keel_probe_regs",
    ".hidden __keel_probe_regs",
    ".type __keel_probe_regs, @function",
    "__keel_probe_regs:",
    "    push rbx",
    "    push rbp",
    "    push r12",
    "    push r13",
    "    push r14",
    "    push r15",
    "    push rsi",
    "    mov rax, rdi",
    "    mov rbx, [rax]",
    "    mov rbp, [rax + 8]",
    "    mov rsi, [rax + 16]",
    "    mov rdx, [rax + 24]",
    "    mov r8, [rax + 32]",
    "    mov r9, [rax + 40]",
    "    mov r10, [rax + 48]",
    "    mov r12, [rax + 56]",
    "    mov r13, [rax + 64]",
    "    mov r14, [rax + 72]",
    "    mov r15, [rax + 80]",
    "    mov edi, {key}",
    "    mov eax, {number}",
    "    syscall",
    "    mov rcx, [rsp]",
    "    mov [rcx], rbx",
    "    mov [rcx + 8], rbp",
    "    mov [rcx + 16], rsi",
    "    mov [rcx + 24], rdx",
    "    mov [rcx + 32], r8",
    "    mov [rcx + 40], r9",
    "    mov [rcx + 48], r10",
    "    mov [rcx + 56], r12",
    "    mov [rcx + 64], r13",
    "    mov [rcx + 72], r14",
    "    mov [rcx + 80], r15",
    "    mov [rcx + 88], rdi",
    "    mov [rcx + 96], rax",
    "    add rsp, 8",
    "    pop r15",
    "    pop r14",
    "    pop r13",
    "    pop r12",
    "    pop rbp",
    "    pop rbx",
    "    ret",
    ".size __keel_probe_regs, . - __keel_probe_regs",
    ".popsection",
    key = const keel_abi::syscall::SystemInfoKey::PageSize as usize,
    number = const Syscall::SystemInfo as usize,
);

// Code for a thread in another address space that maps only this
// program's text (see `crate::probe`): position-independent (relative
// jumps only), no stack, no memory but the one load of
// `__keel_load_then_yield_forever`. The counter of `__keel_yield_then_exit`
// lives in `rbx`, which the kernel preserves.
global_asm!(
    ".pushsection .text.__keel_yield_forever, \"ax\", @progbits",
    ".globl __keel_yield_forever",
    ".hidden __keel_yield_forever",
    ".type __keel_yield_forever, @function",
    "__keel_yield_forever:",
    "1:  mov eax, {nr_yield}",
    "    syscall",
    "    jmp 1b",
    ".size __keel_yield_forever, . - __keel_yield_forever",
    ".popsection",
    "",
    ".pushsection .text.__keel_yield_then_exit, \"ax\", @progbits",
    ".globl __keel_yield_then_exit",
    ".hidden __keel_yield_then_exit",
    ".type __keel_yield_then_exit, @function",
    "__keel_yield_then_exit:",
    "    mov rbx, rdi",
    "1:  test rbx, rbx",
    "    jz 2f",
    "    mov eax, {nr_yield}",
    "    syscall",
    "    dec rbx",
    "    jmp 1b",
    "2:  xor edi, edi",
    "    mov eax, {nr_exit}",
    "    syscall",
    "    ud2",
    ".size __keel_yield_then_exit, . - __keel_yield_then_exit",
    ".popsection",
    "",
    ".pushsection .text.__keel_load_then_yield_forever, \"ax\", @progbits",
    ".globl __keel_load_then_yield_forever",
    ".hidden __keel_load_then_yield_forever",
    ".type __keel_load_then_yield_forever, @function",
    "__keel_load_then_yield_forever:",
    "    mov rax, qword ptr [rdi]",
    "1:  mov eax, {nr_yield}",
    "    syscall",
    "    jmp 1b",
    ".size __keel_load_then_yield_forever, . - __keel_load_then_yield_forever",
    ".popsection",
    nr_yield = const Syscall::Yield as usize,
    nr_exit = const Syscall::ThreadExit as usize,
);

// IPC servers for a thread in another address space (same rules as the
// routines above: position-independent, no stack). The endpoint token is
// the thread's argument (`rdi`), kept in `rbx`. Each loops on
// `ReplyRecv(ep, info, words)`; the first round replies to nothing (info
// 0). A failed `ReplyRecv` ends the thread with the (negative) error as
// its exit code.
// - `__keel_ipc_echo_forever` answers every message with the same label,
//   length and register words (the info masked to label and length);
// - `__keel_ipc_load_server` answers with one word: the word at the
//   address in message word 0 (`rdx`) — it faults if that is unreadable.
global_asm!(
    ".pushsection .text.__keel_ipc_echo_forever, \"ax\", @progbits",
    ".globl __keel_ipc_echo_forever",
    ".hidden __keel_ipc_echo_forever",
    ".type __keel_ipc_echo_forever, @function",
    "__keel_ipc_echo_forever:",
    "    mov rbx, rdi",
    "    xor esi, esi",
    "1:  mov rdi, rbx",
    "    mov eax, {nr_reply_recv}",
    "    syscall",
    "    test rax, rax",
    "    js 2f",
    "    movabs rsi, {echo_mask}",
    "    and rsi, rax",
    "    jmp 1b",
    "2:  mov rdi, rax",
    "    mov eax, {nr_exit}",
    "    syscall",
    "    ud2",
    ".size __keel_ipc_echo_forever, . - __keel_ipc_echo_forever",
    ".popsection",
    "",
    ".pushsection .text.__keel_ipc_load_server, \"ax\", @progbits",
    ".globl __keel_ipc_load_server",
    ".hidden __keel_ipc_load_server",
    ".type __keel_ipc_load_server, @function",
    "__keel_ipc_load_server:",
    "    mov rbx, rdi",
    "    xor esi, esi",
    "1:  mov rdi, rbx",
    "    mov eax, {nr_reply_recv}",
    "    syscall",
    "    test rax, rax",
    "    js 2f",
    "    mov rdx, qword ptr [rdx]",
    "    mov esi, 1",
    "    jmp 1b",
    "2:  mov rdi, rax",
    "    mov eax, {nr_exit}",
    "    syscall",
    "    ud2",
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
    "__keel_minimal_start:",
    "    mov rbx, rdi",
    "    cmp qword ptr [rbx + {argc}], 0",
    "    je 1f",
    "    mov rdi, qword ptr [rbx + {terminate}]",
    "    mov eax, {nr_wait}",
    "    syscall",
    "1:  mov rdi, qword ptr [rbx + {server}]",
    "    movabs rsi, {exit_info}",
    "    mov rdx, qword ptr [rbx + {argc}]",
    "    mov eax, {nr_call}",
    "    syscall",
    "    mov eax, {nr_exit}",
    "    syscall",
    "2:  jmp 2b",
    "__keel_minimal_end:",
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
    "__keel_minimal_pie_start:",
    "    lea rcx, [rip - 7]",
    "    add rcx, {delta}",
    "    xor edx, edx",
    "    cmp rcx, qword ptr [rcx]",
    "    setne dl",
    "    mov rdi, qword ptr [rdi + {server}]",
    "    movabs rsi, {exit_info}",
    "    mov eax, {nr_call}",
    "    syscall",
    "    mov eax, {nr_exit}",
    "    syscall",
    "2:  jmp 2b",
    "__keel_minimal_pie_end:",
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
/// argument register (`rdi`, still the key) and the result (`rax`).
pub const PROBE_REG_NAMES: [&str; 13] = [
    "rbx", "rbp", "rsi", "rdx", "r8", "r9", "r10", "r12", "r13", "r14", "r15", "rdi", "rax",
];
/// How many registers get a pattern.
pub const PROBE_PATTERNS: usize = 11;

/// What register `i` of [`PROBE_REG_NAMES`] must hold after the call.
pub const fn probe_expected(i: usize, page_size: u64) -> u64 {
    match i {
        11 => keel_abi::syscall::SystemInfoKey::PageSize as u64,
        12 => page_size,
        _ => super::pattern(i),
    }
}

/// Stops the thread with an invalid-opcode exception.
pub fn illegal_instruction() -> ! {
    // SAFETY: `ud2` only raises #UD; the kernel ends the thread's process.
    unsafe { asm!("ud2", options(noreturn, nomem, nostack)) }
}

/// Raises a breakpoint exception.
pub fn breakpoint() {
    // SAFETY: `int3` only traps to the kernel.
    unsafe { asm!("int3", options(nomem, nostack)) }
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
        asm!("mov {v}, qword ptr [{a}]", a = in(reg) addr, v = lateout(reg) v, options(nostack, readonly))
    };
    v
}

/// Writes `value` to `addr` with one store instruction.
///
/// # Safety
/// As [`load_u64`]; and if `addr` is writable, the caller owns it.
pub unsafe fn store_u64(addr: usize, value: u64) {
    // SAFETY: the caller owns `addr` or accepts a fault.
    unsafe {
        asm!("mov qword ptr [{a}], {v}", a = in(reg) addr, v = in(reg) value, options(nostack))
    };
}

/// The word at the thread-local storage base (FS base).
///
/// # Safety
/// The TLS base must point at a readable word.
pub unsafe fn read_tls_word() -> u64 {
    let v: u64;
    // SAFETY: the caller guarantees FS base points at readable memory.
    unsafe { asm!("mov {v}, qword ptr fs:[0]", v = lateout(reg) v, options(nostack, readonly)) };
    v
}

/// Loads `a` and `b` into SSE registers `xmm0` and `xmm15`, yields the CPU
/// (so other threads run and use their own values) and returns what the
/// two registers hold afterwards.
pub fn fp_across_yield(a: u64, b: u64) -> (u64, u64) {
    let (ra, rb): (u64, u64);
    // SAFETY: `Yield` has no effect on memory. Compiled code never uses
    // SSE registers (soft-float target), so clobbering xmm0/xmm15, which
    // this target cannot name as operands, is invisible to it.
    unsafe {
        asm!(
            "movq xmm0, {a}",
            "movq xmm15, {b}",
            "syscall",
            "movq {a}, xmm0",
            "movq {b}, xmm15",
            a = inout(reg) a => ra,
            b = inout(reg) b => rb,
            inlateout("rax") Syscall::Yield as usize => _,
            out("rcx") _,
            out("r11") _,
            options(nostack),
        );
    }
    (ra, rb)
}
